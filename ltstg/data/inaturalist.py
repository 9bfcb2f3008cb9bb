"""iNaturalist 2018 from its published annotation files (train2018.json, val2018.json) over its image root.

The files follow COCO's layout: `images` (id, file_name relative to the image root), `annotations` (image_id,
category_id) and `categories` (id, name). The images stay files (paths are stored, decoded at read time).
As in the long-tail literature (Kang et al., MiSLAS), the published validation set is the test set; the
toolkit's own validation split comes out of the training images (make-dataset says how many).
"""
from __future__ import annotations

import collections
import json
import os
from collections.abc import Mapping
from typing import Any, Literal

import torch

from ltstg.data import Source, Split, fingerprint
from ltstg.data.split_list import check_image_files
from ltstg.errors import LtstgError
from ltstg.progress import Progress, silent

TITLE = "iNaturalist 2018"
NUM_CLASSES = 8142
FILES = {"train": "train2018.json", "test": "val2018.json"}  # the published val set serves as the test set
COUNTS = {"train": 437_513, "test": 24_426}


def read_inaturalist(
    root: str,
    annotations_dir: str | None = None,
    *,
    check_files: bool = True,
    expected: Mapping[str, int] | Literal["standard"] | None = "standard",
    num_classes: int | None = None,
    progress: Progress = silent,
) -> Source:
    """Both splits as paths and labels, checked before any image is decoded: the annotation files whole and
    consistent, the published image counts (`expected`; a mapping for small test sets, None: unchecked) and,
    with `check_files`, every image present (its size joins the fingerprint)."""
    root = os.path.abspath(os.path.expanduser(root))
    folder = os.path.expanduser(annotations_dir) if annotations_dir else root
    counts = COUNTS if expected == "standard" else expected
    num_classes = NUM_CLASSES if num_classes is None else num_classes
    names: dict[int, str] = {}
    splits = {}
    for split, file_name in FILES.items():
        paths, labels, categories = _read_annotations(os.path.join(folder, file_name), num_classes)
        if counts is not None and split in counts and len(paths) != counts[split]:
            raise LtstgError(
                f"{file_name} in {folder} lists {len(paths):,} images but the {TITLE} {split} set has "
                f"{counts[split]:,}; use the published annotation files."
            )
        names.update(categories)
        splits[split] = Split(labels=torch.tensor(labels, dtype=torch.int64), paths=tuple(paths))
    rows = [(split, path, int(label)) for split, s in splits.items() for path, label in zip(s.paths, s.labels)]
    sizes = check_image_files(root, [path for _, path, _ in rows], TITLE, progress) if check_files else None
    lines = [f"{split} {label} {path}" + ("" if sizes is None else f" {sizes[i]}") for i, (split, path, label) in enumerate(rows)]
    return Source(
        name="inat2018",
        class_names=tuple(names.get(c) or str(c) for c in range(num_classes)),
        splits=splits,
        root=root,
        fingerprint=fingerprint(["inat2018", *lines]),
    )


def _read_annotations(path: str, num_classes: int) -> tuple[list[str], list[int], dict[int, str]]:
    """(file names, category ids, {category id: name}) of one annotation file; any damage is one clear line."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise LtstgError(
            f"annotation file {path} not found; pass --split-dir DIR holding {TITLE}'s {' and '.join(FILES.values())} "
            "(default: the image root)."
        )
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LtstgError(f"{name} is not a readable JSON annotation file ({error}); use the published {TITLE} files.") from None
    try:
        images = [(_whole(image["id"], "image id"), str(image["file_name"]).lstrip("/")) for image in data["images"]]
        notes = [(_whole(note["image_id"], "image_id"), _whole(note["category_id"], "category_id"))
                 for note in data["annotations"]]
        categories = {_whole(c["id"], "category id"): str(c.get("name", "")) for c in data.get("categories", [])}
    except (KeyError, TypeError, ValueError) as error:
        raise LtstgError(f"{name} lacks {TITLE}'s images / annotations / categories layout ({_what(error)}).") from None
    for what, values in (("image ids", [i for i, _ in images]), ("file names", [f for _, f in images]),
                         ("annotated image ids", [i for i, _ in notes])):
        repeated = [value for value, count in collections.Counter(values).items() if count > 1]
        if repeated:
            raise LtstgError(f"{name}: {len(repeated):,} {what} appear more than once (first: {repeated[0]!r}); "
                             "each image is listed once, with one annotation.")
    files, labels = dict(images), dict(notes)
    unlabelled = [i for i in files if i not in labels]
    if unlabelled or len(data["annotations"]) != len(files):
        raise LtstgError(
            f"{name}: {len(unlabelled):,} images have no annotation and {len(set(labels) - set(files)):,} annotations "
            "no image; every image needs exactly one category."
        )
    out_of_range = sorted({label for label in labels.values() if not 0 <= label < num_classes})
    if out_of_range:
        raise LtstgError(f"{name}: category ids {out_of_range[:5]} lie outside 0..{num_classes - 1}.")
    order = sorted(files)  # by image id: the files' own order, made explicit
    return [files[i] for i in order], [labels[i] for i in order], categories


def _whole(value: Any, what: str) -> int:
    """A JSON integer: `1.7`, `true` or `"3"` are not ids (int() would read the first two as 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} {value!r} is not an integer")
    return value


def _what(error: Exception) -> Any:
    return f"missing {error}" if isinstance(error, KeyError) else error
