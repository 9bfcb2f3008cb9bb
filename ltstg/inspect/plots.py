"""Pictures for `ltstg inspect`: matplotlib with the Agg backend, written straight to a file."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import torch

from ltstg.store import atomic_write

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GROUP_COLOURS = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#d62728"}


def plot_class_counts(counts: Sequence[int], groups: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """The long-tail curve: training images per class (log scale), coloured by shot group."""
    figure, axis = plt.subplots(figsize=(8, 4), dpi=100)
    colours = [GROUP_COLOURS.get(g, "grey") for g in groups]
    axis.bar(range(len(counts)), counts, color=colours, width=1.0)
    axis.set_yscale("log")
    axis.set_xlabel("class index")
    axis.set_ylabel("training images")
    axis.set_title(title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in GROUP_COLOURS.values()]
    axis.legend(handles, list(GROUP_COLOURS), loc="upper right")
    return _save(figure, path)


def _save(figure: Any, path: str | Path) -> Path:
    """Write the picture through a temporary file, so a failed write never replaces a good picture."""
    figure.tight_layout()
    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix[1:].lower() or "png")
    plt.close(figure)
    atomic_write(path, [buffer.getvalue()])
    return path


def count_order(counts: Sequence[int]) -> list[int]:
    """Class indices from the largest to the smallest training class (ties keep label order)."""
    return sorted(range(len(counts)), key=lambda c: (-counts[c], c))


def _shade_groups(axis: Any, groups: Sequence[str]) -> None:
    """Many / medium / few as background bands over a count-ordered x axis."""
    start = 0
    for index in range(1, len(groups) + 1):
        if index == len(groups) or groups[index] != groups[start]:
            axis.axvspan(start - 0.5, index - 0.5, color=GROUP_COLOURS.get(groups[start], "grey"), alpha=0.08, lw=0)
            axis.text((start + index - 1) / 2, 1.02, groups[start], ha="center", va="bottom", fontsize=8,
                      transform=axis.get_xaxis_transform())
            start = index


def _per_class_lines(
    series: dict[str, Sequence[float]], counts: Sequence[int], groups: Sequence[str], scale: float, ylabel: str
) -> tuple[Any, Any]:
    """One line per series over classes ordered by training count, with the shot groups shaded."""
    order = count_order(counts)
    figure, axis = plt.subplots(figsize=(9, 4.5), dpi=100)
    _shade_groups(axis, [groups[c] for c in order])
    for label, values in series.items():
        axis.plot(range(len(order)), [scale * float(values[c]) for c in order], marker=".", lw=1.2, label=label)
    axis.set_xlabel("classes, from the most to the fewest training images")
    axis.set_ylabel(ylabel)
    return figure, axis


def plot_per_class(
    series: dict[str, Sequence[float]], counts: Sequence[int], groups: Sequence[str], path: str | Path
) -> Path:
    """Per-class test accuracy of each classifier against the classes' training counts (largest first)."""
    figure, axis = _per_class_lines(series, counts, groups, 100, "test accuracy (%)")
    axis.set_ylim(0, 100)
    order = count_order(counts)
    counts_axis = axis.twinx()
    counts_axis.plot(range(len(order)), [counts[c] for c in order], color="black", ls="--", lw=1, label="train images")
    counts_axis.set_yscale("log")
    counts_axis.set_ylabel("training images (log)")
    lines, labels = axis.get_legend_handles_labels()
    more_lines, more_labels = counts_axis.get_legend_handles_labels()
    axis.legend(lines + more_lines, labels + more_labels, fontsize=8, loc="lower left")
    return _save(figure, path)


def plot_weight_norms(
    series: dict[str, Sequence[float]], counts: Sequence[int], groups: Sequence[str], path: str | Path
) -> Path:
    """‖w_c‖ per class for each classifier, classes by training count: the picture behind τ-norm and LWS."""
    figure, axis = _per_class_lines(series, counts, groups, 1, "classifier weight norm ‖w_c‖")
    axis.legend(fontsize=8)
    return _save(figure, path)


