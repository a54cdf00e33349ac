"""faceprobe board side: numpy + a LiteRT interpreter only (never TensorFlow)."""

__version__ = "0.1.0"
