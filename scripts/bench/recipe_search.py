"""The fix search on ORL: int8 checked on s31-s40 with s1-s30 calibration, then every recipe the search
tries, priced in deploy size and batch-1 latency against float32 and judged on the same pairs.

    python scripts/bench/recipe_search.py --data ../shared/data/att_faces --json
    python scripts/bench/recipe_search.py --data ../shared/data/att_faces --model runs/orl/model.keras --json

Trains the ORL model (models/mobilefacenet-orl.toml, s1-s30) unless --model is given. Prints
``float_verification_accuracy``, ``recipes`` (a list of {name, size_ratio, speedup_b1, drop_pp, passed})
and ``best`` (the cheapest passing one, or null). The checked int8 recipe comes first; by default the
search stops at the first recipe that passes, as `faceprobe check` does (--all tries every one).
Goal: a passing recipe (drop <= 0.5 pp) at size_ratio <= 0.45 and speedup_b1 >= 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

GOAL = {"drop_pp": 0.5, "size_ratio": 0.45, "speedup_b1": 1.5}


# --quick: the tiny recipe for one epoch on six people, checked with the data gate open (an untrained model
# verifies at chance, which the gate rightly calls inconclusive): the plumbing runs, the figures mean nothing.
QUICK_TRAIN = ["--recipe", str(ROOT / "models" / "tiny-synth.toml"), "--epochs", "1", "--identities", "s1-s6",
               "--set", "input_size=32"]
OPEN_GATE = "[data]\nmin_float_verification_accuracy = 0.0\n"


def train_orl(data: str, out: Path, quick: bool = False) -> Path:
    """The ORL model of models/mobilefacenet-orl.toml (``quick``: a tiny stand-in), trained by the CLI."""
    recipe = QUICK_TRAIN if quick else ["--recipe", str(ROOT / "models" / "mobilefacenet-orl.toml")]
    subprocess.run([sys.executable, "-m", "toolkit.cli", "train", *recipe, "--data", data, "--out", str(out)],
                   check=True, stdout=sys.stderr)
    return out / "model.keras"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="ORL identity folders s1..s40")
    p.add_argument("--model", help="trained ORL model.keras (default: train one)")
    p.add_argument("--check-identities", default="s31-s40")
    p.add_argument("--calibration-identities", default="s1-s30")
    p.add_argument("--sample", type=int, default=32, help="faces at the tap level")
    p.add_argument("--all", action="store_true", help="try every recipe, not only up to the first pass")
    p.add_argument("--out", help="folder to keep the exports and the report (default: a temporary one)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: a tiny model, four people, the data gate open (seconds; the figures mean "
                        "nothing)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(check_identities="s39-s40", calibration_identities="s1-s2", sample=4)
        args = p.parse_args(argv)
    if not Path(args.data).is_dir():
        raise SystemExit(f"recipe_search: no face folders at {args.data}; pass --data DIR")

    from toolkit.check import CheckOptions, run_check
    from toolkit.export import Calibration, Recipe

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        model = Path(args.model) if args.model else train_orl(args.data, out / "train", args.quick)
        calibration = Calibration(images=args.data, identities=args.calibration_identities)
        gate = out / "open-gate.toml"
        if args.quick:
            out.mkdir(parents=True, exist_ok=True)
            gate.write_text(OPEN_GATE)
        options = CheckOptions(data=args.data, identities=args.check_identities, sample=args.sample,
                               features=False, search="exhaustive" if args.all else "always",
                               thresholds=gate if args.quick else None)
        report = run_check(model, out / "check", recipe=Recipe("int8", calibration=calibration),
                           options=options, progress=not args.json)
    if report["verdict"] == "inconclusive":
        raise SystemExit(f"recipe_search: {report['reason']}")
    found = report["search"]
    keys = ("name", "size_ratio", "speedup_b1", "drop_pp", "passed")
    recipes = [{**{k: r[k] for k in keys}, "name": r["label"] if i == 0 else f"{r['label']} ({r['name']})",
                "drop_se_pp": r["drop_se_pp"], "latency_ms": r["latency_ms"], "pareto": r["pareto"]}
               for i, r in enumerate(found["rows"])]
    best = next((rec for rec in recipes if rec["passed"]), None)
    result = {
        "float_verification_accuracy": report["data"]["float_verification_accuracy"],
        "int8_passed": report["passed"],
        "recipes": recipes,
        "best": best,
        "best_recipe": found["best"],
        "goal": GOAL,
        "goal_met": any(r["passed"] and r["drop_pp"] <= GOAL["drop_pp"]
                        and r["size_ratio"] <= GOAL["size_ratio"] and r["speedup_b1"] >= GOAL["speedup_b1"]
                        for r in recipes),
        "judged_at": found["judged_at"],
        "pairs": report["data"]["pairs"],
        "runtime": report["boards"][0]["info"]["deploy"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    acc = result["float_verification_accuracy"]
    print(f"float verification accuracy {acc:.4f} on {result['pairs']} pairs")
    print(f"{'recipe':<64}{'size':>7}{'speedup':>9}{'drop pp':>9}{'± se':>7}  verdict")
    for r in recipes:
        print(f"{r['name'][:63]:<64}{r['size_ratio']:>7.2f}{r['speedup_b1']:>9.2f}{r['drop_pp']:>9.2f}"
              f"{r['drop_se_pp']:>7.2f}  "
              f"{'pass' if r['passed'] else 'fail'}{' *' if r['pareto'] else ''}")
    print(f"best: {best['name'] if best else 'none passes'}; goal met: {result['goal_met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
