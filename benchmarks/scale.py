"""Stages 2-4 at the size of real long-tailed sets, on random features: time, peak memory and artifact size.

    python benchmarks/scale.py [--shapes cifar100-lt imagenet-lt inat2018] [--steps 20] [--json FILE]

Each shape is a features artifact of random values with the shape's counts (an exponential decay from its
largest class, floored at its smallest, holding its number of training images), its test and validation splits and
its views. Every phase runs in a fresh process, so its peak resident memory (ru_maxrss, which counts the
pages of memory-mapped artifacts it touched) is its own:

- write: make the features and put them in a store; (peak - the process's memory before) / file size, of which
  the tensors themselves are 1x;
- load: get them back (digest checked block by block) and touch every value;
- fit-stg: the shape's recipe's STG settings, `--steps` steps after the memory has filled; seconds per epoch
  from the time per step, and the anchor share (the share of drawn samples with enough same-class
  neighbours, what an epoch's `anchor_share` measures); the STG is then written for the next phases;
- retrain-<augmenter>: the recipe's retrain section with each augmenter, `--steps` steps on a random subset of
  the training rows (same classes and feature size, so the same cost per step), seconds per epoch;
- eval: the stage-1 classifier scored on the test split, written as a report artifact (its size);
- report: the report's per-class pictures, the confusion picture and the t-SNE (`--tsne-points`).

Shapes: cifar100-lt (10,847 x 64, 100 classes), imagenet-lt (115,846 x 2048, 1,000 classes, 4 views, MiSLAS's
ImageNet-LT splits), inat2018 (437,513 x 2048, 8,142 classes, no views; its 24,426 validation images serve as
test and validation), small (for the test suite). The settings come from recipes/cifar100/im100.yaml (cifar100-lt)
, recipes/imagenet-lt/resnet50.yaml and recipes/inat2018/resnet50.yaml (float16 features, as it stores them). Every
augmenter trains the cRT classifier (the baselines' "cRT+X"), with the recipe's batch size.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see retrain_speed.py: busy-waiting threads on a shared box

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
AUGMENTERS = ("none", "stg", "isda", "noise", "dropout")


@dataclass(frozen=True)
class Shape:
    train: int
    dim: int
    classes: int
    largest: int
    smallest: int
    test: int
    val: int
    views: int
    recipe: str
    storage: torch.dtype = torch.float32  # what the recipe's pretrain.feature_storage stores features in


SHAPES = {
    "cifar100-lt": Shape(10_847, 64, 100, 500, 5, 10_000, 2_000, 0, "recipes/cifar100/im100.yaml"),
    "imagenet-lt": Shape(115_846, 2048, 1000, 1280, 5, 50_000, 20_000, 4, "recipes/imagenet-lt/resnet50.yaml"),
    "inat2018": Shape(437_513, 2048, 8142, 1000, 2, 24_426, 24_426, 0, "recipes/inat2018/resnet50.yaml", torch.float16),
    "small": Shape(6_000, 32, 300, 100, 2, 1_500, 600, 2, "recipes/imagenet-lt/resnet50.yaml"),
}
FEATURES_ID, STG_ID, REPORT_ID = "f" * 64, "5" * 64, "e" * 64


def counts_of(shape: Shape) -> torch.Tensor:
    """(C,) images per class: largest · exp(−rate · rank / C), at least the smallest, with the decay rate
    found by bisection so the classes hold the shape's number of training images (the first class takes the
    rounding)."""
    ranks = torch.arange(shape.classes, dtype=torch.float64) / shape.classes
    held = lambda rate: (shape.largest * torch.exp(-rate * ranks)).clamp_min(shape.smallest)  # noqa: E731
    low, high = 0.0, 1000.0
    for _ in range(200):
        low, high = ((low + high) / 2, high) if float(held((low + high) / 2).sum()) > shape.train else (low, (low + high) / 2)
    counts = held(high).round().long()
    counts[0] += shape.train - int(counts.sum())
    return counts


def features_tensors(shape: Shape, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random post-ReLU-like features (each made in place: no second copy of any) with the shape's layout."""
    g = torch.Generator().manual_seed(seed)
    counts = counts_of(shape)
    per_class = lambda n: torch.arange(shape.classes).repeat_interleave(torch.full((shape.classes,), n))  # noqa: E731
    features = lambda *size: torch.empty(*size, dtype=shape.storage).exponential_(generator=g)  # noqa: E731
    tensors = {
        "train_features": features(shape.train, shape.dim),
        "train_labels": torch.arange(shape.classes).repeat_interleave(counts),
        "test_features": features(shape.test, shape.dim),
        "test_labels": per_class(math.ceil(shape.test / shape.classes))[: shape.test],
        "val_features": features(shape.val, shape.dim),
        "val_labels": per_class(math.ceil(shape.val / shape.classes))[: shape.val],
        "class_counts": counts,
        "classifier.weight": torch.randn(shape.classes, shape.dim, generator=g) / shape.dim**0.5,
        "classifier.bias": torch.zeros(shape.classes),
    }
    if shape.views:
        tensors["train_views"] = features(shape.views, shape.train, shape.dim)
    return tensors


