"""Stage 0: a long-tailed data set artifact from CIFAR, an image folder, split lists or the generator."""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
import torch

from ltstg.data import Source, Split
from ltstg.data.cifar import load_cifar
from ltstg.data.imagefolder import check_images, decode_images, list_imagefolder
from ltstg.data.inaturalist import read_inaturalist
from ltstg.data.longtail import assign_groups, make_profile, select_long_tail, split_off_share, split_off_validation
from ltstg.data.split_list import read_split_lists
from ltstg.data.synthetic import make_synthetic
from ltstg.errors import LtstgError
from ltstg.recipe import SPLIT_LIST_SOURCES, DatasetSettings
from ltstg.progress import Progress, silent
from ltstg.stages import Output


def _need_root(settings: DatasetSettings) -> str:
    if not settings.root:
        raise LtstgError(f"the {settings.source} source needs --root DIR (dataset.root in the recipe).")
    return settings.root


def stored_as_paths(settings: DatasetSettings, source: Source) -> bool:
    """Whether the data set keeps file paths (decoded at read time) rather than decoded images."""
    if source.name in SPLIT_LIST_SOURCES:
        return True
    if settings.storage == "paths" and source.splits["train"].paths is None:
        raise LtstgError(f"dataset.storage=paths: the {source.name} source has no image files to keep as paths.")
    return settings.storage == "paths"


def _split_lists(settings: DatasetSettings) -> Source:
    if not settings.split_dir:
        raise LtstgError(f"the {settings.source} source needs --split-dir DIR holding its *_LT_*.txt lists.")
    return read_split_lists(settings.source, _need_root(settings), settings.split_dir)


LOADERS: dict[str, Callable[[DatasetSettings, int], Source]] = {
    "synthetic": lambda s, seed: make_synthetic(
        s.synthetic.num_classes, s.synthetic.train_per_class, s.synthetic.test_per_class, s.size, seed,
        val_per_class=s.val_count(s.synthetic.num_classes),
    ),
    "cifar10": lambda s, seed: load_cifar("cifar10", s.root, s.download),
    "cifar100": lambda s, seed: load_cifar("cifar100", s.root, s.download),
    "imagefolder": lambda s, seed: list_imagefolder(_need_root(s), s.classes),
    "imagenet-lt": lambda s, seed: _split_lists(s),
    "places-lt": lambda s, seed: _split_lists(s),
    "inat2018": lambda s, seed: read_inaturalist(_need_root(s), s.split_dir),
}


def load_source(settings: DatasetSettings, seed: int) -> Source:
    """The source before selection: cheap for file sources (a listing), so its fingerprint can join the id."""
    return LOADERS[settings.source](settings, seed)


def encode_strings(items: list[str]) -> torch.Tensor:
    """Paths as one uint8 tensor of newline-separated UTF-8, so they live in the artifact's tensors."""
    return torch.frombuffer(bytearray("\n".join(items).encode()), dtype=torch.uint8) if items else torch.zeros(0, dtype=torch.uint8)


def decode_strings(tensor: torch.Tensor) -> list[str]:
    data = bytes(tensor.numpy().tobytes()).decode()
    return data.split("\n") if data else []


def make_dataset(settings: DatasetSettings, source: Source, *, seed: int, progress: Progress = silent) -> Output:
    """Select the long-tailed training subset (Cao et al.), set a validation split apart, and store images or
    paths with counts and groups."""
    source_counts = _checked_counts(source)  # (C,)
    notes: list[str] = []
    kept, val_rows, protocol, val_origin = _select(settings, source, source_counts, seed, notes)
    train = source.splits["train"]
    splits = {"train": _take(train, kept)} | ({"val": _take(train, val_rows)} if val_rows is not None else {})
    splits |= {k: v for k, v in source.splits.items() if k != "train"}
    tensors, skipped = _split_tensors(settings, source, splits, progress)
    tensors = {"train_index": torch.from_numpy(kept.astype(np.int64)), **tensors}
    if val_rows is not None:
        tensors["val_index"] = torch.from_numpy(val_rows.astype(np.int64))  # rows of the source's training split
    _note_skipped(settings, source, skipped, notes)
    _check_not_emptied(source, list(splits), tensors)
    return _dataset_output(settings, source, kept, protocol, val_origin, tensors, skipped, notes)


def _checked_counts(source: Source) -> np.ndarray:
    """The source's training images per class, checked: at least two classes, none empty."""
    num_classes = len(source.class_names)
    if num_classes < 2:
        raise LtstgError(
            f"the {source.name} source has {num_classes} class; a classification data set needs at least 2."
        )
    source_counts = np.bincount(source.splits["train"].labels.numpy(), minlength=num_classes)  # (C,)
    missing = [source.class_names[c] for c in range(num_classes) if source_counts[c] == 0]
    if missing:
        raise LtstgError(
            f"{len(missing)} class(es) without training images: {', '.join(missing[:10])}; remove or fill them."
        )
    return source_counts


