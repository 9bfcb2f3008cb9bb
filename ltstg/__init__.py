"""ltstg: long-tailed image classification with the Semantic Transformation Generator."""

__version__ = "0.1.0"
