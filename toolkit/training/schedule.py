"""Learning-rate schedule: linear warm-up, then cosine decay."""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="faceprobe")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear rise over ``warmup_steps``, then a cosine down to ``learning_rate * final_fraction``."""

    def __init__(self, learning_rate: float, total_steps: int, warmup_steps: int = 0,
                 final_fraction: float = 0.0):
        self.learning_rate = float(learning_rate)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(min(int(warmup_steps), self.total_steps - 1), 0)
        self.final_fraction = float(final_fraction)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = self.learning_rate * (step + 1.0) / max(self.warmup_steps, 1)
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        floor = self.learning_rate * self.final_fraction
        decay = floor + (self.learning_rate - floor) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup_steps, warm, decay)

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "final_fraction": self.final_fraction}
