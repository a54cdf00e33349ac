"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def untrained_int8(tmp_path_factory):
    """A maker of an untrained tiny face model (8-d embedding) and its int8 deploy file, calibrated on 16
    random images: ``make(size)`` -> (its folder, the model file, the int8 deploy file)."""

    def make(size: int) -> tuple[Path, Path, Path]:
        import keras

        from toolkit.export import Calibration, Recipe, export_model
        from toolkit.modelfile import save_face_model
        from toolkit.zoo import get_model

        tmp = tmp_path_factory.mktemp("untrained")
        keras.utils.set_random_seed(0)
        net = get_model("tiny", input_size=size, embedding_dim=8)
        model = save_face_model(net, tmp / "m" / "model.keras")
        calibration = np.random.default_rng(0).integers(0, 256, (16, size, size, 3), dtype=np.uint8)
        files = export_model(model, tmp / "e", [Recipe("int8", calibration=Calibration(count=16))],
                             calibration=calibration, progress=False)
        return tmp, model, files["int8"]["deploy"]

    return make
