"""`run_foreign_check`: the check of a float/quantized pair of TFLite files converted elsewhere (onnx2tf,
litert-torch, ai-edge-quantizer, the TFLite converter), with the float TFLite as the reference.

The same levels, gate, boards, speed and report as the Keras path; what differs is the source: taps are
found in the flatbuffer and exposed in probe copies (``toolkit.foreign``), the reference is the float
file in the host's interpreter (no autodiff: the feature level compares finite differences on both
files, and re-scores the float file's own ascent on the quantized one), and the fix search is off (it
re-exports from a source model, which a foreign pair has not)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from device.manifest import load_manifest, manifest_path_for

from ..data import make_pairs, normalize
from ..data.normalize import DEFAULT_NORMALIZATION
from ..export import Recipe
from ..foreign.pair import ForeignPair, prepare_pair
from ..probe.reference import TFLiteReference
from .boards import Board, LocalBoard
from .disagreement import DisagreementSpec, disagreement_spec
from .gate import load_thresholds
from .judging import BoardResult, CheckData, check_board
from .levels import FeatureReference, feature_reference, tap_scales
from .options import CheckOptions
from .runner import (
    REPORT_SCHEMA,
    data_verdict,
    float_verification,
    inconclusive,
    judge_boards,
    load_faces,
    summary,
    time_boards,
    validate_out_dir,
    write_report,
)
from .shift import shifted_faces

KNOBS = "docs/foreign.md"
SEARCH_OFF = ("off: the fix search re-exports from a source model, and a pair converted elsewhere has none. "
              f"Your converter's recipe knobs (per-channel weights, calibration size and ranges, layers kept "
              f"in float, int16 activations) are listed in {KNOBS}")


@dataclass(frozen=True)
class ForeignSession:
    """What every board of a foreign check is judged against (the check's ``CheckSession`` for a pair)."""

    reference: TFLiteReference
    data: CheckData
    thresholds: dict
    float32: dict[str, Path]

    def disagreement(self, opts: CheckOptions) -> DisagreementSpec:
        """The disagreement ascent against the float file."""
        return disagreement_spec(self.data, self.float32["deploy"], opts)

    def judge(self, board: Board, files: dict[str, Path], reference: FeatureReference | None = None,
              disagreement: DisagreementSpec | None = None) -> BoardResult:
        scales = tap_scales(load_manifest(manifest_path_for(files["probe"])))
        return check_board(self.reference, board, self.data, scales, self.thresholds, reference,
                           disagreement)


def run_foreign_check(float_path: str | os.PathLike, quantized_path: str | os.PathLike,
                      out_dir: str | os.PathLike, normalization: dict | None = None,
                      taps: list[str] | None = None, options: CheckOptions | None = None,
                      progress: bool = True, **settings) -> dict:
    """Check ``quantized_path`` against ``float_path`` (two TFLite files of one model, converted anywhere)
    and write report.json and report.html into ``out_dir``; returns the report. ``normalization``: the
    model's pixel normalisation (default (x - 127.5) / 128, RGB); ``taps``: tensor names to tap instead
    of those found. Raises ForeignModelError / ForeignPairError (ValueErrors) for a file or a pair that
    cannot be checked."""
    opts = replace(options or CheckOptions(), **settings)
    out = validate_out_dir(out_dir)
    thresholds = load_thresholds(opts.thresholds)
    norm = normalization or dict(DEFAULT_NORMALIZATION)
    pair = prepare_pair(float_path, quantized_path, out / "export", norm, taps)
    bar = tqdm(total=4, desc="check", disable=not progress, unit="stage")
    float32 = pair.files["float32"]
    float_board = LocalBoard(float32["deploy"], float32["probe"])
    reference = TFLiteReference(float_board)
    size = float_board.deploy.input_shape[0]
    faces, source = load_faces(opts.data, size, out, opts.identities, opts.align)
    rng = np.random.default_rng(opts.seed)
    sample = np.sort(rng.choice(len(faces.labels), min(opts.sample, len(faces.labels)), replace=False))
    images = normalize(faces.images, norm)
    shifted = (shifted_faces(lambda x: float_board.embeddings(normalize(x, norm)), norm, faces.images,
                             opts.seed) if opts.shift else None)
    data = CheckData(faces, images, float_board.embeddings(images),
                     make_pairs(faces.labels, n_folds=10, seed=opts.seed), sample, norm, shifted)
    float_accuracy = float_verification(data)
    recipe = Recipe(pair.variant)
    base = report_base(pair, norm, data, source, thresholds, float_accuracy)
    why = data_verdict(float_accuracy, thresholds)
    if why:
        bar.close()
        return inconclusive(base, why, pair.variant, out)
    bar.update()
    bar.set_postfix_str("features")
    feature_ref = (feature_reference(reference, float_board, images[sample[:opts.feature_images]],
                                     opts.subspace_size, opts.steps) if opts.features else None)
    session = ForeignSession(reference, data, thresholds, float32)
    bar.set_postfix_str("boards")
    judged = judge_boards(session, pair.files[pair.variant], feature_ref, opts)
    bar.update()
    bar.set_postfix_str("speed")
    boards = time_boards(judged, session, {})
    bar.update()
    verdict = summary(recipe, boards, None)
    verdict["recipe"] = f"{pair.variant} (converted elsewhere)"
    verdict["fix_search"] = SEARCH_OFF
    report = {**base, "verdict": verdict["verdict"], "passed": verdict["passed"], "summary": verdict,
              "exported": {v: {r: str(p) for r, p in roles.items()} for v, roles in pair.files.items()},
              "boards": [b.to_json() for b in boards], "search": None}
    write_report(report, boards, feature_ref, out)
    bar.update()
    bar.close()
    return report


def report_base(pair: ForeignPair, norm: dict, data: CheckData, source: str, thresholds: dict,
                float_accuracy: float) -> dict:
    """What a foreign check's report says whatever its verdict: the two files, the match table, the faces."""
    return {"schema": REPORT_SCHEMA,
            "model": {"path": pair.sources["float"]["file"], "architecture": "tflite (converted elsewhere)",
                      "input_shape": list(data.images.shape[1:]), "normalization": norm},
            "foreign": pair.to_json(),
            "data": {"source": source, "images": int(len(data.faces.labels)),
                     "identities": len(data.faces.names), "pairs": int(len(data.pairs.issame)),
                     "tap_sample": int(len(data.sample)), "float_verification_accuracy": float_accuracy,
                     "calibration": "by the converter that made the quantized file"},
            "thresholds": thresholds, "recipe": None}
