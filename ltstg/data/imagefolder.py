"""Any `train/<class>/*`, `test/<class>/*` tree as a source, and the decoder shared by file-based sources."""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from ltstg.data import Source, Split, fingerprint
from ltstg.errors import LtstgError
from ltstg.progress import Progress, silent

VAL_FOLDERS = ("val", "valid")
REPORT_EVERY = 1000
# What PIL raises for unreadable, truncated or hostile files; anything else is a bug and keeps its traceback.
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def list_imagefolder(root: str, classes: Sequence[str] | None = None) -> Source:
    """Paths and labels without decoding, so a bad tree fails in seconds, before any heavy work.

    Every non-hidden file counts (nested folders too), so nothing is dropped silently:
    decode_images reports the files it cannot read.
    """
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise LtstgError(f"image folder root {root} does not exist; pass the folder that holds train/ and test/.")
    for split in ("train", "test"):
        if not os.path.isdir(os.path.join(root, split)):
            raise LtstgError(
                f"{root} has no {split}/ folder; an image folder needs train/<class>/<image> and test/<class>/<image>."
            )
    split_folders = {split: split for split in ("train", "test")} | _val_folder(root)  # split -> its folder under root
    found = {split: _class_folders(root, folder) for split, folder in split_folders.items()}
    if not found["train"]:
        raise LtstgError(
            f"{os.path.join(root, 'train')} has no class folders; put each class's images in train/<class>/."
        )
    if classes is None:
        class_names = tuple(found["train"])
    else:
        class_names = tuple(classes)
        missing = [name for name in class_names if name not in found["train"]]
        if missing:
            raise LtstgError(
                f"class {missing[0]!r} has no folder in {os.path.join(root, 'train')} ({len(missing)} listed classes "
                "missing); fix the class list or add the folders."
            )
        if len(set(class_names)) != len(class_names):
            raise LtstgError(f"the class list {list(class_names)} names a class twice; give each class once.")
    for split, folders in found.items():
        extra = sorted(set(folders) - set(found["train"]))
        if extra:
            raise LtstgError(
                f"{os.path.join(root, split_folders[split], extra[0])} is a class absent from train/ ({len(extra)} such folders); "
                "add it to train/ or remove it."
            )
    splits, listing = {}, []
    for split in found:
        paths, labels = [], []
        for label, name in enumerate(class_names):
            files = _files(root, os.path.join(split_folders[split], name))
            if split == "train" and not files:
                raise LtstgError(f"{os.path.join(root, split, name)} holds no images; add some or leave the class out.")
            paths += [path for path, _ in files]
            labels += [label] * len(files)
            listing += [f"{split} {label} {path} {size}" for path, size in files]
        if split == "val":
            _check_val(root, split_folders[split], class_names, labels)
        splits[split] = Split(labels=torch.tensor(labels, dtype=torch.int64), paths=tuple(paths))
    return Source(
        name="imagefolder",
        class_names=class_names,
        splits=splits,
        root=root,
        fingerprint=fingerprint(["imagefolder", *class_names, *listing]),
    )


def _check_val(root: str, folder: str, class_names: Sequence[str], labels: list[int]) -> None:
    """A val/ folder must hold images of every class: selection and the temperature score every class alike, and an
    empty one would fail only after three stages had run."""
    missing = [name for label, name in enumerate(class_names) if label not in set(labels)]
    if len(missing) == len(class_names):
        raise LtstgError(f"{os.path.join(root, folder)} holds no images; put each class's validation images in "
                         f"{folder}/<class>/, or remove {folder}/ to hold out a share of train/ instead.")
    if missing:
        listing = ", ".join(missing[:5]) + (", …" if len(missing) > 5 else "")
        raise LtstgError(f"{os.path.join(root, folder)} has no images of {len(missing)} of {len(class_names)} classes "
                         f"({listing}); add them, or remove {folder}/ to hold out a share of train/ instead.")


def _val_folder(root: str) -> dict[str, str]:
    """The validation folder, `val/` or `valid/` (as some published trees name it); both at once is ambiguous."""
    present = [name for name in VAL_FOLDERS if os.path.isdir(os.path.join(root, name))]
    if len(present) > 1:
        raise LtstgError(f"{root} has both val/ and valid/; keep the one that holds the validation images.")
    return {"val": present[0]} if present else {}


def _class_folders(root: str, split: str) -> list[str]:
    """Sorted class folder names of one split, ignoring hidden entries such as .DS_Store."""
    with os.scandir(os.path.join(root, split)) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir() and not entry.name.startswith("."))


