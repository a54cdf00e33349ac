"""The board side runs with TensorFlow, Keras and the host toolkit unimportable."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from device.runtime import Runtime
from toolkit.data.normalize import normalize
from toolkit.export import export_model
from toolkit.modelfile import save_face_model
from toolkit.zoo import get_model

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32

BOARD_SCRIPT = r"""
import sys

BLOCKED = {"tensorflow", "keras", "tf_keras", "toolkit"}


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the board has no TensorFlow, Keras or host toolkit")
        return None


sys.meta_path.insert(0, Blocker())

import importlib, json, pkgutil
import numpy as np
import device

modules = sorted(m.name for m in pkgutil.iter_modules(device.__path__))
for name in modules:
    importlib.import_module("device." + name)

from device.activations import tap_activations
from device.runtime import Runtime

images = np.load(sys.argv[1])
out = {"modules": modules, "results": {}}
for path in sys.argv[2:]:
    rt = Runtime(path)
    result = {"embedding": rt.run(images)["embedding"].tolist(), "info": rt.info()}
    if rt.taps:
        acts = tap_activations(rt, images, batch_size=2)
        result["stats"] = acts.stats
    out["results"][path] = result
out["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(2)
    model_path = save_face_model(get_model("tiny", input_size=SIZE, embedding_dim=16),
                                 tmp_path_factory.mktemp("m") / "model.keras")
    cal = np.random.default_rng(0).integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8)
    return export_model(model_path, tmp_path_factory.mktemp("e"), ["int8"], calibration=cal)


def test_device_runs_without_tensorflow_keras_or_toolkit(exported, tmp_path):
    images = normalize(np.random.default_rng(3).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8))
    np.save(tmp_path / "images.npy", images)
    paths = [str(exported["int8"][r]) for r in ("deploy", "probe")]
    proc = subprocess.run([sys.executable, "-c", BOARD_SCRIPT, str(tmp_path / "images.npy"), *paths],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert {"runtime", "manifest", "activations"} <= set(out["modules"])
    for path in paths:
        board = np.array(out["results"][path]["embedding"], np.float32)
        host = Runtime(path).run(images)["embedding"]
        np.testing.assert_array_equal(board, host)
        assert out["results"][path]["info"]["runtime"] == "ai-edge-litert"
    int8_stats = out["results"][str(exported["int8"]["probe"])]["stats"]
    assert set(int8_stats) == {"stem/conv", "stage1/block1", "stage2/block1"}
    assert all(0 <= s["saturation"] <= 1 and s["min"] < 0 < s["max"] for s in int8_stats.values())


def test_device_extra_is_numpy_and_litert_only():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.match(r"[A-Za-z0-9_.\-]+", req).group(0).lower().replace("_", "-")
             for req in project["optional-dependencies"]["device"]}
    assert names == {"numpy", "ai-edge-litert"}
    base = {re.match(r"[A-Za-z0-9_.\-]+", req).group(0).lower() for req in project["dependencies"]}
    assert base <= {"numpy"}
