"""CIFAR-10/100 through torchvision, whose md5 checks guarantee the standard content."""
from __future__ import annotations

import os
from typing import Literal

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from ltstg.data import Source, Split, fingerprint
from ltstg.errors import LtstgError

DATASETS = {"cifar10": CIFAR10, "cifar100": CIFAR100}
TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
DEFAULT_ROOT = os.path.join("~", ".cache", "ltstg", "data")


def load_cifar(name: Literal["cifar10", "cifar100"], root: str | None, download: bool) -> Source:
    """Both splits as uint8 tensors; a missing, corrupt or undownloadable copy is one clear error."""
    if name not in DATASETS:
        raise LtstgError(f"unknown CIFAR data set {name!r}; known: {', '.join(DATASETS)}.")
    dataset_class, title = DATASETS[name], TITLES[name]
    folder = dataset_class.base_folder
    root = os.path.abspath(os.path.expanduser(root or DEFAULT_ROOT))
    if os.path.basename(root) == folder:  # a --root pointing at the batches folder itself is a common slip
        root = os.path.dirname(root)
    where = os.path.join(root, folder)
    if not download and not os.path.isdir(where):
        raise LtstgError(
            f"{title} not found: looked for {where}; pass --root DIR with a folder that contains {folder}, "
            "or --download to fetch it."
        )
    try:
        train = dataset_class(root, train=True, download=download)
        test = dataset_class(root, train=False, download=False)
    except OSError as error:  # URLError, timeouts, a full disk
        raise LtstgError(
            f"could not download {title} into {root} ({error}); check the network, or fetch "
            f"{dataset_class.url} yourself, unpack it under DIR and pass --root DIR."
        ) from None
    except RuntimeError:  # torchvision's "not found or corrupted": a file is missing or its md5 differs
        raise LtstgError(
            f"{title} at {where} is incomplete or corrupted (md5 check failed); delete that folder and "
            "rerun with --download, or point --root at a good copy."
        ) from None
    meta = dataset_class.meta
    files = dataset_class.train_list + dataset_class.test_list + [[meta["filename"], meta["md5"]]]
    return Source(
        name=name,
        class_names=tuple(str(class_name) for class_name in train.classes),
        splits={"train": _split(train), "test": _split(test)},
        fingerprint=fingerprint([name, *(f"{file} {md5}" for file, md5 in files)]),
    )


def _split(dataset: CIFAR10) -> Split:
    """Tensors straight from torchvision's arrays (already HWC uint8)."""
    return Split(
        labels=torch.tensor(dataset.targets, dtype=torch.int64),  # (N,)
        images=torch.from_numpy(np.ascontiguousarray(dataset.data)),  # (N, 32, 32, 3) uint8
    )
