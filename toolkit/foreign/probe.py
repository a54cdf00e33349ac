"""`faceprobe probe FILE.tflite`: the probe of a float TFLite file converted elsewhere, by finite
differences in a subspace of the image (a TFLite file has no autodiff)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..check.boards import LocalBoard
from ..check.levels import feature_plan
from ..data import normalize
from ..data.normalize import DEFAULT_NORMALIZATION
from ..probe.images import load_start_images
from ..probe.outputs import write_outputs
from ..probe.reference import TFLiteReference
from ..probe.run import ProbeOptions
from .graph import TFLiteGraph
from .pair import prepare_single

# A board's finite differences reach only a subspace: the TFLite probe's default one (4x4 DCT frequencies
# per channel, 48 directions).
TFLITE_SUBSPACE = {"kind": "dct", "size": 4}


def run_tflite_probe(tflite: str | os.PathLike, out_dir: str | os.PathLike,
                     options: ProbeOptions | None = None, normalization: dict | None = None,
                     progress: bool = True, **settings: Any) -> dict:
    """Probe a float TFLite file converted elsewhere: taps found in it (``options.taps``: tensor names
    instead), channels chosen on the start images, and the ascent by finite differences in a subspace of
    the image (no autodiff in a TFLite file; ``options.subspace`` full is replaced by TFLITE_SUBSPACE).
    Writes what `run_probe` writes, labelled as finite differences, without the findings' untrained
    controls (they need a source model to re-initialise)."""
    opts = replace(options or ProbeOptions(), **settings)
    norm = normalization or dict(DEFAULT_NORMALIZATION)
    out = Path(out_dir)
    # The start images first: a command refused for them has written nothing.
    size = TFLiteGraph.read(tflite).input_shape()[1]
    images, origin = load_start_images(list(opts.images), size, opts.n_images, opts.person, progress,
                                       align=opts.align)
    files, _ = prepare_single(tflite, out / "tflite", norm, None)
    board = LocalBoard(files["deploy"], files["probe"])
    ref = TFLiteReference(board)
    ref.name = Path(tflite).stem
    subspace = TFLITE_SUBSPACE if opts.subspace["kind"] == "full" else opts.subspace
    plan = feature_plan(ref, normalize(images, norm), subspace["size"], opts.steps)
    plan = replace(plan, subspace=subspace, step_size=opts.step_size, step_rule=opts.step_rule)
    result = board.ascent(plan)
    label = (f"finite differences on {Path(tflite).name} in subspace {subspace['kind']}:"
             f"{subspace.get('size') or subspace.get('cells')} (no autodiff in a TFLite file)")
    findings = write_outputs(ref, plan, result, out, images=origin, channel_rule=f"{opts.per_tap} per tap "
                             "by rule 'top' on the start images", estimator=label,
                             controls="none: the untrained-network controls need a source model")
    return {"out": str(out), "report": findings["report"], "estimator": label,
            "seconds": result.meta.get("runtime", {}).get("seconds"), "targets": len(plan.targets),
            "images": len(plan.images), "stages": findings["stages"]}
