"""A float/quantized pair of TFLite files converted elsewhere, made checkable: the taps of both found (or
named), matched, and each file written as faceprobe's two roles — the deploy file (a byte-for-byte copy
of the user's file: what ships is what is judged) and a probe copy with the matched taps added as outputs
— each with a manifest that records the original file's sha256 and that its taps were found, not
declared."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.manifest import MANIFEST_SCHEMA, manifest_path_for, sha256_file, validate_manifest
from device.runtime import Runtime

from .. import atomic
from ..export.exporter import file_name
from ..export.graph import describe_io
from ..zoo.stages import assign_stages
from .graph import Candidate, ForeignModelError, TFLiteGraph

VERIFY_IMAGES = 4


class ForeignPairError(ValueError):
    """Two TFLite files that cannot be checked as a float/quantized pair (with the reason)."""


@dataclass(frozen=True)
class Match:
    """One tap of the pair: its candidate in the float and in the quantized file, how it was matched
    ("name": same tensor name and shape; "position": same place among the candidates and same shape;
    "named": given by --tap), and the name and stage the check gives it."""

    float: Candidate
    quantized: Candidate
    by: str
    tap: str
    stage: str

    def to_dict(self) -> dict:
        return {"tap": self.tap, "stage": self.stage, "matched_by": self.by,
                "float_tensor": self.float.name, "quantized_tensor": self.quantized.name,
                "op": self.float.op, "shape": list(self.float.shape), "stride": self.float.stride,
                "receptive_field": self.float.receptive_field,
                "post_activation": self.float.post_activation}


def tap_label(k: int, c: Candidate) -> str:
    """A short, stable tap name: depth index and the first part of the float tensor's name."""
    short = re.sub(r"[^A-Za-z0-9_.-]+", "_", c.name.split(";")[0]).strip("_")[:40] or c.op.lower()
    return f"t{k:02d}/{short}"


def match_taps(floats: list[Candidate], quants: list[Candidate], named: bool = False) -> list[Match]:
    """The pair's taps matched: by tensor name and shape first, then the rest by position and shape.
    Raises ForeignPairError naming the first tap that has no partner."""
    if not floats:
        raise ForeignPairError("the float file has no convolution or add output that feeds an activation: "
                               "nothing to tap. Name tensors with --tap TENSOR_NAME")
    by_name = {(c.name, c.shape): c for c in quants}
    pairs: list[tuple[Candidate, Candidate, str]] = []
    left_f = []
    for c in floats:
        q = by_name.pop((c.name, c.shape), None)
        if q is not None:
            pairs.append((c, q, "named" if named else "name"))
        else:
            left_f.append(c)
    left_q = [q for q in quants if (q.name, q.shape) in by_name]
    if len(left_f) != len(left_q):
        lone = (left_f or left_q)[0]
        side = "float" if left_f and len(left_f) > len(left_q) else "quantized"
        raise ForeignPairError(
            f"the taps do not match: the float file has {len(floats)} candidate taps, the quantized "
            f"{len(quants)}; {len(left_f)} float and {len(left_q)} quantized ones share no tensor name, "
            f"e.g. {side} tensor {lone.name!r} {list(lone.shape)}. Are they two files of one model? "
            "Else name taps in both with --tap")
    for c, q in zip(sorted(left_f, key=lambda c: c.position), sorted(left_q, key=lambda c: c.position),
                    strict=True):
        if c.shape != q.shape or c.stride != q.stride:
            raise ForeignPairError(
                f"the taps do not match by position: float tensor {c.name!r} {list(c.shape)} stands where "
                f"the quantized file has {q.name!r} {list(q.shape)}. Are they two files of one model?")
        if c.post_activation != q.post_activation:
            # One side's activation fused into the conv, the other's not: not the same quantity.
            raise ForeignPairError(
                f"the taps do not match by position: float tensor {c.name!r} is "
                f"{'post' if c.post_activation else 'pre'}-activation, the quantized file's {q.name!r} "
                f"{'post' if q.post_activation else 'pre'}-activation. Name the taps with --tap")
        pairs.append((c, q, "position"))
    pairs.sort(key=lambda p: p[0].position)
    stages = assign_stages([f.stride for f, _, _ in pairs])
    return [Match(f, q, by, tap_label(k, f), stage)
            for k, ((f, q, by), stage) in enumerate(zip(pairs, stages, strict=True))]


def tap_key(k: int) -> str:
    return f"tap_{k:02d}"


def file_manifest(graph: TFLiteGraph, content: bytes, role: str, path: Path, matches: list[Match],
                  side: str, normalization: dict, variant: str, found: str) -> dict:
    """The manifest of one written file (``side``: which candidate of each match is this file's)."""
    io = describe_io(content)
    embedding_key = graph.embedding_key
    taps = {tap_key(k): m for k, m in enumerate(matches)} if role == "probe" else {}
    outputs = []
    for key, entry in io["outputs"].items():
        m = taps.get(key)
        head = {"key": key, "kind": "tap" if m else "embedding"}
        if key != embedding_key and not m:
            raise ForeignModelError(f"{graph.path}: unexpected output {key!r} in the written file")
        if m:
            c = getattr(m, side)
            head.update(tap=m.tap, stage=m.stage, channels=int(c.shape[2]), stride=c.stride,
                        receptive_field=c.receptive_field, tensor=c.name, post_activation=c.post_activation)
        outputs.append({**head, **entry})
    order = [embedding_key, *taps]
    outputs.sort(key=lambda o: order.index(o["key"]))
    return validate_manifest({
        "schema": MANIFEST_SCHEMA, "model": graph.path.stem, "architecture": "tflite", "variant": variant,
        "role": role, "file": path.name, "sha256": sha256_file(path), "bytes": len(content),
        "source": {"file": str(graph.path), "sha256": sha256_file(graph.path), "converted": "elsewhere"},
        "signature": io["signature"], "input": {**io["input"], "normalization": normalization},
        "outputs": outputs, "taps": found, "keep_float": [], "recipe": None,
        "converter": {"path": "converted elsewhere; probe copy: taps added as outputs by faceprobe"},
    }, f"manifest of {path.name}")


