"""`run_check`: export (or take) the quantized variant, compare it with the float model at three levels on
the host interpreter and on every board named, judge it against the thresholds, localise, and search for
the cheapest recipe that passes when it fails."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from device.manifest import load_manifest, manifest_path_for

from .. import atomic
from ..data import FaceSet, load_identity_folders, make_pairs, normalize, synthesize
from ..evaluate import embed
from ..export import Recipe, export_keras, file_name, validate_source
from ..modelfile import load_face_model
from ..report.check_page import render_check
from .boards import LocalBoard, RemoteBoard
from .gate import load_thresholds
from .judging import CheckData, CheckOptions, check_board
from .levels import feature_reference, identity_level, tap_scales
from .search import search_recipes

REPORT_SCHEMA = "faceprobe.check-report/1"
SEARCH_MODES = ("on-fail", "always", "never")


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
        raise FileNotFoundError(f"--quantized {deploy}: no such file; pass a deploy .tflite written by "
                                "`faceprobe export`")
    manifest = load_manifest(manifest_path_for(deploy))
    if manifest["role"] != "deploy":
        raise ValueError(f"--quantized {deploy} is a {manifest['role']} file; pass the deploy file "
                         f"(model.{manifest['variant']}.tflite): it is the file that ships and is judged")
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
        raise ValueError(f"--out {out} is a file; name a folder for the report (it is created if missing)")
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
    return CheckData(faces, images, embed(model, faces.images, normalization=meta["normalization"]),
                     make_pairs(faces.labels, n_folds=10, seed=opts.seed), sample_idx)


def float_verification(data: CheckData) -> float:
    """The float model's own verification accuracy on the check pairs."""
    return identity_level(data.float_embeddings, data.float_embeddings, data.faces.labels,
                          data.pairs)["float"]["verification_accuracy"]


