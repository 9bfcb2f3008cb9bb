"""Stage-3 classifiers on frozen features, one module each, registered in `ltstg.methods` as they are imported.

All trained ones share one forward shape, features (B, D) -> logits (B, C), and fold into one linear
classifier (weight, bias), as the post-hoc ones return it, so evaluation has a single code path.
Every module here is imported (in name order), so a new classifier needs no edit of this file.
"""
from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda module: module.name):
    importlib.import_module(f"{__name__}.{_module.name}")
