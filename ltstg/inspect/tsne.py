"""t-SNE pictures of training features, STG augmentations and decision regions (paper Figures 3-4).

Real features of a class-stratified sample and STG-augmented copies of its tail samples are embedded
together in 2-D, so the augmentations land where the map puts their neighbourhoods. Each classifier
gets one more panel with its decision regions in that map.
"""
from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np
import torch
from sklearn.manifold import TSNE
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from ltstg.augment.stg import StgAugmenter, stg_arguments
from ltstg.errors import LtstgError
from ltstg.inspect.kl import check_stg, checked_features, class_names
from ltstg.recipe import StgAugment
from ltstg.store import SHORT, Artifact, atomic_write, require_kind

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

DPI = 100
GRID = 200  # cells per side of the decision-region raster
MIN_SIDE = 200  # smallest picture side in pixels that still fits a title and axes
LEGEND_MAX = 20  # more classes than this get no legend: it would cover the map
MIN_PER_CLASS = 5  # fewer points than this per class show no cluster: with more classes, a subset is mapped


@dataclass(frozen=True)
class _Map:
    """The sampled features and their 2-D embedding, shared by every panel."""

    real: torch.Tensor  # (P, D)
    labels: np.ndarray  # (P,)
    real_2d: np.ndarray  # (P, 2)
    augmented_2d: np.ndarray  # (A, 2)
    augmented_labels: np.ndarray  # (A,)
    extent: tuple[float, float, float, float]  # x from, x to, y from, y to


def tsne_figure(
    features: Artifact,
    out: Path,
    *,
    stg: Artifact | None = None,
    classifiers: Sequence[Artifact] = (),
    max_points: int = 2000,
    augment_per_sample: int = 3,
    lam: float = 1.5,
    seed: int = 0,
    size: tuple[int, int] = (1200, 900),
) -> dict[str, Any]:
    """Let a reader see where STG puts tail augmentations and how each classifier splits the feature space."""
    started = time.perf_counter()
    train_features, train_labels, class_counts = checked_features(features)
    num_classes = class_counts.numel()
    width, height = _check_arguments(
        stg, classifiers, train_features.shape[1], num_classes, size, max_points, augment_per_sample
    )

    generator = torch.Generator().manual_seed(seed)
    shown = shown_classes(class_counts, max_points)  # (S,)
    rows = stratified_sample(train_labels, num_classes, max_points, generator, classes=shown)  # (P,)
    real = train_features[rows].float()  # (P, D)
    labels = train_labels[rows]  # (P,)
    augmented, augmented_labels = _augmented(
        stg, real, labels, class_counts, augment_per_sample, max_points, lam, generator
    )  # (A, D), (A,)
    embedding = _embed(torch.cat([real, augmented]).numpy(), seed)  # (P + A, 2)
    points = _Map(real, labels.numpy(), embedding[: real.shape[0]], embedding[real.shape[0]:],
                  augmented_labels.numpy(), _extent(embedding))
    subset = f"{shown.numel()} of {num_classes} classes" if shown.numel() < num_classes else None
    figure = _draw(points, class_names(features), classifiers, num_classes, (width, height), subset)
    out = Path(out)
    _save(figure, out, (width, height))
    return {
        "path": str(out),
        "points": int(real.shape[0]),
        "augmented_points": int(augmented.shape[0]),
        "classes": num_classes,
        "classes_shown": int(shown.numel()),
        "panels": 1 + len(classifiers),
        "size": [width, height],
        "seconds": round(time.perf_counter() - started, 3),
    }


def _check_arguments(
    stg: Artifact | None,
    classifiers: Sequence[Artifact],
    dim: int,
    num_classes: int,
    size: tuple[int, int],
    max_points: int,
    augment_per_sample: int,
) -> tuple[int, int]:
    """Every artifact and cap checked before the slow t-SNE, so a bad call fails before any file: (width, height)."""
    if stg is not None:
        check_stg(stg, dim, num_classes)
    for classifier in classifiers:
        _check_classifier(classifier, num_classes, dim)
    width, height = (int(side) for side in size)
    if min(width, height) < MIN_SIDE:
        raise LtstgError(f"the picture must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {width}x{height}.")
    if max_points < 1:
        raise LtstgError(f"max_points must be >= 1, got {max_points}.")
    if augment_per_sample < 0:
        raise LtstgError(f"augment_per_sample must be >= 0, got {augment_per_sample}.")
    return width, height


