"""`faceprobe derive`: channel dependency groups on residual, depthwise and concatenating graphs, students
that run and keep their taps, an unpruned student equal to its teacher, budgets met exactly, distillation
through the CLI on synthetic faces, and resume after an interruption."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from toolkit.cli import main
from toolkit.derive import DeriveConfig, derive
from toolkit.derive.graph import analyse
from toolkit.derive.prune import (
    build_student,
    channel_importance,
    kept_channels,
    kept_from_channels,
    prune_by_fractions,
    prune_to_budget,
    size_of,
)
from toolkit.derive.reconstruct import reconstruct
from toolkit.modelfile import load_face_model, save_face_model
from toolkit.zoo import DlibAddPrev, IndexedAdd, get_model, list_taps

RNG = np.random.default_rng(0)


def _x(size: int, n: int = 4) -> np.ndarray:
    return RNG.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def residual_net() -> keras.Model:
    """Conv stem, two residual blocks (the second adds to the first's sum), a PReLU, a dense embedding."""
    keras.utils.set_random_seed(0)
    x = keras.Input((16, 16, 3), name="image")
    h = layers.Conv2D(8, 3, padding="same", name="stem")(x)
    h = layers.BatchNormalization(name="stem_bn")(h)
    for i in range(2):
        r = layers.Conv2D(12, 3, padding="same", name=f"b{i}_c1")(h)
        r = layers.ReLU()(r)
        r = layers.Conv2D(8, 3, padding="same", name=f"b{i}_c2")(r)
        h = layers.Add(name=f"b{i}_add")([h, r])
    h = layers.PReLU(shared_axes=[1, 2])(h)
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, layers.Dense(6, name="embedding")(h), name="residual")


def depthwise_concat_net() -> keras.Model:
    """Two branches concatenated, a depthwise conv with batch norm over the concatenation, a 1x1 conv."""
    keras.utils.set_random_seed(1)
    x = keras.Input((16, 16, 3), name="image")
    a = layers.Conv2D(6, 3, padding="same", name="a")(x)
    b = layers.Conv2D(10, 1, name="b")(x)
    h = layers.Concatenate(name="cat")([a, b])
    h = layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = layers.BatchNormalization(name="dw_bn")(h)
    h = layers.ReLU()(h)
    h = layers.Conv2D(8, 1, name="pw")(h)
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, layers.Dense(5, name="embedding")(h), name="dwcat")


def dlib_like_net() -> keras.Model:
    """dlib's downsampling add: a 3x3/2 conv path of more channels than the 2x2/2 average-pooled skip."""
    keras.utils.set_random_seed(2)
    x = keras.Input((17, 17, 3), name="image")
    h = layers.Conv2D(4, 3, padding="same", name="stem")(x)
    r = layers.Conv2D(8, 3, strides=2, name="down")(layers.ReLU()(h))
    skip = layers.AveragePooling2D(2, 2)(h)
    h = DlibAddPrev(name="add_prev")([r, skip])
    h = layers.GlobalAveragePooling2D()(layers.ReLU()(h))
    return keras.Model(x, layers.Dense(3, name="embedding")(h), name="dliblike")


def _everything(graph) -> frozenset[int]:
    return frozenset(int(c) for cs in graph.groups().values() for c in cs)


@pytest.mark.parametrize("make", [residual_net, depthwise_concat_net, dlib_like_net])
def test_keeping_everything_gives_the_teacher_exactly(make):
    model = make()
    graph = analyse(model)
    student = build_student(model, graph, _everything(graph))
    x = _x(int(model.input_shape[1]))
    assert np.array_equal(np.asarray(student(x)), np.asarray(model(x)))
    assert size_of(graph, _everything(graph))[0] == model.count_params()


def test_residual_adds_tie_the_stream_into_one_group():
    graph = analyse(residual_net())
    sizes = sorted(len(c) for c in graph.groups().values())
    # The stem and both blocks' second convs write one stream of 8; each block's inner 12 is its own.
    assert sizes == [8, 12, 12]
    assert sorted(graph.producers().values()) == [1, 1, 3]


def test_concatenation_keeps_its_branches_apart_and_depthwise_passes_through():
    graph = analyse(depthwise_concat_net())
    assert sorted(len(c) for c in graph.groups().values()) == [6, 8, 10]


