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
from .config import DeriveConfig, validate_derive_config

RUN_ENTRIES = {"derive.json", "emergence", "pruned.keras", "pruned.meta.json", "checkpoints", "logs", "synth",
               "history.json", "model.keras", "model.meta.json"}


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


@dataclass(frozen=True)
class _Source:
    """What a run learns from: the settings and the faces, as started (a resumed run reads them back)."""

    cfg: DeriveConfig
    data: str | None
    identities: list[str] | None
    align: bool
    crop: bool
    record: dict | None  # derive.json of the run being resumed


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source(run_dir: Path, teacher_path: Path, cfg: DeriveConfig | None, data, identities, align: bool,
            crop: bool, resume: bool) -> _Source:
    record_path = run_dir / "derive.json"
    if not resume:
        if record_path.exists():
            raise ValueError(f"{run_dir} already holds a derive run; resume it or choose a new output folder")
        cfg = cfg or DeriveConfig()
        if cfg.keep is None and cfg.params is None and cfg.macs is None:
            raise ValueError("say how small the student should be: a parameter or MAC budget, or keep "
                             "fractions")
        return _Source(cfg, data, identities, align, crop, None)
    if not record_path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no derive run to resume (no derive.json); start one "
                                "without resume")
    from device.files import read_json

    record = read_json(record_path, "derive record")
    if record["teacher_sha256"] != _sha256(teacher_path):
        raise ValueError(f"{teacher_path} is not the teacher this run started from; pass the same file")
    return _Source(validate_derive_config(record["config"]), data or record["data"], record["identities"],
                   record["align"], record["crop"], record)


def _synthetic(run_dir: Path, count: int, seed: int, size: int, progress: bool) -> np.ndarray:
    """``count`` synthetic faces (the project's own, generated into the run)."""
    if count <= 0:
        return np.zeros((0, size, size, 3), np.uint8)
    from ..data import load_identity_folders, synthesize

    root = synthesize(run_dir / "synth", identities=max(2, math.ceil(count / 10)), images_per_identity=10,
                      size=size, seed=seed, progress=progress)
    return load_identity_folders(root, image_size=size, progress=False).images[:count]


def _training_faces(run_dir: Path, src: _Source, size: int, progress: bool):
    """(the training pool of uint8 faces, the FaceSet of people held out, or None)."""
    if not src.data:
        return _synthetic(run_dir, 200, src.cfg.seed, size, progress), None
    from ..data import load_identity_folders

    fs = load_identity_folders(src.data, image_size=size, align=src.align, crop=src.crop, progress=progress,
                               identities=src.identities)
    if len(fs.names) < 2:
        raise ValueError(f"{src.data}: derive needs faces of at least 2 people, found {len(fs.names)}")
    held = fs.names[-src.cfg.holdout:] if 0 < src.cfg.holdout < len(fs.names) else []
    real = fs.select([n for n in fs.names if n not in held]).images
    frac = src.cfg.synthetic_fraction
    extra = math.ceil(frac / max(1e-9, 1 - frac) * len(real)) if frac > 0 else 0
    pool = np.concatenate([real, _synthetic(run_dir, extra, src.cfg.seed, size, progress)])
    return pool, (fs.select(held) if held else None)


def tap_positions(graph, pruning) -> dict[str, list[int]]:
    """Per tap of the teacher: the channels the student keeps."""
    from ..zoo.taps import TapPoint
    from .prune import positions

    return {c.op.tap.name: positions(graph, c.outputs[0], pruning.kept).tolist() for c in graph.calls
            if isinstance(c.op, TapPoint)}


def _sample(faces: np.ndarray, norm: dict, cfg: DeriveConfig, count: int) -> np.ndarray:
    """Up to ``count`` of the uint8 ``faces``, normalised, drawn by the recipe's seed."""
    from ..data import normalize

    rng = np.random.default_rng(cfg.seed)
    return normalize(faces[rng.choice(len(faces), size=min(len(faces), count), replace=False)], norm)


def plan_pruning(teacher, faces: np.ndarray, norm: dict, cfg: DeriveConfig):
    """(the teacher's dependency graph, the channels ``cfg`` keeps), importance measured on up to 256 of
    the uint8 ``faces``."""
    from .graph import analyse
    from .prune import channel_importance, prune_by_fractions, prune_to_budget

    graph = analyse(teacher)
    scores = channel_importance(teacher, graph, _sample(faces, norm, cfg, 256))
    pruning = (prune_by_fractions(graph, scores, list(cfg.keep)) if cfg.keep is not None
               else prune_to_budget(graph, scores, cfg.params, cfg.macs, cfg.cost_power, cfg.stream_cap))
    return graph, pruning