def _select(
    settings: DatasetSettings, source: Source, source_counts: np.ndarray, seed: int, notes: list[str]
) -> tuple[np.ndarray, np.ndarray | None, str, str]:
    """The kept training rows, the validation rows taken from the source's training split (None: the source has
    its own val split), the protocol and where validation comes from, in words; deviations go to `notes`."""
    train = source.splits["train"]
    num_classes = len(source.class_names)
    counts, protocol = _profile_counts(settings, source, source_counts, notes)  # (C,) or None: the source as is
    if "val" in source.splits:
        origin = "generated, like the training images" if source.name == "synthetic" else "the source's own val split"
        kept = np.arange(len(train.labels)) if counts is None else select_long_tail(train.labels.numpy(), counts, seed)
        return kept, None, protocol, origin
    if counts is None and source.name == "imagefolder":  # kept as it is: a stratified share, which shrinks the tail
        kept, val_rows = split_off_share(train.labels.numpy(), num_classes, settings.val_share, seed)
        taken = np.bincount(train.labels.numpy()[val_rows], minlength=num_classes)
        notes.append(
            f"validation: held out {len(val_rows)} training images ({100 * settings.val_share:g}% of each class, at "
            f"least one where a class can spare one; {int(taken.min())}-{int(taken.max())} per class), since the "
            "source has no val/ folder; the training counts shrink by as much (add a val/ folder to keep them)"
        )
        return kept, val_rows, protocol, f"a stratified {100 * settings.val_share:g}% of the source's training images"
    per_class = settings.val_count(num_classes)
    counts = counts if counts is not None else source_counts.tolist()
    kept, val_rows = split_off_validation(train.labels.numpy(), counts, per_class, seed)
    per_split = {name: np.bincount(train.labels.numpy()[rows], minlength=num_classes) for name, rows in
                 (("train", kept), ("val", val_rows))}
    _note_borrowed(source, counts, per_split["train"], per_split["val"], per_class, notes)
    return kept, val_rows, protocol, f"{per_class} per class from the training images the profile left unused"


def _profile_counts(
    settings: DatasetSettings, source: Source, source_counts: np.ndarray, notes: list[str]
) -> tuple[list[int] | None, str]:
    """Training images per class the protocol keeps (None: every image, as the source has them) and the protocol
    in words; a class the profile can't fill is noted in `notes`."""
    if source.name in SPLIT_LIST_SOURCES:
        return None, "published annotation files" if source.name == "inat2018" else "published split list"
    if settings.imbalance == 1:
        return None, "source as is"
    num_classes = len(source.class_names)
    protocol = f"{settings.profile} profile, imbalance {settings.imbalance:g} (Cao et al.)"
    profile = np.asarray(make_profile(int(source_counts.max()), num_classes, settings.imbalance, settings.profile))
    wanted = profile.copy()  # (C,): label order, as Cao et al.
    if settings.profile_order == "size":  # a naturally long-tailed folder keeps its order of class sizes
        protocol += ", largest source class first"
        wanted[np.argsort(-source_counts, kind="stable")] = profile
    counts = np.minimum(wanted, source_counts)  # an uneven image folder can't give more than it has
    capped = [source.class_names[c] for c in range(num_classes) if counts[c] < wanted[c]]
    if capped:
        notes.append(
            f"{len(capped)} class(es) hold fewer images than the profile asks ({', '.join(capped[:5])}"
            f"{', …' if len(capped) > 5 else ''}); they keep all they have, so the achieved imbalance is "
            f"{counts.max() / max(counts.min(), 1):.2f}, not {settings.imbalance:g} "
            "(dataset.profile_order=size lays the profile over classes by size)"
        )
    if counts.min() < 1:
        raise LtstgError(
            f"imbalance {settings.imbalance:g} leaves class {int(counts.argmin())} without images; "
            f"the largest this source allows is {int(source_counts.max())}."
        )
    return counts.tolist(), protocol


def _note_borrowed(
    source: Source, wanted: list[int], kept: np.ndarray, val: np.ndarray, per_class: int, notes: list[str]
) -> None:
    """Classes whose validation images had to come out of their training images (the profile left too few
    unused), and classes whose validation set is smaller than asked."""
    borrowed = [c for c in range(len(wanted)) if kept[c] < wanted[c]]
    if borrowed:
        listing = ", ".join(f"{source.class_names[c]} {wanted[c]} → {int(kept[c])}" for c in borrowed[:5])
        notes.append(
            f"validation: {len(borrowed)} class(es) lacked {per_class} unused training images, so part of their "
            f"validation images came out of their training images ({listing}{', …' if len(borrowed) > 5 else ''}; "
            f"at most a tenth of a class's); the achieved imbalance is {kept.max() / max(kept.min(), 1):.2f} "
            "(dataset.val_per_class sets the size)"
        )
    small = [c for c in range(len(wanted)) if val[c] < per_class]
    if small:
        listing = ", ".join(f"{source.class_names[c]} {int(val[c])}" for c in small[:5])
        notes.append(
            f"validation: {len(small)} class(es) have under {per_class} validation images ({listing}"
            f"{', …' if len(small) > 5 else ''}); selection weighs every class alike all the same"
        )


