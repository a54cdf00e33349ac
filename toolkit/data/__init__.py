"""Face data: identity folders and synthetic faces in, splits, verification pairs and tf.data pipelines out.

`make_dataset` is imported on first use so that loading data does not pull in TensorFlow.
"""

from __future__ import annotations

from .faceset import FaceSet, natural_key
from .folders import load_identity_folders
from .identities import parse_identities
from .normalize import DEFAULT_NORMALIZATION, denormalize, normalize, valid_range
from .pairs import Pairs, load_pairs, make_pairs, save_pairs
from .splits import split_by_identity, split_by_image
from .synth import pixel_linear_accuracy, synthesize


def __getattr__(name: str):
    if name == "make_dataset":
        from .pipeline import make_dataset

        return make_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_NORMALIZATION", "FaceSet", "Pairs", "denormalize", "load_identity_folders", "load_pairs",
           "make_dataset", "make_pairs", "natural_key", "normalize", "parse_identities",
           "pixel_linear_accuracy", "save_pairs", "split_by_identity", "split_by_image", "synthesize",
           "valid_range"]
