"""Per-sample transformation report (paper Table 5): how differently the STG shifts samples of one tail class.

For a few training samples of a tail class, each borrows the token of its most similar head class, the
STG predicts a diagonal Gaussian N(μ_i, diag Σ_i) of shifts, and the report holds the N×N matrix of
KL(N_i ‖ N_j) next to the head class each sample borrowed. Samples that borrow the same head class
should have smaller divergences between them than samples that borrow different ones.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from ltstg.errors import LtstgError
from ltstg.models.gaussian import pairwise_kl
from ltstg.models.prototypes import nearest_prototype
from ltstg.models.stg import load_stg, stg_problems
from ltstg.store import SHORT, Artifact, Output, atomic_write, require_kind

NAMES_SHOWN = 10  # class names an error message lists before it says "..."


def kl_report(
    stg: Artifact,
    features: Artifact,
    *,
    class_index: int | None = None,
    samples: int = 5,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Output:
    """Show that one tail class's samples get different transformations, depending on the head class each borrows."""
    if samples < 1:
        raise LtstgError(f"the KL report needs at least 1 sample, got {samples}.")
    train_features, train_labels, class_counts = checked_features(features)
    num_classes = class_counts.numel()
    check_stg(stg, train_features.shape[1], num_classes)
    head = stg["head_classes"].long()  # (H,)
    names = class_names(features)
    chosen = _chosen_class(class_index, class_counts, head, names)

    members = torch.nonzero(train_labels == chosen).flatten()  # (n_c,), ascending
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(members.numel(), generator=generator)[:samples]
    # sorted so the table reads in training-set order; the seed alone decides which samples appear
    sample_index = torch.sort(members[pick]).values  # (N,)

    device = torch.device(device)
    model = load_stg(stg, device)
    rows = train_features[sample_index].to(device, torch.float32)  # (N, D)
    prototypes = stg["head_prototypes"].to(device, torch.float32)  # (H, D)
    token, cosine = nearest_prototype(rows, prototypes)  # (N,), (N,)
    with torch.no_grad():
        mu, var = model(rows, token)  # (N, D) each
    mu, var = mu.cpu(), var.cpu()
    # float64 so near-identical Gaussians keep their small divergences
    kl = pairwise_kl(mu.double(), var.double())  # (N, N)
    borrowed_head = head[token.cpu()]  # (N,)
    cosine = cosine.cpu()

    tensors = {
        "kl": kl,
        "sample_index": sample_index,
        "borrowed_head": borrowed_head,
        "cosine": cosine,
        "mu": mu,
        "var": var,
    }
    head_names = [names[h] for h in borrowed_head.tolist()]
    table = [
        {
            "sample": i + 1,
            "train_index": int(sample_index[i]),
            "borrowed_head": int(borrowed_head[i]),
            "borrowed_head_name": head_names[i],
            "cosine": float(cosine[i]),
        }
        for i in range(sample_index.numel())
    ]
    info: dict[str, Any] = {
        "class_index": chosen,
        "class_name": names[chosen],
        "class_count": int(class_counts[chosen]),
        "head_classes": head.tolist(),
        "borrowed_head_names": head_names,
        "seed": seed,
        "samples": table,
    }
    notes = []
    if members.numel() < samples:
        notes.append(f"class {names[chosen]} has {members.numel()} training samples, fewer than the {samples} asked: "
                     "the report shows all of them")
    return Output("kl-report", tensors, kl_summary(kl, borrowed_head), info, key_metric="mean_kl", notes=notes)


def kl_summary(kl: torch.Tensor, borrowed_head: torch.Tensor) -> dict[str, float]:
    """Off-diagonal spread, plus same-head vs other-head means: the paper's claim is that the first is smaller."""
    n = kl.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)  # (N, N)
    same = (borrowed_head[:, None] == borrowed_head[None]) & off  # (N, N)
    other = (borrowed_head[:, None] != borrowed_head[None]) & off  # (N, N)
    _, shares = torch.unique(borrowed_head, return_counts=True)

    def mean(mask: torch.Tensor) -> float:
        return float(kl[mask].mean()) if bool(mask.any()) else math.nan

    return {
        "mean_kl": mean(off),
        "min_kl": float(kl[off].min()) if n > 1 else math.nan,
        "max_kl": float(kl[off].max()) if n > 1 else math.nan,
        "same_head_mean_kl": mean(same),
        "other_head_mean_kl": mean(other),
        "distinct_heads": float(shares.numel()),
        "largest_share": float(shares.max()),
        "samples": float(n),
    }


