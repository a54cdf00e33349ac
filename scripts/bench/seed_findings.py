"""The method's three findings on an ORL model, each against its controls.

    python scripts/bench/seed_findings.py --data ../shared/data/att_faces --json [--model MODEL.keras]

Without --model it trains the models/mobilefacenet-orl.toml recipe on s1-s30 first. Then, on people the
model never saw (s31-s40), with the method's ascent (20 raw steps, alpha 1, channel-mean objective,
5 channels per stage by the top rule):
  frequency   the change's frequency centroid (and ``colour``: its colour share) on --n-images photos
              (the first of each person, then the second, ...);
  invariance  the identity invariance index of the visualisations (--per-person photos of each of
              s31-s40), all stages pooled to the last stage's grid;
  emergence   onsets from a short training run of the same recipe (--emergence-epochs epochs, probe
              snapshot every --probe-every iterations), or from RUN_DIR/emergence/emergence.json of a
              run trained with `faceprobe train --probe-every K` (--emergence RUN_DIR).
Each finding: ``trained``, ``controls`` by name (untrained over --seeds seeds, pixels, noise; the
permutation null for invariance), ``effect`` (trained - untrained), ``ci`` (95 % bootstrap) and
``verdict`` per stage. Prints one JSON object (``findings`` and ``settings``) or a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SUMMARY = ("trained", "controls", "effect", "ci", "verdict")


def _spread_photos(fs, n: int):
    """Up to ``n`` photos: the first of every person, then the second, ... (indices into ``fs``)."""
    import numpy as np

    order = np.argsort([list(fs.labels[:i]).count(fs.labels[i]) for i in range(len(fs))], kind="stable")
    return order[:n]


def _emergence(args, config, train_fs, log) -> dict:
    from toolkit.probe.emergence import EmergenceCallback
    from toolkit.train import train

    if args.emergence:
        path = Path(args.emergence) / "emergence" / "emergence.json"
        if not path.is_file():
            raise SystemExit(f"--emergence: {path} does not exist; train the run with "
                             "`faceprobe train --probe-every K`")
        return json.loads(path.read_text())
    short = config.with_overrides(epochs=args.emergence_epochs)
    with tempfile.TemporaryDirectory() as tmp:
        def callback(embedding, train_set, run_dir):
            return EmergenceCallback(embedding, train_set.images, every=args.probe_every,
                                     out_dir=Path(run_dir) / "emergence",
                                     seeds=tuple(range(1, args.seeds + 1)))
        train(short, Path(tmp) / "run", data=train_fs, extra_callbacks=[callback], progress=not args.json,
              log=log)
        return json.loads((Path(tmp) / "run" / "emergence" / "emergence.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "att_faces"),
                   help="ORL identity folders s1..s40")
    p.add_argument("--model", help="a trained ORL model.keras (default: train the recipe first)")
    p.add_argument("--align", action="store_true",
                   help="dlib-aligned chips (for dlib's port and the models derived from it)")
    p.add_argument("--recipe", default=str(ROOT / "models" / "mobilefacenet-orl.toml"))
    p.add_argument("--train-identities", default="s1-s30")
    p.add_argument("--eval-identities", default="s31-s40")
    p.add_argument("--n-images", type=int, default=20, help="photos for the frequency finding (default 20)")
    p.add_argument("--per-person", type=int, default=5,
                   help="photos per person for the invariance finding (default 5; ORL has 10)")
    p.add_argument("--seeds", type=int, default=3, help="untrained networks per control (default 3)")
    p.add_argument("--emergence", metavar="RUN_DIR", help="read emergence from this training run instead")
    p.add_argument("--emergence-epochs", type=int, default=6,
                   help="epochs of the short training run for emergence (default 6: 60 iterations)")
    p.add_argument("--probe-every", type=int, default=5, help="snapshot interval of that run (default 5)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: the tiny recipe for one epoch on four people, two controls, small "
                        "samples (seconds; the figures mean nothing)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(recipe=str(ROOT / "models" / "tiny-synth.toml"), train_identities="s1-s4",
                       eval_identities="s39-s40", n_images=2, per_person=2, seeds=2, emergence_epochs=1,
                       probe_every=1)
        args = p.parse_args(argv)
    if min(args.seeds, args.n_images, args.per_person) < 2 or min(args.probe_every,
                                                                   args.emergence_epochs) < 1:
        raise SystemExit("--seeds, --n-images and --per-person must be >= 2, --probe-every and "
                         "--emergence-epochs >= 1")

    from toolkit.data import load_identity_folders, normalize, parse_identities
    from toolkit.modelfile import load_face_model
    from toolkit.probe.findings import frequency_finding
    from toolkit.probe.invariance import invariance_finding
    from toolkit.train import load_train_config, train

    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    config = load_train_config(args.recipe).with_overrides(data=args.data, epochs=1 if args.quick else None)
    size = int(load_face_model(args.model)[0].input_shape[1]) if args.model else config.input_size
    fs = load_identity_folders(args.data, image_size=size, align=args.align, progress=not args.json,
                               identities=f"{args.train_identities},{args.eval_identities}")
    train_fs = fs.select(parse_identities(args.train_identities))
    eval_fs = fs.select(parse_identities(args.eval_identities))
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model_path = args.model or train(config, Path(tmp) / "orl", data=train_fs, progress=not args.json,
                                         log=log).model_path
        model, _ = load_face_model(model_path)
        seconds["train"] = round(time.perf_counter() - t0, 1) if not args.model else 0.0
        seeds = tuple(range(1, args.seeds + 1))
        t0 = time.perf_counter()
        photos = normalize(eval_fs.images[_spread_photos(eval_fs, args.n_images)])
        findings = frequency_finding(model, photos, seeds=seeds)
        seconds["frequency"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        chosen = _spread_photos(eval_fs, args.per_person * len(eval_fs.names))
        findings["invariance"] = invariance_finding(model, normalize(eval_fs.images[chosen]),
                                                    eval_fs.labels[chosen], seeds=seeds)
        seconds["invariance"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    emergence = _emergence(args, config, train_fs, log)
    findings["emergence"] = emergence["finding"]
    seconds["emergence"] = round(time.perf_counter() - t0, 1)

    report = {
        "findings": findings,
        "settings": {
            "model": (str(model_path) if args.model else
                      f"trained here: {Path(args.recipe).name} on {args.train_identities}"),
            "eval_identities": args.eval_identities, "frequency_images": len(photos),
            "invariance_images": len(chosen), "seeds": list(seeds),
            "ascent": "20 raw steps, alpha 1, channel-mean objective, 5 channels per stage (top rule)",
            "emergence": (f"read from {args.emergence}" if args.emergence else
                          f"short run of the recipe: {args.emergence_epochs} epochs, snapshot every "
                          f"{args.probe_every} iterations, {emergence['iterations'][-1]} iterations"),
        },
        "seconds": seconds,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'finding':<11}{'stage':<8}{'trained':>9}{'untrained':>10}{'pixels':>8}{'noise':>8}"
          f"{'effect':>9}  {'95% CI':<18}verdict")
    for name, f in findings.items():
        for s in f["trained"]:
            c = f["controls"]
            lo, hi = f["ci"][s]
            print(f"{name:<11}{s:<8}{f['trained'][s]:>9.3f}{c['untrained'][s]:>10.3f}{c['pixels'][s]:>8.3f}"
                  f"{c['noise'][s]:>8.3f}{f['effect'][s]:>+9.3f}  [{lo:+.3f}, {hi:+.3f}]  {f['verdict'][s]}")
    print(f"emergence onsets: {findings['emergence']['onset']} (order with depth: "
          f"{findings['emergence']['order']}); {report['settings']['emergence']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