def write_roles(graph: TFLiteGraph, matches: list[Match], side: str, variant: str, out: Path,
                normalization: dict, found: str) -> dict[str, Path]:
    """The deploy copy and the probe copy of one file of the pair, with manifests, in ``out``; the probe
    copy's embedding is checked to equal the deploy file's on a few images."""
    out.mkdir(parents=True, exist_ok=True)
    deploy = out / file_name(variant, "deploy")
    shutil.copyfile(graph.path, deploy)
    files = {"deploy": deploy, "probe": out / file_name(variant, "probe")}
    probe_bytes = graph.with_outputs([(tap_key(k), getattr(m, side).tensor) for k, m in enumerate(matches)])
    atomic.write_bytes(files["probe"], probe_bytes)
    for role, path in files.items():
        content = path.read_bytes()
        atomic.write_json(manifest_path_for(path),
                          file_manifest(graph, content, role, path, matches, side, normalization, variant,
                                        found))
    check_probe_copy(files)
    return files


def check_probe_copy(files: dict[str, Path]) -> float:
    """The largest difference between the probe copy's and the deploy file's embedding on noise images
    over the input range; raises ForeignModelError unless they agree (the taps changed nothing)."""
    deploy, probe = Runtime(files["deploy"]), Runtime(files["probe"])
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (VERIFY_IMAGES, *deploy.input_shape)).astype(np.float32)
    a = deploy.run(images)[deploy.embedding_key]
    b = probe.run(images)[probe.embedding_key]
    diff = float(np.max(np.abs(a - b)))
    if diff > 1e-5 * max(1.0, float(np.max(np.abs(a)))):
        raise ForeignModelError(f"the probe copy of {files['deploy'].name} changes its embedding (max "
                                f"difference {diff:.3g}): its taps cannot be read without changing the "
                                "model; name other tensors with --tap")
    return diff


@dataclass(frozen=True)
class ForeignPair:
    """A pair made checkable: its variant, files ({"float32": roles, variant: roles}), the match table."""

    variant: str
    files: dict[str, dict[str, Path]]
    matches: list[Match]
    sources: dict[str, dict]
    found: str

    def to_json(self) -> dict:
        return {"variant": self.variant, "taps": self.found, "sources": self.sources,
                "taps_found": {"float": self.sources["float"]["candidates"],
                               "quantized": self.sources["quantized"]["candidates"]},
                "taps_matched": len(self.matches), "matches": [m.to_dict() for m in self.matches]}


def prepare_pair(float_path: str | Path, quantized_path: str | Path, out: Path, normalization: dict,
                 taps: list[str] | None = None) -> ForeignPair:
    """Find (or take ``taps``: tensor names), match and write the pair's files into ``out``. Raises
    ForeignModelError for a file that cannot be checked, ForeignPairError for a pair that does not match."""
    graphs = {"float": TFLiteGraph.read(float_path), "quantized": TFLiteGraph.read(quantized_path)}
    for g in graphs.values():
        g.signature()
    shapes = {s: g.input_shape() for s, g in graphs.items()}
    if shapes["float"][1:] != shapes["quantized"][1:]:
        raise ForeignPairError(f"the float file takes {list(shapes['float'])} images, the quantized "
                               f"{list(shapes['quantized'])}: not two files of one model")
    variants = {s: g.variant() for s, g in graphs.items()}
    if variants["float"] != "float32":
        raise ForeignPairError(f"--float {float_path} is a {variants['float']} file; the reference must be "
                               "the float32 file")
    if variants["quantized"] == "float32":
        raise ForeignPairError(f"--quantized {quantized_path} is float32 too: nothing was quantized")
    cands = {s: (g.named(taps) if taps else g.candidates()) for s, g in graphs.items()}
    if not cands["quantized"] and cands["float"]:
        raise ForeignPairError(f"the quantized file {quantized_path} has no convolution or add output that "
                               "feeds an activation, the float file has "
                               f"{len(cands['float'])}: not two files of one model")
    matches = match_taps(cands["float"], cands["quantized"], named=bool(taps))
    found = "named" if taps else "found"
    files = {"float32": write_roles(graphs["float"], matches, "float", "float32", out, normalization, found),
             variants["quantized"]: write_roles(graphs["quantized"], matches, "quantized",
                                                variants["quantized"], out, normalization, found)}
    sources = {s: {"file": str(g.path), "sha256": sha256_file(g.path), "variant": variants[s],
                   "candidates": len(cands[s])} for s, g in graphs.items()}
    return ForeignPair(variants["quantized"], files, matches, sources, found)


def prepare_single(path: str | Path, out: Path, normalization: dict, taps: list[str] | None = None
                   ) -> tuple[dict[str, Path], list[Match]]:
    """One float file made probe-able (the probe without a quantized sibling): its deploy copy and probe
    copy in ``out``, and its taps (each "matched" with itself)."""
    graph = TFLiteGraph.read(path)
    graph.signature()
    variant = graph.variant()
    if variant != "float32":
        raise ForeignModelError(f"{path} is a {variant} file; probe the float32 file (the quantized one is "
                                "compared with it by `faceprobe check --float F --quantized Q`)")
    cands = graph.named(taps) if taps else graph.candidates()
    matches = match_taps(cands, cands, named=bool(taps))
    return write_roles(graph, matches, "float", "float32", out, normalization,
                       "named" if taps else "found"), matches
