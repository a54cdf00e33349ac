"""A face-embedding model from outside the zoo, made a faceprobe model: nested models flattened into one
graph, pre-activation taps found (or named), stages assigned, and the input normalisation made faceprobe's.

A tap is the output of a layer that feeds an activation layer directly:

- tappable producers: ``BatchNormalization`` and convolutions (``Conv2D``, ``DepthwiseConv2D``,
  ``SeparableConv2D``, ``Conv2DTranspose``) without a fused activation;
- activations: ``ReLU`` (ReLU6 included), ``PReLU``, ``LeakyReLU``, ``ELU`` and ``Activation`` layers of
  relu, relu6, leaky_relu, elu, gelu, swish/silu, hard_swish/hard_silu, sigmoid and hard_sigmoid (the
  gate of a hand-built swish or hard-swish).

Cannot be tapped, and why: a conv or dense layer with a fused ``activation=`` argument (its pre-activation
tensor exists only inside the layer's call, never as a graph tensor); activations applied in a Lambda or a
custom layer (opaque to the graph walk); dense layers and 1x1 maps (a probe maximises a channel's spatial
map, so a tap must be a 4-D map larger than 1x1); a SavedModel folder (Keras 3 loads it only as one
opaque ``TFSMLayer``, whose inner tensors are not reachable: save the model as ``.keras`` instead).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

from ..data.normalize import DEFAULT_NORMALIZATION
from .stages import assign_stages
from .taps import TapPoint, TapSpec

PRODUCERS = (layers.BatchNormalization, layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D,
             layers.Conv2DTranspose)
ACTIVATION_LAYERS = (layers.ReLU, layers.PReLU, layers.LeakyReLU, layers.ELU)
ACTIVATION_NAMES = {"relu", "relu6", "leaky_relu", "elu", "gelu", "swish", "silu", "hard_swish",
                    "hard_silu", "sigmoid", "hard_sigmoid"}


def load_foreign_model(path: str | Path) -> keras.Model:
    """A .keras or .h5 model; a SavedModel folder is refused with the reason (see the module doc)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}: pass a .keras or .h5 file, or a SavedModel folder")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ValueError(f"{path} is a folder without saved_model.pb, not a SavedModel")
        raise ValueError(f"{path} is a SavedModel: Keras 3 loads one only as a single opaque layer "
                         "(keras.layers.TFSMLayer), whose inner tensors cannot be tapped; save the model as "
                         ".keras (model.save('model.keras')) and import that")
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise ValueError(f"{path} is not a Keras model file: pass .keras or .h5 (or a SavedModel folder)")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many kinds for unreadable or custom-object models
        raise ValueError(f"{path} could not be loaded as a Keras model ({type(exc).__name__}: {exc}); "
                         "custom layers must be importable and registered") from exc


def _graph(model: keras.Model):
    """The functional graph of a model (a built Sequential's inner Functional)."""
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    if graph is None or not hasattr(graph, "_run_through_graph"):
        raise ValueError(f"{model.name} is not a functional or built Sequential model; subclassed models "
                         "have no graph to find taps in")
    return graph


def _is_activation(op) -> bool:
    if isinstance(op, ACTIVATION_LAYERS):
        return True
    if isinstance(op, layers.Activation):
        fn = op.activation
        return getattr(fn, "__name__", str(fn)) in ACTIVATION_NAMES
    return False


def _fused_activation(op) -> bool:
    fn = getattr(op, "activation", None)
    return fn is not None and getattr(fn, "__name__", "linear") != "linear"


def _geometry(op, inputs: list[tuple[int, int]], size: int) -> tuple[int, int]:
    """(total stride, receptive field) after ``op`` given its inputs'."""
    stride, rf = max(inputs) if inputs else (1, 1)
    kernel = getattr(op, "kernel_size", None) or getattr(op, "pool_size", None)
    strides = getattr(op, "strides", None)
    if isinstance(op, (layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D, layers.Flatten,
                       layers.Dense)):
        return stride, size
    if kernel is not None and strides is not None:
        dilation = getattr(op, "dilation_rate", (1, 1)) or (1, 1)
        rf += (int(kernel[0]) - 1) * int(dilation[0]) * stride
        stride *= int(strides[0])
    return stride, min(rf, size)


