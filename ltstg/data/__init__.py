"""What every data source hands to make-dataset: labels plus in-memory images or file paths."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Split:
    """One split of a source; exactly one of `images` (in-memory) or `paths` (file-based) is set."""

    labels: torch.Tensor  # (N,) int64
    images: torch.Tensor | None = None  # (N, H, W, 3) uint8, in-memory sources
    paths: tuple[str, ...] | None = None  # relative to Source.root, file-based sources


@dataclass(frozen=True)
class Source:
    """A data set as found on disk or generated, before any long-tail selection."""

    name: str  # "cifar10", "imagefolder", "imagenet-lt", "synthetic", ...
    class_names: tuple[str, ...]
    splits: dict[str, Split]  # "train", "test", optionally "val"
    root: str | None = None
    fingerprint: str = ""  # sha256 hex of what defines the content, so ids don't depend on where data sits


def fingerprint(lines: Iterable[str]) -> str:
    """sha256 over the lines, streamed so a million-file listing costs no extra memory."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
