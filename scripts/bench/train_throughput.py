"""Training throughput: faceprobe's trainer beside a plain `model.fit` of the same model and data.

    python scripts/bench/train_throughput.py --json

Both runs train the recipe's embedding network with the same margin head, optimizer and tf.data
pipeline on the same images; faceprobe adds its per-epoch atomic checkpoint, history, TensorBoard
logs and progress bar. Images/s are measured over the epochs after the first (which traces the
graph), in alternating rounds so that a change in machine load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def epoch_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Wall time of each epoch, including every callback that ran before this one."""

        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._t)

    return EpochTimer()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(ROOT / "models" / "mobilefacenet-orl.toml"))
    p.add_argument("--images", type=int, default=384, help="training images per epoch")
    p.add_argument("--identities", type=int, default=24)
    p.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is not timed")
    p.add_argument("--rounds", type=int, default=3, help="alternating plain/faceprobe rounds")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: the tiny recipe at 32 px, 48 images, one round of two epochs (seconds; "
                        "the figures mean nothing)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(recipe=str(ROOT / "models" / "tiny-synth.toml"), images=48, identities=4, epochs=2,
                       rounds=1, set=["input_size=32"])
        args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first epoch is not timed)")

    import keras
    import numpy as np

    from toolkit import train as trainer
    from toolkit.data import FaceSet
    from toolkit.training.config import parse_set

    config = trainer.load_train_config(args.recipe).with_overrides(epochs=args.epochs, **parse_set(args.set))
    rng = np.random.default_rng(0)
    size = config.input_size
    labels = np.arange(args.images) % args.identities
    images = rng.integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)
    fs = FaceSet(images=images, labels=labels, names=[f"id{i}" for i in range(args.identities)],
                 paths=[f"id{label}/{i}.png" for i, label in enumerate(labels)])

    def plain_fit() -> list[float]:
        keras.utils.set_random_seed(config.seed)
        ds = trainer.training_dataset(fs, config, seed=config.seed)
        steps = trainer.steps_per_epoch(ds, len(fs), config.batch_size)
        _, model = trainer.build_training_model(config, args.identities)
        trainer.compile_training_model(model, trainer.make_optimizer(config, config.epochs * steps, steps))
        timer = epoch_timer()
        model.fit(ds, epochs=config.epochs, callbacks=[timer], verbose=0, shuffle=False)
        return timer.seconds

    def faceprobe_fit(tmp: Path, r: int) -> list[float]:
        timer = epoch_timer()
        trainer.train(config, tmp / f"run{r}", data=fs, extra_callbacks=[timer], progress=not args.json,
              log=lambda m: None)
        return timer.seconds

    per_epoch = config.batch_size * (len(fs) // config.batch_size)
    plain, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            plain += [per_epoch / s for s in plain_fit()[1:]]
            ours += [per_epoch / s for s in faceprobe_fit(Path(tmp), r)[1:]]
    report = {
        "faceprobe_images_per_s": round(statistics.median(ours), 2),
        "plain_fit_images_per_s": round(statistics.median(plain), 2),
        "ratio": round(statistics.median(ours) / statistics.median(plain), 3),
        "model": config.model, "input_size": size, "width": config.width, "batch_size": config.batch_size,
        "images_per_epoch": per_epoch, "timed_epochs_per_method": len(ours), "rounds": args.rounds,
        "faceprobe_epochs_images_per_s": [round(v, 2) for v in ours],
        "plain_fit_epochs_images_per_s": [round(v, 2) for v in plain],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key in ("faceprobe_images_per_s", "plain_fit_images_per_s", "ratio", "model", "input_size",
                    "batch_size", "images_per_epoch"):
            print(f"{key:<24} {report[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
