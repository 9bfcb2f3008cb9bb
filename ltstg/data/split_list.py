"""ImageNet-LT and Places-LT from their standard split lists over an image root the user already has."""
from __future__ import annotations

import collections
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import torch

from ltstg.data import Source, Split, fingerprint
from ltstg.errors import LtstgError
from ltstg.progress import Progress, silent

SPLITS = ("train", "val", "test")
REPORT_EVERY = 1000
MAX_PROBLEMS = 10  # malformed lines listed at once; the rest are counted
STAT_THREADS = 32  # stat is I/O-bound: on network file systems many requests in flight pay off


@dataclass(frozen=True)
class SplitListFormat:
    """What a standard split list looks like, so a truncated or wrong list is caught on reading."""

    title: str
    prefix: str  # list files are f"{prefix}_{split}.txt"
    num_classes: int
    counts: Mapping[str, int]  # lines per split


FORMATS = {
    "imagenet-lt": SplitListFormat(
        "ImageNet-LT", "ImageNet_LT", 1000, {"train": 115_846, "val": 20_000, "test": 50_000}
    ),
    "places-lt": SplitListFormat("Places-LT", "Places_LT", 365, {"train": 62_500, "val": 7_300, "test": 36_500}),
}


def read_split_lists(
    kind: Literal["imagenet-lt", "places-lt"],
    root: str,
    split_dir: str,
    *,
    check_files: bool = True,
    expected: Mapping[str, int] | Literal["standard"] | None = "standard",
    progress: Progress = silent,
) -> Source:
    """All three splits as paths and labels, checked before any image is decoded.

    `expected` gives the lines per split: "standard" takes the published counts, a mapping
    overrides them (small lists in tests), None skips the check. With check_files the
    fingerprint also covers file sizes; without it, only the lists.
    """
    if kind not in FORMATS:
        raise LtstgError(f"unknown split-list data set {kind!r}; known: {', '.join(FORMATS)}.")
    spec = FORMATS[kind]
    counts = spec.counts if expected == "standard" else expected
    root = os.path.abspath(os.path.expanduser(root))
    split_dir = os.path.expanduser(split_dir)
    lists = {split: _read_list(os.path.join(split_dir, f"{spec.prefix}_{split}.txt"), spec) for split in SPLITS}
    for split, entries in lists.items():
        if counts is not None and split in counts and len(entries) != counts[split]:
            raise LtstgError(
                f"{spec.prefix}_{split}.txt in {split_dir} has {len(entries):,} lines but the {spec.title} {split} "
                f"list has {counts[split]:,}; use the standard split lists."
            )
    rows = [(split, path, label) for split, entries in lists.items() for path, label in entries]
    sizes = check_image_files(root, [path for _, path, _ in rows], spec.title, progress) if check_files else None
    lines = [
        f"{split} {label} {path}" + ("" if sizes is None else f" {sizes[i]}")
        for i, (split, path, label) in enumerate(rows)
    ]
    return Source(
        name=kind,
        class_names=_class_names(lists["train"], spec.num_classes),
        splits={
            split: Split(
                labels=torch.tensor([label for _, label in entries], dtype=torch.int64),  # (N,)
                paths=tuple(path for path, _ in entries),
            )
            for split, entries in lists.items()
        },
        root=root,
        fingerprint=fingerprint([kind, *lines]),
    )


def _read_list(list_path: str, spec: SplitListFormat) -> list[tuple[str, int]]:
    """(relative path, label) per non-blank line, with the file and line number in every error."""
    name = os.path.basename(list_path)
    if not os.path.isfile(list_path):
        raise LtstgError(
            f"split list {list_path} not found; pass --split-dir DIR with the {spec.title} lists "
            f"({spec.prefix}_train.txt, _val.txt, _test.txt)."
        )
    entries, problems = [], []
    try:
        with open(list_path, encoding="utf-8") as file:
            for line_number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                fields = line.rsplit(maxsplit=1)
                problem = label = None
                if len(fields) != 2:
                    problem = f"expected 'relative/path label', got {line.strip()!r}"
                else:
                    try:
                        label = int(fields[1])
                    except ValueError:
                        problem = f"label {fields[1]!r} is not an integer"
                if label is not None and not 0 <= label < spec.num_classes:
                    problem = f"label {label} is out of range 0..{spec.num_classes - 1} for {spec.title}"
                if problem is not None:
                    problems.append(f"{name} line {line_number}: {problem}.")
                    continue
                entries.append((fields[0].strip().lstrip("/"), label))  # paths are relative to the image root
    except UnicodeDecodeError:
        raise LtstgError(f"split list {list_path} is not UTF-8 text; pass the standard {spec.title} lists.") from None
    if problems:
        more = [f"{name}: … and {len(problems) - MAX_PROBLEMS} more malformed lines."] if len(problems) > MAX_PROBLEMS else []
        raise LtstgError("\n".join(problems[:MAX_PROBLEMS] + more))
    return entries


def check_image_files(root: str, paths: list[str], title: str, progress: Progress) -> list[int]:
    """Size of each listed file, in list order; missing files are one error naming the first five."""
    if not os.path.isdir(root):
        raise LtstgError(
            f"image root {root} does not exist; pass --root with the folder the {title} paths are relative to."
        )

    def size(path: str) -> int | str:
        """The file's size, or why it has none: missing, a path through a file, a name too long, a NUL byte."""
        try:
            return os.stat(os.path.join(root, path)).st_size
        except FileNotFoundError:
            return "missing"
        except (OSError, ValueError) as error:
            return getattr(error, "strerror", None) or str(error)

    sizes: list[int | str] = []
    with ThreadPoolExecutor(max_workers=STAT_THREADS) as pool:
        for done, file_size in enumerate(pool.map(size, paths), start=1):
            sizes.append(file_size)
            if done % REPORT_EVERY == 0 or done == len(paths):
                progress("check image files", done, len(paths))
    bad = [(path, why) for path, why in zip(paths, sizes) if isinstance(why, str)]
    if bad:
        reasons = collections.Counter(why for _, why in bad)
        counts = ", ".join(f"{count:,} {why}" for why, count in reasons.most_common())
        first = ", ".join(path for path, _ in bad[:5])
        raise LtstgError(
            f"{len(bad):,} images listed in the {title} split lists cannot be read under {root} ({counts}; first: "
            f"{first}); pass --root with the folder the list paths are relative to, or fix the listed names."
        )
    return [int(file_size) for file_size in sizes]


def _class_names(train: list[tuple[str, int]], num_classes: int) -> tuple[str, ...]:
    """Each label's train folder name (an ImageNet wnid, a Places category) if unambiguous, else "0".."C-1"."""
    folders: dict[int, set[str]] = {}
    for path, label in train:
        folders.setdefault(label, set()).add(os.path.basename(os.path.dirname(path)))
    names = [next(iter(folders[c])) if len(folders.get(c, ())) == 1 else "" for c in range(num_classes)]
    if all(names) and len(set(names)) == num_classes:
        return tuple(names)
    return tuple(str(c) for c in range(num_classes))
