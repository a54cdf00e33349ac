"""Structured channel pruning in dependency groups: importance, a budget met exactly, the student built with
the kept weights copied."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from ..zoo.dlib_layers import DlibAddPrev
from ..zoo.indexed_add import IndexedAdd
from ..zoo.taps import TapPoint
from .graph import Call, Graph, analyse, consumers

MIN_KEEP_FRACTION = 0.125  # a group never shrinks below an eighth of its channels (nor below 4)


@dataclass(frozen=True)
class Pruning:
    """Which classes (tied channels) are kept, and the student's size."""

    kept: frozenset[int]
    params: int
    macs: int

    def group_sizes(self, graph: Graph) -> list[dict]:
        """Per prunable group, in depth order: its name, channels before and after."""
        return [
            {
                "group": graph.group_names[g],
                "channels": int(len(c)),
                "kept": int(sum(int(x) in self.kept for x in c)),
            }
            for g, c in graph.groups().items()
        ]


def positions(graph: Graph, tensor: int, kept: frozenset[int]) -> np.ndarray:
    """Indices along the tensor's last axis that the student keeps."""
    classes = graph.cls(graph.channels[tensor])
    return np.array([i for i, c in enumerate(classes) if graph.fixed[c] or int(c) in kept], np.int64)


def channel_importance(model: keras.Model, graph: Graph, images: np.ndarray, batch_size: int = 32) -> dict:
    """Per class: activation energy (mean square over faces and positions, after the activation the next
    layer reads) times outgoing weight energy, summed over every layer that reads the channel."""
    calls = [c for c in consumers(graph) if not graph.fixed[graph.cls(graph.channels[c.inputs[0]])].all()]
    wanted = list(dict.fromkeys(c.inputs[0] for c in calls))
    probe = keras.Model(
        graph.inputs[0] if len(graph.inputs) == 1 else graph.inputs, [graph.tensors[t] for t in wanted]
    )
    energy = {t: 0.0 for t in wanted}
    for start in range(0, len(images), batch_size):
        outs = probe(images[start : start + batch_size], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for t, out in zip(wanted, outs, strict=True):
            a = np.asarray(out, np.float64)
            energy[t] = energy[t] + np.sum(a.reshape(-1, a.shape[-1]) ** 2, axis=0)
    scores: dict[int, float] = {}
    for call in calls:
        kernel = np.asarray(call.op.get_weights()[0], np.float64)
        outgoing = np.sum(kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1]) ** 2, axis=(0, 2))
        act = energy[call.inputs[0]] / len(images)
        for c, value in zip(graph.cls(graph.channels[call.inputs[0]]), act * outgoing, strict=True):
            scores[int(c)] = scores.get(int(c), 0.0) + float(value)
    return scores


def _new_weights(
    op, weights: list[np.ndarray], ins: list[np.ndarray], out: np.ndarray, full_in: list[int]
) -> list[np.ndarray]:
    """The op's weights with the pruned channels removed."""
    if isinstance(op, (layers.Conv2D, layers.Dense)) and not isinstance(op, layers.DepthwiseConv2D):
        kernel = np.take(np.take(weights[0], ins[0], axis=-2), out, axis=-1)
        return [kernel] + [w[out] for w in weights[1:]]
    if isinstance(op, layers.DepthwiseConv2D):
        return [np.take(weights[0], ins[0], axis=-2)] + [w[ins[0]] for w in weights[1:]]
    if not weights:
        return []
    # Per-channel layers (batch norm, PReLU): slice the axis that has the input's channel count.
    return [np.take(w, ins[0], axis=-1) if w.shape and w.shape[-1] == full_in[0] else w for w in weights]


def _index_rows(graph: Graph, call: Call, kept: frozenset[int]) -> list[list[int]]:
    """For an unequal add: per input, its kept channel landing on each kept output channel (-1: none)."""
    out_pos = positions(graph, call.outputs[0], kept)
    rows = []
    for t in call.inputs:
        pos = positions(graph, t, kept)
        where = {int(p): i for i, p in enumerate(pos)}
        rows.append([where.get(int(o), -1) for o in out_pos])
    return rows


def _replacement(
    op, graph: Graph, call: Call, kept: frozenset[int], ins: list[np.ndarray], out: np.ndarray, pruned: bool
):
    """A fresh layer for the student standing where ``op`` stood in the teacher."""
    config = op.get_config()
    if isinstance(op, layers.Dense):
        config["units"] = len(out)
    elif isinstance(op, layers.Conv2D) and not isinstance(op, layers.DepthwiseConv2D):
        config["filters"] = len(out)
    elif isinstance(op, TapPoint):
        config["tap"] = {**config["tap"], "channels": len(out)}
    elif (
        isinstance(op, DlibAddPrev)
        and pruned
        and len(graph.channels[call.inputs[0]]) != len(graph.channels[call.inputs[1]])
    ):
        return IndexedAdd(_index_rows(graph, call, kept), name=op.name)
    return type(op).from_config(config)


