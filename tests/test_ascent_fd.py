"""Finite-difference ascent against the interpreter, checked against the host's autodiff projection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from device import ascent  # noqa: E402
from device.plan import ProbePlan, ProbeResult  # noqa: E402
from device.runtime import Runtime  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
DCT2 = {"kind": "dct", "size": 2}
GRID2 = {"kind": "grid", "cells": 2}


def export_tiny(out_dir: Path, variants=("float32",)) -> tuple[object, dict]:
    """An untrained tiny model at 32 px (fixed seed) and its exported {variant: {role: path}}."""
    import keras

    from toolkit.data.normalize import DEFAULT_NORMALIZATION
    from toolkit.export import export_keras
    from toolkit.zoo import get_model

    keras.utils.set_random_seed(0)
    model = get_model("tiny", input_size=SIZE, embedding_dim=16)
    calibration = np.random.default_rng(0).integers(0, 256, (32, SIZE, SIZE, 3)).astype(np.uint8)
    files = export_keras(model, {"normalization": DEFAULT_NORMALIZATION, "architecture": "tiny"}, out_dir,
                         variants=variants, calibration=calibration if "int8" in variants else None)
    return model, files


def start_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.6, 0.6, (n, SIZE, SIZE, 3)).astype(np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, files = export_tiny(tmp_path_factory.mktemp("tiny"), ("float32", "int8"))
    return model, {v: Runtime(files[v]["probe"]) for v in files}, files


TARGETS = [{"tap": "stem/conv", "channel": 1}, {"tap": "stage1/block1", "channel": 3},
           {"tap": "stage2/block1", "channel": 5}]


def test_subspace_gradient_matches_host_autodiff(tiny):
    from toolkit.probe import run_plan as host_run

    model, runtimes, _ = tiny
    plan = ProbePlan(targets=TARGETS, images=start_images(2), steps=3, subspace={"kind": "dct", "size": 3})
    host = host_run(model, plan, progress=False)
    board = ascent.run_plan(runtimes["float32"], plan)
    assert board.gradients.shape == host.gradients.shape == (2, 3, 3, 27)
    # Step 0 starts from the same images: the estimate must match the exact projection B·g.
    assert cosines(board.gradients[:, :, 0], host.gradients[:, :, 0]).min() > 0.99
    # The estimates are good enough that both ascents follow the same path.
    np.testing.assert_allclose(board.objective, host.objective, rtol=0.02, atol=1e-3)
    assert np.all(board.objective[..., -1] > board.objective[..., 0])
    assert cosines(board.gradients, host.gradients).min() > 0.98
    for name in ("objective", "final_images", "step_norms", "gradients", "ranges"):
        assert getattr(board, name).shape == getattr(host, name).shape, name
    assert board.meta["method"] == "finite-difference" and board.meta["runtime"]["kernels"] == "xnnpack"
    assert board.meta["plan"] == plan.to_json()


def test_int8_estimate_uses_the_input_grid(tiny):
    from toolkit.probe import run_plan as host_run

    model, runtimes, _ = tiny
    plan = ProbePlan(targets=TARGETS[:2], images=start_images(2, seed=1), steps=1,
                     subspace=DCT2)
    rt = runtimes["int8"]
    board = ascent.run_plan(rt, plan)
    fd = board.meta["finite_difference"]
    assert fd["input_step"] == pytest.approx(rt.input_scale) and rt.input_scale > 1e-3
    assert fd["peak_perturbation"] == pytest.approx(16 * rt.input_scale)
    host = host_run(model, plan, progress=False)
    assert cosines(board.gradients[:, 0, 0], host.gradients[:, 0, 0]).min() > 0.9  # first stage


def test_same_seed_same_perturbations_and_batching_does_not_change_the_estimate(tiny):
    _, runtimes, _ = tiny
    rt = runtimes["float32"]
    plan = ProbePlan(targets=TARGETS[1:], images=start_images(2), steps=2, subspace=GRID2)
    a, b = ascent.run_plan(rt, plan), ascent.run_plan(rt, plan)
    np.testing.assert_array_equal(a.gradients, b.gradients)
    np.testing.assert_array_equal(a.final_images, b.final_images)
    other = ProbePlan.from_json({**plan.to_json(), "finite_difference": {"seed": 7}}, plan.images)
    c = ascent.run_plan(rt, other)
    assert not np.array_equal(a.gradients, c.gradients)  # other directions...
    assert cosines(a.gradients, c.gradients).min() > 0.99  # ...same projected gradient
    small = ascent.run_plan(rt, plan, max_batch=5)
    np.testing.assert_allclose(small.gradients, a.gradients, rtol=1e-3, atol=1e-4)
    k = 2 * 2 * 3
    # Step 0: both targets start from the same image and share its 2k+1 rows; afterwards each has its own.
    assert a.meta["evaluations_per_step"] == [2 * (2 * k + 1), 4 * (2 * k + 1)]
    assert a.meta["invocations_per_step"] == [-(-2 * (2 * k + 1) // 64), -(-4 * (2 * k + 1) // 64)]
    assert small.meta["invocations_per_step"] == [-(-2 * (2 * k + 1) // 5), -(-4 * (2 * k + 1) // 5)]
    for inside, total in zip(a.meta["interpreter_seconds_per_step"], a.meta["seconds_per_step"], strict=True):
        assert 0 < inside < total


def test_forward_scheme_and_unit_window_objective(tiny):
    from toolkit.probe import run_plan as host_run

    model, runtimes, _ = tiny
    plan = ProbePlan(targets=TARGETS[1:2], images=start_images(1), steps=1,
                     objective={"kind": "unit", "position": [2, 5]}, subspace={"kind": "window", "size": 4},
                     finite_difference={"scheme": "forward"})
    board = ascent.run_plan(runtimes["float32"], plan)
    host = host_run(model, plan, progress=False)
    assert board.meta["evaluations_per_step"] == [4 * 4 * 3 + 1]
    assert cosines(board.gradients[:, 0, 0], host.gradients[:, 0, 0]).min() > 0.99


def test_refusals_name_the_problem(tiny):
    _, runtimes, _ = tiny
    rt = runtimes["float32"]
    images = start_images(1)
    with pytest.raises(ValueError, match=r"full input gradient \(3072 dimensions.*'kind': 'dct'"):
        ascent.run_plan(rt, ProbePlan(targets=TARGETS[:1], images=images))
    with pytest.raises(ValueError, match=r"host-only extras"):
        ascent.run_plan(rt, ProbePlan(targets=TARGETS[:1], images=images, subspace=DCT2,
                                      options={"jitter": 2}))
    with pytest.raises(ValueError, match=r"scheme must be one of"):
        ascent.run_plan(rt, ProbePlan(targets=TARGETS[:1], images=images, subspace=DCT2,
                                      finite_difference={"scheme": "spsa"}))
    with pytest.raises(ValueError, match=r"targets\[0\].channel 99"):
        ascent.run_plan(rt, ProbePlan(targets=[{"tap": "stem/conv", "channel": 99}], images=images,
                                      subspace=DCT2))


def test_offline_cli_runs_without_tensorflow(tiny, tmp_path):
    _, runtimes, files = tiny
    plan = ProbePlan(targets=TARGETS[:2], images=start_images(1), steps=2, subspace=DCT2)
    plan_path = plan.save(tmp_path / "plan.json")
    blocker = ("import sys; sys.modules.update(tensorflow=None, keras=None, tf_keras=None); "
               "from device.cli import main; sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "out"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-c", blocker, "run", str(files["float32"]["probe"]), str(plan_path)]
    proc = subprocess.run([*command, "--out", str(out), "--json"], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["meta"]["method"] == "finite-difference"
    result = ProbeResult.load(out)
    np.testing.assert_array_equal(result.gradients, ascent.run_plan(runtimes["float32"], plan).gradients)
    acts = subprocess.run([*command, "--out", str(tmp_path / "acts"), "--kind", "activations"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert acts.returncode == 0, acts.stderr
    with np.load(tmp_path / "acts" / "activations.npz") as z:
        direct = runtimes["float32"].run(plan.images)
        np.testing.assert_array_equal(z["tap/stem/conv"], direct["stem__conv"])