def _files(root: str, folder: str) -> list[tuple[str, int]]:
    """(path relative to root, size) of every non-hidden file under folder, sorted by path. A folder the walk
    cannot read would drop its images without a word, so it is an error naming it (and how many there are)."""
    files, unreadable = [], []
    top = os.path.join(root, folder)
    if not os.path.isdir(top):  # a class without this split's folder: no images of it here
        return []
    for directory, subfolders, names in os.walk(top, onerror=unreadable.append):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in names:
            if not name.startswith("."):
                path = os.path.join(directory, name)
                try:
                    size = os.path.getsize(path)
                except OSError:  # a broken link: listed, then skipped and counted as unreadable when opened
                    size = -1
                files.append((os.path.relpath(path, root).replace(os.sep, "/"), size))
    if unreadable:
        first = unreadable[0]
        raise LtstgError(
            f"cannot read {len(unreadable)} folder(s) under {top} (first: {first.filename}: "
            f"{first.strerror or first}); their images would be left out: fix their permissions or move them away."
        )
    return sorted(files)


def decode_images(
    root: str, paths: Sequence[str], size: int, *, progress: Progress = silent
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """RGB size×size uint8 images of the readable files, which ones were kept, and (path, reason) of the others.

    Decoding runs in a thread pool (PIL releases the GIL while decoding). The caller decides whether
    skipped files are an error (dataset.strict) after every split has been read, so both modes count alike.
    """
    images = np.zeros((len(paths), size, size, 3), dtype=np.uint8)  # (N, size, size, 3)
    keep = np.zeros(len(paths), dtype=bool)  # (N,)
    reasons: dict[int, str] = {}

    def decode(index: int) -> None:
        path = os.path.join(root, paths[index])
        try:
            if os.path.getsize(path) == 0:
                reasons[index] = "empty file"
                return
            images[index] = read_image(path, size)
        except UNREADABLE as error:
            reasons[index] = str(error).split("\n")[0] or type(error).__name__
            return
        keep[index] = True

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for done, _ in enumerate(pool.map(decode, range(len(paths))), start=1):
            if done % REPORT_EVERY == 0 or done == len(paths):
                progress("decode images", done, len(paths))
    unreadable = [(paths[i], reasons[i]) for i in sorted(reasons)]
    if unreadable:
        images = images[keep]
    return torch.from_numpy(images), torch.from_numpy(keep), unreadable


def check_images(
    root: str, paths: Sequence[str], *, progress: Progress = silent
) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """Which files open as images (header read, size known, PIL's pixel limit kept) and (path, reason) of the
    others: what a data set that keeps paths checks before any epoch, so a bad file is skipped and counted at
    make-dataset as decoded images are, not met by a loader worker mid-epoch."""
    keep = np.zeros(len(paths), dtype=bool)  # (N,)
    reasons: dict[int, str] = {}

    def check(index: int) -> None:
        path = os.path.join(root, paths[index])
        try:
            with Image.open(path) as image:
                width, height = image.size
            if width < 1 or height < 1:
                reasons[index] = f"{width}x{height} pixels"
                return
        except UNREADABLE as error:
            reasons[index] = str(error).split("\n")[0] or type(error).__name__
            return
        keep[index] = True

    with ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 1)) as pool:  # opening is I/O-bound
        for done, _ in enumerate(pool.map(check, range(len(paths))), start=1):
            if done % REPORT_EVERY == 0 or done == len(paths):
                progress("check images", done, len(paths))
    return torch.from_numpy(keep), [(paths[i], reasons[i]) for i in sorted(reasons)]


def _to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grey images scaled to 8 bits; PIL's convert would clip them to 255.

    I;16 and I are read as 16-bit (0 … 65535, what PNG and TIFF store); F as 0 … 1 when it stays
    within it, else as 0 … 255.
    """
    values = np.asarray(image)
    if image.mode == "F":
        scale = 255.0 if float(np.nanmax(values, initial=0.0)) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.nan_to_num(values) * scale, 0, 255).round().astype(np.uint8), mode="L")
    return Image.fromarray((np.clip(values.astype(np.int64), 0, 65535) / 257.0).round().astype(np.uint8), mode="L")


def read_image(path: str, size: int) -> np.ndarray:
    """One file as (size, size, 3) uint8, whatever its mode; resized only when needed."""
    with Image.open(path) as image:
        image.draft("RGB", (size, size))  # JPEG only: let the decoder downscale by 2^k, much faster for big files
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # avoids PIL's warning for palette transparency
        if image.mode.startswith("I") or image.mode == "F":
            image = _to_8_bit(image)
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(image)