def build_student(
    model: keras.Model,
    graph: Graph,
    kept: frozenset[int],
    name: str | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> keras.Model:
    """The teacher with only the ``kept`` classes (fixed ones always), weights copied; ``input_shape``
    gives the student another input size (convolutions do not care; a layer that does says so)."""
    pruned = any(not graph.fixed[c] and int(c) not in kept for c in graph.cls(np.arange(len(graph.parent))))
    calls = iter(graph.calls)
    pending: list[tuple[object, list[np.ndarray]]] = []

    def walk(m, inputs):
        g = getattr(m, "_functional", None) if isinstance(m, keras.Sequential) else m
        return g._run_through_graph(inputs, call_fn=call)

    def call(op, *args, **kwargs):
        if isinstance(op, keras.Model):
            return walk(op, args[0] if len(args) == 1 else list(args))
        c = next(calls)
        ins = [positions(graph, t, kept) for t in c.inputs]
        out = positions(graph, c.outputs[0], kept)
        new = _replacement(op, graph, c, kept, ins, out, pruned)
        result = new(*args, **kwargs)
        full_in = [len(graph.channels[t]) for t in c.inputs]
        pending.append((new, _new_weights(op, [np.asarray(w) for w in op.get_weights()], ins, out, full_in)))
        return result

    inputs = [
        keras.Input(
            tuple(input_shape or t.shape[1:]) if i == 0 else tuple(t.shape[1:]), dtype=t.dtype, name=t.name
        )
        for i, t in enumerate(graph.inputs)
    ]
    outputs = walk(model, inputs[0] if len(inputs) == 1 else inputs)
    student = keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs, name=name or model.name)
    for layer, weights in pending:
        if weights:
            layer.set_weights(weights)
    return student


def size_of(graph: Graph, kept: frozenset[int]) -> tuple[int, int]:
    """(parameters, multiply-accumulates per image) of the student that keeps ``kept``."""
    params = macs = 0
    for c in graph.calls:
        weights = c.op.get_weights()
        if not weights:
            continue
        ins = [positions(graph, t, kept) for t in c.inputs]
        out = positions(graph, c.outputs[0], kept)
        shapes = [
            w.shape
            for w in _new_weights(
                c.op,
                [np.empty(w.shape, np.float32) for w in weights],
                ins,
                out,
                [len(graph.channels[t]) for t in c.inputs],
            )
        ]
        params += sum(int(np.prod(s)) for s in shapes)
        if isinstance(c.op, (layers.Conv2D, layers.Dense)):
            shape = graph.tensors[c.outputs[0]].shape
            spatial = int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
            macs += (
                spatial
                * int(np.prod(shapes[0][:-1]))
                * (1 if isinstance(c.op, layers.DepthwiseConv2D) else int(shapes[0][-1]))
            )
    return params, macs


def model_size(model: keras.Model) -> tuple[int, int]:
    """(parameters, multiply-accumulates per image) of a whole model."""
    graph = analyse(model)
    return size_of(graph, frozenset(int(c) for cs in graph.groups().values() for c in cs))


def _min_keep(n: int) -> int:
    return min(n, max(4, int(np.ceil(n * MIN_KEEP_FRACTION))))


def channel_cost(graph: Graph, params: int | None = None, macs: int | None = None) -> dict[int, float]:
    """Per class, what it costs to first order: its share of every kernel, bias and per-channel vector it
    indexes, and of those layers' multiply-accumulates; as fractions of the budgets when given (so a
    channel is priced by the resources it uses up), else in weights."""
    weights_of: dict[int, float] = {}
    macs_of: dict[int, float] = {}
    for c in graph.calls:
        weights = c.op.get_weights()
        if not weights or not c.inputs:
            continue
        sides = [graph.channels[c.inputs[0]]]
        if isinstance(c.op, (layers.Conv2D, layers.Dense)) and not isinstance(c.op, layers.DepthwiseConv2D):
            sides.append(graph.channels[c.outputs[0]])
        total = sum(int(w.size) for w in weights)
        shape = graph.tensors[c.outputs[0]].shape
        work = int(weights[0].size) * (int(np.prod(shape[1:-1])) if len(shape) > 2 else 1)
        for ids in sides:
            for cls in graph.cls(ids):
                weights_of[int(cls)] = weights_of.get(int(cls), 0.0) + total / len(ids)
                macs_of[int(cls)] = macs_of.get(int(cls), 0.0) + work / len(ids)
    if params is None and macs is None:
        return weights_of
    return {
        c: (weights_of[c] / params if params else 0.0) + (macs_of[c] / macs if macs else 0.0)
        for c in weights_of
    }