def features_meta(shape: Shape) -> dict:
    return {"kind": "features", "parents": [], "settings": {"benchmark": "scale"},
            "info": {"class_names": [f"c{c}" for c in range(shape.classes)], "many_above": 100, "few_below": 20,
                     "num_classes": shape.classes, "feature_dim": shape.dim, "feature_views": shape.views}}


def peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- phases, each in its own process -------------------------------------------------------------------------
def phase_write(shape: Shape, store) -> dict:
    tensors = features_tensors(shape)
    started = time.perf_counter()
    store.put(FEATURES_ID, tensors, features_meta(shape))
    return {"seconds": time.perf_counter() - started, "size": store.path(FEATURES_ID).stat().st_size}


def phase_load(shape: Shape, store) -> dict:
    started = time.perf_counter()
    features = store.get(FEATURES_ID, "features")
    opened = time.perf_counter() - started
    for tensor in features.tensors.values():
        tensor.sum()  # every page read
    return {"seconds": time.perf_counter() - started, "open_seconds": opened,
            "size": store.path(FEATURES_ID).stat().st_size}


def phase_fit_stg(shape: Shape, store, steps: int) -> dict:
    from ltstg.recipe import load_recipe
    from ltstg.stages import fit_stg as stage

    features = store.get(FEATURES_ID, "features")
    settings = stage.with_memory_size(load_recipe(ROOT / shape.recipe).stg, features["class_counts"])  # `auto` resolved
    g = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    data = stage._head_data(settings, features, torch.device("cpu"), g)
    fit = stage._setup(settings, data, seed=0, device=torch.device("cpu"), generator=g, progress=stage.silent)
    setup = time.perf_counter() - started
    order = stage._epoch_order(fit.train_t, settings.balanced, g)
    trained = torch.zeros(fit.train_t.numel(), dtype=torch.bool)
    loss_sum, anchors = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.long)
    fill = math.ceil(settings.memory / settings.batch_size)  # steps until the memory is full: not timed
    batches = order[: (fill + steps) * settings.batch_size].split(settings.batch_size)
    for batch in batches[:fill]:
        stage._fit_step(fit, batch, trained, loss_sum, anchors)
    anchors.zero_()
    started = time.perf_counter()
    for batch in batches[fill:]:
        stage._fit_step(fit, batch, trained, loss_sum, anchors)
    per_step = (time.perf_counter() - started) / max(len(batches) - fill, 1)
    drawn = sum(len(b) for b in batches[fill:])
    output = stage._stg_output(settings, data, fit.model, [float(loss_sum) / max(int(anchors), 1)], [1.0])
    store.put(STG_ID, output.tensors, {"kind": "stg", "parents": [FEATURES_ID], "info": output.info, "settings": {}})
    return {"setup_seconds": setup, "step_seconds": per_step, "epoch_seconds": per_step * fit.steps_per_epoch,
            "anchor_share": int(anchors) / max(drawn, 1), "head_classes": int(data.num_tokens),
            "memory": settings.memory, "batch_size": settings.batch_size}


