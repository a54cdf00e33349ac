"""Trained face model -> deploy and probe TFLite files per variant, each with its manifest."""

from .calibration import DEFAULT_CALIBRATION_SIZE, calibration_sample
from .convert import VARIANTS
from .exporter import export_keras, export_model, file_name
from .verify import AGREEMENT_COSINE, KERAS_REL_TOLERANCE, ExportVerificationError

__all__ = ["AGREEMENT_COSINE", "DEFAULT_CALIBRATION_SIZE", "KERAS_REL_TOLERANCE", "VARIANTS",
           "ExportVerificationError", "calibration_sample", "export_keras", "export_model", "file_name"]
