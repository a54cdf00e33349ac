"""A compact face network derived from a pretrained one: pruned in dependency groups, then distilled.

    python scripts/bench/derive.py --data ../shared/data/att_faces --json [--out DIR]

Derives from dlib's ResNet port (or ``--teacher MODEL.keras``, pruned to half its MACs unless a recipe says
otherwise) on faces of s1-s30, and evaluates on s31-s40, people never used to prune or distil: 10-fold
verification on 900 pairs, single pass (``verification_accuracy``) and with flips; the teacher on the same
pairs; the mean cosine of the student's descriptor to the teacher's; the same two right after pruning
(``before_finetune``: after the least-squares reconstruction where the recipe has one, and beside it the
same channels with the teacher's weights, ``without_reconstruction``); the int8 deploy file (calibrated
on s1-s30) with its verification, size, batch-1 speed-up over the teacher's int8 file timed side by side
(and, as the control, over the teacher with the same exact stem rewrite as the student:
``speedup_vs_teacher_same_stem_int8_b1``), and whether `faceprobe check` passes it. ``fast`` is a second
operating point (the same recipe at a smaller input, ``--fast-size``). ``--out DIR`` keeps the runs
(``DIR/model.keras`` is the student); running again with the same ``--out`` resumes them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "att_faces"))
    p.add_argument("--teacher", help="a faceprobe model.keras to derive from (default: dlib's port)")
    p.add_argument(
        "--recipe",
        help="derive recipe (default: models/dlib-compact.toml; with --teacher, half the teacher's MACs)",
    )
    p.add_argument("--train-identities", default="s1-s30")
    p.add_argument("--eval-identities", default="s31-s40")
    p.add_argument("--minutes", type=float, help="bound on the fine-tuning (default: the recipe's)")
    p.add_argument(
        "--fast-size",
        type=int,
        help="input size of the fast operating point (default 112 for dlib's port; none for --teacher)",
    )
    p.add_argument("--fast-minutes", type=float, help="bound on the fast point's fine-tuning")
    p.add_argument("--no-fast", action="store_true", help="skip the fast operating point")
    p.add_argument(
        "--part",
        choices=("all", "main", "fast"),
        default="all",
        help="train only one operating point (to run both at once); `all` evaluates",
    )
    p.add_argument("--no-check", action="store_true", help="skip `faceprobe check` of the int8 file")
    p.add_argument("--quick", action="store_true", help="smoke mode: few faces, a few steps, no check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder to keep the runs in (default: a temporary one)")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def _verification(emb, pairs) -> float:
    from toolkit.evaluate import pair_scores, verification_metrics

    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return float(
        verification_metrics(pair_scores(e, pairs.left, pairs.right), pairs.issame, pairs.fold)[
            "verification_accuracy"
        ]
    )


def _embed(model, images, flip=False):
    from toolkit.evaluate import embed

    if images.shape[1] != model.input_shape[1]:
        import cv2

        size = int(model.input_shape[1])
        images = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])
    return embed(model, images, flip=flip)


def _derive(teacher, run, cfg, args, data_ids, align, log):
    from toolkit.derive import derive

    resume = (Path(run) / "derive.json").exists()
    return derive(
        teacher,
        run,
        cfg,
        data=args.data,
        identities=data_ids,
        align=align,
        resume=resume,
        progress=not args.json,
        log=log,
    )


def _int8(model_path, calib, out, size):
    """The int8 deploy file of a model calibrated on ``calib`` (uint8 faces at the teacher's size)."""
    import cv2

    from toolkit.export import export_model

    if calib.shape[1] != size:
        calib = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in calib])
    return export_model(model_path, out, ["int8"], calibration=calib, progress=False)["int8"]["deploy"]


def _tflite_verification(path, images, pairs) -> float:
    from device.runtime import Runtime
    from toolkit.data import normalize

    rt = Runtime(path)
    size = int(rt.manifest["input"]["shape"][1])
    x = normalize(images)
    if x.shape[1] != size:
        import cv2

        x = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in x])
    emb = np.concatenate([rt.run(x[s : s + 16])["embedding"] for s in range(0, len(x), 16)]).astype(
        np.float64
    )
    return _verification(emb, pairs)