def _prune(teacher, norm: dict, pool: np.ndarray, cfg: DeriveConfig):
    """(the pruned student, hint tap -> kept channels, the pruning summary)."""
    from .distill import hint_taps
    from .prune import build_student, kept_channels, model_size

    graph, pruning = plan_pruning(teacher, pool, norm, cfg)
    shape = (cfg.size, cfg.size, int(teacher.input_shape[-1])) if cfg.size else None
    try:
        student = build_student(teacher, graph, pruning.kept, name=f"{teacher.name}_derived",
                                input_shape=shape)
    except ValueError as exc:  # a layer of the teacher cannot take that size
        if not shape:
            raise
        raise ValueError(f"size {cfg.size} px does not fit {teacher.name} ({str(exc).splitlines()[0]}); "
                         f"give a size nearer its own {teacher.input_shape[1]} px") from None
    if cfg.reconstruct:
        from .reconstruct import reconstruct

        # 160 faces and their mirror images: enough rows that the deepest 3x3 convs are not overfitted.
        x = _sample(pool, norm, cfg, RECONSTRUCT_FACES)
        fitted = reconstruct(graph, pruning.kept, student, np.concatenate([x, x[:, :, ::-1]]), seed=cfg.seed)
    (t_params, t_macs), (s_params, s_macs) = model_size(teacher), model_size(student)
    wanted = set(hint_taps(teacher))
    hints = {n: p for n, p in tap_positions(graph, pruning).items() if n in wanted}
    summary = {"params": int(s_params), "macs": int(s_macs), "teacher_params": int(t_params),
               "teacher_macs": int(t_macs), "groups": pruning.group_sizes(graph),
               "kept_channels": kept_channels(graph, pruning)}
    if cfg.reconstruct:
        summary["reconstruction"] = fitted
    return student, hints, summary


RECONSTRUCT_FACES = 160


class _EpochEnd:
    """After each epoch: held-out cosine and verification, TensorBoard, the checkpoint, one line."""

    def __init__(self, run_dir: Path, distiller, holdout, history: list[dict], fingerprint: dict, log):
        import tensorflow as tf

        from ..training.checkpoint import checkpoint_path

        self.d, self.holdout, self.history, self.fingerprint, self.log = (distiller, holdout, history,
                                                                          fingerprint, log)
        self.reference = distiller.embed(distiller.teacher, holdout.images) if holdout is not None else None
        self.ckpt = checkpoint_path(run_dir)
        self.writer = tf.summary.create_file_writer(str(run_dir / "logs" / "derive"))

    def __call__(self, epoch: int, logs: dict) -> None:
        import tensorflow as tf

        from ..training.checkpoint import save_checkpoint

        if self.holdout is not None:
            emb = self.d.embed(self.d.student, self.holdout.images)
            logs["holdout_cosine_to_teacher"] = float(np.mean(np.sum(emb * self.reference, axis=1)))
            acc = _pairs_accuracy(emb, self.holdout.labels)
            if acc is not None:
                logs["holdout_verification_accuracy"] = acc
        logs["epoch"] = epoch + 1
        self.history.append(logs)
        with self.writer.as_default(step=epoch + 1):
            for key, value in logs.items():
                if key != "epoch":
                    tf.summary.scalar(key, value)
        self.writer.flush()
        save_checkpoint(self.ckpt, self.d.student, self.d.optimizer, epoch + 1, self.history,
                        self.fingerprint)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in logs.items()
                          if k in ("loss", "holdout_cosine_to_teacher", "holdout_verification_accuracy"))
        self.log(f"epoch {epoch + 1}: {shown}")


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


def _emergence(run_dir: Path, distiller, faces: np.ndarray, every: int):
    """The emergence probe of `faceprobe train --probe-every`, driven step by step."""
    import tensorflow as tf

    from ..probe.emergence import EmergenceCallback

    size = int(distiller.student.input_shape[1])
    if faces.shape[1] != size:
        faces = tf.cast(tf.image.resize(faces, (size, size)), tf.uint8).numpy()
    probe = EmergenceCallback(distiller.student, faces, every=every, out_dir=run_dir / "emergence")
    distiller.student.optimizer = distiller.optimizer  # its iterations count steps across a resumed run
    probe.set_model(distiller.student)
    probe.on_train_begin()
    return probe


