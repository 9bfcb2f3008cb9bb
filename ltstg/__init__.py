"""ltstg: long-tailed image classification with the Semantic Transformation Generator."""

from ltstg.version import __version__

_API = ("Artifact", "LtstgError", "Store", "StgAugmenter", "load", "load_backbone", "open_store", "run", "stg_augmenter")


def __getattr__(name: str):
    """The public API (ltstg/api.py), imported on first use so `ltstg --help` does not load torch."""
    if name in _API:
        from ltstg import api

        return getattr(api, name)
    raise AttributeError(f"module 'ltstg' has no attribute {name!r}")
