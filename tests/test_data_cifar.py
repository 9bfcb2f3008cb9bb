"""CIFAR through torchvision: a tiny fake copy in the real pickle format, and every error path."""
import hashlib
import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from ltstg.data.cifar import load_cifar
from ltstg.errors import LtstgError

# file layout of the two formats: (folder, train files, test files, meta file, meta key, label key)
LAYOUTS = {
    "cifar10": (CIFAR10, ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
                "test_batch", "batches.meta", "label_names", "labels"),
    "cifar100": (CIFAR100, ["train"], "test", "meta", "fine_label_names", "fine_labels"),
}


def write_fake(root, name, monkeypatch, per_file=6, num_classes=3):
    """Write pickles as torchvision reads them and register their md5s, so its real integrity check passes."""
    dataset_class, train_files, test_file, meta_file, meta_key, label_key = LAYOUTS[name]
    folder = root / dataset_class.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    expected = {}

    def dump(file_name, content):
        (folder / file_name).write_bytes(pickle.dumps(content))
        return [file_name, hashlib.md5((folder / file_name).read_bytes()).hexdigest()]

    listings = {}
    for split, files in (("train", train_files), ("test", [test_file])):
        data, labels, listing = [], [], []
        for file_name in files:
            batch = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
            batch_labels = rng.integers(0, num_classes, per_file).tolist()
            listing.append(dump(file_name, {"data": batch, label_key: batch_labels}))
            data.append(batch)
            labels += batch_labels
        expected[split] = (np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)
        listings[split] = listing
    names = [f"class{c}" for c in range(num_classes)]
    meta = dump(meta_file, {meta_key: names})
    monkeypatch.setattr(dataset_class, "train_list", listings["train"])
    monkeypatch.setattr(dataset_class, "test_list", listings["test"])
    monkeypatch.setattr(dataset_class, "meta", {"filename": meta_file, "key": meta_key, "md5": meta[1]})
    return expected, names


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_loads_fake_copy(tmp_path, monkeypatch, name):
    expected, names = write_fake(tmp_path, name, monkeypatch)
    source = load_cifar(name, str(tmp_path), download=False)
    assert source.name == name and source.class_names == tuple(names)
    assert set(source.splits) == {"train", "test"}
    for split, (images, labels) in expected.items():
        got = source.splits[split]
        assert got.images.dtype == torch.uint8 and got.images.shape == (len(labels), 32, 32, 3)
        assert got.images.is_contiguous() and got.paths is None
        assert torch.equal(got.images, torch.from_numpy(np.ascontiguousarray(images)))
        assert got.labels.dtype == torch.int64 and got.labels.tolist() == labels
    assert len(source.fingerprint) == 64
    # a --root pointing at the batches folder itself finds the same copy, with the same fingerprint
    inner = load_cifar(name, str(tmp_path / LAYOUTS[name][0].base_folder), download=False)
    assert inner.fingerprint == source.fingerprint


def test_missing_copy_names_where_and_how(tmp_path):
    with pytest.raises(LtstgError) as error:
        load_cifar("cifar10", str(tmp_path), download=False)
    message = str(error.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "--root" in message and "--download" in message


def test_download_failure_is_one_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(LtstgError, match="could not download CIFAR-100 into .*no network") as error:
        load_cifar("cifar100", str(tmp_path), download=True)
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_corrupt_copy(tmp_path, monkeypatch):
    write_fake(tmp_path, "cifar10", monkeypatch)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "ab") as file:
        file.write(b"x")
    with pytest.raises(LtstgError, match="incomplete or corrupted"):
        load_cifar("cifar10", str(tmp_path), download=False)


def test_unknown_name(tmp_path):
    with pytest.raises(LtstgError, match="unknown CIFAR data set 'cifar1000'; known: cifar10, cifar100"):
        load_cifar("cifar1000", str(tmp_path), download=False)
