"""Feature-level augmenters for stage 3, one module each, registered in `ltstg.methods` as they are imported.

Every module here is imported (in name order), so a new augmenter needs no edit of this file.
"""
from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda module: module.name):
    importlib.import_module(f"{__name__}.{_module.name}")
