"""Trained face model -> deploy and probe TFLite files per variant, each with its manifest, by recipe."""

from .calibration import calibration_sample
from .exporter import export_keras, export_model, file_name
from .provenance import ProvenanceError, validate_source, weights_sha256
from .recipe import DEFAULT_CALIBRATION_SIZE, VARIANTS, Calibration, Recipe, RecipeError, load_recipe
from .verify import AGREEMENT_COSINE, KERAS_REL_TOLERANCE, ExportVerificationError

__all__ = ["AGREEMENT_COSINE", "DEFAULT_CALIBRATION_SIZE", "KERAS_REL_TOLERANCE", "VARIANTS", "Calibration",
           "ExportVerificationError", "ProvenanceError", "Recipe", "RecipeError", "calibration_sample",
           "validate_source", "export_keras", "export_model", "file_name", "load_recipe", "weights_sha256"]
