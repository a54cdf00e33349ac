"""The batched autodiff ascent on a tiny model at 32x32: real gradients, real numbers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from device import subspace
from device.plan import ProbePlan, apply_step
from toolkit.probe.ascent import Ascender, MultiExit, run_plan, truncated_model
from toolkit.zoo import get_model, list_taps

SIZE = 32


@pytest.fixture(scope="module")
def model():
    keras_model = get_model("tiny", input_size=SIZE, embedding_dim=16)
    # Non-trivial batch-norm statistics so taps are not plain convolutions of the input.
    rng = np.random.default_rng(0)
    for layer in keras_model.layers:
        if layer.__class__.__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([1 + 0.3 * rng.normal(size=gamma.shape), 0.2 * rng.normal(size=beta.shape),
                               0.1 * rng.normal(size=mean.shape), 0.5 + rng.random(var.shape)])
    return keras_model


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    return rng.uniform(-0.8, 0.8, (2, SIZE, SIZE, 3)).astype(np.float32)


def _targets(model, channels=(0, 5)):
    return [{"tap": t.name, "channel": c} for t in list_taps(model) for c in channels]


def _gradient(model, tap, channel, x, unit=None):
    sub = truncated_model(model, tap)
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        h = sub(x, training=False)[..., channel]
        obj = tf.reduce_mean(h, axis=(1, 2)) if unit is None else h[:, unit[0], unit[1]]
        total = tf.reduce_sum(obj)
    return obj.numpy(), tape.gradient(total, x).numpy()


def test_objective_increases_monotonically_for_small_steps(model, images):
    plan = ProbePlan(targets=_targets(model), images=images, steps=10, step_size=0.05)
    result = run_plan(model, plan, progress=False)
    assert result.objective.shape == (2, 6, 11)
    # Never decreases, up to float32 rounding of the objective: a target with a tiny gradient gains less
    # per step than one unit in the last place of its value.
    rounding = 4 * np.spacing(np.abs(result.objective[..., 1:]).astype(np.float32))
    assert np.all(np.diff(result.objective, axis=-1) >= -rounding)
    assert np.all(result.gain > 0)


def test_batched_equals_one_at_a_time(model, images):
    plan = ProbePlan(targets=_targets(model), images=images, steps=4)
    batched = Ascender(model, plan).run()
    for j, target in enumerate(plan.targets):
        alone = Ascender(model, ProbePlan(targets=[target], images=images[:1], steps=4))
        for i in range(len(images)):
            single = alone.run(images[i:i + 1])
            np.testing.assert_allclose(batched.objective[i, j], single.objective[0, 0], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(batched.final_images[i, j], single.final_images[0, 0], rtol=1e-4,
                                       atol=1e-5)


def test_multi_exit_rows_leave_at_their_taps(model, images):
    taps = [t.name for t in list_taps(model)]
    forward = MultiExit(model, taps[::-1])
    assert forward.taps == taps  # exit (depth) order, whatever order they were given in
    x = np.concatenate([images, images[::-1], images[:1]])
    out = forward(tf.constant(x), [tf.constant(2), tf.constant(2), tf.constant(1)])
    rows = {taps[0]: x[:2], taps[1]: x[2:4], taps[2]: x[4:]}
    for tap in taps:
        expected = truncated_model(model, tap)(rows[tap], training=False).numpy()
        np.testing.assert_allclose(out[tap].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_first_step_is_the_raw_gradient_and_ranges_are_recorded(model, images):
    plan = ProbePlan(targets=[{"tap": "stage1/block1", "channel": 3}], images=images, steps=1)
    result = Ascender(model, plan).run()
    obj, g = _gradient(model, "stage1/block1", 3, images)
    np.testing.assert_allclose(result.objective[:, 0, 0], obj, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.final_images[:, 0], images + g, atol=1e-6)
    np.testing.assert_allclose(result.step_norms[:, 0, 0], np.sqrt(np.mean(g.reshape(2, -1) ** 2, axis=1)),
                               rtol=1e-5)
    np.testing.assert_allclose(result.ranges[:, 0, 0], np.stack([images.min(axis=(1, 2, 3)),
                                                                 images.max(axis=(1, 2, 3))], -1))
    assert result.meta["options_on"] == [] and result.meta["method"] == "autodiff"


def test_unit_objective_defaults_to_the_centre(model, images):
    plan = ProbePlan(targets=[{"tap": "stem/conv", "channel": 2}], images=images, steps=1,
                     objective={"kind": "unit"})
    result = Ascender(model, plan).run()
    obj, g = _gradient(model, "stem/conv", 2, images, unit=(8, 8))  # 16x16 map
    np.testing.assert_allclose(result.objective[:, 0, 0], obj, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.final_images[:, 0], images + g, atol=1e-6)
    changed = np.argwhere(np.abs(result.final_images[0, 0] - images[0]).sum(-1) > 0)
    assert changed.min() >= 14 and changed.max() <= 19  # only the unit's receptive field moves


def test_pre_activation_negative_channel_still_moves(model, images):
    bn = model.get_layer("bn_2")  # the stem's batch norm, feeding tap stem/conv
    saved = bn.get_weights()
    try:
        gamma, beta, mean, var = (w.copy() for w in saved)
        beta[4] = -50.0
        bn.set_weights([gamma, beta, mean, var])
        plan = ProbePlan(targets=[{"tap": "stem/conv", "channel": 4}], images=images, steps=5, step_size=0.5)
        h = truncated_model(model, "stem/conv")(images, training=False).numpy()[..., 4]
        assert h.max() < 0  # negative everywhere: after the ReLU it would be 0 with zero gradient
        result = Ascender(model, plan).run()
        assert np.all(result.gain > 0)
        assert np.all(np.abs(result.final_images[:, 0] - images).max(axis=(1, 2, 3)) > 1e-3)
    finally:
        bn.set_weights(saved)


@pytest.mark.parametrize("spec", [{"kind": "dct", "size": 4}, {"kind": "grid", "cells": 4},
                                  {"kind": "window", "size": 6}])
def test_subspace_coefficients_equal_projection_of_gradient(model, images, spec):
    plan = ProbePlan(targets=[{"tap": "stage2/block1", "channel": 7}], images=images, steps=2, subspace=spec)
    result = Ascender(model, plan).run()
    basis = subspace.make_basis(spec, images.shape[1:])
    _, g = _gradient(model, "stage2/block1", 7, images)
    coeffs = subspace.project(basis, g)
    np.testing.assert_allclose(result.gradients[:, 0, 0], coeffs, rtol=1e-4, atol=1e-7)
    share = np.linalg.norm(coeffs, axis=1) / np.linalg.norm(g.reshape(2, -1), axis=1)
    np.testing.assert_allclose(result.captured_share[:, 0, 0], share, rtol=1e-4)
    assert np.all(share < 1)
    # The first step moved exactly along Bᵀ(B g); the second step's coefficients are B g at the new image.
    x1 = images + subspace.expand(basis, coeffs, images.shape[1:])
    _, g1 = _gradient(model, "stage2/block1", 7, x1)
    np.testing.assert_allclose(result.gradients[:, 0, 1], subspace.project(basis, g1), rtol=1e-3, atol=1e-7)


def test_normalized_rule_matches_the_shared_step(model, images):
    plan = ProbePlan(targets=[{"tap": "stage1/block1", "channel": 1}], images=images, steps=1,
                     step_rule="normalized")
    result = Ascender(model, plan).run()
    _, g = _gradient(model, "stage1/block1", 1, images)
    expected, rms = apply_step(images, g, plan)
    np.testing.assert_allclose(result.final_images[:, 0], expected, atol=1e-6)
    np.testing.assert_allclose(result.step_norms[:, 0, 0], rms, rtol=1e-4)
    assert result.meta["options_on"] == ["step_rule=normalized"]


def test_options_change_the_ascent_and_are_named(model, images):
    base = ProbePlan(targets=[{"tap": "stem/conv", "channel": 0}], images=images, steps=3)
    plain = Ascender(model, base).run()
    opts = {"clip": True, "jitter": 2, "l2_decay": 0.01, "blur": 0.8}
    extra = Ascender(model, ProbePlan(targets=base.targets, images=images, steps=3, options=opts)).run()
    assert sorted(extra.meta["options_on"]) == sorted(opts)
    assert extra.final_images.max() <= base.valid_range[1] and extra.final_images.min() >= base.valid_range[0]
    assert not np.allclose(extra.final_images, plain.final_images)


def test_compiled_once_and_rerun_on_new_images(model, images):
    ascender = Ascender(model, ProbePlan(targets=_targets(model), images=images, steps=2), max_batch=4)
    first = ascender.run()  # 6 targets -> chunks of 1 image: two calls, one trace
    again = ascender.run(images[::-1])
    assert ascender.traces == 1
    np.testing.assert_allclose(again.final_images[0], first.final_images[1], atol=1e-6)


def test_plan_validation_against_the_model(model, images):
    with pytest.raises(ValueError, match=r"targets\[0\]\.channel 99"):
        Ascender(model, ProbePlan(targets=[{"tap": "stem/conv", "channel": 99}], images=images))
    with pytest.raises(ValueError, match=r"images must be \(n, 32, 32, 3\)"):
        Ascender(model, ProbePlan(targets=[{"tap": "stem/conv", "channel": 0}], images=images[:, :16]))
    with pytest.raises(ValueError, match="objective.position"):
        Ascender(model, ProbePlan(targets=[{"tap": "stage2/block1", "channel": 0}], images=images,
                                  objective={"kind": "unit", "position": [9, 0]}))
