"""`faceprobe check --float --quantized`: a pair converted without faceprobe's exporter (a plain tf.Module
through the TFLite converter), taps found in the flatbuffer, matched, and checked through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from device.manifest import manifest_path_for
from device.runtime import Runtime
from toolkit.check.damage import clip_tensor_range
from toolkit.cli import main
from toolkit.data import load_identity_folders, normalize
from toolkit.data.normalize import DEFAULT_NORMALIZATION
from toolkit.foreign.graph import TFLiteGraph
from toolkit.foreign.pair import prepare_pair
from toolkit.foreign.samples import PlainFaceNet, convert_module

ORL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "att_faces"
needs_orl = pytest.mark.skipif(not ORL.is_dir(), reason=f"needs the ORL faces at {ORL}")
FAST = ["--identities", "s31-s40", "--sample", "8", "--no-features", "--json"]


class NoConv(tf.Module):
    """An 'embedding' without a convolution: pooled pixels through a matrix."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 64, 64, 3], tf.float32)])
    def __call__(self, x):
        return {"embedding": tf.matmul(tf.reduce_mean(x, axis=[1, 2]), self.w)}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    if ORL.is_dir():
        faces = load_identity_folders(ORL, image_size=64, progress=False, identities="s1-s30").images[::10]
    else:
        faces = np.random.default_rng(0).integers(0, 256, (30, 64, 64, 3)).astype(np.uint8)
    cal = normalize(faces)
    net = PlainFaceNet(seed=0)
    files = {"float32": convert_module(net, d / "f32.tflite"),
             "float16": convert_module(net, d / "f16.tflite", "float16"),
             "int8": convert_module(net, d / "i8.tflite", "int8", cal),
             "other": convert_module(PlainFaceNet(width=8, seed=1), d / "other.tflite", "int8", cal)}
    tap = TFLiteGraph.read(files["int8"]).candidates()[5].name
    damaged = d / "damaged.tflite"
    damaged.write_bytes(clip_tensor_range(files["int8"].read_bytes(), [tap], 0.05))
    files["damaged"] = damaged
    noconv = d / "noconv"
    tf.saved_model.save(NoConv(), str(noconv))
    files["noconv"] = d / "noconv.tflite"
    files["noconv"].write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(noconv)).convert())
    return files


def _check(capsys, tmp_path, quantized: Path, floated: Path, *extra: str) -> tuple[int, dict | None]:
    code = main(["check", "--float", str(floated), "--quantized", str(quantized), "--data", str(ORL),
                 "--out", str(tmp_path / "check"), *FAST, *extra])
    out = capsys.readouterr().out
    return code, (json.loads(out) if code in (0, 1) else None)


def test_taps_found_with_stages_by_stride(pair):
    taps = TFLiteGraph.read(pair["int8"]).candidates()
    assert [t.stride for t in taps] == [2, 4, 4, 4, 4, 8, 8, 16, 16]
    assert [t.op for t in taps][:3] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D"]
    # The stem's LEAKY_RELU is its own op (pre-activation); the ReLUs are fused into their convs.
    assert [t.post_activation for t in taps] == [False] + [True] * 8
    assert taps[0].receptive_field == 3 and taps[1].receptive_field == 7


def test_probe_copy_keeps_the_deploy_embedding(pair, tmp_path):
    made = prepare_pair(pair["float32"], pair["int8"], tmp_path, DEFAULT_NORMALIZATION)
    assert made.variant == "int8" and len(made.matches) == 9
    assert [m.stage for m in made.matches] == ["first"] * 5 + ["middle"] * 2 + ["last"] * 2
    images = np.random.default_rng(3).uniform(-1, 1, (5, 64, 64, 3)).astype(np.float32)
    for roles in made.files.values():
        deploy, probe = Runtime(roles["deploy"]), Runtime(roles["probe"])
        assert roles["deploy"].read_bytes() in (pair["float32"].read_bytes(), pair["int8"].read_bytes())
        assert len(probe.taps) == 9 and not deploy.taps
        np.testing.assert_array_equal(deploy.run(images)[deploy.embedding_key],
                                      probe.run(images)[probe.embedding_key])
        manifest = json.loads(manifest_path_for(roles["probe"]).read_text())
        assert manifest["taps"] == "found" and manifest["source"]["converted"] == "elsewhere"


def test_float16_position_match(pair, tmp_path):
    """The float16 file names its stem tensor differently: position and shape decide that tap."""
    made = prepare_pair(pair["float32"], pair["float16"], tmp_path, DEFAULT_NORMALIZATION)
    assert [m.by for m in made.matches].count("position") == 1
    assert made.variant == "float16"