def _check(model, out, args, align) -> bool:
    """Whether `faceprobe check` passes the int8 file; a check that cannot judge stops the bench."""
    cmd = [
        sys.executable,
        "-m",
        "toolkit.cli",
        "check",
        str(model),
        "--data",
        args.data,
        "--identities",
        args.eval_identities,
        "--calibration",
        args.data,
        "--calibration-identities",
        args.train_identities,
        "--search",
        "never",
        "--out",
        str(out),
        "--json",
    ] + (["--align"] if align else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"faceprobe check could not judge the int8 file: {done.stderr.strip()[-500:]}")
    return done.returncode == 0


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"no face data at {data}: pass --data ../shared/data/att_faces", file=sys.stderr)
        return 2
    from toolkit.data import load_identity_folders, make_pairs, parse_identities
    from toolkit.derive import DeriveConfig, load_derive_config
    from toolkit.derive.prune import model_size
    from toolkit.derive.stem import shipped_stem
    from toolkit.modelfile import load_face_model, save_face_model

    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    tmp = tempfile.TemporaryDirectory()
    out = Path(args.out or tmp.name)
    out.mkdir(parents=True, exist_ok=True)
    if args.teacher:
        teacher_path, align = Path(args.teacher), False
        t_model, t_meta = load_face_model(teacher_path)
        cfg = (
            load_derive_config(args.recipe)
            if args.recipe
            else DeriveConfig(macs=model_size(t_model)[1] // 2, stream_cap=None, cost_power=0.0)
        )
    else:
        from toolkit.zoo.dlib_resnet import dlib_resnet

        teacher_path, align = out / "teacher.keras", True
        if not teacher_path.exists():
            t_model, origin = dlib_resnet()
            save_face_model(t_model, teacher_path, origin=origin)
        t_model, t_meta = load_face_model(teacher_path)
        cfg = load_derive_config(args.recipe or ROOT / "models" / "dlib-compact.toml")
    size_t = int(t_model.input_shape[1])
    overrides = {"minutes": args.minutes, "seed": args.seed}
    if args.quick:
        overrides.update(epochs=1, steps_per_epoch=2, batch_size=8, minutes=None, synthetic_fraction=0.1)
    cfg = cfg.with_overrides(**overrides)
    train_ids = parse_identities(args.train_identities)
    eval_ids = parse_identities(args.eval_identities)
    if args.quick:
        train_ids, eval_ids = train_ids[:4], eval_ids[:3]
    if set(train_ids) & set(eval_ids):
        print("training and evaluation identities overlap", file=sys.stderr)
        return 2

    fast_size = None if args.no_fast else args.fast_size or (None if args.teacher else 112)
    if args.part in ("all", "main"):
        result = _derive(teacher_path, out / "run", cfg, args, train_ids, align, log)
    fast = None
    if args.part in ("all", "fast") and fast_size:
        # Reconstruction fits the teacher's maps at its own size; a smaller student learns from scratch.
        minutes = None if args.quick else args.fast_minutes
        fast_cfg = cfg.with_overrides(size=fast_size, reconstruct=False, minutes=minutes)
        fast = _derive(teacher_path, out / "fast", fast_cfg, args, train_ids, align, log)
    if args.part != "all":
        return 0

    fs = load_identity_folders(args.data, image_size=size_t, align=align, progress=False)
    eval_fs, train_fs = fs.select(eval_ids), fs.select(train_ids)
    pairs = make_pairs(eval_fs.labels, n_folds=2 if args.quick else 10, seed=args.seed)
    teacher_emb = _embed(t_model, eval_fs.images)
    student, _ = load_face_model(result.model_path)
    pruned, _ = load_face_model(out / "run" / "pruned.keras")
    s_emb, p_emb = _embed(student, eval_fs.images), _embed(pruned, eval_fs.images)
    record = json.loads((out / "run" / "derive.json").read_text())
    plain_emb = None
    if "reconstruction" in record["pruning"]:  # the control: the same channels, the teacher's weights
        from toolkit.derive.graph import analyse
        from toolkit.derive.prune import build_student, kept_from_channels

        graph = analyse(t_model)
        plain = build_student(t_model, graph, kept_from_channels(graph, record["pruning"]["kept_channels"]))
        plain_emb = _embed(plain, eval_fs.images)
    (out / "model.keras").unlink(missing_ok=True)
    os.link(result.model_path, out / "model.keras")
    meta = Path(result.model_path).with_name("model.meta.json")
    (out / "model.meta.json").unlink(missing_ok=True)
    os.link(meta, out / "model.meta.json")

    calib = train_fs.images[: 2 * len(train_ids)] if args.quick else train_fs.images
    t_int8 = (
        _int8(teacher_path, calib, out / "teacher-export", size_t)
        if not (out / "teacher-export" / "model.int8.tflite").exists()
        else out / "teacher-export" / "model.int8.tflite"
    )
    s_int8 = _int8(out / "model.keras", calib, out / "export", size_t)
    # The control: the teacher with the same exact stem rewrite as the student, where the recipe has one.
    t_stem = shipped_stem(t_model, cfg.stem)
    if t_stem is not t_model:
        save_face_model(t_stem, out / "teacher-stem.keras", normalization=t_meta["normalization"])
    files = [t_int8, s_int8] + (
        [_int8(out / "teacher-stem.keras", calib, out / "teacher-stem-export", size_t)]
        if t_stem is not t_model else [t_int8]
    ) + ([_int8(fast.model_path, calib, out / "fast-export", fast_size)] if fast else [])
    from device.bench import latency_ms  # each file on its own input size, timed round by round

    t_ms, s_ms, ts_ms, *f_ms = latency_ms(files, 5 if args.quick else 200)
    report = {
        "params": result.params,
        "macs": result.macs,
        "input_size": int(student.input_shape[1]),
        "verification_accuracy": _verification(s_emb, pairs),
        "verification_accuracy_flip": _verification(_embed(student, eval_fs.images, flip=True), pairs),
        "teacher_verification_accuracy": _verification(teacher_emb, pairs),
        "teacher_params": result.teacher_params,
        "teacher_macs": result.teacher_macs,
        "cosine_to_teacher": float(np.mean(np.sum(s_emb * teacher_emb, axis=1))),
        "before_finetune": {
            "verification_accuracy": _verification(p_emb, pairs),
            "cosine_to_teacher": float(np.mean(np.sum(p_emb * teacher_emb, axis=1))),
            "reconstructed": plain_emb is not None,
            "without_reconstruction": None
            if plain_emb is None
            else {
                "verification_accuracy": _verification(plain_emb, pairs),
                "cosine_to_teacher": float(np.mean(np.sum(plain_emb * teacher_emb, axis=1))),
            },
        },
        "train_minutes": result.train_seconds / 60.0,
        "epochs": result.epochs_completed,
        "int8": {
            "verification_accuracy": _tflite_verification(s_int8, eval_fs.images, pairs),
            "size_bytes": int(Path(s_int8).stat().st_size),
            "speedup_vs_teacher_int8_b1": t_ms / s_ms,
            "speedup_vs_teacher_same_stem_int8_b1": ts_ms / s_ms,
            "latency_ms": {"teacher": t_ms, "teacher_same_stem": ts_ms, "student": s_ms},
            "check_passed": None
            if (args.quick or args.no_check)
            else _check(out / "model.keras", out / "check", args, align),
        },
        "fast": None
        if fast is None
        else {
            "input_size": fast_size,
            "params": fast.params,
            "macs": fast.macs,
            "verification_accuracy": _verification(
                _embed(load_face_model(fast.model_path)[0], eval_fs.images), pairs
            ),
            "int8_speedup_vs_teacher_int8_b1": t_ms / f_ms[0],
            "int8_speedup_vs_teacher_same_stem_int8_b1": ts_ms / f_ms[0],
            "train_minutes": fast.train_seconds / 60.0,
        },
        "pairs": int(len(pairs.issame)),
        "recipe": cfg.to_dict(),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:32s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
