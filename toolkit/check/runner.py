"""`run_check`: export (or take) the quantized variant, compare it with the float model at three levels on
the host interpreter and on every board named, judge it against the thresholds, localise, and search for
the cheapest recipe that passes when it fails.

Staged: the faces and the data gate (``prepare``), the export, the feature reference, every board judged
(the host, then the agents in parallel through ``remote.Fleet``), the fix search, the report."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from device.manifest import load_manifest, manifest_path_for

from .. import atomic
from ..data import FaceSet, load_identity_folders, make_pairs, normalize, synthesize
from ..evaluate import embed
from ..export import Recipe, export_keras, file_name, validate_source
from ..export.prefixes import export_prefixes
from ..modelfile import load_face_model
from ..params import ParameterError
from ..remote import Fleet
from ..report.check_page import render_check
from .boards import Board, LocalBoard, RemoteBoard
from .gate import load_thresholds
from .judging import BoardResult, CheckData
from .levels import FeatureReference, identity_level
from .options import CheckOptions
from .search import JudgedRecipe, search_recipes
from .session import CheckSession
from .shift import shifted_faces
from .speed import HOST, IMAGES, Pricer, slower_warning, with_speed

REPORT_SCHEMA = "faceprobe.check-report/1"
SPEED_SUMMARY = ("latency_ms", "float32_latency_ms", "speedup_b1")


def load_faces(data: str | os.PathLike | None, size: int, out: Path,
               identities: str | None = None, align: bool = False) -> tuple[FaceSet, str]:
    """The faces the check runs on: a folder of identity folders (optionally only ``identities``, e.g.
    "s31-s40"), or synthetic faces written into ``out``; ``align``: dlib's aligned chips of the faces."""
    if data is not None:
        if not Path(data).is_dir():
            raise FileNotFoundError(f"no folder of faces at {data}: pass a folder of identity folders")
        faces = load_identity_folders(data, image_size=size, progress=False, align=align,
                                      identities=identities or None)
        return faces, f"{data} ({identities})" if identities else str(data)
    folder = synthesize(out / "faces", identities=12, images_per_identity=6, size=size, seed=1,
                        progress=False)
    return load_identity_folders(folder, image_size=size, progress=False), "synthetic (12 x 6, seed 1)"


def taken_variant(deploy: str | os.PathLike) -> tuple[str, dict[str, Path]]:
    """(variant, {"deploy", "probe"}) of an exported deploy model and the probe model beside it."""
    deploy = Path(deploy)
    if not deploy.is_file():
        raise ParameterError("quantized", f"{{name}} {deploy}: no such file; pass a deploy .tflite written "
                                          "by `faceprobe export`")
    manifest = load_manifest(manifest_path_for(deploy))
    if manifest["role"] != "deploy":
        raise ParameterError("quantized", f"{{name}} {deploy} is a {manifest['role']} file; pass the deploy "
                                          f"file (model.{manifest['variant']}.tflite): it is the file that "
                                          "ships and is judged")
    variant = manifest["variant"]
    probe = deploy.with_name(file_name(variant, "probe"))
    if not probe.is_file():
        raise FileNotFoundError(f"{deploy} has no probe model beside it ({probe.name}); export with "
                                "`faceprobe export`, which writes both")
    return variant, {"deploy": deploy, "probe": probe}


def taken_recipe(files: dict[str, Path]) -> Recipe | None:
    """The recipe recorded in a taken file's manifest (None for files exported before recipes)."""
    recorded = load_manifest(manifest_path_for(files["deploy"])).get("recipe")
    return Recipe.from_dict(recorded, f"recipe in {files['deploy']}'s manifest") if recorded else None


