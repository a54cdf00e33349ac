"""Gradient ascent on pre-activation taps, batched: one compiled graph for a whole plan.

Every (image, target) pair of a plan is one row of one batch. Targets are grouped by tap and each group
leaves the forward pass at its own tap (``MultiExit``), so a first-stage target costs only the stem. The
whole loop is one ``tf.function`` traced once (no XLA: it is slower for this on CPU). In a subspace the
ascent follows the exact projection Bᵀ(B·g) of the autodiff gradient g and records the coefficients B·g.
"""

from __future__ import annotations

import math
import platform
import time

import keras
import numpy as np
import tensorflow as tf

from device import plan as plan_mod
from device import subspace
from device.plan import ProbePlan, ProbeResult

from ..zoo import list_taps, tap_key, tap_layer_name


def model_taps(model: keras.Model) -> dict[str, dict]:
    """Tap name -> spec dict (channels, stage, ...) in depth order, as ``ProbePlan.validate`` wants."""
    return {t.name: t.to_dict() for t in list_taps(model)}


def truncated_model(model: keras.Model, tap: str) -> keras.Model:
    """The model cut at ``tap``: input -> the tap's pre-activation output (shares the weights)."""
    return keras.Model(model.input, model.get_layer(tap_layer_name(tap)).output, name=f"to_{tap_key(tap)}")


def options_on(plan: ProbePlan) -> list[str]:
    """Names of the options beyond the method that ``plan`` turns on (empty for the method as stated)."""
    on = [k for k, v in plan.options.items() if v]
    if plan.step_rule != "raw":
        on.insert(0, f"step_rule={plan.step_rule}")
    if plan.subspace.get("kind", "full") != "full":
        on.append(f"subspace={plan.subspace['kind']}")
    return on


