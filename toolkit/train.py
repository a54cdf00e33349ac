"""Margin-softmax training of a zoo face CNN: checkpoints each epoch, resume, TensorBoard, BN repair.

`train(config, out_dir)` leaves in the run dir: ``config.json`` (the resolved recipe and the data used),
``checkpoints/last.npz`` (weights, optimizer state, epoch, history; rewritten atomically every epoch),
``logs/`` (TensorBoard: loss, accuracy, learning rate and training-face verification accuracy per
epoch), ``history.json``, ``train.json`` (the result) and ``model.keras`` (the
embedding model, head dropped, with its taps and normalisation).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import atomic
from .training.config import TrainConfig, load_recipe, load_train_config

if TYPE_CHECKING:
    import keras

    from .data import FaceSet

__all__ = ["TrainConfig", "TrainResult", "build_embedding", "build_training_model", "compile_training_model",
           "load_recipe", "load_train_config", "load_training_data", "make_optimizer", "make_strategy",
           "steps_per_epoch", "train", "training_dataset"]

# An extra callback, or a factory called with (embedding_model, train_set, run_dir) once the model exists.
CallbackSpec = Any


@dataclass
class TrainResult:
    """What a `train` call did (also written to RUN_DIR/train.json)."""

    run_dir: str
    model_path: str
    epochs_completed: int
    resumed_from_epoch: int
    train_seconds: float  # wall time of this invocation's fit (0 when nothing was left to train)
    train_images: int
    identities: int
    batchnorm: dict
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def make_strategy(name: str):
    """The tf.distribute strategy for ``default``, ``mirrored`` or ``multi-worker`` (TF_CONFIG)."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--strategy multi-worker needs TF_CONFIG (cluster and this task) in the "
                             "environment of every worker")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; use default, mirrored or multi-worker")


def _worker_subdir() -> str | None:
    """For a non-chief multi-worker task, a subfolder for its own files (the chief writes the run dir)."""
    cfg = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = cfg.get("task") or {}
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    has_chief = "chief" in (cfg.get("cluster") or {})
    if kind == "chief" or (kind == "worker" and index == 0 and not has_chief):
        return None
    return f"workers/{kind}-{index}"


def load_training_data(config: TrainConfig, run_dir: Path, progress: bool = True) -> FaceSet:
    """The training FaceSet: ``config.data`` (optionally a subset of identities) or synthetic faces."""
    from .data import load_identity_folders, synthesize

    if config.data:
        root = Path(config.data)
    else:
        root = synthesize(run_dir / "data", identities=config.synth_identities,
                          images_per_identity=config.synth_images_per_identity, size=config.input_size,
                          seed=config.seed, progress=progress)
    return load_identity_folders(root, image_size=config.input_size, crop=config.crop, progress=progress,
                                 identities=config.identities or None)


def training_dataset(fs: FaceSet, config: TrainConfig, seed: int):
    """(image, label) batches as ((image, label), label): the margin head needs the label as an input."""
    import tensorflow as tf

    from .data import make_dataset

    ds = make_dataset(fs.images, fs.labels, config.batch_size, training=True, seed=seed,
                      augment=config.augment)
    ds = ds.map(lambda x, y: ((x, y), y), num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    # The images are in memory, not files: shard by element across workers.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def steps_per_epoch(dataset, n_images: int, batch_size: int) -> int:
    """Batches per epoch, as the pipeline reports it (it may drop a last partial batch)."""
    n = int(dataset.cardinality())
    return n if n > 0 else max(math.ceil(n_images / batch_size), 1)


def build_embedding(config: TrainConfig) -> keras.Model:
    from .zoo import get_model

    options: dict[str, Any] = {"input_size": config.input_size, "width": config.width,
                               "activation": config.activation}
    if config.embedding_dim is not None:
        options["embedding_dim"] = config.embedding_dim
    return get_model(config.model, **options)


def build_training_model(config: TrainConfig, n_classes: int) -> tuple[keras.Model, keras.Model]:
    """(embedding model, training model): the training model maps [image, label] to margin logits."""
    import keras

    from .training.heads import MarginHead

    embedding = build_embedding(config)
    image = keras.Input(embedding.input_shape[1:], name="image")
    label = keras.Input((), dtype="int32", name="label")
    head = MarginHead(n_classes, kind=config.head, scale=config.scale, margin=config.margin,
                      name="margin_head")
    logits = head([embedding(image), label])
    return embedding, keras.Model([image, label], logits, name=f"{embedding.name}_{config.head}")


def make_optimizer(config: TrainConfig, total_steps: int, steps_in_epoch: int):
    import keras

    from .training.schedule import WarmupCosine

    schedule = WarmupCosine(config.learning_rate, total_steps,
                            warmup_steps=round(config.warmup_epochs * steps_in_epoch),
                            final_fraction=config.final_lr_fraction)
    if config.optimizer == "adamw":
        opt = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
    else:
        opt = keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum, nesterov=True,
                                   weight_decay=config.weight_decay)
    # Decay only conv kernels and class centres: shrinking BN scales and shifts only fights the BN.
    opt.exclude_from_weight_decay(var_names=["gamma", "beta"])
    return opt