def phase_retrain(shape: Shape, store, steps: int, augmenter: str) -> dict:
    from ltstg.data.features import TrainingFeatures, training_features
    from ltstg.methods import get_augmenter, get_classifier
    from ltstg.recipe import load_recipe
    from ltstg.stages.retrain import resolved_init, train

    base = load_recipe(ROOT / shape.recipe).retrain
    settings = base.model_copy(update={"augment": get_augmenter(augmenter).settings(), "epochs": 1, "classifier": "crt",
                                       "init": "auto"})
    features = store.get(FEATURES_ID, "features")
    stg = store.get(STG_ID, "stg") if augmenter == "stg" else None
    classifier = get_classifier(settings.classifier)
    started = time.perf_counter()
    inputs = training_features(features, torch.device("cpu"))
    built = get_augmenter(augmenter).build(settings.augment, inputs, stg, torch.device("cpu"))
    model = classifier.build(settings, inputs, 0, resolved_init(settings))
    setup = time.perf_counter() - started
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(inputs.labels.numel(), generator=g)

    def subset(count: int) -> TrainingFeatures:
        """`count` random training rows: the same classes and feature size, so the same cost per step."""
        rows = order[:count]
        views = inputs.views[:, rows] if inputs.views is not None else None
        return TrainingFeatures(inputs.features[rows], inputs.labels[rows], views, inputs.class_counts,
                                inputs.weight, inputs.bias)

    train(settings, model, built, subset(settings.batch_size), generator=g)  # one untimed step: first-call imports
    timed = subset(steps * settings.batch_size)
    started = time.perf_counter()
    train(settings, model, built, timed, generator=g)
    per_step = (time.perf_counter() - started) / steps
    steps_per_epoch = math.ceil(inputs.labels.numel() / settings.batch_size)
    return {"setup_seconds": setup, "step_seconds": per_step, "epoch_seconds": per_step * steps_per_epoch,
            "classifier": settings.classifier, "batch_size": settings.batch_size}


def phase_eval(shape: Shape, store) -> dict:
    from ltstg.recipe import EvalSettings
    from ltstg.stages.evaluate import evaluate
    from ltstg.store import Artifact

    features = store.get(FEATURES_ID, "features")
    classifier = Artifact("c" * 64, {"kind": "classifier", "info": {"method": "stage 1"}},
                          {"weight": features["classifier.weight"], "bias": features["classifier.bias"]})
    started = time.perf_counter()
    report = evaluate(classifier, features, EvalSettings())
    seconds = time.perf_counter() - started
    store.put(REPORT_ID, report.tensors, {"kind": "report", "info": report.info, "metrics": report.metrics})
    return {"seconds": seconds, "size": store.path(REPORT_ID).stat().st_size}


def phase_report(shape: Shape, store, tsne_points: int, out: Path) -> dict:
    from ltstg.inspect import figures
    from ltstg.inspect.tsne import tsne_figure
    from ltstg.store import Artifact

    features = store.get(FEATURES_ID, "features")
    stg = store.get(STG_ID, "stg")
    classifier = Artifact("c" * 64, {"kind": "classifier", "info": {"method": "stage 1"}},
                          {"weight": features["classifier.weight"], "bias": features["classifier.bias"]})
    started = time.perf_counter()
    labelled = [("stage 1", classifier)]
    figures.per_class_figure(labelled, features, out / "per-class.png")
    figures.weight_norms_figure(labelled, features, out / "norms.png")
    figures.reliability_figure(labelled, features, out / "reliability.png")
    figures.confusion_figure("stage 1", classifier, features, out / "confusion.png")
    pictures = time.perf_counter() - started
    summary = tsne_figure(features, out / "tsne.png", stg=stg, classifiers=[classifier], max_points=tsne_points)
    return {"seconds": time.perf_counter() - started, "pictures_seconds": pictures, "tsne_seconds": summary["seconds"],
            "tsne_classes_shown": summary["classes_shown"]}


