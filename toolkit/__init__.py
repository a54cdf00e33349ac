"""faceprobe host toolkit: data, zoo, training, evaluation, probe, export and the quantization check."""

__version__ = "0.1.0"
