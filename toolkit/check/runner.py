"""`run_check`: export (or take) the quantized variant, compare it with the float model at three levels on
the host interpreter and on every board named, judge it against the thresholds, localise, suggest."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from device.manifest import load_manifest, manifest_path_for
from device.runtime import Runtime

from .. import atomic
from ..data import FaceSet, Pairs, load_identity_folders, make_pairs, normalize, synthesize
from ..evaluate import embed
from ..export import export_model, file_name
from ..modelfile import load_face_model
from .boards import LocalBoard, RemoteBoard
from .gate import judge, load_thresholds
from .levels import (
    CHUNK,
    FEATURE_SUBSPACE,
    feature_level,
    feature_reference,
    identity_level,
    tap_level,
    tap_scales,
)

REPORT_SCHEMA = "faceprobe.check-report/1"


def load_faces(data: str | os.PathLike | None, size: int, out: Path,
               identities: str | None = None, align: bool = False) -> tuple[FaceSet, str]:
    """The faces the check runs on: a folder of identity folders (optionally only ``identities``, e.g.
    "s31-s40"), or synthetic faces written into ``out``; ``align``: dlib's aligned chips of the faces."""
    if data is not None:
        faces = load_identity_folders(data, image_size=size, progress=False, align=align)
        if identities:
            from ..training.config import parse_identities

            return faces.select(parse_identities(identities)), f"{data} ({identities})"
        return faces, str(data)
    folder = synthesize(out / "faces", identities=12, images_per_identity=6, size=size, seed=1,
                        progress=False)
    return load_identity_folders(folder, image_size=size, progress=False), "synthetic (12 x 6, seed 1)"


def taken_variant(deploy: str | os.PathLike) -> tuple[str, dict[str, Path]]:
    """(variant, {"deploy", "probe"}) of an exported deploy model and the probe model beside it."""
    deploy = Path(deploy)
    variant = load_manifest(manifest_path_for(deploy))["variant"]
    probe = deploy.with_name(file_name(variant, "probe"))
    if not probe.is_file():
        raise FileNotFoundError(f"{deploy} has no probe model beside it ({probe.name}); export with "
                                "`faceprobe export`, which writes both")
    return variant, {"deploy": deploy, "probe": probe}