def test_unmatched_pair_exits_2(pair, tmp_path, capsys):
    code = main(["check", "--float", str(pair["float32"]), "--quantized", str(pair["other"]),
                 "--out", str(tmp_path / "c"), "--no-features"])
    assert code == 2
    assert "taps do not match" in capsys.readouterr().err


def test_file_without_convolution_exits_2(pair, tmp_path, capsys):
    code = main(["check", "--float", str(pair["noconv"]), "--quantized", str(pair["int8"]),
                 "--out", str(tmp_path / "c"), "--no-features"])
    assert code == 2
    assert "no convolution" in capsys.readouterr().err


@needs_orl
def test_float16_pair_passes_and_damaged_pair_fails(pair, tmp_path, capsys):
    code, good = _check(capsys, tmp_path / "f16", pair["float16"], pair["float32"])
    assert code == 0, good
    assert good["passed"] and good["failed_checks"] == []
    # The levels off the clean faces run on a pair too: the float file is the shift suite's reference
    # and the disagreement ascent's other file.
    code, judged = _check(capsys, tmp_path / "levels", pair["int8"], pair["float32"], "--shift",
                          "--disagreement", "--disagreement-images", "1")
    assert code in (0, 1), judged
    report = json.loads((tmp_path / "levels" / "check" / "report.json").read_text())
    host = report["boards"][0]
    assert host["shift"]["summary"]["cells"] == len(host["shift"]["cells"]) > 0
    assert 0 < host["disagreement"]["summary"]["worst_case_embedding_cosine"] <= 1
    code, bad = _check(capsys, tmp_path / "bad", pair["damaged"], pair["float32"])
    assert code == 1
    assert any(c.startswith("host:worst_tap") for c in bad["failed_checks"])
    report = json.loads((tmp_path / "bad" / "check" / "report.json").read_text())
    assert report["foreign"]["taps_matched"] == 9
    # The damage is at the sixth tap: the localisation names it (or the first tap after it).
    assert report["summary"]["first_broken_tap"].startswith(("t05", "t06"))


def test_import_records_normalisation_used_by_later_commands(pair, tmp_path, capsys):
    import shutil

    from toolkit.foreign.imported import record_path, recorded_normalization

    own = tmp_path / "model.tflite"
    shutil.copyfile(pair["float32"], own)
    assert main(["import", str(own), "--mean", "0", "--scale", "255", "--channels", "bgr", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["candidates"]) == 9 and record["variant"] == "float32"
    norm = recorded_normalization(own)
    assert norm == {"mean": 0.0, "scale": 255.0, "channel_order": "BGR"}
    assert recorded_normalization(own, scale=[128.0])["scale"] == 128.0  # a flag given now wins
    own.write_bytes(own.read_bytes() + b"\0")  # the record is for other bytes now
    with pytest.raises(ValueError, match="another file"):
        recorded_normalization(own)
    assert record_path(own).is_file()


@needs_orl
def test_probe_of_a_tflite_file_by_finite_differences(pair, tmp_path, capsys):
    out = tmp_path / "probe"
    code = main(["probe", str(pair["float32"]), "--images", str(ORL), "--person", "s35", "--n-images", "2",
                 "--steps", "4", "--step-rule", "normalized", "--out", str(out), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert "finite differences" in summary["estimator"] and "dct:4" in summary["estimator"]
    assert set(summary["stages"]) == {"first", "middle", "last"}
    # The ascent raises every stage's objective (normalised steps in the subspace).
    assert all(r["objective_final"] > r["objective_start"] for r in summary["stages"].values())
    assert (out / "report.html").is_file()
    findings = json.loads((out / "findings.json").read_text())
    assert findings["controls"].startswith("none")


@needs_orl
def test_a_loopback_agent_judges_the_pair_as_the_host_does(pair, tmp_path, capsys):
    import threading

    from device.agent import AgentServer

    server = AgentServer("127.0.0.1", 0, tmp_path / "store")
    server.quiet = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        code, summary = _check(capsys, tmp_path, pair["int8"], pair["float32"], "--agent", url)
    finally:
        server.shutdown()
        server.server_close()
    assert code in (0, 1)
    report = json.loads((tmp_path / "check" / "report.json").read_text())
    host, board = report["boards"]
    assert board["name"] == url and board["info"]["deploy"]["runtime"]
    # The same deploy file on the same runtime: the same embeddings, so the same identity figures.
    assert board["identities"]["embedding_cosine_mean"] == pytest.approx(
        host["identities"]["embedding_cosine_mean"], abs=1e-6)
    assert [r["tap"] for r in board["taps"]] == [r["tap"] for r in host["taps"]]
