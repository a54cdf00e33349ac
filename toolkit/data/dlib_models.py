"""dlib's model files (face ResNet weights, landmark predictors) as the face-recognition-models package
installs them."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def packaged_model_file(name: str) -> Path:
    """A dlib model file inside the installed ``face-recognition-models`` package.

    Found without importing the package: its ``__init__`` needs ``pkg_resources``, which new setuptools
    no longer ships and which warns on import where it still does."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dlib's face models come with the face-recognition-models package; install "
                                "it: pip install face-recognition-models")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the face-recognition-models package; reinstall it")
    return path