def derive(teacher_path: str | os.PathLike, out_dir: str | os.PathLike, cfg: DeriveConfig | None = None,
           data: str | None = None, identities: list[str] | None = None, align: bool = False,
           crop: bool = False, resume: bool = False, probe_every: int | None = None, progress: bool = True,
           log: Callable[[str], None] = print) -> DeriveResult:
    """Derive a compact student of the face model at ``teacher_path`` into ``out_dir``.

    ``data`` is a folder of identity folders (labels are not used for training, only to hold out people
    for the per-epoch verification); without it, synthetic faces. ``resume`` continues the run in
    ``out_dir`` with the settings it was started with. ``probe_every``: probe the emergence of features
    per stage every that many steps (``out_dir/emergence``, as `faceprobe train --probe-every`)."""
    import keras

    from ..modelfile import load_face_model, save_face_model
    from ..train import make_strategy
    from ..training.checkpoint import checkpoint_path, load_checkpoint
    from .distill import Distiller, run_epochs
    from .prune import model_size
    from .stem import shipped_stem

    run_dir, teacher_path = Path(out_dir), Path(teacher_path)
    teacher, teacher_meta = load_face_model(teacher_path)
    src = _source(run_dir, teacher_path, cfg, data, identities, align, crop, resume)
    cfg, norm = src.cfg, teacher_meta["normalization"]
    if cfg.reconstruct and cfg.size and cfg.size != int(teacher.input_shape[1]):
        raise ValueError(f"reconstruct refits the student on the teacher's maps, which --size {cfg.size} "
                         f"(not the teacher's {teacher.input_shape[1]} px) does not have; drop one of them")
    strategy = make_strategy(cfg.strategy)
    run_dir.mkdir(parents=True, exist_ok=True)
    pool, holdout = _training_faces(run_dir, src, int(teacher.input_shape[1]), progress)
    log(f"{len(pool)} training faces, {len(holdout.names) if holdout else 0} people held out for "
        "verification")

    keras.utils.set_random_seed(cfg.seed)
    if src.record is not None:
        student, _ = load_face_model(run_dir / "pruned.keras")
        hints, summary = {k: list(v) for k, v in src.record["hints"].items()}, src.record["pruning"]
    else:
        student, hints, summary = _prune(teacher, norm, pool, cfg)
        save_face_model(student, run_dir / "pruned.keras", normalization=norm)
        atomic.write_json(run_dir / "derive.json", {
            "teacher": str(teacher_path), "teacher_sha256": _sha256(teacher_path), "config": cfg.to_dict(),
            "data": src.data, "identities": src.identities, "align": src.align, "crop": src.crop,
            "pruning": summary, "hints": hints, "holdout": holdout.names if holdout else []})
        log(f"pruned: {summary['params']:,} parameters ({summary['params'] / summary['teacher_params']:.0%} "
            f"of the teacher's), {summary['macs'] / 1e6:.0f} M MACs "
            f"({summary['macs'] / summary['teacher_macs']:.0%})")

    centre = None
    if cfg.centred_weight:
        from .distill import mean_embedding

        centre = mean_embedding(teacher, pool, norm)
    d = Distiller(teacher, student, hints, cfg, norm, strategy, centre)
    # The settings as the run recorded them: a setting added since, at its default, is the same run.
    fingerprint = {"teacher_sha256": _sha256(teacher_path),
                   "config": src.record["config"] if src.record else cfg.to_dict(),
                   "student_params": int(student.count_params())}
    start, history = 0, []
    if src.record is not None and checkpoint_path(run_dir).exists():
        start, history = load_checkpoint(checkpoint_path(run_dir), student, d.optimizer, fingerprint)
        log(f"resuming {run_dir} after epoch {start}/{cfg.epochs}")
    elapsed = history[-1]["seconds"] if history else 0.0
    if start < cfg.epochs and (not cfg.minutes or elapsed < cfg.minutes * 60):
        probe = _emergence(run_dir, d, holdout.images if holdout else pool, probe_every) if probe_every \
            else None
        on_epoch = _EpochEnd(run_dir, d, holdout, history, fingerprint, log)
        elapsed = run_epochs(d, pool, start, elapsed, on_epoch, progress=progress,
                             on_step=(lambda: probe.on_train_batch_end(0)) if probe else None)
        if probe is not None:
            probe.on_train_end()
    # The student ships with the stem its recipe asks for (the same function; what the int8 kernels run).
    shipped = shipped_stem(student, cfg.stem)
    if shipped is not student:
        params, macs = model_size(shipped)
        summary = {**summary, "params": int(params), "macs": int(macs), "stem": "space_to_depth"}
        log(f"stem as space-to-depth: {params:,} parameters, {macs / 1e6:.0f} M MACs")
    origin = {"derived_from": teacher_meta.get("architecture", teacher.name), "teacher": str(teacher_path),
              "teacher_sha256": _sha256(teacher_path), "teacher_origin": teacher_meta.get("origin")}
    model_path = save_face_model(shipped, run_dir / "model.keras", normalization=norm, origin=origin,
                                 derive={"recipe": cfg.to_dict(), **summary, "epochs": len(history),
                                         "train_seconds": elapsed})
    atomic.write_json(run_dir / "history.json", history)
    return DeriveResult(str(model_path), summary["params"], summary["macs"], summary["teacher_params"],
                        summary["teacher_macs"], len(history), float(elapsed), history,
                        history[-1].get("holdout_cosine_to_teacher") if history else None)
