"""Pictures for `ltstg inspect`: matplotlib with the Agg backend, written straight to a file."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

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
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path
