"""`derive`: prune a teacher face network in dependency groups, then distil it; a resumable training run."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import atomic
from .config import DeriveConfig

RUN_ENTRIES = {
    "derive.json",
    "emergence",
    "pruned.keras",
    "pruned.meta.json",
    "checkpoints",
    "logs",
    "synth",
    "history.json",
    "model.keras",
    "model.meta.json",
}


@dataclass(frozen=True)
class DeriveResult:
    """Where the student is and what it cost."""

    model_path: str
    params: int
    macs: int
    teacher_params: int
    teacher_macs: int
    epochs_completed: int
    train_seconds: float
    history: list[dict]
    holdout_cosine: float | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _faces(
    data: str | None, identities: list[str] | None, size: int, align: bool, crop: bool, progress: bool
):
    from ..data import load_identity_folders

    fs = load_identity_folders(data, image_size=size, align=align, crop=crop, progress=progress)
    return fs.select(identities) if identities else fs


def _synthetic(run_dir: Path, n_real: int, cfg: DeriveConfig, size: int, progress: bool) -> np.ndarray:
    """Synthetic faces to make up ``synthetic_fraction`` of the pool (none when it is 0)."""
    if cfg.synthetic_fraction <= 0 or n_real == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    from ..data import load_identity_folders, synthesize

    want = math.ceil(cfg.synthetic_fraction / max(1e-9, 1 - cfg.synthetic_fraction) * n_real)
    root = synthesize(
        run_dir / "synth",
        identities=max(2, math.ceil(want / 10)),
        images_per_identity=10,
        size=size,
        seed=cfg.seed,
        progress=progress,
    )
    return load_identity_folders(root, image_size=size, progress=False).images[:want]


def _pairs_accuracy(emb: np.ndarray, labels: np.ndarray) -> float | None:
    """Verification accuracy on all pairs of the held-out faces (best threshold over folds), or None."""
    from ..data import make_pairs
    from ..evaluate import pair_scores, verification_metrics

    for folds in (10, 5, 2):
        try:
            pairs = make_pairs(labels, n_folds=folds, seed=0)
        except ValueError:
            continue
        scores = pair_scores(emb, pairs.left, pairs.right)
        return float(verification_metrics(scores, pairs.issame, pairs.fold)["verification_accuracy"])
    return None


def derive(
    teacher_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: DeriveConfig | None = None,
    data: str | None = None,
    identities: list[str] | None = None,
    align: bool = False,
    crop: bool = False,
    resume: bool = False,
    probe_every: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DeriveResult:
    """Derive a compact student of the face model at ``teacher_path`` into ``out_dir``.

    ``data`` is a folder of identity folders (labels are not used for training, only to hold out people
    for the per-epoch verification); without it, synthetic faces. ``resume`` continues the run in
    ``out_dir`` with the settings it was started with. ``probe_every``: probe the emergence of features
    per stage every that many steps (``out_dir/emergence``, as `faceprobe train --probe-every`)."""
    import keras
    import tensorflow as tf

    from ..modelfile import load_face_model, save_face_model
    from ..train import make_strategy
    from ..training.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
    from .distill import Distiller, hint_taps, run_epochs
    from .graph import analyse
    from .prune import (
        build_student,
        channel_importance,
        kept_channels,
        model_size,
        prune_by_fractions,
        prune_to_budget,
    )

    run_dir = Path(out_dir)
    record_path = run_dir / "derive.json"
    teacher_path = Path(teacher_path)
    teacher, teacher_meta = load_face_model(teacher_path)
    norm = teacher_meta["normalization"]
    size_t = int(teacher.input_shape[1])
    if resume:
        if not record_path.is_file():
            raise FileNotFoundError(
                f"{run_dir} holds no derive run to resume (no derive.json); start one without resume"
            )
        from device.files import read_json

        record = read_json(record_path, "derive record")
        from .config import validate_derive_config

        cfg = validate_derive_config(record["config"])
        if record["teacher_sha256"] != _sha256(teacher_path):
            raise ValueError(f"{teacher_path} is not the teacher this run started from; pass the same file")
        data, identities = data or record["data"], record["identities"]
        align, crop = record["align"], record["crop"]
    elif record_path.exists():
        raise ValueError(f"{run_dir} already holds a derive run; resume it or choose a new output folder")
    cfg = cfg or DeriveConfig()
    if cfg.keep is None and cfg.params is None and cfg.macs is None:
        raise ValueError("say how small the student should be: a parameter or MAC budget, or keep fractions")
    strategy = make_strategy(cfg.strategy)
    run_dir.mkdir(parents=True, exist_ok=True)

    if data:
        fs = _faces(data, identities, size_t, align, crop, progress)
        if len(fs.names) < 2:
            raise ValueError(f"{data}: derive needs faces of at least 2 people, found {len(fs.names)}")
        held = fs.names[-cfg.holdout :] if 0 < cfg.holdout < len(fs.names) else []
        train_fs = fs.select([n for n in fs.names if n not in held])
        holdout_fs = fs.select(held) if held else None
        real = train_fs.images
    else:
        real, holdout_fs = np.zeros((0, size_t, size_t, 3), np.uint8), None
    pool = (
        np.concatenate([real, _synthetic(run_dir, len(real), cfg, size_t, progress)])
        if len(real)
        else _synthetic_only(run_dir, cfg, size_t, progress)
    )
    log(
        f"{len(pool)} training faces ({len(real)} real), "
        f"{len(holdout_fs.names) if holdout_fs else 0} people held out for verification"
    )

    keras.utils.set_random_seed(cfg.seed)
    pruned_path = run_dir / "pruned.keras"
    if resume:
        student, _ = load_face_model(pruned_path)
        hints = {k: list(v) for k, v in record["hints"].items()}
        summary = record["pruning"]
    else:
        from ..data import normalize

        graph = analyse(teacher)
        rng = np.random.default_rng(cfg.seed)
        sample = pool[rng.choice(len(pool), size=min(len(pool), 256), replace=False)]
        scores = channel_importance(teacher, graph, normalize(sample, norm))
        pruning = (
            prune_by_fractions(graph, scores, list(cfg.keep))
            if cfg.keep is not None
            else prune_to_budget(graph, scores, cfg.params, cfg.macs, cfg.cost_power, cfg.stream_cap)
        )
        shape = None if not cfg.size else (cfg.size, cfg.size, int(teacher.input_shape[-1]))
        student = build_student(
            teacher, graph, pruning.kept, name=f"{teacher.name}_derived", input_shape=shape
        )
        t_params, t_macs = model_size(teacher)
        s_params, s_macs = model_size(student)
        hints = {n: p for n, p in tap_positions(graph, pruning).items() if n in set(hint_taps(teacher))}
        summary = {
            "params": int(s_params),
            "macs": int(s_macs),
            "teacher_params": int(t_params),
            "teacher_macs": int(t_macs),
            "groups": pruning.group_sizes(graph),
            "kept_channels": kept_channels(graph, pruning),
        }
        save_face_model(student, pruned_path, normalization=norm)
        atomic.write_json(
            record_path,
            {
                "teacher": str(teacher_path),
                "teacher_sha256": _sha256(teacher_path),
                "config": cfg.to_dict(),
                "data": data,
                "identities": identities,
                "align": align,
                "crop": crop,
                "pruning": summary,
                "hints": hints,
                "holdout": holdout_fs.names if holdout_fs else [],
            },
        )
        log(
            f"pruned: {summary['params']:,} parameters "
            f"({summary['params'] / t_params:.0%} of the teacher's), "
            f"{summary['macs'] / 1e6:.0f} M MACs ({summary['macs'] / t_macs:.0%})"
        )

    d = Distiller(teacher, student, hints, cfg, norm, strategy)
    if holdout_fs is not None:
        holdout_teacher = d.embed(teacher, holdout_fs.images)
    fingerprint = {
        "teacher_sha256": _sha256(teacher_path),
        "config": cfg.to_dict(),
        "student_params": int(student.count_params()),
    }
    ckpt = checkpoint_path(run_dir)
    start, history = 0, []
    if resume and ckpt.exists():
        start, history = load_checkpoint(ckpt, student, d.optimizer, fingerprint)
        log(f"resuming {run_dir} after epoch {start}/{cfg.epochs}")
    writer = tf.summary.create_file_writer(str(run_dir / "logs" / "derive"))

    def on_epoch(epoch: int, logs: dict) -> None:
        if holdout_fs is not None:
            emb = d.embed(student, holdout_fs.images)
            logs["holdout_cosine_to_teacher"] = float(np.mean(np.sum(emb * holdout_teacher, axis=1)))
            acc = _pairs_accuracy(emb, holdout_fs.labels)
            if acc is not None:
                logs["holdout_verification_accuracy"] = acc
        logs["epoch"] = epoch + 1
        history.append(logs)
        with writer.as_default(step=epoch + 1):
            for key, value in logs.items():
                if key != "epoch":
                    tf.summary.scalar(key, value)
        writer.flush()
        save_checkpoint(ckpt, student, d.optimizer, epoch + 1, history, fingerprint)
        shown = ", ".join(
            f"{k} {v:.4f}"
            for k, v in logs.items()
            if k in ("loss", "holdout_cosine_to_teacher", "holdout_verification_accuracy")
        )
        log(f"epoch {epoch + 1}: {shown}")

    elapsed = history[-1]["seconds"] if history else 0.0
    budget_left = not cfg.minutes or elapsed < cfg.minutes * 60
    if start < cfg.epochs and budget_left:
        emergence = None
        if probe_every:
            from ..probe.emergence import EmergenceCallback

            faces = holdout_fs.images if holdout_fs is not None else pool
            size_s = int(student.input_shape[1])
            if faces.shape[1] != size_s:
                faces = tf.cast(tf.image.resize(faces, (size_s, size_s)), tf.uint8).numpy()
            emergence = EmergenceCallback(student, faces, every=probe_every, out_dir=run_dir / "emergence")
            student.optimizer = d.optimizer  # its iterations count the steps across a resumed run
            emergence.set_model(student)
            emergence.on_train_begin()
        elapsed = run_epochs(d, pool, start, elapsed, on_epoch, progress=progress,
                             on_step=(lambda: emergence.on_train_batch_end(0)) if emergence else None)
        if emergence is not None:
            emergence.on_train_end()
    origin = {
        "derived_from": teacher_meta.get("architecture", teacher.name),
        "teacher": str(teacher_path),
        "teacher_sha256": _sha256(teacher_path),
        "teacher_origin": teacher_meta.get("origin"),
    }
    model_path = save_face_model(
        student,
        run_dir / "model.keras",
        normalization=norm,
        origin=origin,
        derive={"recipe": cfg.to_dict(), **summary, "epochs": len(history), "train_seconds": elapsed},
    )
    atomic.write_json(run_dir / "history.json", history)
    return DeriveResult(
        str(model_path),
        summary["params"],
        summary["macs"],
        summary["teacher_params"],
        summary["teacher_macs"],
        len(history),
        float(elapsed),
        history,
        history[-1].get("holdout_cosine_to_teacher") if history else None,
    )


def _synthetic_only(run_dir: Path, cfg: DeriveConfig, size: int, progress: bool) -> np.ndarray:
    """Without a data folder: synthetic faces alone."""
    from ..data import load_identity_folders, synthesize

    root = synthesize(
        run_dir / "synth", identities=20, images_per_identity=10, size=size, seed=cfg.seed, progress=progress
    )
    return load_identity_folders(root, image_size=size, progress=False).images


def tap_positions(graph, pruning) -> dict[str, list[int]]:
    """Per tap of the teacher: the channels the student keeps."""
    from ..zoo.taps import TapPoint
    from .prune import positions

    return {
        c.op.tap.name: positions(graph, c.outputs[0], pruning.kept).tolist()
        for c in graph.calls
        if isinstance(c.op, TapPoint)
    }