@pytest.mark.parametrize("make", [residual_net, depthwise_concat_net, dlib_like_net])
def test_pruned_students_run_with_consistent_shapes(make):
    model = make()
    graph = analyse(model)
    x = _x(int(model.input_shape[1]), 8)
    pruning = prune_by_fractions(graph, channel_importance(model, graph, x), [0.5])
    student = build_student(model, graph, pruning.kept)
    assert student(x).shape == model(x).shape
    assert student.count_params() == pruning.params < model.count_params()
    for group in pruning.group_sizes(graph):
        assert group["kept"] == round(group["channels"] * 0.5)


def test_a_pruned_channel_is_the_teacher_with_that_channel_silenced():
    """Conv -> ReLU -> conv: dropping a channel of the first conv equals zeroing its filter and bias."""
    keras.utils.set_random_seed(3)
    x_in = keras.Input((8, 8, 3))
    h = layers.ReLU()(layers.Conv2D(5, 3, padding="same", name="c1")(x_in))
    model = keras.Model(x_in, layers.Flatten()(layers.Conv2D(4, 8, name="c2")(h)))
    graph = analyse(model)
    (group,) = [c for c in graph.groups().values() if len(c) == 5]
    kept = _everything(graph) - {int(group[2])}
    student = build_student(model, graph, kept)
    kernel, bias = model.get_layer("c1").get_weights()
    kernel[..., 2], bias[2] = 0.0, 0.0
    model.get_layer("c1").set_weights([kernel, bias])
    x = _x(8)
    np.testing.assert_allclose(np.asarray(student(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)


def _cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


@pytest.mark.parametrize("make", [residual_net, depthwise_concat_net, dlib_like_net])
def test_least_squares_reconstruction_brings_a_pruned_student_back_towards_its_teacher(make):
    model = make()
    graph = analyse(model)
    size = int(model.input_shape[1])
    fit, unseen = _x(size, 48), _x(size, 16)
    pruning = prune_by_fractions(graph, channel_importance(model, graph, fit), [0.5])
    student = build_student(model, graph, pruning.kept)
    before = _cosine(student(unseen), model(unseen))
    fitted = reconstruct(graph, pruning.kept, student, fit)
    assert fitted and all(f["error_after"] <= f["error_before"] + 1e-9 for f in fitted)
    assert _cosine(student(unseen), model(unseen)) > before  # on inputs it was not fitted on


def test_the_kept_channels_a_student_records_rebuild_the_same_student():
    model = residual_net()
    graph = analyse(model)
    pruning = prune_by_fractions(graph, channel_importance(model, graph, _x(16, 8)), [0.5])
    assert kept_from_channels(graph, kept_channels(graph, pruning)) == pruning.kept


def test_reconstructing_a_student_that_keeps_everything_leaves_the_teacher():
    model = residual_net()
    graph = analyse(model)
    student = build_student(model, graph, _everything(graph))
    fitted = reconstruct(graph, _everything(graph), student, _x(16, 32), ridge=1e-9)
    assert max(f["error_after"] for f in fitted) < 1e-6
    x = _x(16)
    np.testing.assert_allclose(np.asarray(student(x)), np.asarray(model(x)), rtol=1e-3, atol=1e-3)


def test_indexed_add_equals_dlibs_add_prev_when_nothing_is_pruned():
    a = RNG.normal(size=(2, 3, 3, 8)).astype(np.float32)
    b = RNG.normal(size=(2, 4, 4, 4)).astype(np.float32)
    ref = np.asarray(DlibAddPrev()([a, b]))
    got = np.asarray(IndexedAdd([list(range(8)), [0, 1, 2, 3, -1, -1, -1, -1]])([a, b]))
    assert np.array_equal(got, ref)


def test_mobilefacenet_budget_is_met_and_taps_survive():
    model = get_model("mobilefacenet", input_size=64, width=0.5)
    graph = analyse(model)
    x = _x(64, 8)
    scores = channel_importance(model, graph, x)
    full_params, full_macs = size_of(graph, _everything(graph))
    pruning = prune_to_budget(graph, scores, macs=full_macs // 2)
    student = build_student(model, graph, pruning.kept)
    assert pruning.macs <= full_macs // 2
    # Exact accounting: one channel fewer removed would not fit.
    assert student.count_params() == pruning.params
    assert [t.name for t in list_taps(student)] == [t.name for t in list_taps(model)]
    assert student(x).shape == model(x).shape
    assert np.array_equal(
        np.asarray(build_student(model, graph, _everything(graph))(x)), np.asarray(model(x))
    )
    assert full_params > pruning.params


@pytest.fixture
def tiny_teacher(tmp_path) -> Path:
    keras.utils.set_random_seed(0)
    return save_face_model(get_model("tiny", input_size=32), tmp_path / "teacher.keras")


def test_derive_through_the_cli_on_synthetic_faces(tiny_teacher, tmp_path, capsys):
    out = tmp_path / "student"
    assert (
        main(["derive", str(tiny_teacher), "--params", "20k", "--epochs", "2", "--reconstruct",
              "--out", str(out), "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    model, meta = load_face_model(out / "model.keras")
    assert model.count_params() == result["params"] <= 20_000
    assert meta["origin"]["teacher_sha256"] and meta["derive"]["kept_channels"]
    assert [t["name"] for t in meta["taps"]] == [t.name for t in list_taps(load_face_model(tiny_teacher)[0])]
    assert result["epochs_completed"] == 2
    assert len(json.loads((out / "history.json").read_text())) == 2
    fitted = json.loads((out / "derive.json").read_text())["pruning"]["reconstruction"]
    assert fitted and all(f["error_after"] <= f["error_before"] + 1e-9 for f in fitted)
    assert any((out / "logs" / "derive").iterdir())  # TensorBoard


def test_emergence_is_probed_during_distillation(tiny_teacher, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["derive", str(tiny_teacher), "--keep", "0.5", "--epochs", "1", "--probe-every", "50",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "emergence" / "emergence.json").read_text())
    snapshots = sorted((out / "emergence" / "snapshots").glob("iter_*.npz"))
    assert [p.name for p in snapshots] == ["iter_0000000.npz", "iter_0000050.npz", "iter_0000100.npz"]
    assert set(summary["stages"]) >= {"first", "last"}


def test_derive_refuses_a_missing_budget_and_a_double_one(tiny_teacher, tmp_path, capsys):
    assert main(["derive", str(tiny_teacher), "--out", str(tmp_path / "a")]) == 2
    assert "how small" in capsys.readouterr().err
    assert (
        main(["derive", str(tiny_teacher), "--keep", "0.5", "--params", "1M", "--out", str(tmp_path / "b")])
        == 2
    )
    assert "not both" in capsys.readouterr().err
    out = tmp_path / "c"
    assert main(["derive", str(tiny_teacher), "--keep", "0.5", "--size", "28", "--reconstruct", "--out",
                 str(out)]) == 2
    assert "reconstruct refits" in capsys.readouterr().err and not out.exists()  # refused before any work


def test_resume_after_an_interruption_continues_where_it_stopped(tiny_teacher, tmp_path):
    out = tmp_path / "run"
    cfg = DeriveConfig(keep=(0.5,), epochs=3, steps_per_epoch=2, batch_size=8, holdout=0)

    def stop_after_first_epoch(msg: str) -> None:
        if msg.startswith("epoch 1:"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        derive(tiny_teacher, out, cfg, progress=False, log=stop_after_first_epoch)
    assert not (out / "model.keras").exists()
    with pytest.raises(ValueError, match="already holds"):
        derive(tiny_teacher, out, cfg, progress=False, log=lambda m: None)
    seen: list[str] = []
    result = derive(tiny_teacher, out, resume=True, progress=False, log=seen.append)
    assert any(m.startswith("resuming") and "after epoch 1/3" in m for m in seen)
    assert result.epochs_completed == 3
    assert [h["epoch"] for h in result.history] == [1, 2, 3]


DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "att_faces"


@pytest.mark.skipif(not DATA.is_dir(), reason=f"the ORL faces are not at {DATA}")
def test_derive_benchmark_quick_mode_reports_its_keys(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "scripts" / "bench" / "derive.py"), "--quick", "--json",
                           "--data", str(DATA), "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    for key in ("params", "macs", "input_size", "verification_accuracy", "teacher_verification_accuracy",
                "cosine_to_teacher", "before_finetune", "train_minutes", "int8", "fast"):
        assert key in report
    assert set(report["int8"]) >= {"verification_accuracy", "size_bytes", "speedup_vs_teacher_int8_b1",
                                   "check_passed"}
    assert set(report["fast"]) >= {"input_size", "params", "macs", "verification_accuracy",
                                   "int8_speedup_vs_teacher_int8_b1"}
    assert report["params"] < report["teacher_params"] and report["fast"]["input_size"] == 112
    assert 0.0 < report["cosine_to_teacher"] <= 1.0 and report["int8"]["speedup_vs_teacher_int8_b1"] > 1.0
    assert (tmp_path / "model.keras").is_file()
