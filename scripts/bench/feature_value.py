"""Does the feature level earn its place? Quantized files good and bad, every in-distribution metric of the
check's levels beside the accuracy drop under shift (corrupted faces), and which metric predicts that drop.

    python scripts/bench/feature_value.py --json                     # the ORL model (trained here), 14 files
    python scripts/bench/feature_value.py --model runs/orl/model.keras --data ../shared/data/att_faces --json

Files: float16, dynamic int8, int8 (min-max, percentile), int16x8, int8 with the first stage in float,
int8 with per-tensor weights, calibrated on 3 / 10 / dark / bright faces or on noise, and the check matrix's
damages (one middle block's weights at 4 bits, its range clipped to a tenth). For each: the taps' worst SQNR
and cosine, identities (drop, embedding cosine, flips), the feature statistics (change correlation,
gradient cosine, saturation), the disagreement ascent's worst cosine and its random control, and
``shift_drop_pp`` (the identity drop on the shift suite, mean over corruptions and severities).

Prints ``cases``, ``correlations`` ({metric: {spearman, ci}}: Spearman rank correlation with
``shift_drop_pp``, 95 % bootstrap interval over files), ``partial_features_given_others`` (the partial rank
correlation of the disagreement metric, declared in advance as the headline, given the taps' worst SQNR and
the identities' drop and embedding cosine; every feature-level metric under ``per_metric``), ``timing``
(seconds per level) and ``verdict``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from check_matrix import OPEN_GATE, train_orl  # noqa: E402

IDENTITY_METRICS = ("worst_tap_sqnr_db", "worst_tap_cosine", "accuracy_drop_pp", "embedding_cosine",
                    "flip_fraction")
FEATURE_METRICS = ("feature_change_correlation", "feature_gradient_cosine", "feature_max_saturation",
                   "worst_case_embedding_cosine")
CONTROL_METRICS = ("random_worst_cosine",)  # chance at the disagreement budget
GIVEN = ("worst_tap_sqnr_db", "accuracy_drop_pp", "embedding_cosine")
HEADLINE = "worst_case_embedding_cosine"


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=np.float64)
    for value in np.unique(x):
        tied = x == value
        r[tied] = r[tied].mean()
    return r


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / den) if den > 1e-12 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return _corr(ranks(x), ranks(y))


def partial_spearman(x: np.ndarray, y: np.ndarray, given: np.ndarray) -> float:
    """Rank correlation of x and y after the ranks of ``given`` (n, g) are regressed out of both."""
    design = np.column_stack([np.ones(len(x)), *[ranks(g) for g in given.T]])
    residual = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in (ranks(x), ranks(y))]
    return _corr(*residual)


def bootstrap(stat, columns: list[np.ndarray], draws: int, seed: int = 0) -> list[float]:
    """95 % percentile interval of ``stat`` over files resampled with replacement (degenerate draws out)."""
    rng = np.random.default_rng(seed)
    n, values = len(columns[0]), []
    for _ in range(draws):
        idx = rng.integers(0, n, n)
        if len(np.unique(idx)) < 4:
            continue
        v = stat(*[c[idx] for c in columns])
        if np.isfinite(v):
            values.append(v)
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else [None, None]


def statistics(cases: list[dict], draws: int) -> tuple[dict, dict]:
    """Per metric: Spearman with shift_drop_pp and its interval; the partial correlations of the features."""
    y = np.array([c["shift_drop_pp"] for c in cases])
    column = {m: np.array([np.nan if c["metrics"][m] is None else c["metrics"][m] for c in cases])
              for m in IDENTITY_METRICS + FEATURE_METRICS + CONTROL_METRICS}
    correlations = {}
    for m, x in column.items():
        if not np.all(np.isfinite(x)):
            correlations[m] = {"spearman": None, "ci": [None, None], "note": "not measured on every file"}
            continue
        correlations[m] = {"spearman": spearman(x, y), "ci": bootstrap(spearman, [x, y], draws)}
    given = np.column_stack([column[g] for g in GIVEN])
    per_metric = {}
    for m in FEATURE_METRICS:
        x = column[m]
        if not np.all(np.isfinite(x)):
            continue
        per_metric[m] = {"spearman": partial_spearman(x, y, given),
                         "ci": bootstrap(partial_spearman, [x, y, given], draws)}
    head = per_metric.get(HEADLINE, {"spearman": None, "ci": [None, None]})
    return correlations, {**head, "metric": HEADLINE, "given": list(GIVEN), "per_metric": per_metric}


def excludes_zero(ci: list) -> bool:
    return ci[0] is not None and (ci[0] > 0 or ci[1] < 0)


def verdict(correlations: dict, partial: dict) -> str:
    predict = [m for m, c in correlations.items() if excludes_zero(c["ci"])]
    features = [m for m in FEATURE_METRICS if m in predict]
    beyond = [m for m, c in partial["per_metric"].items() if excludes_zero(c["ci"])]
    return (f"metrics whose rank correlation with the drop under shift excludes 0: "
            f"{', '.join(predict) or 'none'}; of the feature level: {', '.join(features) or 'none'}; beyond "
            f"the taps' and identities' metrics (partial, interval excludes 0): "
            f"{', '.join(beyond) or 'none'}.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "att_faces"))
    p.add_argument("--model", help="trained model.keras (default: train the ORL recipe at width 0.5, as the "
                                   "check matrix does)")
    p.add_argument("--check-identities", default="s31-s40")
    p.add_argument("--calibration-identities", default="s1-s30")
    p.add_argument("--sample", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="feature-statistics ascent steps (default 10)")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--out", help="folder to keep everything (default: a temporary one)")
    p.add_argument("--quick", action="store_true", help="smoke run: a tiny model, four people (the figures "
                                                       "mean nothing)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(check_identities="s39-s40", calibration_identities="s1-s2", sample=4, steps=2,
                       bootstrap=200)
        args = p.parse_args(argv)
    if not Path(args.data).is_dir():
        raise SystemExit(f"feature_value: no face folders at {args.data}; pass --data DIR")

    from device.manifest import load_manifest, manifest_path_for
    from toolkit.check import CheckOptions, load_thresholds
    from toolkit.check.boards import LocalBoard
    from toolkit.check.damage import damaged_copy
    from toolkit.check.disagreement import disagreement_level
    from toolkit.check.judging import measured_checks
    from toolkit.check.levels import feature_level, identity_level, tap_level, tap_scales
    from toolkit.check.runner import load_faces, prepare_data
    from toolkit.check.session import CheckSession
    from toolkit.check.shift import shift_level
    from toolkit.check.speed import HOST, Pricer
    from toolkit.data.shift import corrupt
    from toolkit.export import Calibration, Recipe, export_keras
    from toolkit.modelfile import load_face_model
    from toolkit.zoo import list_taps

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        gate = out / "open-gate.toml"
        gate.write_text(OPEN_GATE)
        opts = CheckOptions(data=args.data, identities=args.check_identities, sample=args.sample,
                            steps=args.steps, thresholds=gate if args.quick else None, shift=True,
                            disagreement=True)
        model_path = (Path(args.model) if args.model else
                      train_orl(args.data, out / "train", 1 if args.quick else None,
                                ["input_size=32"] if args.quick else ["width=0.5"], args.quick))
        model, meta = load_face_model(model_path)
        size = int(model.input_shape[1])
        faces, _ = load_faces(args.data, size, out, args.check_identities)
        calib = load_faces(args.data, size, out, args.calibration_identities)[0].images
        started = time.perf_counter()
        data = prepare_data(model, meta, faces, opts)
        shift_float_s = time.perf_counter() - started

        def export(folder: str, recipe, faces_for_calibration=calib) -> dict:
            return export_keras(model, meta, out / folder, [recipe], calibration=faces_for_calibration,
                                source=model_path)[recipe.variant]

        int8 = export("int8", Recipe("int8"))
        taps = list_taps(model)
        middle, first = taps[len(taps) // 2].name, taps[0].name
        noise = np.random.default_rng(0).integers(0, 256, calib.shape, dtype=np.uint8)

        def few(count: int) -> Calibration:
            return Calibration(count=count)

        cases = [("float16", export("float16", Recipe("float16"))),
                 ("dynamic int8", export("dynamic", Recipe("dynamic_int8"))),
                 ("int8 min-max", int8),
                 ("int8 percentile 99.99", export("pct", Recipe("int8", calibration=Calibration(
                     range_rule="percentile")))),
                 ("int16x8", export("int16x8", Recipe("int16x8"))),
                 (f"int8, {first} in float", export("float-first", Recipe("int8",
                                                                          precision={first: "float32"}))),
                 ("int8 per-tensor weights", export("per-tensor", Recipe("int8", per_channel=False))),
                 ("int8 calibrated on 3 faces", export("three", Recipe("int8", calibration=few(3)))),
                 ("int8 calibrated on 10 faces", export("ten", Recipe("int8", calibration=few(10)))),
                 ("int8 calibrated on dark faces", export("dark", Recipe("int8"),
                                                          corrupt(calib, "low_light", 3))),
                 ("int8 calibrated on bright faces", export("bright", Recipe("int8"),
                                                            corrupt(calib, "over_exposure", 2))),
                 ("int8 calibrated on noise", export("noise", Recipe("int8"), noise)),
                 (f"int8, {middle} weights at 4 bits", damaged_copy(model, int8, middle, out / "bits4",
                                                                    "weights", 4)),
                 (f"int8, {middle} range clipped to a tenth", damaged_copy(model, int8, middle, out / "clip",
                                                                           "range", 0.1))]
        float32 = export("float32", Recipe("float32"))
        thresholds = load_thresholds(opts.thresholds)
        session = CheckSession(model, meta, model_path, data, thresholds, calib, float32, out, Pricer(HOST))
        started = time.perf_counter()
        reference = session.feature_reference(opts)
        reference_s = time.perf_counter() - started
        spec = session.disagreement(opts)
        rows, timing = [], {"taps": [], "features": [], "identities": [], "shift": [], "disagreement": []}
        for name, files in cases:
            board = LocalBoard(files["deploy"], files["probe"])
            scales = tap_scales(load_manifest(manifest_path_for(files["probe"])))
            clock = time.perf_counter()

            def lap(level: str) -> None:
                nonlocal clock
                now = time.perf_counter()
                timing[level].append(now - clock)
                clock = now

            tap_rows = tap_level(model, board, data.images[data.sample], scales)
            lap("taps")
            feats, _ = feature_level(model, reference, board)
            lap("features")
            ident = identity_level(data.float_embeddings, board.embeddings(data.images), data.faces.labels,
                                   data.pairs)
            lap("identities")
            shift = shift_level(board, data.shifted, data.faces.labels, data.pairs)
            lap("shift")
            worst, _ = disagreement_level(board, spec, meta["normalization"])
            lap("disagreement")
            metrics = measured_checks(tap_rows, feats, ident, shift, worst)
            metrics = {m: metrics[m] for m in IDENTITY_METRICS + FEATURE_METRICS}
            metrics["random_worst_cosine"] = worst["summary"]["random_worst_cosine"]
            if metrics["feature_max_saturation"] is None:  # float taps have no int8 limits to sit at
                metrics["feature_max_saturation"] = 0.0
            rows.append({"name": name, "metrics": metrics,
                         "shift_drop_pp": shift["summary"]["accuracy_drop_pp"],
                         "shift_drop_se_pp": shift["summary"]["accuracy_drop_se_pp"],
                         "shift_worst_corruption": shift["summary"]["worst_corruption"],
                         "disagreement_ratio": worst["summary"]["ratio"]})
            print(f"feature_value: {name}: shift drop {rows[-1]['shift_drop_pp']:.2f} pp", file=sys.stderr)
    correlations, partial = statistics(rows, args.bootstrap)
    seconds = {level: float(np.mean(v)) for level, v in timing.items()}
    seconds.update({"feature_reference_once": reference_s, "shift_float_embeddings_once": shift_float_s})
    result = {"model": str(model_path) if args.model else "ORL recipe (trained here)", "cases": rows,
              "correlations": correlations, "partial_features_given_others": partial,
              "timing": seconds, "verdict": verdict(correlations, partial)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'file':<44}{'shift drop pp':>14}  " + "  ".join(IDENTITY_METRICS + FEATURE_METRICS))
    for r in rows:
        values = "  ".join("-" if r["metrics"][m] is None else f"{r['metrics'][m]:.4g}"
                           for m in IDENTITY_METRICS + FEATURE_METRICS)
        print(f"{r['name'][:43]:<44}{r['shift_drop_pp']:>14.2f}  {values}")
    for m, c in correlations.items():
        print(f"  {m:<32} spearman {c['spearman']}  ci {c['ci']}")
    print(f"  partial ({HEADLINE} | {', '.join(GIVEN)}): {partial['spearman']} ci {partial['ci']}")
    print(result["verdict"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
