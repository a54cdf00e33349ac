"""Probe plans, results and subspaces (device/plan.py, device/subspace.py): numpy only."""

import json

import numpy as np
import pytest

from device import subspace
from device.archive import read_plan
from device.plan import NORMALIZED_STEP_RMS, PLAN_SCHEMA, ProbePlan, ProbeResult, apply_step

TAPS = {"stem/conv": {"channels": 8}, "stage1/block1": {"channels": 16}}
SHAPE = (16, 16, 3)


def _plan(**kw) -> ProbePlan:
    rng = np.random.default_rng(0)
    kw.setdefault("targets", [{"tap": "stem/conv", "channel": 3}, {"tap": "stage1/block1", "channel": 15}])
    return ProbePlan(images=rng.uniform(-1, 1, (2, *SHAPE)).astype(np.float32), **kw)


@pytest.mark.parametrize("spec, k", [({"kind": "dct", "size": 4}, 48), ({"kind": "grid", "cells": 3}, 27),
                                     ({"kind": "window", "size": 5}, 75),
                                     ({"kind": "window", "size": 5, "center": [0, 15]}, 75)])
def test_bases_are_orthonormal(spec, k):
    b = subspace.make_basis(spec, SHAPE)
    assert b.shape == (k, 16 * 16 * 3)
    np.testing.assert_allclose(b @ b.T, np.eye(k), atol=1e-5)


def test_full_subspace_has_no_basis_and_window_stays_inside():
    assert subspace.make_basis({"kind": "full"}, SHAPE) is None
    b = subspace.make_basis({"kind": "window", "size": 4, "center": [0, 15]}, SHAPE).reshape(-1, *SHAPE)
    rows, cols = np.nonzero(b.sum(axis=(0, 3)))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (0, 3, 12, 15)


def test_dct_basis_reproduces_smooth_image_and_projection_round_trips():
    b = subspace.make_basis({"kind": "dct", "size": 4}, SHAPE)
    coeffs = np.random.default_rng(1).normal(size=(3, len(b)))
    images = subspace.expand(b, coeffs, SHAPE)
    np.testing.assert_allclose(subspace.project(b, images), coeffs, atol=1e-5)
    # The constant image lies in the DCT subspace: projecting keeps all of its energy.
    flat = np.ones((1, *SHAPE), np.float32)
    c = subspace.project(b, flat)
    assert np.linalg.norm(c) == pytest.approx(np.linalg.norm(flat), rel=1e-5)


def test_window_centre_follows_the_target_unit():
    spec = subspace.resolve_spec({"kind": "window", "size": 3}, [3, 0], (4, 4), SHAPE)
    assert spec["center"] == [14, 2]
    assert subspace.resolve_spec({"kind": "window", "size": 3}, None, (4, 4), SHAPE) == {"kind": "window",
                                                                                          "size": 3}


@pytest.mark.parametrize("spec, field", [
    ({"kind": "fft"}, "subspace.kind"), ({"kind": "dct"}, "subspace.size"),
    ({"kind": "grid", "cells": 40}, "subspace.cells"),
    ({"kind": "window", "size": 3, "center": [99, 0]}, "subspace.center")])
def test_subspace_errors_name_the_field(spec, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        subspace.make_basis(spec, SHAPE)


@pytest.mark.parametrize("change, field", [
    ({"targets": [{"tap": "nope", "channel": 0}]}, r"targets\[0\]\.tap 'nope'"),
    ({"targets": [{"tap": "stem/conv", "channel": 0}, {"tap": "stem/conv", "channel": 8}]},
     r"targets\[1\]\.channel 8 .* 0\.\.7"),
    ({"targets": []}, "targets is empty"),
    ({"step_rule": "adam"}, "step_rule"),
    ({"steps": 0}, "steps"),
    ({"step_size": -1.0}, "step_size"),
    ({"objective": {"kind": "max"}}, "objective.kind"),
    ({"options": {"blurr": 1.0}}, "options has unknown keys"),
    ({"subspace": {"kind": "dct", "size": 99}}, "subspace.size"),
])
def test_validation_errors_name_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        _plan(**change).validate(TAPS, SHAPE)


def test_wrong_image_size_is_named():
    with pytest.raises(ValueError, match=r"images must be \(n, 32, 32, 3\)"):
        _plan().validate(TAPS, (32, 32, 3))
    _plan().validate(TAPS, (None, *SHAPE))  # a Keras input shape with its batch dimension is accepted


def test_plan_round_trips_through_files_and_bytes(tmp_path):
    plan = _plan(step_rule="normalized", subspace={"kind": "grid", "cells": 4}, options={"clip": True},
                 objective={"kind": "unit", "position": [1, 2]})
    path = plan.save(tmp_path / "plan.json")
    assert json.loads(path.read_text())["schema"] == PLAN_SCHEMA
    for back in (ProbePlan.load(path), read_plan(plan.to_bytes())):
        assert back.to_json() == plan.to_json()
        np.testing.assert_array_equal(back.images, plan.images)
    with pytest.raises(ValueError, match="schema"):
        ProbePlan.from_json({**plan.to_json(), "schema": "other/9"}, plan.images)
    with pytest.raises(ValueError, match="not a probe plan"):
        read_plan(b"garbage")


def test_result_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    plan = _plan(steps=3)
    res = ProbeResult(objective=rng.normal(size=(2, 2, 4)), final_images=rng.normal(size=(2, 2, *SHAPE)),
                      step_norms=rng.random((2, 2, 3)), meta={"method": "autodiff", "plan": plan.to_json()},
                      gradients=rng.normal(size=(2, 2, 3, 5)), ranges=rng.normal(size=(2, 2, 4, 2)))
    back = ProbeResult.load(res.save(tmp_path / "r"))
    for name in ("objective", "final_images", "step_norms", "gradients", "ranges"):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    assert back.captured_share is None and back.meta == res.meta
    summary = json.loads((tmp_path / "r" / "result.json").read_text())
    assert summary["targets"][1]["channel"] == 15
    assert summary["targets"][0]["objective_final"] == pytest.approx(res.objective[:, 0, -1].mean())


def test_step_rules():
    plan = _plan()
    d = np.random.default_rng(3).normal(size=plan.images.shape).astype(np.float32)
    new, rms = apply_step(plan.images, d, plan)
    np.testing.assert_allclose(new, plan.images + d, atol=1e-6)  # the method: alpha = 1, no clipping
    assert new.max() > plan.valid_range[1]
    norm = _plan(step_rule="normalized", step_size=2.0)
    new, rms = apply_step(norm.images, d, norm)
    assert new.min() >= norm.valid_range[0] and new.max() <= norm.valid_range[1]
    inside = np.abs(new) < norm.valid_range[1] - 1e-6  # unclipped pixels moved by exactly alpha*s*d/rms(d)
    scale = 2.0 * NORMALIZED_STEP_RMS / np.sqrt(np.mean(d.reshape(2, -1) ** 2, axis=1))
    expected = scale[:, None, None, None] * d
    np.testing.assert_allclose((new - norm.images)[inside], expected[inside], atol=1e-6)
    assert np.all(rms <= 2.0 * NORMALIZED_STEP_RMS + 1e-6)