def _by_score(classes: np.ndarray, scores: dict[int, float]) -> np.ndarray:
    """``classes`` from most to least important."""
    s = np.array([scores.get(int(c), 0.0) for c in classes])
    return classes[np.argsort(-s, kind="stable")]


def removal_order(
    graph: Graph,
    scores: dict[int, float],
    cost_power: float = 0.0,
    stream_cap: int | None = None,
    cost: dict[int, float] | None = None,
) -> tuple[list[int], list[int]]:
    """(classes removed first, whatever the budget; then the rest from least to most important).

    A stream tied through residual adds keeps at most ``stream_cap`` channels (its least important go
    first); the other groups are ranked together by importance relative to their group's mean (so groups
    of different scales compare), divided by the weights a channel carries to the power ``cost_power``,
    never taking a group below its floor."""
    groups = graph.groups()
    cost = cost if cost is not None else channel_cost(graph)
    streams = {g for g, n in graph.producers().items() if n > 1} if stream_cap else set()
    first = [int(c) for g in streams for c in _by_score(groups[g], scores)[stream_cap:]]
    ranked = []
    for g, classes in groups.items():
        if g in streams:
            continue
        s = np.array([scores.get(int(c), 0.0) for c in classes])
        rel = (
            s / max(float(s.mean()), 1e-30) / np.array([cost.get(int(c), 1.0) for c in classes]) ** cost_power
        )
        ranked += [(float(r), g, int(c)) for r, c in zip(rel, classes, strict=True)]
    ranked.sort()
    left = {g: len(c) for g, c in groups.items()}
    order = []
    for _, g, c in ranked:
        if left[g] > _min_keep(len(groups[g])):
            order.append(c)
            left[g] -= 1
    return first, order


def prune_to_budget(
    graph: Graph,
    scores: dict[int, float],
    params: int | None = None,
    macs: int | None = None,
    cost_power: float = 0.0,
    stream_cap: int | None = None,
) -> Pruning:
    """The fewest removals (least important first, see `removal_order`) that bring parameters and MACs
    within budget."""
    first, order = removal_order(graph, scores, cost_power, stream_cap, channel_cost(graph, params, macs))
    everything = frozenset(int(c) for cs in graph.groups().values() for c in cs) - frozenset(first)

    def fits(k: int) -> tuple[bool, int, int]:
        p, m = size_of(graph, everything - frozenset(order[:k]))
        return (params is None or p <= params) and (macs is None or m <= macs), p, m

    ok, p, m = fits(len(order))
    if not ok:
        raise ValueError(
            f"the budget cannot be met: pruning every group to its floor leaves {p:,} "
            f"parameters and {m:,} MACs"
        )
    lo, hi = 0, len(order)
    while lo < hi:  # smallest k that fits: size falls monotonically with k
        mid = (lo + hi) // 2
        if fits(mid)[0]:
            hi = mid
        else:
            lo = mid + 1
    kept = everything - frozenset(order[:lo])
    p, m = size_of(graph, kept)
    return Pruning(kept, p, m)


def prune_by_fractions(graph: Graph, scores: dict[int, float], fractions: list[float]) -> Pruning:
    """Keep the most important ``fraction`` of each group (one fraction for all, or one per group in depth
    order)."""
    groups = list(graph.groups().values())
    if len(fractions) not in (1, len(groups)):
        raise ValueError(
            f"keep fractions: give one for every group or one per group ({len(groups)} here), "
            f"got {len(fractions)}"
        )
    kept: set[int] = set()
    for i, classes in enumerate(groups):
        f = fractions[0] if len(fractions) == 1 else fractions[i]
        if not 0.0 < f <= 1.0:
            raise ValueError(f"keep fractions must be in (0, 1], got {f}")
        kept.update(int(c) for c in _by_score(classes, scores)[: max(1, int(round(len(classes) * f)))])
    p, m = size_of(graph, frozenset(kept))
    return Pruning(frozenset(kept), p, m)


def kept_channels(graph: Graph, pruning: Pruning) -> dict[str, list[int]]:
    """Per producer layer of the teacher: the indices of its output channels the student keeps."""
    out = {}
    for c in graph.calls:
        if isinstance(c.op, (layers.Conv2D, layers.Dense)) and not isinstance(c.op, layers.DepthwiseConv2D):
            out[c.op.name] = positions(graph, c.outputs[0], pruning.kept).tolist()
    return out


def kept_from_channels(graph: Graph, channels: dict[str, list[int]]) -> frozenset[int]:
    """The kept classes that `kept_channels` recorded (a student's metadata), for rebuilding it."""
    kept: set[int] = set()
    for c in graph.calls:
        if c.op.name in channels:
            classes = graph.cls(graph.channels[c.outputs[0]])
            kept.update(int(classes[i]) for i in channels[c.op.name] if not graph.fixed[classes[i]])
    return frozenset(kept)
