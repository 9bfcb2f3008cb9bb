"""An artifact's training scalars as (tag, step, value) rows: what a CSV file or a TensorBoard writer takes.

Stage 1: loss, lr and images/s per epoch; test top-1 and class-balanced validation accuracy at its evaluation
epochs. Stage 2: the STG's loss and the share of samples that trained as anchors, per epoch. Stage 3: the final training loss and the validation scores (one point, at the
last epoch: the classifier keeps no per-epoch history). Stage 4: every score of the report (step 0).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import NamedTuple

from ltstg.store import Artifact

STAGE_TAGS = {"backbone": "pretrain", "stg": "fit_stg", "classifier": "retrain", "report": "eval"}


class Scalar(NamedTuple):
    tag: str
    step: int
    value: float


def scalars(artifact: Artifact) -> list[Scalar]:
    """Every scalar the artifact keeps, in tag order then step order; nothing for kinds without any (datasets)."""
    prefix = STAGE_TAGS.get(artifact.kind)
    if prefix is None:
        return []
    rows: list[Scalar] = []
    if artifact.kind == "backbone":
        for name in ("loss", "lr"):
            if f"history.{name}" in artifact.tensors:
                rows += _series(f"{prefix}/{name}", artifact[f"history.{name}"].tolist())
        history = artifact.info.get("history", {})
        rows += _series(f"{prefix}/img_s", history.get("img_s", []))
        for name, tag in (("eval_top1", "test_top1"), ("val_mean_class", "val_mean_class")):
            rows += [Scalar(f"{prefix}/{tag}", int(epoch), float(value))
                     for epoch, value in zip(history.get("eval_epoch", []), history.get(name, []))]
    elif artifact.kind == "stg":
        for key in sorted(k for k in artifact.tensors if k.startswith("curve.")):
            rows += _series(f"{prefix}/{key.removeprefix('curve.')}", artifact[key].tolist())
    else:
        last = int(artifact.settings.get("epochs", 0)) if artifact.kind == "classifier" else 0
        rows += [Scalar(f"{prefix}/{name}", last, float(value)) for name, value in sorted(artifact.metrics.items())]
    return rows


def _series(tag: str, values: list[float]) -> list[Scalar]:
    return [Scalar(tag, epoch, float(value)) for epoch, value in enumerate(values, start=1)]


def to_csv(artifact: Artifact, rows: list[Scalar]) -> str:
    """kind, id, tag, step, value: one line per scalar, so files of many artifacts concatenate."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["kind", "id", "tag", "step", "value"])
    writer.writerows([artifact.kind, artifact.id, row.tag, row.step, repr(row.value)] for row in rows)
    return buffer.getvalue()


def write_tensorboard(artifact: Artifact, rows: list[Scalar], log_dir: str | Path) -> Path:
    """The scalars as TensorBoard event files in `log_dir/<kind>-<id>`, one run per artifact (tensorboard's
    SummaryWriter, through torch.utils.tensorboard; pip install 'ltstg[tensorboard]')."""
    from torch.utils.tensorboard import SummaryWriter

    run = Path(log_dir) / f"{artifact.kind}-{artifact.id[:12]}"
    with SummaryWriter(str(run)) as writer:
        for row in rows:
            writer.add_scalar(row.tag, row.value, row.step)
    return run