def _embed(joint: np.ndarray, seed: int) -> np.ndarray:
    """The seeded 2-D t-SNE of real and augmented features together."""
    # perplexity must stay below the number of points; 30 is sklearn's default for large maps
    perplexity = min(30.0, max(1.0, (joint.shape[0] - 1) / 3))
    # one OpenMP thread: torch and scikit-learn each ship a libgomp, and with both active on a busy machine the
    # t-SNE ran 5x slower than on one thread (27 s vs 5 s, 3,000 points, 2 cores); one thread is also repeatable
    with threadpool_limits(limits=1, user_api="openmp"):
        return TSNE(
            n_components=2, init="pca", random_state=seed, perplexity=perplexity, learning_rate="auto"
        ).fit_transform(joint)  # (N, 2)


def _extent(embedding: np.ndarray) -> tuple[float, float, float, float]:
    """The embedding's bounding box with a 5% margin, shared by all panels."""
    low, high = embedding.min(axis=0), embedding.max(axis=0)
    margin = 0.05 * (high - low)
    return (low[0] - margin[0], high[0] + margin[0], low[1] - margin[1], high[1] + margin[1])


def _draw(
    points: _Map, names: list[str], classifiers: Sequence[Artifact], num_classes: int, size: tuple[int, int],
    subset: str | None,
) -> Any:
    """One panel of features and augmentations, then one of decision regions per classifier; `subset` says which
    share of the classes the map holds when it holds fewer than all."""
    colours = class_colours(num_classes)  # (C, 4)
    panels = 1 + len(classifiers)
    columns = math.ceil(math.sqrt(panels))
    figure, axes = plt.subplots(
        math.ceil(panels / columns), columns, figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, squeeze=False
    )
    _draw_features(axes.flat[0], points, names, colours, subset)
    for axis, classifier in zip(list(axes.flat)[1:], classifiers):
        _draw_regions(axis, points, classifier, colours)
    for axis in axes.flat:
        axis.set_xlim(points.extent[0], points.extent[1])
        axis.set_ylim(points.extent[2], points.extent[3])
        axis.set_xticks([])
        axis.set_yticks([])
    for axis in list(axes.flat)[panels:]:
        axis.set_visible(False)
    figure.tight_layout()
    return figure


def _draw_features(axis: Any, points: _Map, names: list[str], colours: np.ndarray, subset: str | None) -> None:
    _scatter_classes(axis, points.real_2d, points.labels, colours)
    augmented_2d = points.augmented_2d
    if augmented_2d.shape[0]:
        axis.scatter(
            augmented_2d[:, 0], augmented_2d[:, 1], c=colours[points.augmented_labels], marker="x", s=10,
            linewidths=0.6,
        )
    title = "features + STG augmentations (x)" if augmented_2d.shape[0] else "features"
    axis.set_title(f"{title}\n{subset}, head to tail" if subset else title)
    num_classes = colours.shape[0]
    if num_classes <= LEGEND_MAX:
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[c]) for c in range(num_classes)]
        axis.legend(handles, names, fontsize="x-small", loc="upper right", markerscale=0.8)


def _draw_regions(axis: Any, points: _Map, classifier: Artifact, colours: np.ndarray) -> None:
    predicted = _predictions(classifier, points.real)  # (P,)
    cells = decision_cells(points.real_2d, predicted, points.extent)  # (G, G)
    axis.imshow(
        colours[cells], origin="lower", extent=points.extent, alpha=0.35, aspect="auto", interpolation="nearest"
    )
    _scatter_classes(axis, points.real_2d, points.labels, colours)
    axis.set_title(str(classifier.info.get("method", classifier.id[:SHORT])))


