"""The check, checked: quantizations of one trained model whose badness is known in advance, each judged
by the check at three levels, against the verdict expected of it.

    python scripts/bench/check_matrix.py --json                      # ORL training (width 0.5), the matrix
    python scripts/bench/check_matrix.py --model runs/orl/model.keras --data ../shared/data/att_faces --json

Cases: float32 re-export, float16 and a sound int8 (expected to pass); int8 with per-tensor weight
scales, calibrated on 3 faces, calibrated on noise, one middle block's weights rounded to 4 bits, that
block's activation range clipped to a tenth, and int8 of the model with lagging batch-norm statistics
(expected to fail). Prints ``cases`` (a list of {name, expected, verdict, levels_caught}) and
``correct`` (the fraction whose verdict is the expected one), and which cases the feature statistics
caught while the taps and identities did not (``caught_only_by_features``), and which only identities
under shift or the disagreement ascent caught (``caught_only_by_shift_or_disagreement``; levels_caught
names them ``shift`` and ``disagreement``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The lagging batch norm: moving statistics still 30 % of the way back at their initial values (mean 0,
# variance 1), as after a short training with momentum 0.99 (0.99^120 = 0.30).
BN_LAG = 0.3


# --quick: the tiny recipe for one epoch on six people, checked with the data gate open (an untrained model
# verifies at chance, which the gate rightly calls inconclusive): the plumbing runs, the figures mean nothing.
QUICK_TRAIN = ["--recipe", str(ROOT / "models" / "tiny-synth.toml"), "--identities", "s1-s6"]
OPEN_GATE = "[data]\nmin_float_verification_accuracy = 0.0\n"


def train_orl(data: str, out: Path, epochs: int | None, overrides: list[str], quick: bool = False) -> Path:
    """The ORL recipe (models/mobilefacenet-orl.toml, s1-s30; ``quick``: a tiny stand-in) with ``overrides``
    (KEY=VALUE), for ``epochs`` if given."""
    recipe = QUICK_TRAIN if quick else ["--recipe", str(ROOT / "models" / "mobilefacenet-orl.toml")]
    subprocess.run([sys.executable, "-m", "toolkit.cli", "train", *recipe, "--data", data, "--out", str(out),
                    *(["--epochs", str(epochs)] if epochs else []),
                    *[arg for kv in overrides for arg in ("--set", kv)]], check=True, stdout=sys.stderr)
    return out / "model.keras"


def lagging_batchnorm(model_path: Path, out: Path) -> Path:
    """A copy of the model whose batch-norm moving statistics lag (see BN_LAG)."""
    from toolkit.modelfile import load_face_model, save_face_model
    from toolkit.training.batchnorm import batchnorm_layers

    model, meta = load_face_model(model_path)
    for layer in batchnorm_layers(model):
        mean, var = np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)
        layer.moving_mean.assign((1 - BN_LAG) * mean)
        layer.moving_variance.assign((1 - BN_LAG) * var + BN_LAG)
    return save_face_model(model, out / "model.keras", **meta)


def sound_int8(model_path: Path, args: argparse.Namespace, out: Path, opts):
    """Plain int8 if the check (taps and identities) passes it, else the first int8 recipe its search
    finds passing: on a model whose int8 drop sits at the threshold no int8 is sound a priori."""
    from toolkit.check.runner import run_check
    from toolkit.export import Calibration, Recipe

    plain = Recipe("int8", calibration=Calibration(images=args.data, identities=args.calibration_identities))
    judged = replace(opts, features=False, shift=False, disagreement=False, search="on-fail")
    report = run_check(model_path, out, recipe=plain, options=judged, progress=False)
    if report["passed"]:
        return plain
    rows = (report.get("search") or {}).get("rows", [])
    found = next((Recipe.from_dict(r["recipe"]) for r in rows
                  if r["passed"] and r["recipe"]["variant"] == "int8"), None)
    if found is None:
        raise SystemExit("check_matrix: no int8 recipe passes this model; pass --sound-recipe FILE")
    return found


# Checks reported under a level of their own: the disagreement ascent is judged in [features] but is not
# the feature statistics.
OWN_LEVEL = {"worst_case_embedding_cosine": "disagreement"}


def levels(board: dict) -> list[str]:
    """The levels at which a board's entry in report.json failed."""
    return sorted({OWN_LEVEL.get(v["name"], v["level"]) for v in board["verdicts"] if not v["passed"]})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "att_faces"),
                   help="ORL identity folders s1..s40")
    p.add_argument("--model", help="trained model.keras (default: train the ORL recipe)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="recipe override for that training (default width=0.5: a known-bad case must be bad "
                        "on the model; on the width-1.0 ORL model per-tensor weights, 3-face calibration and "
                        "4-bit weights in one block move no tap by more than 0.3 dB and the drop by less "
                        "than its standard error, see docs/quantization.md)")
    p.add_argument("--epochs", type=int, help="epochs of that training (default: the recipe's 40; after 12 "
                   "every int8 recipe failed the tap level, so no sound int8 was found)")
    p.add_argument("--check-identities", default="s31-s40")
    p.add_argument("--calibration-identities", default="s1-s30")
    p.add_argument("--sample", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="feature-level ascent steps (default 10)")
    p.add_argument("--sound-recipe", metavar="FILE", help="the int8 recipe known to be sound on this model "
                   "(e.g. the one `faceprobe check --search` wrote; default: plain int8 if the check passes "
                   "it, else the first int8 recipe the check's search finds passing)")
    p.add_argument("--out", help="folder to keep everything (default: a temporary one)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: a tiny model, four people, the data gate open (seconds; the figures mean "
                        "nothing)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(check_identities="s39-s40", calibration_identities="s1-s2", sample=4, steps=2,
                       epochs=1, set=["input_size=32"])
        args = p.parse_args(argv)
    if not Path(args.data).is_dir():
        raise SystemExit(f"check_matrix: no face folders at {args.data}; pass --data DIR")

    from toolkit.check import CheckOptions, load_thresholds, run_check
    from toolkit.check.boards import LocalBoard
    from toolkit.check.damage import damaged_copy
    from toolkit.check.runner import float_verification, load_faces, prepare_data
    from toolkit.check.session import CheckSession
    from toolkit.check.speed import HOST, Pricer
    from toolkit.export import Calibration, Recipe, export_keras, load_recipe
    from toolkit.modelfile import load_face_model
    from toolkit.zoo import list_taps

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        gate = out / "open-gate.toml"
        if args.quick:
            out.mkdir(parents=True, exist_ok=True)
            gate.write_text(OPEN_GATE)
        opts = CheckOptions(data=args.data, identities=args.check_identities, sample=args.sample,
                            steps=args.steps, thresholds=gate if args.quick else None, features=True,
                            shift=True, disagreement=True)
        thresholds = load_thresholds(opts.thresholds)
        overrides = args.set or ["width=0.5"]
        model_path = (Path(args.model) if args.model
                      else train_orl(args.data, out / "train", args.epochs, overrides, args.quick))
        model, meta = load_face_model(model_path)
        size = int(model.input_shape[1])
        faces, _ = load_faces(args.data, size, out, args.check_identities)
        calib = load_faces(args.data, size, out, args.calibration_identities)[0].images
        data = prepare_data(model, meta, faces, opts)
        noise = np.random.default_rng(0).integers(0, 256, calib.shape, dtype=np.uint8)

        def export(folder: str, recipe, faces_for_calibration=calib) -> dict:
            return export_keras(model, meta, out / folder, [recipe], calibration=faces_for_calibration,
                                source=model_path)[recipe.variant]

        sound_recipe = (load_recipe(args.sound_recipe) if args.sound_recipe
                        else sound_int8(model_path, args, out / "sound-search", opts))
        sound = export("int8", sound_recipe)
        middle = (taps := list_taps(model))[len(taps) // 2].name
        cases = [("float32 re-export", "pass", export("float32", Recipe("float32"))),
                 ("float16", "pass", export("float16", Recipe("float16"))),
                 ("sound int8", "pass", sound),
                 ("int8 per-tensor weights", "fail", export("per-tensor", Recipe("int8", per_channel=False))),
                 ("int8 calibrated on 3 faces", "fail",
                  export("three-faces", Recipe("int8", calibration=Calibration(count=3)))),
                 ("int8 calibrated on noise", "fail", export("noise", Recipe("int8"), noise)),
                 (f"int8, {middle} weights at 4 bits", "fail",
                  damaged_copy(model, sound, middle, out / "bits4", "weights", 4)),
                 (f"int8, {middle} range clipped to a tenth", "fail",
                  damaged_copy(model, sound, middle, out / "clip", "range", 0.1))]
        session = CheckSession(model, meta, model_path, data, thresholds, calib, cases[0][2], out,
                               Pricer(HOST))
        reference = session.feature_reference(opts)
        spec = session.disagreement(opts)
        lagged = run_check(lagging_batchnorm(model_path, out / "bn-lag"), out / "bn-lag-check",
                           recipe=Recipe("int8", calibration=Calibration(
                               images=args.data, identities=args.calibration_identities)),
                           options=replace(opts, search="never"), progress=False)
        host = lagged["boards"][0] if lagged["verdict"] != "inconclusive" else None
        lag_row = {"name": "int8 of a model with lagging batch-norm statistics", "expected": "fail",
                   "verdict": lagged["verdict"], "levels_caught": levels(host) if host else [],
                   "accuracy_drop_pp": host["identities"]["accuracy_drop_pp"] if host else None,
                   "float_verification_accuracy": lagged["data"]["float_verification_accuracy"]}
        rows = []
        for name, expected, files in cases:
            board = session.judge(LocalBoard(files["deploy"], files["probe"]), files, reference,
                                  spec).to_json()
            rows.append({"name": name, "expected": expected, "verdict": "pass" if board["passed"] else "fail",
                         "levels_caught": levels(board),
                         "accuracy_drop_pp": board["identities"]["accuracy_drop_pp"],
                         "worst_tap_sqnr_db": min(r["sqnr_db"] for r in board["taps"]),
                         "first_broken_tap": board["localisation"]["first_broken_tap"],
                         "features": board["features"]["summary"],
                         "shift_drop_pp": board["shift"]["summary"]["accuracy_drop_pp"],
                         "worst_case_embedding_cosine":
                             board["disagreement"]["summary"]["worst_case_embedding_cosine"]})
        rows.append(lag_row)
        float_accuracy = float_verification(data)
    feature_only = [r["name"] for r in rows if r["levels_caught"] == ["features"]]
    new_only = [r["name"] for r in rows if r["levels_caught"] and set(r["levels_caught"]) <= {"shift",
                                                                                             "disagreement"}]
    result = {"float_verification_accuracy": float_accuracy, "sound_recipe": sound_recipe.label(),
              "cases": rows,
              "correct": sum(r["verdict"] == r["expected"] for r in rows) / len(rows),
              "caught_only_by_features": feature_only, "caught_only_by_shift_or_disagreement": new_only,
              "damaged_tap": middle}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"float verification accuracy {float_accuracy:.4f}")
    print(f"{'case':<52}{'expected':>9}{'verdict':>14}  levels caught")
    for r in rows:
        caught = ", ".join(r["levels_caught"]) or "-"
        print(f"{r['name'][:51]:<52}{r['expected']:>9}{r['verdict']:>14}  {caught}")
    print(f"correct: {result['correct']:.2f}; caught only by the feature statistics: "
          f"{feature_only or 'none'}; only by shift or disagreement: {new_only or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