def validate_out_dir(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ParameterError("out_dir", f"{{name}} {out} is a file; name a folder for the report (it is "
                                        "created if missing)")
    return out


def data_verdict(float_accuracy: float, thresholds: dict) -> str | None:
    """Why the check cannot judge on these faces (None when it can): the float model itself must verify
    them, or a quantized model that matches it proves nothing."""
    least = thresholds["data"]["min_float_verification_accuracy"]
    if float_accuracy < least:
        return (f"the float model verifies only {100 * float_accuracy:.1f} % of the check pairs (at least "
                f"{100 * least:.0f} % needed, [data] min_float_verification_accuracy): on faces it cannot "
                "tell apart, agreement with it shows nothing. Check on faces of real people "
                "(--data DIR), ideally people the model never saw")
    return None


def prepare_data(model, meta: dict, faces: FaceSet, opts: CheckOptions) -> CheckData:
    """The check's faces normalised, the float model's embeddings, the pairs and the tap-level sample."""
    rng = np.random.default_rng(opts.seed)
    sample_idx = np.sort(rng.choice(len(faces.labels), min(opts.sample, len(faces.labels)), replace=False))
    images = normalize(faces.images, meta["normalization"])
    norm = meta["normalization"]
    shifted = (shifted_faces(lambda x: embed(model, x, normalization=norm), norm, faces.images, opts.seed)
               if opts.shift else None)
    return CheckData(faces, images, embed(model, faces.images, normalization=meta["normalization"]),
                     make_pairs(faces.labels, n_folds=10, seed=opts.seed), sample_idx,
                     meta["normalization"], shifted)


def float_verification(data: CheckData) -> float:
    """The float model's own verification accuracy on the check pairs."""
    return identity_level(data.float_embeddings, data.float_embeddings, data.faces.labels,
                          data.pairs)["float"]["verification_accuracy"]


def checked_recipe(recipe: Recipe | None, quantized: str | os.PathLike | None, model, model_path
                   ) -> tuple[Recipe, dict[str, Path] | None]:
    """The recipe checked and, for a ``quantized`` file taken as it is, its files (from this model)."""
    if quantized is None:
        return recipe or Recipe("int8"), None
    variant, taken = taken_variant(quantized)
    for role, path in taken.items():
        validate_source(load_manifest(manifest_path_for(path)), model, model_path,
                        f"quantized {role} file {path}")
    return taken_recipe(taken) or Recipe(variant), taken


def calibration_faces(recipe: Recipe, faces: FaceSet, size: int, out: Path, align: bool) -> np.ndarray:
    """The faces int8 ranges are calibrated on: the folder the recipe names, else the check faces."""
    cal = recipe.calibration
    if cal.images and recipe.calibrated:
        return load_faces(cal.images, size, out, cal.identities, align)[0].images
    return faces.images


def report_base(model_path, meta: dict, recipe: Recipe, data: CheckData, source: str, thresholds: dict,
                float_accuracy: float) -> dict:
    """What every report says, whatever its verdict: the model, the faces, the thresholds, the recipe."""
    cal = recipe.calibration
    return {"schema": REPORT_SCHEMA,
            "model": {"path": str(model_path), "architecture": meta.get("architecture"),
                      "input_shape": meta.get("input_shape")},
            "data": {"source": source, "images": int(len(data.faces.labels)),
                     "identities": len(data.faces.names),
                     "pairs": int(len(data.pairs.issame)), "tap_sample": int(len(data.sample)),
                     "float_verification_accuracy": float_accuracy,
                     "calibration": (f"{cal.images} ({cal.identities or 'all'})" if cal.images
                                     else "the check faces")},
            "thresholds": thresholds, "recipe": recipe.to_dict()}


def inconclusive(base: dict, why: str, variant: str, out: Path) -> dict:
    """The report of a check that cannot judge (the float model does not verify the faces), written."""
    accuracy = base["data"]["float_verification_accuracy"]
    report = {**base, "verdict": "inconclusive", "passed": None, "reason": why,
              "summary": {"verdict": "inconclusive", "passed": None, "reason": why, "variant": variant,
                          "float_verification_accuracy": accuracy}}
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "report.json", report)
    render_check(out)
    return report


def judge_boards(session: CheckSession, files: dict[str, Path], reference: FeatureReference | None,
                 opts: CheckOptions) -> list[tuple[Board, BoardResult]]:
    """The host, then every agent of ``opts.agents`` at once (one thread each), each holding ``files``
    (and the float32 deploy file for the disagreement ascent): (board, its result) in that order."""
    spec = session.disagreement(opts) if opts.disagreement else None

    def judged(board: Board) -> tuple[Board, BoardResult]:
        return board, session.judge(board, files, reference, spec)

    host = judged(LocalBoard(files["deploy"], files["probe"]))
    if not opts.agents:
        return [host]
    remote = Fleet(opts.agents, opts.token, trust=opts.trust).map(
        lambda client: judged(RemoteBoard(client, files["deploy"], files["probe"])))
    return [host, *remote.values()]


def time_boards(judged: list[tuple[Board, BoardResult]], session: CheckSession,
                prefixes: dict[str, Path]) -> list[BoardResult]:
    """Every judged board's speed, one board after the other (a board timed while the host works for
    another would time the host's load)."""
    return [with_speed(board, result, session.float32["deploy"], prefixes, session.data.images,
                       session.thresholds) for board, result in judged]


def summary(recipe: Recipe, boards: list[BoardResult], found: dict | None) -> dict:
    """The verdict and the figures a reader looks at first (the host's, and every failed check)."""
    host, passed = boards[0], all(b.passed for b in boards)
    return {
        "verdict": "pass" if passed else "fail",
        "passed": passed,
        "variant": recipe.variant,
        "recipe": recipe.label(),
        "verification_accuracy": {"float": host.identities["float"]["verification_accuracy"],
                                  "quantized": host.identities["quantized"]["verification_accuracy"]},
        "accuracy_drop_pp": host.drop_pp,
        "accuracy_drop_se_pp": host.drop_se_pp,
        "worst_tap": host.localisation["worst_tap"],
        "first_broken_tap": host.localisation["first_broken_tap"],
        "failed_checks": sorted({f"{b.name}:{name}" for b in boards for name in b.failed_checks}),
        "boards": [b.name for b in boards],
        "speed": {b.name: {k: b.speed[k] for k in SPEED_SUMMARY} for b in boards},
        "speed_warnings": [w for b in boards if (w := slower_warning(b.name, b.speed, recipe.variant))],
        "search": None if found is None else {"best": found["best_label"],
                                              "recipe_file": found["recipe_file"],
                                              "tried": len(found["rows"]) - 1,
                                              "priced_on": found["priced_on"]},
    }