def compile_training_model(model: keras.Model, optimizer) -> None:
    import keras

    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def _fingerprint(config: TrainConfig, n_classes: int, n_images: int) -> dict:
    """What a checkpoint must agree on to be resumed: everything but where it runs and its notes."""
    d = {k: v for k, v in config.to_dict().items() if k not in ("strategy", "description", "extra", "data")}
    return {**d, "n_classes": n_classes, "n_images": n_images}


def _make_callbacks(run_dir: Path, training_model, optimizer, history: list[dict], fingerprint: dict,
                    epochs: int, steps: int, progress: bool) -> list:
    import keras
    from tqdm.auto import tqdm

    from .training.checkpoint import checkpoint_path, save_checkpoint

    class EpochCheckpoint(keras.callbacks.Callback):
        """Append the epoch's metrics to the history and write the checkpoint atomically."""

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()},
                   "learning_rate": float(np.asarray(optimizer.learning_rate)),
                   "epoch_seconds": time.perf_counter() - self._start}
            history.append(row)
            save_checkpoint(checkpoint_path(run_dir), training_model, optimizer, epoch + 1, history,
                            fingerprint)
            atomic.write_json(run_dir / "history.json", history)

    class Progress(keras.callbacks.Callback):
        """One tqdm bar per epoch, counting batches."""

        def on_epoch_begin(self, epoch, logs=None):
            self._bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                             disable=not progress, leave=True)

        def on_train_batch_end(self, batch, logs=None):
            self._bar.update(1)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            self._bar.set_postfix(loss=f"{float(logs.get('loss', np.nan)):.3f}",
                                  acc=f"{float(logs.get('accuracy', np.nan)):.3f}")
            self._bar.close()

    tensorboard = keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), update_freq="epoch",
                                              write_graph=False, profile_batch=0)
    return [EpochCheckpoint(), tensorboard, Progress()]


