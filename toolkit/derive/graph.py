"""Channel dependencies of a Keras functional graph: which channels must be pruned together.

The idea of Torch-Pruning's DepGraph, for Keras 3. Every tensor's last axis is a list of channel ids; ops
that make new channels (Conv2D, Dense) give their output fresh ids, per-channel ops (batch norm, PReLU,
depthwise convs, pools, taps, activations) pass the ids through, element-wise merges (Add, dlib's
``add_prev`` of equal sizes) tie their inputs' ids together, and a channel concatenation concatenates them.
The tied ids form *classes* (one prunable channel each); classes that come from the same producers form a
*group* (a conv output, a residual stream). Anything the analysis does not understand, the model's input
and its outputs are fixed: never pruned.

dlib's ``add_prev`` of unequal channel counts (a downsampling block) is not a tie: the student adds the
skip path's kept channels where they land (`IndexedAdd`), so each side is pruned on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np
from keras import layers

from ..zoo.dlib_layers import DlibAddPrev
from ..zoo.taps import TapPoint

PRODUCERS = (layers.Conv2D, layers.Dense)
PER_CHANNEL = (
    layers.BatchNormalization,
    layers.PReLU,
    layers.ReLU,
    layers.LeakyReLU,
    layers.ELU,
    layers.Activation,
    layers.Identity,
    layers.Dropout,
    layers.SpatialDropout2D,
    TapPoint,
    layers.MaxPooling2D,
    layers.AveragePooling2D,
    layers.GlobalAveragePooling2D,
    layers.GlobalMaxPooling2D,
    layers.ZeroPadding2D,
)
MERGES = (layers.Add, layers.Maximum, layers.Minimum, layers.Average, layers.Multiply, layers.Subtract)


@dataclass
class Call:
    """One op applied in the graph: its inputs' and outputs' tensor ids."""

    op: object
    inputs: list[int]
    outputs: list[int]


@dataclass
class Graph:
    """The analysed graph: calls in order, channel ids per tensor, classes and groups."""

    calls: list[Call]
    channels: dict[int, np.ndarray]  # tensor id -> channel ids (last axis)
    tensors: dict[int, object]  # tensor id -> KerasTensor (of the walked copy)
    inputs: list[object]
    parent: np.ndarray  # union-find over channel ids
    fixed: np.ndarray  # bool per channel id
    owner: np.ndarray  # channel id -> producer group id (union-find over groups)
    group_parent: np.ndarray
    group_names: list[str] = field(default_factory=list)

    def cls(self, ids: np.ndarray) -> np.ndarray:
        """The class (root id) of each channel id."""
        return np.array([_find(self.parent, int(i)) for i in np.asarray(ids).ravel()], np.int64)

    def groups(self) -> dict[int, np.ndarray]:
        """Prunable groups: group id -> its classes in channel order of the group's first producer."""
        out: dict[int, list[int]] = {}
        seen: set[int] = set()
        for call in self.calls:
            if not isinstance(call.op, PRODUCERS):
                continue
            for c in self.cls(self.channels[call.outputs[0]]):
                if c in seen or self.fixed[c]:
                    continue
                seen.add(c)
                out.setdefault(_find(self.group_parent, int(self.owner[c])), []).append(int(c))
        return {g: np.array(v, np.int64) for g, v in out.items()}

    def producers(self) -> dict[int, int]:
        """Per prunable group, how many producer layers write its channels (more than one: a stream tied
        through residual adds)."""
        count: dict[int, int] = {}
        for call in self.calls:
            if isinstance(call.op, PRODUCERS):
                c = self.cls(self.channels[call.outputs[0]][:1])[0]
                if not self.fixed[c]:
                    g = _find(self.group_parent, int(self.owner[c]))
                    count[g] = count.get(g, 0) + 1
        return count


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        parent[i], i = root, parent[i]
    return root


