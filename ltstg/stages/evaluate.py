"""Stage 4: score a linear classifier on frozen features, and put several scores side by side.

Evaluation only ever sees the effective linear classifier (weight, bias): the STG and the class
tokens are training-time tools and never touch a test feature.
"""
from __future__ import annotations

import torch

from ltstg.data.features import split_tensors
from ltstg.data.longtail import assign_groups
from ltstg.errors import LtstgError
from ltstg.metrics import classification_metrics, confusion_matrix, per_class_accuracy
from ltstg.recipe import EvalSettings
from ltstg.stages import Output, require_kind
from ltstg.store import SHORT, Artifact

def score(
    weight: torch.Tensor,
    bias: torch.Tensor,
    features: Artifact,
    settings: EvalSettings,
    *,
    split: str = "test",
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Metrics and per-class tensors of logits = a @ W.T + b on one split; shared by eval and retrain."""
    inputs, labels = split_tensors(features, split)
    counts = features["class_counts"]
    num_classes = counts.numel()
    if inputs.dim() != 2 or weight.shape != (num_classes, inputs.shape[1]) or bias.shape != (num_classes,):
        raise LtstgError(
            f"the classifier ({tuple(weight.shape)} weight, {tuple(bias.shape)} bias) does not fit features "
            f"{features.id[:SHORT]} ({num_classes} classes, {split} features {tuple(inputs.shape)}); "
            "evaluate it on the features it was trained on."
        )
    logits = inputs.float() @ weight.float().T + bias.float()  # (M, C)
    labels = labels.long()
    metrics = classification_metrics(
        logits,
        labels,
        counts,
        many_min=int(features.info.get("many_above", 100)),
        few_max=int(features.info.get("few_below", 20)),
        ece_bins=settings.ece_bins,
    )
    preds = logits.argmax(dim=1)  # (M,)
    tensors = {
        "per_class_accuracy": per_class_accuracy(preds, labels, num_classes).float(),  # (C,), NaN: no samples
        "confusion": confusion_matrix(preds, labels, num_classes).long(),  # (C, C), rows true, columns predicted
    }
    return metrics, tensors


def evaluate(classifier: Artifact, features: Artifact, settings: EvalSettings, *, split: str = "test") -> Output:
    """Top-1, many/medium/few, ECE and NLL of one classifier, so every method is scored by one code path."""
    require_kind(classifier, "classifier")
    require_kind(features, "features")
    metrics, tensors = score(classifier["weight"], classifier["bias"], features, settings, split=split)
    counts = features["class_counts"]
    info = {
        "method": classifier.info.get("method", classifier.info.get("classifier", "?")),
        "split": split,
        "class_names": features.info.get("class_names") or [str(c) for c in range(counts.numel())],
        "groups": features.info.get("groups")
        or assign_groups(counts.tolist(), features.info.get("many_above", 100), features.info.get("few_below", 20)),
    }
    notes = []
    per_class = tensors["confusion"].sum(dim=1)  # (C,): test images per true class
    if int(per_class.min()) != int(per_class.max()):
        notes.append(
            f"the {split} split is not balanced ({int(per_class.min())} to {int(per_class.max())} images per class): "
            f"top-1 weights classes by their {split} counts; mean_class ({100 * metrics['mean_class']:.1f}%) "
            "weights them equally, as the paper's balanced test sets do"
        )
    return Output("report", tensors, metrics, info, key_metric="top1", notes=notes)


def converged(classifier: Artifact) -> bool:
    """False when retrain recorded that this classifier did not converge (a classifier it did not train passes)."""
    return classifier.metrics.get("converged", 1.0) != 0.0


def method_cell(row: dict) -> str:
    """The method's name, flagged when a classifier behind the row did not converge: its number is no result."""
    return f"{row['method']}{flag(row)}"


def flag(row: dict) -> str:
    """' [not converged: k of n]' when k of the row's n classifiers did not converge, else nothing."""
    missed = row.get("not_converged") or 0
    return f" [not converged: {missed} of {len(row.get('reports') or [None])}]" if missed else ""


def compare_rows(reports: list[Artifact], classifiers: list[Artifact] | None = None) -> list[dict]:
    """One flat row per report (fractions, None for an empty group), ready for a table or JSON; with the
    reports' classifiers, a row also counts whether its classifier did not converge."""
    rows = []
    for index, report in enumerate(reports):
        require_kind(report, "report")
        metrics = report.metrics
        rows.append(
            {
                "method": report.info.get("method", "?"),
                "all": metrics.get("top1"),
                "mean_class": metrics.get("mean_class"),
                "many": metrics.get("many"),
                "medium": metrics.get("medium"),
                "few": metrics.get("few"),
                "ece": metrics.get("ece"),
                "nll": metrics.get("nll"),
                "id": report.id[:SHORT],
                "not_converged": int(classifiers is not None and not converged(classifiers[index])),
            }
        )
    return rows


def percent(row: dict, key: str) -> str:
    """A fraction as percent with one decimal, ± the std over seeds when there is one; – when missing."""
    value, spread = row.get(key), row.get(f"{key}_std")
    if value is None:
        return "–"
    return f"{100 * value:.1f} ± {100 * spread:.1f}" if spread is not None else f"{100 * value:.1f}"


def require_swept(field: str, swept: list[str]) -> None:
    """A table can only be pivoted on a field the run swept."""
    if field not in swept:
        how = "give several recipes" if field == "recipe" else f"sweep it, e.g. --sweep {field}=V1,V2"
        raise LtstgError(f"--columns {field}: not a swept field; {how}.")


def wide_table(rows: list[dict], field: str, swept: list[str]) -> tuple[list[str], list[str], list[list[str]]]:
    """A sweep's rows pivoted: one top-1 column per value of `field` (the paper's Table 1 puts imbalances side by side).

    Returns the label columns' names, the value columns' names and the body as text cells; a method
    never run at a value shows –.
    """
    require_swept(field, swept)
    others = [name for name in swept if name != field]
    values: list[str] = []  # as text: a swept value may be a mapping, and 1, 1.0 and true must stay apart
    cells: dict[tuple, dict] = {}
    for row in rows:
        value = str(row["swept"][field])
        if value not in values:
            values.append(value)
        key = (row["method"], *(str(row["swept"][name]) for name in others))
        cells.setdefault(key, {})[value] = percent(row, "all") + flag(row)
    methods = list(dict.fromkeys(row["method"] for row in rows))
    keys = sorted(cells, key=lambda key: methods.index(key[0]))  # each method's rows together, in recipe order
    body = [list(key) + [cells[key].get(value, "–") for value in values] for key in keys]
    return ["Method", *others], [f"{field}={value}" for value in values], body


def markdown_wide_table(rows: list[dict], field: str, swept: list[str]) -> str:
    """`wide_table` as Markdown: top-1 in percent, mean ± std over seeds."""
    labels, columns, body = wide_table(rows, field, swept)
    lines = ["| " + " | ".join(labels + columns) + " |", "|" + "---|" * len(labels) + "---:|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def markdown_table(rows: list[dict], swept: list[str] | None = None) -> str:
    """A README-ready table: accuracies and ECE in percent with one decimal (as the paper prints them), NLL with 3.

    `swept` adds one column per swept recipe field, after the method.
    """
    swept = swept or []
    lines = [
        "| Method | " + "".join(f"{field} | " for field in swept) + "All | Many | Medium | Few | ECE | NLL | id |",
        "|---|" + "---|" * len(swept) + "---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        nll = "–" if row.get("nll") is None else f"{row['nll']:.3f}"
        cells = [
            method_cell(row),
            *(str(row["swept"][field]) for field in swept),
            percent(row, "all"),
            percent(row, "many"),
            percent(row, "medium"),
            percent(row, "few"),
            percent(row, "ece"),
            nll,
            f"`{row['id']}`",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