def run_check(model_path: str | os.PathLike, out_dir: str | os.PathLike, recipe: Recipe | None = None,
              quantized: str | os.PathLike | None = None, options: CheckOptions | None = None,
              progress: bool = True, **settings: Any) -> dict:
    """Run the check and write report.json (+ figures and report.html) into ``out_dir``; returns the report,
    whose ``verdict`` is "pass", "fail" or "inconclusive" (the float model cannot verify the faces).

    ``recipe``: what to export and check (default: int8 calibrated on the check faces, or on the folder
    its calibration names). ``quantized``: an exported deploy ``.tflite`` of this model to check instead
    (its probe file beside it; its manifest's recipe is what the search starts from). ``options``: the
    faces, thresholds, boards, search and sizes (``CheckOptions``); keyword ``settings`` are fields of it
    (``run_check(m, out, data="faces", search="never")``). Raises ParameterError naming a bad argument,
    ProvenanceError when ``quantized`` was exported from another model.
    """
    opts = replace(options or CheckOptions(), **settings)
    if recipe is not None and recipe.variant == "float32":
        raise ParameterError("recipe", "{name}: variant float32 is the reference itself; check float16, "
                                       "dynamic_int8, int8 or int16x8")
    out = validate_out_dir(out_dir)
    thresholds = load_thresholds(opts.thresholds)
    # An unreachable pricing board fails here, before the check's long work.
    pricer = Pricer(opts.price_on or (opts.agents[0] if opts.agents else HOST), opts.token, opts.trust)
    model, meta = load_face_model(model_path)
    recipe, taken = checked_recipe(recipe, quantized, model, model_path)
    bar = tqdm(total=5, desc="check", disable=not progress, unit="stage")
    size = int(model.input_shape[1])
    faces, source = load_faces(opts.data, size, out, opts.identities, opts.align)
    calibration = calibration_faces(recipe, faces, size, out, opts.align)
    data = prepare_data(model, meta, faces, opts)
    float_accuracy = float_verification(data)
    base = report_base(model_path, meta, recipe, data, source, thresholds, float_accuracy)
    why = data_verdict(float_accuracy, thresholds)
    if why:
        bar.close()
        return inconclusive(base, why, recipe.variant, out)

    bar.set_postfix_str("export")
    # The float32 TFLite is the feature level's reference and the search's price; a taken file is not
    # exported again.
    exported = export_keras(model, meta, out / "export", ["float32"] + ([] if taken else [recipe]),
                            calibration=calibration, source=Path(model_path))
    exported[recipe.variant] = taken or exported[recipe.variant]
    # Cut after each stage's last tap: each board prices its stages with them.
    prefixes = export_prefixes(model, meta, recipe, out / "export" / "prefixes", calibration,
                               Path(model_path))
    pricer.images = data.images[:IMAGES]
    session = CheckSession(model, meta, Path(model_path), data, thresholds, calibration, exported["float32"],
                           out, pricer)
    bar.update()
    bar.set_postfix_str("features")
    reference = session.feature_reference(opts) if opts.features else None
    bar.set_postfix_str("boards")
    judged = judge_boards(session, exported[recipe.variant], reference, opts)
    bar.update()
    bar.set_postfix_str("speed")
    boards = time_boards(judged, session, prefixes)
    bar.update()
    passed = all(b.passed for b in boards)
    bar.set_postfix_str("search")
    found = (search_recipes(session, JudgedRecipe(recipe, exported[recipe.variant], boards[0], passed),
                            exhaustive=opts.search == "exhaustive") if opts.searches(passed) else None)
    bar.update()
    verdict = summary(recipe, boards, found)
    report = {**base, "verdict": verdict["verdict"], "passed": passed, "summary": verdict,
              "exported": {v: {r: str(p) for r, p in roles.items()} for v, roles in exported.items()},
              "boards": [b.to_json() for b in boards], "search": found}
    write_report(report, boards, reference, out)
    bar.update()
    bar.close()
    return report


def write_report(report: dict, boards: list[BoardResult], reference: FeatureReference | None,
                 out: Path) -> None:
    """report.json, the probe results (reference and per board), the figures and report.html."""
    if reference:
        reference.save(out / "features")
        for i, board in enumerate(boards):
            board.feature_result.save(out / "features" / f"fd_quant_board{i}")
    for i, board in enumerate(boards):
        if board.disagreement_result is not None:
            plan, result = board.disagreement_result
            plan.save(out / "disagreement" / "plan.json")
            result.save(out / "disagreement" / f"board{i}")
    atomic.write_json(out / "report.json", report)
    render_check(out)