def run_phase(phase: str, shape_name: str, store_root: str, steps: int, tsne_points: int) -> dict:
    from ltstg.store import Store

    shape, store = SHAPES[shape_name], Store(store_root)
    before = peak()
    if phase == "write":
        result = phase_write(shape, store)
    elif phase == "load":
        result = phase_load(shape, store)
    elif phase == "fit-stg":
        result = phase_fit_stg(shape, store, steps)
    elif phase.startswith("retrain-"):
        result = phase_retrain(shape, store, steps, phase.removeprefix("retrain-"))
    elif phase == "eval":
        result = phase_eval(shape, store)
    else:
        result = phase_report(shape, store, tsne_points, Path(store_root))
    return {**result, "peak": peak(), "baseline": before}


# -- the driver ----------------------------------------------------------------------------------------------
def phases() -> list[str]:
    return ["write", "load", "fit-stg", *(f"retrain-{name}" for name in AUGMENTERS), "eval", "report"]


def measure(shape_name: str, args: argparse.Namespace, store: str) -> list[dict]:
    rows = []
    for phase in [p for p in phases() if args.phases is None or p in args.phases or p == "write"]:
        if args.in_process:  # quick (one torch import), but each peak then includes the phases before it
            result = run_phase(phase, shape_name, store, args.steps, args.tsne_points)
        else:
            command = [sys.executable, __file__, "--phase", phase, "--shape", shape_name, "--store", store,
                       "--steps", str(args.steps), "--tsne-points", str(args.tsne_points)]
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if done.returncode != 0:
                raise SystemExit(f"{shape_name} {phase} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"shape": shape_name, "phase": phase, **result})
        print(line(rows[-1]), flush=True)
    return rows


def line(row: dict) -> str:
    parts = [f"{row['shape']:<12} {row['phase']:<16}", f"peak {row['peak'] / GIB:6.2f} GiB"]
    if "size" in row:
        parts.append(f"file {row['size'] / GIB:6.3f} GiB" if row["size"] > 2**20 else f"file {row['size'] / 2**20:.2f} MiB")
        if row["phase"] in ("write", "load"):  # above what the process held before (python, torch)
            parts.append(f"(peak - start)/file {(row['peak'] - row['baseline']) / row['size']:.2f}")
    if "epoch_seconds" in row:
        parts.append(f"{row['step_seconds'] * 1000:8.1f} ms/step  {row['epoch_seconds']:8.1f} s/epoch  "
                     f"setup {row['setup_seconds']:.1f} s")
    else:
        parts.append(f"{row['seconds']:8.1f} s")
    if "anchor_share" in row:
        parts.append(f"anchor share {row['anchor_share']:.3f} ({row['head_classes']} head classes, memory "
                     f"{row['memory']}, batch {row['batch_size']})")
    if "tsne_classes_shown" in row:
        parts.append(f"t-SNE {row['tsne_seconds']:.1f} s, {row['tsne_classes_shown']} classes shown")
    return "  ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["cifar100-lt", "imagenet-lt", "inat2018"], choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=20, help="timed steps of fit-stg and of each retrain")
    parser.add_argument("--tsne-points", type=int, default=2000, help="t-SNE points (the report's default: 2000)")
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    parser.add_argument("--phases", nargs="+", default=None, choices=phases(), help="only these phases (write "
                        "always runs; fit-stg before retrain-stg, eval or report)")
    parser.add_argument("--in-process", action="store_true", help="every phase in this process (the test suite's "
                        "quick run): the peaks are then cumulative")
    parser.add_argument("--store", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--shape", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase is not None:
        print(json.dumps(run_phase(args.phase, args.shape, args.store, args.steps, args.tsne_points)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    rows = []
    for shape_name in args.shapes:
        with tempfile.TemporaryDirectory(prefix=f"ltstg-scale-{shape_name}-") as store:
            rows += measure(shape_name, args, store)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