def plot_reliability(panels: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """One reliability diagram per classifier: accuracy and mean confidence per bin, ECE in the title.

    Each panel holds `count`, `confidence_sum`, `correct_sum` per bin (metrics.reliability_bins) and `ece`.
    """
    columns = min(len(panels), 4)
    rows = -(-len(panels) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), dpi=100, squeeze=False)
    axes = grid.flatten()
    for axis in axes[len(panels) :]:
        axis.set_visible(False)
    for axis, (label, panel) in zip(axes, panels.items()):
        count = panel["count"].clamp_min(1)
        bins = count.numel()
        filled = (panel["count"] > 0).numpy()
        centres = ((torch.arange(bins, dtype=torch.float64) + 0.5) / bins).numpy()
        accuracy = (panel["correct_sum"] / count).numpy()
        confidence = (panel["confidence_sum"] / count).numpy()
        axis.bar(centres[filled], accuracy[filled], width=1 / bins, edgecolor="black", lw=0.5, label="accuracy")
        axis.bar(centres[filled], (confidence - accuracy)[filled], bottom=accuracy[filled], width=1 / bins,
                 color="#d62728", alpha=0.35, edgecolor="#d62728", lw=0.5, label="gap to confidence")
        axis.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence")
        axis.set_title(f"{label}\nECE {100 * panel['ece']:.1f}%", fontsize=9)
    for row in grid:
        row[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=7, loc="upper left")
    return _save(figure, path)


def plot_confusion(
    matrix: torch.Tensor, counts: Sequence[int], names: Sequence[str], path: str | Path, *, title: str = ""
) -> Path:
    """Row-normalised confusion matrix (true class per row), classes from the largest training class down."""
    order = count_order(counts)
    picked = matrix.double()[order][:, order]  # (C, C)
    normalised = picked / picked.sum(dim=1, keepdim=True).clamp_min(1)
    size = min(4 + 0.25 * len(order), 14)
    figure, axis = plt.subplots(figsize=(size + 1.5, size), dpi=100)
    shown = axis.imshow(normalised.numpy(), cmap="Blues", vmin=0, vmax=1)
    if len(order) <= 30:
        labels = [f"{names[c]} ({counts[c]})" for c in order]
        axis.set_xticks(range(len(order)), labels, rotation=90, fontsize=7)
        axis.set_yticks(range(len(order)), labels, fontsize=7)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true (training images)")
    axis.set_title(title)
    figure.colorbar(shown, ax=axis, fraction=0.046, label="share of the true class")
    return _save(figure, path)


def plot_curves(
    stage1_loss: Sequence[float],
    eval_epochs: Sequence[int],
    eval_top1: Sequence[float],
    stg_loss: Sequence[float] | None,
    path: str | Path,
) -> Path:
    """Stage-1 training loss and test top-1 per epoch, and the STG's loss per epoch when given."""
    panels = 2 if stg_loss is not None else 1
    figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.6), dpi=100, squeeze=False)
    axis = axes[0][0]
    epochs = range(1, len(stage1_loss) + 1)
    axis.plot(epochs, stage1_loss, color="#1f77b4", label="train loss (mixup)")
    axis.set_xlabel("epoch")
    axis.set_ylabel("stage-1 training loss")
    accuracy_axis = axis.twinx()
    accuracy_axis.plot(eval_epochs, [100 * v for v in eval_top1], color="#2ca02c", marker="o", label="test top-1")
    accuracy_axis.set_ylabel("stage-1 test top-1 (%)")
    lines, labels = axis.get_legend_handles_labels()
    more_lines, more_labels = accuracy_axis.get_legend_handles_labels()
    axis.legend(lines + more_lines, labels + more_labels, fontsize=8, loc="center right")
    axis.set_title("stage 1: backbone")
    if stg_loss is not None:
        axes[0][1].plot(range(1, len(stg_loss) + 1), stg_loss, color="#9467bd")
        axes[0][1].set_yscale("log")
        axes[0][1].set_xlabel("epoch")
        axes[0][1].set_ylabel("STG loss (log)")
        axes[0][1].set_title("stage 2: STG")
    return _save(figure, path)


def plot_kl_heatmap(kl: torch.Tensor, labels: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """The Table-5 matrix KL(N_i ‖ N_j), each sample labelled with the head class it borrowed."""
    size = 2.5 + 0.6 * len(labels)
    figure, axis = plt.subplots(figsize=(size + 1.2, size), dpi=100)
    shown = axis.imshow(kl.double().numpy(), cmap="viridis")
    axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            axis.text(j, i, f"{float(kl[i, j]):.0f}", ha="center", va="center", color="white", fontsize=7)
    axis.set_title(title, fontsize=9)
    figure.colorbar(shown, ax=axis, fraction=0.046, label="KL(N_i ‖ N_j)")
    return _save(figure, path)