def run_check(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    recipe: Recipe | None = None,
    data: str | os.PathLike | None = None,
    identities: str | None = None,
    thresholds: str | os.PathLike | None = None,
    agents: Sequence[str] = (),
    token: str | None = None,
    quantized: str | os.PathLike | None = None,
    options: CheckOptions | None = None,
    search: str = "on-fail",
    progress: bool = True,
    align: bool = False,
) -> dict:
    """Run the check and write report.json (+ figures and report.html) into ``out_dir``; returns the report,
    whose ``verdict`` is "pass", "fail" or "inconclusive" (the float model cannot verify the faces).

    ``recipe``: what to export and check (default: int8 calibrated on the check faces, or on the folder
    its calibration names). ``quantized``: an exported deploy ``.tflite`` of this model to check instead
    (its probe file beside it; its manifest's recipe is what the search starts from). ``search``:
    "on-fail" (default), "always" or "never" run the fix search ("exhaustive": every candidate, for the
    full table). Raises ProvenanceError when
    ``quantized`` was exported from another model.
    """
    if search not in SEARCH_MODES + ("exhaustive",):
        raise ValueError(f"search must be one of {', '.join(SEARCH_MODES)}, got {search!r}")
    opts = options or CheckOptions()
    recipe = recipe or Recipe("int8")
    if recipe.variant == "float32":
        raise ValueError("variant float32 is the reference itself; check float16, dynamic_int8, int8 or "
                         "int16x8")
    out = validate_out_dir(out_dir)
    thresholds_used = load_thresholds(thresholds)
    model, meta = load_face_model(model_path)
    taken = None
    if quantized is not None:
        variant, taken = taken_variant(quantized)
        for role, path in taken.items():
            validate_source(load_manifest(manifest_path_for(path)), model, model_path,
                         f"--quantized {role} file {path}")
        recipe = taken_recipe(taken) or Recipe(variant)
    bar = tqdm(total=5, desc="check", disable=not progress, unit="stage")
    size = int(model.input_shape[1])
    faces, source = load_faces(data, size, out, identities, align)
    cal = recipe.calibration
    calib_faces = (load_faces(cal.images, size, out, cal.identities, align)[0].images
                   if cal.images and recipe.calibrated else faces.images)

    check_data = prepare_data(model, meta, faces, opts)
    images, sample_idx = check_data.images, check_data.sample
    float_accuracy = float_verification(check_data)
    why = data_verdict(float_accuracy, thresholds_used)
    base = {"schema": REPORT_SCHEMA,
            "model": {"path": str(model_path), "architecture": meta.get("architecture"),
                      "input_shape": meta.get("input_shape")},
            "data": {"source": source, "images": int(len(faces.labels)), "identities": len(faces.names),
                     "pairs": int(len(check_data.pairs.issame)), "tap_sample": int(len(sample_idx)),
                     "float_verification_accuracy": float_accuracy,
                     "calibration": (f"{cal.images} ({cal.identities or 'all'})" if cal.images
                                     else "the check faces")},
            "thresholds": thresholds_used, "recipe": recipe.to_dict()}
    if why:
        bar.close()
        report = {**base, "verdict": "inconclusive", "passed": None, "reason": why,
                  "summary": {"verdict": "inconclusive", "passed": None, "reason": why,
                              "variant": recipe.variant, "float_verification_accuracy": float_accuracy}}
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_json(out / "report.json", report)
        render_check(out)
        return report

    bar.set_postfix_str("export")
    # The float32 TFLite is the feature level's reference and the search's price; a taken file is not
    # exported again.
    wanted = ["float32"] + ([] if taken else [recipe])
    exported = export_keras(model, meta, out / "export", wanted, calibration=calib_faces,
                            source=Path(model_path))
    if taken:
        exported[recipe.variant] = taken
    variant_files = exported[recipe.variant]
    bar.update()

    scales = tap_scales(load_manifest(manifest_path_for(variant_files["probe"])))
    bar.set_postfix_str("features")
    feat_imgs = images[sample_idx[:opts.feature_images]]
    float_board = LocalBoard(exported["float32"]["deploy"], exported["float32"]["probe"])
    reference = (feature_reference(model, float_board, feat_imgs, opts.subspace_size, opts.steps)
                 if opts.features else None)
    bar.set_postfix_str("host")
    host_board = LocalBoard(variant_files["deploy"], variant_files["probe"])
    boards = [check_board(model, host_board, check_data, scales, thresholds_used, reference)]
    bar.update()
    bar.set_postfix_str("boards")
    for url in agents:
        remote = RemoteBoard(url, variant_files["deploy"], variant_files["probe"], token)
        boards.append(check_board(model, remote, check_data, scales, thresholds_used, reference))
    bar.update()

    passed = all(b["passed"] for b in boards)
    host = boards[0]
    bar.set_postfix_str("search")
    found = None
    if search in ("always", "exhaustive") or (search == "on-fail" and not passed):
        checked = {"files": variant_files, "drop_pp": host["identities"]["accuracy_drop_pp"],
                   "drop_se_pp": host["identities"]["accuracy_drop_se_pp"],
                   "localisation": host["localisation"], "passed": passed}
        found = search_recipes(model, meta, Path(model_path), recipe, checked, check_data, calib_faces,
                               thresholds_used, out / "search", exported["float32"]["deploy"],
                               exhaustive=search == "exhaustive")
    bar.update()
    verdict = "pass" if passed else "fail"
    report = {
        **base,
        "verdict": verdict,
        "passed": passed,
        "summary": {
            "verdict": verdict,
            "passed": passed,
            "variant": recipe.variant,
            "recipe": recipe.label(),
            "verification_accuracy": {"float": host["identities"]["float"]["verification_accuracy"],
                                      "quantized": host["identities"]["quantized"]["verification_accuracy"]},
            "accuracy_drop_pp": host["identities"]["accuracy_drop_pp"],
            "accuracy_drop_se_pp": host["identities"]["accuracy_drop_se_pp"],
            "worst_tap": host["localisation"]["worst_tap"],
            "first_broken_tap": host["localisation"]["first_broken_tap"],
            "failed_checks": sorted({f"{b['name']}:{v['name']}" for b in boards for v in b["verdicts"]
                                     if not v["passed"]}),
            "boards": [b["name"] for b in boards],
            "search": None if found is None else {"best": found["best_label"],
                                                  "recipe_file": found["recipe_file"],
                                                  "tried": len(found["rows"]) - 1},
        },
        "exported": {v: {r: str(p) for r, p in roles.items()} for v, roles in exported.items()},
        "boards": [_public(b) for b in boards],
        "search": found,
    }
    write_report(report, boards, reference, out)
    bar.update()
    bar.close()
    return report


def _public(board: dict) -> dict:
    """A board's results without the in-memory probe results (they go to figures and .npz files)."""
    out = dict(board)
    if out.get("features"):
        out["features"] = {k: v for k, v in out["features"].items() if k != "_results"}
    return out


def write_report(report: dict, boards: list[dict], reference: dict | None, out: Path) -> None:
    """report.json, the probe results (reference and per board), the figures and report.html."""
    if reference:
        d = out / "features"
        reference["plan"].save(d / "plan.json")
        for name in ("host", "fd_float", "full"):
            reference[name].save(d / name)
        for i, board in enumerate(boards):
            board["features"]["_results"]["fd_quant"].save(d / f"fd_quant_board{i}")
    atomic.write_json(out / "report.json", report)
    render_check(out)