def train(config: TrainConfig, out_dir: str | os.PathLike, resume: bool = False,
          extra_callbacks: Sequence[CallbackSpec] = (), data: FaceSet | None = None, progress: bool = True,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train ``config`` into ``out_dir``; with ``resume`` continue from its last completed epoch.

    ``data`` overrides the recipe's data. ``extra_callbacks`` are Keras callbacks, or factories called
    as ``f(embedding_model, train_set, run_dir)`` that return one (for callbacks that need the model).
    """
    # Multi-worker collectives must be configured before any other TensorFlow work.
    strategy = make_strategy(config.strategy)
    import keras

    from .data import normalize
    from .modelfile import save_face_model
    from .training.batchnorm import check_batchnorm
    from .training.checkpoint import checkpoint_path, load_checkpoint

    base_dir = Path(out_dir)
    sub = _worker_subdir() if config.strategy == "multi-worker" else None
    run_dir = base_dir / sub if sub else base_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint_path(run_dir)
    if ckpt.exists() and not resume:
        raise ValueError(f"{run_dir} already holds a training checkpoint; pass --resume to continue it "
                         "or choose a new --out directory")

    train_set = data if data is not None else load_training_data(config, base_dir, progress=progress)
    n_classes, n_images = len(train_set.names), len(train_set)
    if n_classes < 2:
        raise ValueError(f"training needs at least 2 identities, got {n_classes}")
    if train_set.image_size != config.input_size:
        raise ValueError(f"training images are {train_set.image_size} px but the recipe's input_size is "
                         f"{config.input_size}; load the data at the model's size")

    fingerprint = _fingerprint(config, n_classes, n_images)
    keras.utils.set_random_seed(config.seed)
    dataset = training_dataset(train_set, config, seed=config.seed)
    steps = steps_per_epoch(dataset, n_images, config.batch_size)
    with strategy.scope():
        embedding, training_model = build_training_model(config, n_classes)
        optimizer = make_optimizer(config, config.epochs * steps, steps)
        compile_training_model(training_model, optimizer)
        optimizer.build(training_model.trainable_variables)

    start_epoch, history = 0, []
    if resume and ckpt.exists():
        start_epoch, history = load_checkpoint(ckpt, training_model, optimizer, fingerprint)
        log(f"resuming {run_dir} after epoch {start_epoch}/{config.epochs}")
        # Re-seed by epoch so a resumed run is itself reproducible.
        keras.utils.set_random_seed(config.seed + start_epoch)
    # Written once the checkpoint (if any) is known to belong to this run: a refused resume changes nothing.
    atomic.write_json(run_dir / "config.json", {
        **config.to_dict(), "resolved": {"identities": n_classes, "images": n_images,
                                         "names": train_set.names,
                                         "replicas": int(strategy.num_replicas_in_sync)}})

    train_seconds, callbacks = 0.0, []
    if start_epoch < config.epochs:
        callbacks = _make_callbacks(run_dir, training_model, optimizer, history, fingerprint, config.epochs,
                                    steps, progress)
        if config.strategy != "multi-worker":  # first: the checkpoint and TensorBoard record what it adds
            from .training.summaries import VerificationMetric

            callbacks.insert(0, VerificationMetric(embedding, train_set.images, train_set.labels,
                                                   seed=config.seed))
        for extra in extra_callbacks:
            callbacks.append(extra if isinstance(extra, keras.callbacks.Callback)
                             else extra(embedding, train_set, run_dir))
        if start_epoch:
            dataset = training_dataset(train_set, config, seed=config.seed + start_epoch)
        t0 = time.perf_counter()
        if config.strategy == "multi-worker":
            from .training.loop import fit_distributed

            fit_distributed(strategy, training_model, optimizer, dataset, config.batch_size, config.epochs,
                            start_epoch, callbacks)
        else:
            training_model.fit(dataset, epochs=config.epochs, initial_epoch=start_epoch, callbacks=callbacks,
                               verbose=0, shuffle=False)  # the pipeline shuffles
        train_seconds = time.perf_counter() - t0

    # Checks and the saved model use a plain (strategy-free) copy of the embedding network.
    final = build_embedding(config)
    final.set_weights(embedding.get_weights())
    centres = keras.ops.convert_to_numpy(training_model.get_layer("margin_head").centres)
    bn = check_batchnorm(final, centres, normalize(train_set.images), train_set.labels,
                         tolerance=config.bn_tolerance, batch_size=config.batch_size)
    if bn["lagging"]:
        verdict = ("re-estimated them from the training data" if bn["reestimated"]
                   else "re-estimation did not help, kept them")
        now = max(bn["inference_accuracy"], bn["inference_accuracy_after"])
        log(f"batch-norm moving statistics lag the weights: inference-mode accuracy "
            f"{bn['inference_accuracy']:.1%} vs training-mode {bn['training_mode_accuracy']:.1%}; {verdict} "
            f"(inference-mode accuracy now {now:.1%})")

    for cb in callbacks:  # e.g. the emergence probe: its last snapshot is of the model as saved
        if hasattr(cb, "finalize"):
            cb.finalize(final)

    if config.saved_embedding == "pooled":
        from .zoo import pooled_embedding

        final = pooled_embedding(final)
        log(f"saved embedding: the pooled features ({final.output_shape[-1]}-d), not the last linear layer")
    model_path = save_face_model(final, run_dir / "model.keras", recipe=config.to_dict(),
                                 training={"identities": train_set.names, "images": n_images,
                                           "epochs": config.epochs, "batchnorm": bn})
    result = TrainResult(run_dir=str(run_dir), model_path=str(model_path), epochs_completed=len(history),
                         resumed_from_epoch=start_epoch, train_seconds=train_seconds, train_images=n_images,
                         identities=n_classes, batchnorm=bn, history=history)
    atomic.write_json(run_dir / "history.json", history)
    atomic.write_json(run_dir / "train.json", result.to_dict())
    return result