def kl_rows(report: Any) -> list[dict[str, Any]]:
    """One flat row per sample (its KL row, borrowed head, cosine), for a table or JSON; takes an Output or Artifact."""
    kl = report.tensors["kl"]  # (N, N)
    table = report.info["samples"]
    rows = []
    for i, sample in enumerate(table):
        row: dict[str, Any] = {"sample": sample["sample"], "train_index": sample["train_index"]}
        row.update({f"kl_to_{j + 1}": float(kl[i, j]) for j in range(kl.shape[1])})
        row.update(
            borrowed_head=sample["borrowed_head"],
            borrowed_head_name=sample["borrowed_head_name"],
            cosine=sample["cosine"],
        )
        rows.append(row)
    return rows


def kl_csv(report: Any, path: str | Path) -> Path:
    """The KL matrix with a header row and each sample's borrowed head, for spreadsheets and papers."""
    rows = kl_rows(report)
    path = Path(path)
    text = io.StringIO(newline="")
    fields = list(rows[0]) if rows else ["sample", "train_index", "borrowed_head", "borrowed_head_name", "cosine"]
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, [text.getvalue().encode("utf-8")])
    return path


def resolve_class(value: str, class_names: Sequence[str]) -> int:
    """A class typed by the user as its name or its index; names win, so a class named "3" is that class."""
    names = [str(name) for name in class_names]
    text = value.strip()
    if text in names:
        return names.index(text)
    try:
        index = int(text)
    except ValueError:
        shown = ", ".join(names[:NAMES_SHOWN]) + (", ..." if len(names) > NAMES_SHOWN else "")
        raise LtstgError(
            f"unknown class {value!r}: give a class name ({shown}) or an index in [0, {len(names) - 1}]."
        ) from None
    _check_index(index, len(names))
    return index


def class_names(features: Artifact) -> list[str]:
    """Names from the features artifact, or the indices as text when it has none."""
    num_classes = features["class_counts"].numel()
    names = features.info.get("class_names") or [str(c) for c in range(num_classes)]
    return [str(name) for name in names]


def checked_features(features: Artifact) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training features, labels and counts that agree with each other, or one clear error."""
    require_kind(features, "features")
    label = f"features artifact {features.id[:SHORT]}"
    train_features = features["train_features"]
    train_labels = features["train_labels"].long()
    class_counts = features["class_counts"].long()
    if train_features.dim() != 2 or train_features.shape[0] == 0:
        raise LtstgError(
            f"{label}: train_features must be a non-empty (N, D) matrix, got {tuple(train_features.shape)}."
        )
    if train_labels.shape != (train_features.shape[0],):
        raise LtstgError(
            f"{label}: train_labels has shape {tuple(train_labels.shape)}, expected ({train_features.shape[0]},)."
        )
    if class_counts.dim() != 1 or train_labels.min() < 0 or train_labels.max() >= class_counts.numel():
        raise LtstgError(f"{label}: train_labels lie outside [0, {class_counts.numel()}).")
    if not torch.equal(torch.bincount(train_labels, minlength=class_counts.numel()), class_counts):
        raise LtstgError(f"{label}: class_counts disagrees with train_labels; re-extract the features.")
    return train_features.float(), train_labels, class_counts


def check_stg(stg: Artifact, dim: int, num_classes: int) -> None:
    """The STG must have been fit on features of this size and these classes, else its shifts mean nothing here."""
    problems = stg_problems(stg, num_classes, dim, needs_tail=False)  # a missing tail class is said by _chosen_class
    if problems:
        raise LtstgError("\n".join(problems))


def _check_index(index: int, num_classes: int) -> None:
    if not 0 <= index < num_classes:
        raise LtstgError(f"class index {index} is out of range; valid classes are 0 to {num_classes - 1}.")


def _chosen_class(
    class_index: int | None, class_counts: torch.Tensor, head: torch.Tensor, names: list[str]
) -> int:
    """The given tail class after checks, or the rarest non-empty tail class (ties: the highest index)."""
    num_classes = class_counts.numel()
    is_head = torch.zeros(num_classes, dtype=torch.bool)  # (C,)
    is_head[head] = True
    if class_index is None:
        candidates = torch.nonzero(~is_head & (class_counts > 0)).flatten()
        if candidates.numel() == 0:
            raise LtstgError(
                "every class with training samples is a head class of this STG; there is no tail class to report."
            )
        counts = class_counts[candidates]
        rarest = candidates[counts == counts.min()]
        return int(rarest.max())
    _check_index(class_index, num_classes)
    if bool(is_head[class_index]):
        raise LtstgError(
            f"class {class_index} ({names[class_index]}) is a head class of this STG, and head classes borrow nothing; "
            "choose a tail class."
        )
    if int(class_counts[class_index]) == 0:
        raise LtstgError(
            f"class {class_index} ({names[class_index]}) has no training samples; choose another tail class."
        )
    return class_index
