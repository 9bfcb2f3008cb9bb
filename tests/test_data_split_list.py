"""ImageNet-LT / Places-LT split lists: tiny lists, and every error naming its problem."""
import shutil

import pytest
import torch

from ltstg.data import split_list
from ltstg.data.split_list import FORMATS, SplitListFormat, read_split_lists
from ltstg.errors import LtstgError

LISTS = {
    "train": ["train/n01/a.JPEG 0", "train/n01/b.JPEG 0", "", "train/n02/c.JPEG 1"],
    "val": ["/val/d.JPEG 1"],
    "test": ["val/e.JPEG 0", "val/f.JPEG 999"],
}
TINY = {"train": 3, "val": 1, "test": 2}


def write(tmp_path, lists=LISTS, prefix="ImageNet_LT", images=True):
    """Lists in tmp_path/lists, and (optionally) every listed file under tmp_path/root."""
    (tmp_path / "lists").mkdir(exist_ok=True)
    for split, lines in lists.items():
        (tmp_path / "lists" / f"{prefix}_{split}.txt").write_text("\n".join(lines) + "\n")
        for line in lines:
            if images and line:
                path = tmp_path / "root" / line.split()[0].lstrip("/")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"x" * len(line))
    return str(tmp_path / "root"), str(tmp_path / "lists")


def test_reads_tiny_lists(tmp_path):
    root, lists = write(tmp_path)
    calls = []
    source = read_split_lists("imagenet-lt", root, lists, expected=TINY,
                              progress=lambda *args, **metrics: calls.append(args))
    assert source.name == "imagenet-lt" and source.root == root and set(source.splits) == {"train", "val", "test"}
    assert source.splits["train"].paths == ("train/n01/a.JPEG", "train/n01/b.JPEG", "train/n02/c.JPEG")
    assert source.splits["train"].labels.dtype == torch.int64
    assert source.splits["train"].labels.tolist() == [0, 0, 1]
    assert source.splits["val"].paths == ("val/d.JPEG",)  # a leading "/" still means relative to the root
    assert source.splits["test"].labels.tolist() == [0, 999]
    assert source.class_names == tuple(str(c) for c in range(1000))  # most classes have no train image here
    assert calls[-1] == ("check image files", 6, 6)
    # the fingerprint follows the content, not the location
    shutil.copytree(tmp_path / "root", tmp_path / "moved")
    moved = read_split_lists("imagenet-lt", str(tmp_path / "moved"), lists, expected=TINY)
    assert moved.fingerprint == source.fingerprint
    (tmp_path / "moved/val/e.JPEG").write_bytes(b"other size")
    changed = read_split_lists("imagenet-lt", str(tmp_path / "moved"), lists, expected=TINY)
    assert changed.fingerprint != source.fingerprint


def test_class_names_from_folders(tmp_path, monkeypatch):
    monkeypatch.setitem(FORMATS, "places-lt", SplitListFormat("Places-LT", "Places_LT", 2, {}))
    lists = {"train": ["data_256/a/abbey/1.jpg 0", "data_256/b/bakery/2.jpg 1"], "val": ["v/3.jpg 1"], "test": []}
    root, list_dir = write(tmp_path, lists, prefix="Places_LT")
    assert read_split_lists("places-lt", root, list_dir).class_names == ("abbey", "bakery")
    assert len(read_split_lists("places-lt", root, list_dir).splits["test"].paths) == 0


def test_wrong_count_names_list_and_counts(tmp_path):
    root, lists = write(tmp_path)
    with pytest.raises(LtstgError, match="_train.txt .* has 3 lines but the ImageNet-LT train list has 115,846"):
        read_split_lists("imagenet-lt", root, lists)
    with pytest.raises(LtstgError, match="ImageNet_LT_val.txt .* has 1 lines but the ImageNet-LT val list has 2"):
        read_split_lists("imagenet-lt", root, lists, expected={"val": 2})
    assert len(read_split_lists("imagenet-lt", root, lists, expected=None).splits["test"].paths) == 2


def test_standard_table():
    assert FORMATS["imagenet-lt"].num_classes == 1000 and FORMATS["places-lt"].num_classes == 365
    assert dict(FORMATS["imagenet-lt"].counts) == {"train": 115_846, "val": 20_000, "test": 50_000}
    assert dict(FORMATS["places-lt"].counts) == {"train": 62_500, "val": 7_300, "test": 36_500}


@pytest.mark.parametrize(
    "line, message",
    [
        ("train/n01/x.JPEG", r"ImageNet_LT_train.txt line 2: expected 'relative/path label', got 'train/n01/x.JPEG'"),
        ("train/n01/x.JPEG zero", r"ImageNet_LT_train.txt line 2: label 'zero' is not an integer"),
        ("train/n01/x.JPEG 1000", r"ImageNet_LT_train.txt line 2: label 1000 is out of range 0..999 for ImageNet-LT"),
        ("train/n01/x.JPEG -1", r"ImageNet_LT_train.txt line 2: label -1 is out of range"),
    ],
)
def test_bad_lines(tmp_path, line, message):
    root, lists = write(tmp_path, {**LISTS, "train": ["train/n01/a.JPEG 0", line]})
    with pytest.raises(LtstgError, match=message):
        read_split_lists("imagenet-lt", root, lists, expected=None)


def test_places_label_range(tmp_path):
    root, lists = write(tmp_path, {"train": ["a/x.jpg 364"], "val": ["b/y.jpg 365"], "test": []}, prefix="Places_LT")
    with pytest.raises(LtstgError, match=r"Places_LT_val.txt line 1: label 365 is out of range 0..364 for Places-LT"):
        read_split_lists("places-lt", root, lists, expected=None)


def test_missing_list_file(tmp_path):
    root, lists = write(tmp_path)
    (tmp_path / "lists/ImageNet_LT_val.txt").unlink()
    with pytest.raises(LtstgError, match=r"split list .*lists/ImageNet_LT_val.txt not found"):
        read_split_lists("imagenet-lt", root, lists, expected=None)


def test_missing_image_files(tmp_path):
    lists = {**LISTS, "test": [f"val/missing{i}.JPEG 3" for i in range(7)]}
    write(tmp_path, LISTS)  # the train and val images exist, the seven test images don't
    root, list_dir = write(tmp_path, lists, images=False)
    with pytest.raises(LtstgError) as error:
        read_split_lists("imagenet-lt", root, list_dir, expected=None)
    message = str(error.value)
    assert message.startswith("7 images listed in the ImageNet-LT split lists cannot be read under")
    assert "(7 missing; first: val/missing0.JPEG" in message
    assert all(f"val/missing{i}.JPEG" in message for i in range(5)) and "missing5" not in message
    unchecked = read_split_lists("imagenet-lt", root, list_dir, expected=None, check_files=False)
    assert len(unchecked.splits["test"].paths) == 7
    with pytest.raises(LtstgError, match="image root .*nowhere does not exist"):
        read_split_lists("imagenet-lt", str(tmp_path / "nowhere"), list_dir, expected=None)


def test_unknown_kind(tmp_path):
    with pytest.raises(LtstgError, match="unknown split-list data set 'inat'; known: imagenet-lt, places-lt"):
        read_split_lists("inat", str(tmp_path), str(tmp_path))
    assert split_list.SPLITS == ("train", "val", "test")