def _split_tensors(
    settings: DatasetSettings, source: Source, splits: dict[str, Split], progress: Progress
) -> tuple[dict[str, torch.Tensor], list[tuple[str, str]]]:
    """Labels with images (decoded here from an image folder) or paths, per split, and the files that failed."""
    tensors: dict[str, torch.Tensor] = {}
    skipped: list[tuple[str, str]] = []  # (path, why)
    for split_name, split in splits.items():
        if split.images is None and not stored_as_paths(settings, source):
            images, keep, bad = decode_images(source.root or "", split.paths or (), settings.size, progress=progress)
            skipped += bad
            split = Split(labels=split.labels[keep], images=images)
        elif split.images is None:  # paths: every file opened now, so a bad one is skipped here, not met mid-epoch
            keep, bad = check_images(source.root or "", split.paths or (), progress=progress)
            skipped += bad
            if bad:
                split = Split(labels=split.labels[keep], paths=tuple(p for p, k in zip(split.paths, keep.tolist()) if k))
        tensors[f"{split_name}_labels"] = split.labels.to(torch.int64)
        if split.images is not None:
            tensors[f"{split_name}_images"] = split.images
        else:
            tensors[f"{split_name}_paths"] = encode_strings(list(split.paths or ()))
    return tensors, skipped


def _note_skipped(
    settings: DatasetSettings, source: Source, skipped: list[tuple[str, str]], notes: list[str]
) -> None:
    """Unreadable files stop a strict run and are noted in `notes` otherwise."""
    if not skipped:
        return
    listing = "; ".join(f"{path} ({why})" for path, why in skipped[:3]) + ("; …" if len(skipped) > 3 else "")
    if settings.strict:
        raise LtstgError(
            f"{len(skipped)} unreadable image file(s) under {source.root}: {listing}; replace or remove them, "
            "or run without dataset.strict to skip them."
        )
    notes.append(f"skipped {len(skipped)} unreadable image file(s): {listing} (dataset.strict=true stops instead)")


def _check_not_emptied(source: Source, split_names: list[str], tensors: dict[str, torch.Tensor]) -> None:
    """A class whose train or test images were all unreadable stops the run: it could be neither learnt nor scored."""
    emptied = [
        f"{source.class_names[c]} ({name})"
        for name in split_names
        for c in range(len(source.class_names))
        if name in ("train", "test") and int((tensors[f"{name}_labels"] == c).sum()) == 0
    ]
    if emptied:
        raise LtstgError(
            f"{len(emptied)} class(es) have no readable image left: {', '.join(emptied[:10])}; "
            "fix or replace their files."
        )


def _dataset_output(
    settings: DatasetSettings, source: Source, kept: np.ndarray, protocol: str, val_origin: str,
    tensors: dict[str, torch.Tensor], skipped: list[tuple[str, str]], notes: list[str],
) -> Output:
    num_classes = len(source.class_names)
    train_counts = torch.bincount(tensors["train_labels"], minlength=num_classes)  # (C,)
    tensors["class_counts"] = train_counts
    tensors["val_counts"] = torch.bincount(tensors["val_labels"], minlength=num_classes)  # (C,)
    groups = assign_groups(train_counts.tolist(), settings.many_above, settings.few_below)
    selected = hashlib.sha256(np.ascontiguousarray(kept.astype(np.int64)).tobytes()).hexdigest()
    info = {
        "source": source.name,
        "root": source.root,
        "fingerprint": source.fingerprint,
        "protocol": protocol,
        "class_names": list(source.class_names),
        "groups": groups,
        "splits": sorted(name for name in ("train", "val", "test") if f"{name}_labels" in tensors),
        "val_origin": val_origin,
        "storage": "paths" if stored_as_paths(settings, source) else "images",
        "selected_digest": selected,
        "skipped": [f"{path} ({why})" for path, why in skipped[:20]],
        "skipped_count": len(skipped),
    }
    counts = train_counts.tolist()
    metrics = {
        "train": float(len(tensors["train_labels"])),
        "test": float(len(tensors["test_labels"])),
        "val": float(len(tensors["val_labels"])),
        "classes": float(num_classes),
        "imbalance": max(counts) / max(min(counts), 1),
        "skipped": float(len(skipped)),
        "many": float(groups.count("many")),
        "medium": float(groups.count("medium")),
        "few": float(groups.count("few")),
    }
    return Output("dataset", tensors, metrics, info, key_metric="train", notes=notes)


def _take(split: Split, index: np.ndarray) -> Split:
    labels = split.labels[torch.from_numpy(index)]
    if split.images is not None:
        return Split(labels=labels, images=split.images[torch.from_numpy(index)])
    paths = split.paths or ()
    return Split(labels=labels, paths=tuple(paths[i] for i in index.tolist()))