def deploy_embeddings(deploy_tflite: Path, images: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Embeddings of the shipped (deploy) model, in chunks."""
    runtime = Runtime(deploy_tflite, threads=threads)
    return np.concatenate([runtime.run(images[s:s + CHUNK])["embedding"]
                           for s in range(0, len(images), CHUNK)])


def latency_ms(tflite: Path, image_shape: tuple[int, ...], repeats: int = 30) -> float:
    """Median batch-1 latency of a model in this machine's interpreter (1 thread)."""
    runtime = Runtime(tflite, threads=1)
    x = np.zeros((1, *image_shape), np.float32)
    runtime.run(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runtime.run(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def measured_checks(taps: list[dict], features: dict | None, identities: dict) -> dict[str, float | None]:
    """The gate's inputs from one board's three levels."""
    feat = (features or {}).get("summary", {})
    return {
        "worst_tap_sqnr_db": min(r["sqnr_db"] for r in taps),
        "worst_tap_cosine": min(r["cosine"] for r in taps),
        "feature_change_correlation": feat.get("change_correlation"),
        "feature_gradient_cosine": feat.get("gradient_cosine"),
        "feature_max_saturation": feat.get("max_saturation"),
        "accuracy_drop_pp": identities["accuracy_drop_pp"],
        "embedding_cosine": identities["embedding_cosine_mean"],
        "flip_fraction": identities["flip_fraction"],
    }


def localise(taps: list[dict], thresholds: dict) -> dict:
    """The taps ranked by the noise each adds over the one before it; the first tap (in depth order) that
    fails the tap thresholds."""
    ranked = sorted(taps, key=lambda r: r["noise_added"], reverse=True)
    limits = thresholds["taps"]
    broken = next((r["tap"] for r in taps
                   if r["sqnr_db"] < limits["min_sqnr_db"] or r["cosine"] < limits["min_cosine"]), None)
    return {"worst_tap": ranked[0]["tap"], "first_broken_tap": broken,
            "ranking": [{"tap": r["tap"], "noise_added": r["noise_added"]} for r in ranked]}


@dataclass
class CheckData:
    """The check's faces and what every board is compared on, computed once."""

    faces: FaceSet
    images: np.ndarray  # normalised
    float_embeddings: np.ndarray  # float Keras
    pairs: Pairs
    sample: np.ndarray  # indices of the tap-level faces


def check_board(model, board, data: CheckData, scales: dict, thresholds: dict, embeddings_q: np.ndarray,
                reference: dict | None) -> dict:
    """All three levels on one board, judged (``reference``: the feature reference, None to skip features)."""
    taps = tap_level(model, board, data.images[data.sample], scales)
    feats = feature_level(model, reference, board) if reference else None
    ident = identity_level(data.float_embeddings, embeddings_q, data.faces.labels, data.pairs)
    verdicts = judge(measured_checks(taps, feats, ident), thresholds)
    return {"name": board.name, "info": board.info(), "passed": all(v.passed for v in verdicts),
            "verdicts": [v.to_dict() for v in verdicts], "taps": taps, "features": feats,
            "identities": ident, "localisation": localise(taps, thresholds)}


def run_check(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    variant: str = "int8",
    data: str | os.PathLike | None = None,
    identities: str | None = None,
    calibration: str | os.PathLike | None = None,
    calibration_identities: str | None = None,
    thresholds: str | os.PathLike | None = None,
    agents: list[str] = (),
    token: str | None = None,
    sample: int = 32,
    feature_images: int = 1,
    features: bool = True,
    subspace_size: int = FEATURE_SUBSPACE,
    steps: int = 20,
    keep_float: list[str] = (),
    quantized: str | os.PathLike | None = None,
    suggest: str = "on-fail",
    seed: int = 0,
    progress: bool = True,
    align: bool = False,
) -> dict:
    """Run the check and write report.json (+ figures and report.html) into ``out_dir``; returns the report.

    ``quantized``: an already exported deploy ``.tflite`` to check instead of exporting ``variant`` (its
    probe model must lie beside it). ``suggest``: "on-fail" (default), "always" or "never" re-export with
    the localised fix and re-check.
    """
    if suggest not in ("on-fail", "always", "never"):
        raise ValueError(f"suggest must be on-fail, always or never, got {suggest!r}")
    if variant == "float32":
        raise ValueError("--variant float32 is the reference itself; check float16, dynamic_int8 or int8")
    out = Path(out_dir)
    bar = tqdm(total=5, desc="check", disable=not progress, unit="stage")
    model, meta = load_face_model(model_path)
    size = int(model.input_shape[1])
    thresholds_used = load_thresholds(thresholds)
    faces, source = load_faces(data, size, out, identities, align)
    calib_faces = (load_faces(calibration, size, out, calibration_identities, align)[0].images
                   if calibration else faces.images)
    bar.set_postfix_str("export")
    # The float32 TFLite is the feature level's reference; a taken variant is not exported again.
    wanted = (["float32"] if features else []) + ([] if quantized else [variant])
    exported = (export_model(model_path, out / "export", variants=wanted, calibration=calib_faces,
                             keep_float=() if quantized else keep_float, seed=seed) if wanted else {})
    if quantized is not None:
        variant, exported[variant] = taken_variant(quantized)
    bar.update()

    rng = np.random.default_rng(seed)
    sample_idx = np.sort(rng.choice(len(faces.labels), min(sample, len(faces.labels)), replace=False))
    images = normalize(faces.images, meta["normalization"])
    feat_imgs = images[sample_idx[:feature_images]]
    check_data = CheckData(faces, images, embed(model, faces.images, normalization=meta["normalization"]),
                      make_pairs(faces.labels, n_folds=10, seed=seed), sample_idx)
    probe_q = exported[variant]["probe"]
    scales = tap_scales(load_manifest(manifest_path_for(probe_q)))
    bar.set_postfix_str("features")
    reference = (feature_reference(model, LocalBoard(exported["float32"]["probe"]), feat_imgs, subspace_size,
                                   steps) if features else None)
    bar.set_postfix_str("host")
    boards = [check_board(model, LocalBoard(probe_q), check_data, scales, thresholds_used,
                          deploy_embeddings(exported[variant]["deploy"], images), reference)]
    bar.update()
    bar.set_postfix_str("boards")
    for url in agents:
        remote = RemoteBoard(url, probe_q, token)
        boards.append(check_board(model, remote, check_data, scales, thresholds_used,
                                  remote_embeddings(remote, model, images), reference))
    bar.update()

    passed = all(b["passed"] for b in boards)
    host = boards[0]
    bar.set_postfix_str("suggest")
    suggestion = None
    if suggest == "always" or (suggest == "on-fail" and not passed):
        from .suggest import suggest_fix

        suggestion = suggest_fix(model_path, model, meta, host, exported[variant], check_data, calib_faces,
                                 thresholds_used, reference, out / "suggestion", seed)
    bar.update()
    report = {
        "schema": REPORT_SCHEMA,
        "passed": passed,
        "summary": {
            "passed": passed,
            "variant": variant,
            "verification_accuracy": {"float": host["identities"]["float"]["verification_accuracy"],
                                      "quantized": host["identities"]["quantized"]["verification_accuracy"]},
            "accuracy_drop_pp": host["identities"]["accuracy_drop_pp"],
            "worst_tap": host["localisation"]["worst_tap"],
            "first_broken_tap": host["localisation"]["first_broken_tap"],
            "failed_checks": sorted({f"{b['name']}:{v['name']}" for b in boards for v in b["verdicts"]
                                     if not v["passed"]}),
            "boards": [b["name"] for b in boards],
            "suggestion": None if suggestion is None else suggestion["summary"],
        },
        "model": {"path": str(model_path), "architecture": meta.get("architecture"),
                  "input_shape": meta.get("input_shape")},
        "data": {"source": source, "images": int(len(faces.labels)), "identities": len(faces.names),
                 "pairs": int(len(check_data.pairs.issame)), "tap_sample": int(len(sample_idx)),
                 "calibration": (f"{calibration} ({calibration_identities or 'all'})" if calibration
                                 else "the check faces")},
        "thresholds": thresholds_used,
        "exported": {v: {r: str(p) for r, p in roles.items()} for v, roles in exported.items()},
        "boards": [_public(b) for b in boards],
        "suggestion": suggestion,
    }
    write_report(report, boards, reference, out)
    bar.update()
    bar.close()
    return report


def remote_embeddings(board: RemoteBoard, model, images: np.ndarray) -> np.ndarray:
    """Embeddings from a board's probe model (its embedding output equals the deploy model's: the
    export verified it), one activations job per chunk."""
    from device.plan import ProbePlan

    from ..zoo import list_taps

    tap = list_taps(model)[-1].name
    return np.concatenate([board.activations(ProbePlan([{"tap": tap, "channel": 0}], images[s:s + CHUNK]))
                           ["embedding"] for s in range(0, len(images), CHUNK)])


def _public(board: dict) -> dict:
    """A board's results without the in-memory probe results (they go to figures and .npz files)."""
    out = dict(board)
    if out.get("features"):
        out["features"] = {k: v for k, v in out["features"].items() if k != "_results"}
    return out


def write_report(report: dict, boards: list[dict], reference: dict | None, out: Path) -> None:
    """report.json, the probe results (reference and per board), the figures and report.html."""
    from ..report.check_page import render_check

    if reference:
        d = out / "features"
        reference["plan"].save(d / "plan.json")
        for name in ("host", "fd_float", "full"):
            reference[name].save(d / name)
        for i, board in enumerate(boards):
            board["features"]["_results"]["fd_quant"].save(d / f"fd_quant_board{i}")
    atomic.write_json(out / "report.json", report)
    render_check(out)