class _Builder:
    def __init__(self):
        self.parent: list[int] = []
        self.fixed: list[bool] = []
        self.owner: list[int] = []
        self.group_parent: list[int] = []
        self.group_names: list[str] = []

    def fresh(self, n: int, name: str, fixed: bool = False) -> np.ndarray:
        group = len(self.group_parent)
        self.group_parent.append(group)
        self.group_names.append(name)
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.fixed.extend([fixed] * n)
        self.owner.extend([group] * n)
        return np.arange(start, start + n, dtype=np.int64)

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        parent, gparent = np.asarray(self.parent), np.asarray(self.group_parent)
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = _find(parent, x), _find(parent, y)
            if rx != ry:
                parent[ry] = rx
                self.fixed[rx] = self.fixed[rx] or self.fixed[ry]
            gx, gy = _find(gparent, self.owner[rx]), _find(gparent, self.owner[ry])
            if gx != gy:
                gparent[gy] = gx
        self.parent, self.group_parent = parent.tolist(), gparent.tolist()

    def fix(self, ids: np.ndarray) -> None:
        parent = np.asarray(self.parent)
        for i in ids.tolist():
            self.fixed[_find(parent, i)] = True


def _graph_of(model: keras.Model):
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    if graph is None or not hasattr(graph, "_run_through_graph"):
        raise ValueError(
            f"{model.name} is not a functional Keras model; subclassed models have no graph to prune"
        )
    return graph


def _last(t) -> int:
    return int(t.shape[-1])


def analyse(model: keras.Model) -> Graph:
    """Walk ``model``'s graph (nested models flattened) and tie its channels."""
    b = _Builder()
    calls: list[Call] = []
    channels: dict[int, np.ndarray] = {}
    tensors: dict[int, object] = {}

    def record(t, ids: np.ndarray) -> None:
        channels[id(t)], tensors[id(t)] = ids, t

    def walk(m: keras.Model, inputs):
        return _graph_of(m)._run_through_graph(inputs, call_fn=call)

    def call(op, *args, **kwargs):
        if isinstance(op, keras.Model):
            return walk(op, args[0] if len(args) == 1 else list(args))
        flat_in = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
        out = op(*args, **kwargs)
        flat_out = [t for t in keras.tree.flatten(out) if isinstance(t, keras.KerasTensor)]
        ins = [channels[id(t)] for t in flat_in]
        name = op.name
        if isinstance(op, PRODUCERS) and len(flat_in) == 1 and getattr(op, "groups", 1) == 1:
            ids = b.fresh(_last(flat_out[0]), name)
        elif isinstance(op, layers.DepthwiseConv2D) and op.depth_multiplier == 1:
            ids = ins[0]
        elif isinstance(op, PER_CHANNEL) and len(ins) == 1 and _last(flat_out[0]) == len(ins[0]):
            ids = ins[0]
        elif isinstance(op, layers.Flatten) and len(ins) == 1 and _last(flat_out[0]) == len(ins[0]):
            ids = ins[0]  # a 1x1 map flattened keeps its channels in place
        elif isinstance(op, MERGES + (DlibAddPrev,)) and all(len(i) == len(ins[0]) for i in ins):
            for other in ins[1:]:
                b.union(ins[0], other)
            ids = ins[0]
        elif isinstance(op, DlibAddPrev) and len(ins) == 2:
            ids = ins[0] if len(ins[0]) >= len(ins[1]) else ins[1]
        elif isinstance(op, layers.Concatenate) and op.axis in (-1, len(flat_out[0].shape) - 1):
            ids = np.concatenate(ins)
        else:  # not understood: neither its inputs nor its outputs are pruned
            for i in ins:
                b.fix(i)
            ids = b.fresh(_last(flat_out[0]), name, fixed=True) if flat_out[0].shape else np.zeros(0, int)
        for t in flat_out:
            record(t, ids if t is flat_out[0] else b.fresh(_last(t), name, fixed=True))
        calls.append(Call(op, [id(t) for t in flat_in], [id(t) for t in flat_out]))
        return out

    graph = _graph_of(model)
    inputs = [keras.Input(tuple(t.shape[1:]), dtype=t.dtype, name=t.name) for t in graph.inputs]
    for t in inputs:
        record(t, b.fresh(_last(t), "input", fixed=True))
    outputs = walk(model, inputs[0] if len(inputs) == 1 else inputs)
    for t in keras.tree.flatten(outputs):
        b.fix(channels[id(t)])
    return Graph(
        calls,
        channels,
        tensors,
        inputs,
        np.asarray(b.parent),
        np.asarray(b.fixed),
        np.asarray(b.owner),
        np.asarray(b.group_parent),
        b.group_names,
    )


def consumers(graph: Graph) -> list[Call]:
    """Calls that mix channels with weights (the ones whose outgoing weights price a channel)."""
    return [c for c in graph.calls if isinstance(c.op, PRODUCERS) and len(c.inputs) == 1]


__all__ = ["Call", "Graph", "analyse", "consumers"]