def _save(figure: Any, out: Path, size: tuple[int, int]) -> None:
    """Write the picture (through a temporary file) and make sure it has the size asked for."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        written = image.size
    assert written == size, f"matplotlib wrote {written}, asked for {size}"
    atomic_write(out, [buffer.getvalue()])


def shown_classes(class_counts: torch.Tensor, max_points: int) -> torch.Tensor:
    """The classes the map holds: all of them while each can get MIN_PER_CLASS points, else max_points //
    MIN_PER_CLASS of them spread evenly over the ranking by training count (head to tail), sorted by id."""
    num_classes = class_counts.numel()
    fit = max(1, max_points // MIN_PER_CLASS)
    if num_classes <= fit:
        return torch.arange(num_classes)
    ranking = torch.sort(class_counts, descending=True, stable=True).indices  # (C,)
    picks = torch.linspace(0, num_classes - 1, fit).round().long()  # (S,) distinct while S <= C
    return torch.sort(ranking[picks]).values


def stratified_sample(
    labels: torch.Tensor, num_classes: int, max_points: int, generator: torch.Generator,
    classes: torch.Tensor | None = None,
) -> torch.Tensor:
    """At most `max_points` rows of `classes` (default: all) with equal per-class quotas, rare classes kept
    whole, the rest seeded picks."""
    classes = torch.arange(num_classes) if classes is None else classes
    per_class = torch.bincount(labels, minlength=num_classes)  # (C,)
    counts = per_class[classes]  # (S,)
    # water-filling: the largest quota q with sum_c min(n_c, q) <= max_points
    quota, remaining = 0, max_points
    for position, count in enumerate(sorted(counts.tolist())):
        share = remaining // (classes.numel() - position)
        if count > share:
            quota = share
            break
        remaining -= count
        quota = count
    by_class = torch.argsort(labels, stable=True)  # (N,): one sort instead of one scan of the labels per class
    starts = (per_class.cumsum(0) - per_class).tolist()  # (C,) where each class begins in by_class
    chosen = []
    for c, count in zip(classes.tolist(), counts.tolist()):
        members = by_class[starts[c] : starts[c] + count]
        if count > quota:
            members = members[torch.randperm(count, generator=generator)[:quota]]
        chosen.append(members)
    return torch.sort(torch.cat(chosen)).values


def class_colours(num_classes: int) -> np.ndarray:
    """One RGBA colour per class: tab10/tab20 while they suffice, then evenly spaced turbo hues."""
    if num_classes <= 10:
        return np.column_stack([np.asarray(plt.get_cmap("tab10").colors)[:num_classes], np.ones(num_classes)])
    if num_classes <= 20:
        return np.column_stack([np.asarray(plt.get_cmap("tab20").colors)[:num_classes], np.ones(num_classes)])
    return plt.get_cmap("turbo")(np.linspace(0.0, 1.0, num_classes))


def _augmented(
    stg: Artifact | None,
    real: torch.Tensor,
    labels: torch.Tensor,
    class_counts: torch.Tensor,
    per_sample: int,
    max_points: int,
    lam: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_sample` STG draws for each sampled tail feature (Eq. 3-4), at most `max_points // 2` in all."""
    if stg is None or per_sample == 0:
        return real.new_zeros(0, real.shape[1]), labels.new_zeros(0)
    augmenter = StgAugmenter(**stg_arguments(stg, StgAugment(lam=lam), class_counts, "cpu"))
    tail = torch.nonzero(augmenter.is_tail[labels]).flatten()  # (T,)
    keep = max_points // 2 // per_sample
    if tail.numel() > keep:
        # real points stay the majority of the map: a seeded subset of tail samples gets augmented
        tail = torch.sort(tail[torch.randperm(tail.numel(), generator=generator)[:keep]]).values
    source = real[tail].repeat(per_sample, 1)  # (T * k, D)
    source_labels = labels[tail].repeat(per_sample)  # (T * k,)
    return augmenter.augment(source, source_labels, generator=generator), source_labels


def _check_classifier(classifier: Artifact, num_classes: int, dim: int) -> None:
    """A classifier artifact must score these features' classes, else its regions would be meaningless."""
    require_kind(classifier, "classifier")
    weight, bias = classifier["weight"], classifier["bias"]
    if tuple(weight.shape) != (num_classes, dim) or tuple(bias.shape) != (num_classes,):
        raise LtstgError(
            f"classifier artifact {classifier.id[:SHORT]} is {tuple(weight.shape)} + {tuple(bias.shape)}, but the "
            f"features need ({num_classes}, {dim}) + ({num_classes},); use a classifier retrained on these features."
        )


def _predictions(classifier: Artifact, features: torch.Tensor) -> np.ndarray:
    """The classifier's class for each D-dimensional feature."""
    logits = features @ classifier["weight"].float().T + classifier["bias"].float()  # (P, C)
    return logits.argmax(dim=1).numpy()


def decision_cells(points: np.ndarray, predicted: np.ndarray, extent: tuple[float, ...]) -> np.ndarray:
    """The class of each cell of a GRID x GRID raster over `extent` (row 0 at the bottom), for decision regions.

    The classifier lives in D dimensions and t-SNE has no inverse map, so a 2-D cell cannot be classified
    directly. Each cell takes the class the classifier predicts for the D-dimensional feature of its
    nearest embedded training point (1-NN in 2-D): an approximation that is exact at the plotted points
    and shows the regions as a Voronoi tiling between them.
    """
    xs = np.linspace(extent[0], extent[1], GRID)
    ys = np.linspace(extent[2], extent[3], GRID)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)  # (G * G, 2), row-major from the bottom
    with threadpool_limits(limits=1, user_api="openmp"):
        cells = KNeighborsClassifier(n_neighbors=1).fit(points, predicted).predict(grid)
    return cells.reshape(GRID, GRID)  # (G, G)


def _scatter_classes(axis: Any, points: np.ndarray, labels: np.ndarray, colours: np.ndarray) -> None:
    axis.scatter(points[:, 0], points[:, 1], c=colours[labels], s=6, linewidths=0)