def _gaussian_kernel(sigma: float, channels: int) -> tf.Tensor:
    radius = max(1, int(math.ceil(2 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k1 = np.exp(-0.5 * (t / sigma) ** 2)
    k1 /= k1.sum()
    k2 = np.outer(k1, k1).astype(np.float32)
    return tf.constant(np.repeat(k2[:, :, None, None], channels, axis=2))


class _Group:
    """Targets that share one tap: their channels, objective unit and subspace basis."""

    def __init__(self, model: keras.Model, plan: ProbePlan, tap: str, indices: list[int]):
        self.tap = tap
        self.indices = indices
        self.channels = np.array([plan.targets[j]["channel"] for j in indices], np.int32)
        map_shape = model.get_layer(tap_layer_name(tap)).output.shape[1:]
        self.n_channels = int(map_shape[-1])
        self.unit = plan_mod.objective_position(plan.objective, map_shape[:2])
        if self.unit is not None and not (self.unit[0] < map_shape[0] and self.unit[1] < map_shape[1]):
            raise ValueError(f"objective.position {self.unit} is outside tap {tap!r}'s "
                             f"{map_shape[0]}x{map_shape[1]} map")
        spec = subspace.resolve_spec(plan.subspace, self.unit, map_shape[:2], plan.image_shape)
        basis = subspace.make_basis(spec, plan.image_shape)
        self.basis = None if basis is None else tf.constant(basis)
        self.spec = spec


class MultiExit:
    """One forward pass to several taps in which each group of rows leaves the batch at its own tap.

    Rows are ordered by exit. Walking the layer graph in topological order, once a tap is computed no later
    layer can feed it, so its group's rows are dropped from every tensor used afterwards: a first-stage
    target costs only the stem, and the graph is traced once for all groups (not once per tap).
    """

    def __init__(self, model: keras.Model, taps: list[str]):
        outputs = [model.get_layer(tap_layer_name(t)).output for t in taps]
        self.cut = keras.Model(model.input, outputs)
        by_depth = self.cut._nodes_by_depth  # Keras functional graph: depth -> nodes (deepest = inputs)
        self.nodes = [n for d in sorted(by_depth, reverse=True) for n in by_depth[d]
                      if n.operation is not None and not n.is_input]
        position = {n.operation.name: i for i, n in enumerate(self.nodes)}
        self.taps = sorted(taps, key=lambda t: position[tap_layer_name(t)])  # exit order

    def __call__(self, x: tf.Tensor, sizes: list[tf.Tensor]) -> dict[str, tf.Tensor]:
        """Tap name -> its group's rows of the tap output; ``sizes``: rows per group, in exit order."""
        exits = {tap_layer_name(t): k for k, t in enumerate(self.taps)}
        dropped = [tf.constant(0)]
        for n in sizes:
            dropped.append(dropped[-1] + n)
        done = 0  # groups whose tap is computed
        values = {id(self.cut.inputs[0]): (x, 0)}
        out = {}
        for node in self.nodes:
            if any(id(t) not in values for t in node.input_tensors):
                continue
            local = {}
            for t in node.input_tensors:
                v, k = values[id(t)]
                local[id(t)] = v[dropped[done] - dropped[k]:] if k < done else v
            args, kwargs = node.arguments.fill_in(local)
            if getattr(node.operation, "_call_has_training_arg", False):
                kwargs["training"] = False
            result = node.operation(*args, **kwargs)
            for t, v in zip(node.outputs, tf.nest.flatten(result), strict=True):
                values[id(t)] = (v, done)
            k = exits.get(node.operation.name)
            if k is not None:
                if k != done:
                    raise ValueError(f"tap {self.taps[k]!r} is computed out of depth order")
                out[self.taps[k]] = result[:sizes[k]]
                done += 1
        return out


class Ascender:
    """A compiled ascent for a plan's structure; ``run`` may be called again (new weights, new images)."""

    def __init__(self, model: keras.Model, plan: ProbePlan, max_batch: int = 256):
        plan.validate(model_taps(model), model.input_shape[1:])
        self.model = model
        self.plan = plan
        self.max_batch = int(max_batch)
        by_tap: dict[str, list[int]] = {}
        for j, t in enumerate(plan.targets):
            by_tap.setdefault(t["tap"], []).append(j)
        self.forward = MultiExit(model, list(by_tap))
        self.groups = [_Group(model, plan, tap, by_tap[tap]) for tap in self.forward.taps]
        h, w, c = plan.image_shape
        sig = [tf.TensorSpec((None, h, w, c), tf.float32),
               [tf.TensorSpec((None,), tf.int32) for _ in self.groups]]
        self._blur = _gaussian_kernel(plan.options["blur"], c) if plan.options["blur"] > 0 else None
        self._fn = tf.function(self._ascend, input_signature=sig, jit_compile=False, reduce_retracing=True,
                               autograph=False)
        self.traces = 0

    def _objectives(self, x: tf.Tensor, onehots: list[tf.Tensor], sizes: list[tf.Tensor], step: tf.Tensor):
        """Per-row objective (N,) and its gradient d(objective_row)/d(x_row) (N, H, W, C)."""
        jitter = int(self.plan.options["jitter"])
        with tf.GradientTape() as tape:
            tape.watch(x)
            xin = x
            if jitter:
                shift = tf.random.stateless_uniform((2,), seed=tf.stack([step, 7]), minval=-jitter,
                                                    maxval=jitter + 1, dtype=tf.int32)
                xin = tf.roll(x, shift, axis=[1, 2])
            maps = self.forward(xin, sizes)
            objs = []
            for group, onehot in zip(self.groups, onehots, strict=True):
                h = maps[group.tap]
                picked = tf.reduce_mean(h, axis=(1, 2)) if group.unit is None else h[:, group.unit[0],
                                                                                      group.unit[1], :]
                objs.append(tf.reduce_sum(picked * onehot, axis=-1))
            obj = tf.concat(objs, axis=0)
            # Rows are independent (inference batch norm): d(sum)/dx holds every row's own gradient.
            total = tf.reduce_sum(obj)
        return obj, tape.gradient(total, x)

    def _direction(self, group: _Group, g: tf.Tensor):
        """Ascent direction, subspace coefficients B·g and captured share ||B·g|| / ||g|| of one group."""
        n = tf.shape(g)[0]
        if group.basis is None:
            return g, tf.zeros((n, 0)), tf.ones((n,))
        flat = tf.reshape(g, (n, -1))
        coeffs = tf.matmul(flat, group.basis, transpose_b=True)
        share = tf.norm(coeffs, axis=1) / tf.maximum(tf.norm(flat, axis=1), 1e-30)
        return tf.reshape(tf.matmul(coeffs, group.basis), tf.shape(g)), coeffs, share

    def _step(self, x: tf.Tensor, d: tf.Tensor):
        """The step rule and options; returns the new images and the per-row RMS of the applied step."""
        plan = self.plan
        n = tf.shape(x)[0]
        if plan.step_rule == "raw":
            scale = tf.fill((n, 1, 1, 1), tf.constant(plan.step_size, tf.float32))
        else:
            rms = tf.sqrt(tf.reduce_mean(tf.square(tf.reshape(d, (n, -1))), axis=1))
            scale = tf.reshape(plan.step_size * plan_mod.NORMALIZED_STEP_RMS / tf.maximum(rms, 1e-12),
                               (n, 1, 1, 1))
        new = x + scale * d
        if plan.options["l2_decay"] > 0:
            new = new * (1.0 - plan.options["l2_decay"])
        if self._blur is not None:
            new = tf.nn.depthwise_conv2d(new, self._blur, [1, 1, 1, 1], "SAME")
        if plan_mod.clips(plan):
            new = tf.clip_by_value(new, *plan.valid_range)
        return new, tf.sqrt(tf.reduce_mean(tf.square(tf.reshape(new - x, (n, -1))), axis=1))

    def _ascend(self, x0, channels):
        self.traces += 1  # runs only while tracing
        steps = self.plan.steps
        sizes = [tf.shape(c)[0] for c in channels]
        onehots = [tf.one_hot(c, g.n_channels, dtype=tf.float32) for g, c in zip(self.groups, channels,
                                                                                  strict=True)]
        # One iteration more than steps: the last only measures the final objective (its step is dropped),
        # so the forward graph is traced once.
        arrays = [tf.TensorArray(tf.float32, size=steps + 1) for _ in range(5)]

        def body(i, x, arrays):
            obj, g = self._objectives(x, onehots, sizes, i)
            parts = [self._direction(group, gg) for group, gg in
                     zip(self.groups, tf.split(g, tf.stack(sizes), num=len(self.groups)), strict=True)]
            d, coeffs, share = (tf.concat(p, axis=0) for p in zip(*parts, strict=True))
            new, step_rms = self._step(x, d)
            rng = tf.stack([tf.reduce_min(x, axis=(1, 2, 3)), tf.reduce_max(x, axis=(1, 2, 3))], axis=-1)
            values = (obj, rng, step_rms, coeffs, share)
            arrays = [a.write(i, v) for a, v in zip(arrays, values, strict=True)]
            return i + 1, tf.where(i < steps, new, x), arrays

        _, x, arrays = tf.while_loop(lambda i, *_: i <= steps, body, (tf.constant(0), x0, arrays),
                                     parallel_iterations=1)
        obj, rng, rms, coeffs, share = (a.stack() for a in arrays)
        return {"final": x, "objective": obj, "ranges": rng, "step_norms": rms[:steps],
                "coeffs": coeffs[:steps], "share": share[:steps]}

    def run(self, images: np.ndarray | None = None) -> ProbeResult:
        """Run the plan (on ``images`` instead of the plan's when given) and collect a ProbeResult."""
        plan = self.plan
        images = plan.images if images is None else np.asarray(images, np.float32)
        if images.shape[1:] != plan.image_shape:
            raise ValueError(f"images must be (n, {', '.join(map(str, plan.image_shape))}), "
                             f"got {images.shape}")
        n, t, steps = len(images), len(plan.targets), plan.steps
        k = 0 if self.groups[0].basis is None else int(self.groups[0].basis.shape[0])
        objective = np.zeros((n, t, steps + 1), np.float32)
        ranges = np.zeros((n, t, steps + 1, 2), np.float32)
        norms = np.zeros((n, t, steps), np.float32)
        coeffs = np.zeros((n, t, steps, k), np.float32)
        share = np.zeros((n, t, steps), np.float32)
        final = np.zeros((n, t, *plan.image_shape), np.float32)
        chunk = max(1, self.max_batch // t)
        traces_before, start = self.traces, time.perf_counter()
        for lo in range(0, n, chunk):
            part = images[lo:lo + chunk]
            m = len(part)
            # Rows: groups in exit order, each target-major with the images inner.
            outs = self._fn(np.tile(part, (t, 1, 1, 1)), [np.repeat(g.channels, m) for g in self.groups])
            o = {key: v.numpy() for key, v in outs.items()}
            order = [j for g in self.groups for j in g.indices]
            for row, j in enumerate(order):
                s = slice(row * m, (row + 1) * m)
                objective[lo:lo + m, j] = o["objective"][:, s].T
                ranges[lo:lo + m, j] = o["ranges"][:, s].transpose(1, 0, 2)
                norms[lo:lo + m, j] = o["step_norms"][:, s].T
                share[lo:lo + m, j] = o["share"][:, s].T
                final[lo:lo + m, j] = o["final"][s]
                if k:
                    coeffs[lo:lo + m, j] = o["coeffs"][:, s].transpose(1, 0, 2)
        seconds = time.perf_counter() - start
        meta = {
            "method": "autodiff",
            "plan": plan.to_json(),
            "options_on": options_on(plan),
            "valid_range": list(plan.valid_range),
            "runtime": {"name": "tensorflow", "version": tf.__version__, "keras": keras.__version__,
                        "machine": platform.machine(), "seconds": seconds,
                        "traced": self.traces > traces_before, "batch_chunk_images": chunk},
            "groups": [{"tap": g.tap, "targets": g.indices, "subspace": g.spec} for g in self.groups],
        }
        if k:
            meta["captured_share"] = float(share.mean())
        return ProbeResult(objective=objective, final_images=final, step_norms=norms, meta=meta,
                           gradients=coeffs if k else None, ranges=ranges,
                           captured_share=share if k else None)


def run_plan(model: keras.Model, plan: ProbePlan, progress: bool = True, max_batch: int = 256) -> ProbeResult:
    """Run ``plan`` on ``model`` by autodiff (in a subspace: the exact projection of the gradient)."""
    from tqdm import tqdm

    if plan.disagreement or plan.step_rule == "sign":
        raise ValueError("disagreement plans and the sign step rule compare two TFLite files: run them by "
                         "finite differences (device.ascent.run_plan with a reference runtime)")

    with tqdm(total=len(plan.targets) * len(plan.images), desc="probe ascent", unit="ascent",
              disable=not progress, leave=False) as bar:
        result = Ascender(model, plan, max_batch=max_batch).run()
        bar.update(bar.total)
    return result


def tap_responses(model: keras.Model, images: np.ndarray, taps: list[str], batch_size: int = 64) -> dict:
    """Pre-activation maps of ``taps`` on normalised ``images``: tap name -> (n, h, w, c) float32."""
    cut = keras.Model(model.input, {t: model.get_layer(tap_layer_name(t)).output for t in taps})
    parts: dict[str, list] = {t: [] for t in taps}
    for lo in range(0, len(images), batch_size):
        out = cut(tf.constant(images[lo:lo + batch_size], tf.float32), training=False)
        for t in taps:
            parts[t].append(out[t].numpy())
    return {t: np.concatenate(v) for t, v in parts.items()}