class _Walk:
    """Re-runs a model's graph, nested models flattened, tracking geometry and where activations read from;
    optionally wraps chosen layers' outputs in TapPoints."""

    def __init__(self, size: int, taps: dict[str, TapSpec] | None = None):
        self.size, self.taps = size, taps or {}
        self.geometry: dict[int, tuple[int, int]] = {}
        self.producer: dict[int, object] = {}
        self.outputs: dict[str, object] = {}  # layer name -> its (first) output
        self.fed: list[str] = []  # producer layers that feed an activation, in depth order
        self.order: list[str] = []
        self.tapped: set[str] = set()

    def run(self, model: keras.Model, inputs):
        return _graph(model)._run_through_graph(inputs, call_fn=self.call)

    def call(self, op, *args, **kwargs):
        if isinstance(op, keras.Model):
            return self.run(op, args[0] if len(args) == 1 else list(args))
        flat_in = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
        out = op(*args, **kwargs)
        geometry = _geometry(op, [self.geometry.get(id(t), (1, 1)) for t in flat_in], self.size)
        if _is_activation(op) and flat_in:
            source = self.producer.get(id(flat_in[0]))
            if (isinstance(source, PRODUCERS) and not _fused_activation(source)
                    and source.name not in self.fed):
                self.fed.append(source.name)
        name = op.name
        if name not in self.outputs:
            self.outputs[name] = out
            self.order.append(name)
        if name in self.taps and name not in self.tapped and isinstance(out, keras.KerasTensor):
            self.tapped.add(name)
            out = TapPoint(self.taps[name].to_dict())(out)
        for t in keras.tree.flatten(out):
            self.geometry[id(t)] = geometry
            self.producer[id(t)] = op
        return out


def _input_adapter(x, mean, scale):
    """Map faceprobe's input ((pixel - 127.5) / 128) onto the model's own ((pixel - mean) / scale)."""
    n = DEFAULT_NORMALIZATION
    mean, scale = np.broadcast_to(np.asarray(mean, np.float64), (3,)), np.broadcast_to(
        np.asarray(scale, np.float64), (3,))
    a, c = n["scale"] / scale, (n["mean"] - mean) / scale
    if np.allclose(a, 1.0) and np.allclose(c, 0.0):
        return x
    return layers.Rescaling(scale=[float(v) for v in a], offset=[float(v) for v in c],
                            name="faceprobe_input_adapter")(x)


def _tappable(walk: _Walk, name: str) -> bool:
    out = walk.outputs.get(name)
    return (isinstance(out, keras.KerasTensor) and len(out.shape) == 4
            and (out.shape[1] or 0) * (out.shape[2] or 0) > 1)


def import_keras_model(source: str | Path | keras.Model, taps: list[str] | None = None,
                       mean: list[float] | None = None,
                       scale: list[float] | None = None) -> tuple[keras.Model, dict]:
    """A faceprobe model from a Keras face-embedding model, and what to record of its origin.

    ``taps``: layer names whose outputs become taps (default: found, see the module doc). ``mean`` /
    ``scale``: the model's own input normalisation (pixel - mean) / scale, one value or one per channel
    (default 127.5 / 128, faceprobe's); a fixed input layer maps faceprobe's normalisation onto it.
    """
    model = source if isinstance(source, keras.Model) else load_foreign_model(source)
    shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if shape is None or len(shape) != 3 or shape[2] != 3 or shape[0] is None or shape[0] != shape[1]:
        raise ValueError(f"{model.name} takes input {model.input_shape}; faceprobe needs one square RGB "
                         "image input of fixed size (None, S, S, 3): re-save it with that input shape")
    if not isinstance(model.output_shape, tuple) or len(model.output_shape) != 2:
        raise ValueError(f"{model.name} outputs {model.output_shape}; faceprobe needs one embedding output "
                         "(None, D)")
    size = int(shape[0])
    for name, values in (("--mean", mean), ("--scale", scale)):
        if values is not None and len(values) not in (1, 3):
            raise ValueError(f"{name} takes one value or one per channel (3), got {len(values)}")
    mean = mean if mean is not None else [DEFAULT_NORMALIZATION["mean"]]
    scale = scale if scale is not None else [DEFAULT_NORMALIZATION["scale"]]
    if any(s == 0 for s in scale):
        raise ValueError("--scale must not be 0")

    def build(specs: dict[str, TapSpec] | None):
        walk = _Walk(size, specs)
        image = keras.Input(shape, name="image")
        out = walk.run(model, _input_adapter(image, mean, scale))
        return walk, keras.Model(image, out, name=model.name)

    draft, _ = build(None)
    chosen = list(dict.fromkeys(taps)) if taps else [n for n in draft.order if n in draft.fed]
    for name in chosen:
        if name not in draft.outputs:
            raise KeyError(f"--tap {name}: no such layer; layers with 4-D outputs: "
                           f"{', '.join(n for n in draft.order if _tappable(draft, n))}")
        if not _tappable(draft, name):
            raise ValueError(f"--tap {name}: its output {draft.outputs[name].shape} is not a spatial map "
                             "larger than 1x1, which a probe needs")
    chosen = [n for n in chosen if _tappable(draft, n)]
    if not chosen:
        raise ValueError(f"no pre-activation taps found in {model.name} (no batch-norm or conv output feeds "
                         "an activation layer); name layers with --tap LAYER")
    geometry = {n: draft.geometry[id(draft.outputs[n])] for n in chosen}
    stages = assign_stages([geometry[n][0] for n in chosen])
    specs = {n: TapSpec(n, stage, int(draft.outputs[n].shape[-1]), *geometry[n])
             for n, stage in zip(chosen, stages, strict=True)}
    _, imported = build(specs)
    origin = {"source": "keras", "model": str(source) if not isinstance(source, keras.Model) else model.name,
              "input_normalization": {"mean": list(mean), "scale": list(scale)},
              "taps": "named" if taps else "found"}
    return imported, origin
