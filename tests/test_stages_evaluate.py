import math

import pytest
import torch

from ltstg.errors import LtstgError
from ltstg.metrics import confusion_matrix, confusion_pairs, dense_confusion, per_class_accuracy
from ltstg.recipe import EvalSettings
from ltstg.stages.evaluate import compare_rows, evaluate
from ltstg.tables import markdown, methods_cells, wide_cells, wide_table
from ltstg.store import Artifact

# Three classes: many (150 > 100), medium (50) and few (10 < 20). Test features are the logits of an
# identity classifier scaled by `scale`: per class one right, then one wrong (class 1: both right).
TEST = torch.tensor([[20.0, 0, 0], [0, 20, 0], [0, 20, 0], [0, 20, 0], [0, 0, 20], [20, 0, 0]])  # (6, 3)
TEST_LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


def features_artifact(test=TEST, labels=TEST_LABELS, counts=(150, 50, 10)):
    tensors = {
        "train_features": torch.eye(3),
        "train_labels": torch.arange(3),
        "test_features": test,
        "test_labels": labels,
        "class_counts": torch.tensor(counts),
    }
    info = {"class_names": ["cat", "dog", "eel"], "groups": ["many", "medium", "few"], "many_above": 100, "few_below": 20}
    return Artifact("f" * 64, {"kind": "features", "info": info}, tensors)


def classifier_artifact(weight, bias, method, letter="c"):
    return Artifact(letter * 64, {"kind": "classifier", "info": {"method": method}}, {"weight": weight, "bias": bias})


def as_report(output, letter):
    return Artifact(letter * 64, {"kind": output.kind, "metrics": output.metrics, "info": output.info}, output.tensors)


def confusion(out) -> torch.Tensor:
    return dense_confusion(out.tensors["confusion_pairs"], out.tensors["confusion_counts"], 3)


def test_metrics_groups_confusion_by_hand():
    out = evaluate(classifier_artifact(torch.eye(3), torch.zeros(3), "CE (stage 1)"), features_artifact(), EvalSettings())
    assert out.kind == "report" and out.key_metric == "top1"
    metrics = out.metrics
    assert metrics["top1"] == pytest.approx(4 / 6)
    assert (metrics["many"], metrics["medium"], metrics["few"]) == pytest.approx((0.5, 1.0, 0.5))
    # confidences are all ~1 (logit gap 20), so ECE = |4 right - 6 confident| / 6 and NLL = 2 wrong * 20 / 6
    assert metrics["ece"] == pytest.approx(2 / 6, abs=1e-6)
    assert metrics["nll"] == pytest.approx(40 / 6, abs=1e-5)
    assert torch.equal(confusion(out), torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]]))
    assert torch.allclose(out.tensors["per_class_accuracy"], torch.tensor([0.5, 1.0, 0.5]))
    assert out.info == {"method": "CE (stage 1)", "split": "test", "class_names": ["cat", "dog", "eel"],
                        "groups": ["many", "medium", "few"]}


def test_an_unbalanced_test_split_is_said_with_the_class_balanced_accuracy():
    balanced = evaluate(classifier_artifact(torch.eye(3), torch.zeros(3), "cRT"), features_artifact(), EvalSettings())
    assert balanced.notes == [] and balanced.metrics["mean_class"] == pytest.approx(balanced.metrics["top1"])
    # class 1 (always right) holds 4 of 8 test images: top-1 6/8, class mean (0.5 + 1 + 0.5) / 3
    test = torch.cat([TEST, torch.tensor([[0.0, 20, 0], [0, 20, 0]])])
    labels = torch.cat([TEST_LABELS, torch.tensor([1, 1])])
    out = evaluate(classifier_artifact(torch.eye(3), torch.zeros(3), "cRT"), features_artifact(test, labels), EvalSettings())
    assert out.metrics["top1"] == pytest.approx(6 / 8) and out.metrics["mean_class"] == pytest.approx(2 / 3)
    assert out.notes == ["the test split is not balanced (2 to 4 images per class): top-1 weights classes by their "
                         "test counts; mean_class (66.7%) weights them equally, as the paper's balanced test sets do"]


def test_ece_bins_and_an_empty_group():
    # probs (0.6, 0.2, 0.2) for both samples: one right, one wrong -> with 2 bins |0.5 - 0.6| = 0.1
    test = torch.tensor([[math.log(3.0), 0, 0], [math.log(3.0), 0, 0]])
    features = features_artifact(test, torch.tensor([0, 1]))
    out = evaluate(classifier_artifact(torch.eye(3), torch.zeros(3), "cRT"), features, EvalSettings(ece_bins=2))
    assert out.metrics["ece"] == pytest.approx(0.1)
    assert out.metrics["nll"] == pytest.approx((-math.log(0.6) - math.log(0.2)) / 2)
    assert "few" not in out.metrics  # class 2 has no test sample
    assert out.tensors["per_class_accuracy"][2].isnan()


def test_bias_is_used_and_stg_is_not_needed():
    bias = torch.tensor([0.0, 0.0, 25.0])  # pushes every prediction to class 2
    out = evaluate(classifier_artifact(torch.eye(3), bias, "x"), features_artifact(), EvalSettings())
    assert torch.equal(confusion(out)[:, 2], torch.tensor([2, 2, 2]))


def test_bad_inputs_are_clear_errors():
    features = features_artifact()
    with pytest.raises(LtstgError, match="no 'val' split; it has: test, train"):
        evaluate(classifier_artifact(torch.eye(3), torch.zeros(3), "x"), features, EvalSettings(), split="val")
    with pytest.raises(LtstgError, match="does not fit"):
        evaluate(classifier_artifact(torch.eye(4, 3), torch.zeros(4), "x"), features, EvalSettings())
    with pytest.raises(LtstgError, match="not a classifier"):
        evaluate(features, features, EvalSettings())


def test_compare_rows_and_markdown_table_for_three_methods():
    features = features_artifact()
    reports = [
        as_report(evaluate(classifier_artifact(torch.eye(3), torch.zeros(3), "CE (stage 1)"), features, EvalSettings()), "1"),
        as_report(evaluate(classifier_artifact(torch.eye(3), torch.tensor([0.0, 0, 25]), "cRT"), features, EvalSettings()), "2"),
        as_report(evaluate(classifier_artifact(0.1 * torch.eye(3), torch.zeros(3), "cRT+STG"), features, EvalSettings()), "3"),
    ]
    rows = compare_rows(reports)
    assert [row["method"] for row in rows] == ["CE (stage 1)", "cRT", "cRT+STG"]
    assert rows[1]["all"] == pytest.approx(2 / 6) and rows[1]["many"] == 0.0 and rows[1]["few"] == 1.0
    assert rows[0]["id"] == "1" * 12
    assert set(rows[0]) == {"method", "all", "many", "medium", "few", "ece", "nll", "ece_calibrated", "nll_calibrated",
                            "id", "not_converged", "mean_class"}
    # row 3: logits (2, 0, 0): confidence e^2 / (e^2 + 2) = 0.78699, ECE |4 - 6 * 0.78699| / 6 = 12.0 %
    assert markdown(methods_cells(rows)) == (
        "| Method | All | Many | Medium | Few | ECE | ECE (T) | NLL | NLL (T) | id |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
        "| CE (stage 1) | 66.7 | 50.0 | 100.0 | 50.0 | 33.3 | – | 6.667 | – | `111111111111` |\n"
        "| cRT | 33.3 | 0.0 | 0.0 | 100.0 | 66.1 | – | 6.672 | – | `222222222222` |\n"
        "| cRT+STG | 66.7 | 50.0 | 100.0 | 50.0 | 12.0 | – | 0.906 | – | `333333333333` |\n"
    )


def test_missing_group_shows_a_dash():
    rows = [{"method": "m", "all": 0.5, "many": 0.25, "medium": None, "few": None, "ece": 0.01, "nll": 1.0, "id": "ab"}]
    assert markdown(methods_cells(rows)).splitlines()[-1] == "| m | 50.0 | 25.0 | – | – | 1.0 | – | 1.000 | – | `ab` |"


def test_compare_rows_rejects_other_kinds():
    with pytest.raises(LtstgError, match="not a report"):
        compare_rows([features_artifact()])


def test_wide_table_puts_one_swept_field_side_by_side():
    def row(method, imbalance, views, top1, spread=None):
        out = {"method": method, "all": top1, "swept": {"views": views, "imb": imbalance}}
        if spread is not None:
            out["all_std"] = spread
        return out

    rows = [row("cRT", 100, 0, 0.735, 0.003), row("STG", 100, 0, 0.761, 0.001), row("cRT", 50, 0, 0.8),
            row("cRT", 100, 4, 0.736, 0.002), row("STG", 100, 4, 0.766, 0.002)]
    labels, columns, body = wide_table(rows, "imb", ["views", "imb"])
    assert (labels, columns) == (["Method", "views"], ["imb=100", "imb=50"])
    assert body == [["cRT", "0", "73.5 ± 0.3", "80.0"], ["cRT", "4", "73.6 ± 0.2", "–"],
                    ["STG", "0", "76.1 ± 0.1", "–"], ["STG", "4", "76.6 ± 0.2", "–"]]
    assert markdown(wide_cells(rows, "imb", ["views", "imb"])).splitlines()[:3] == [
        "| Method | views | imb=100 | imb=50 |", "|---|---|---:|---:|", "| cRT | 0 | 73.5 ± 0.3 | 80.0 |"]
    with pytest.raises(LtstgError, match="--columns seed: not a swept field"):
        wide_table(rows, "seed", ["views", "imb"])

    mappings = [{"method": "cRT", "all": 0.7, "swept": {"aug": {"name": "noise"}}},
                {"method": "cRT", "all": 0.6, "swept": {"aug": True}}, {"method": "cRT", "all": 0.5, "swept": {"aug": 1}}]
    assert wide_table(mappings, "aug", ["aug"])[1:] == (
        ["aug={'name': 'noise'}", "aug=True", "aug=1"], [["cRT", "70.0", "60.0", "50.0"]])


def test_compare_rows_count_a_classifier_that_did_not_converge():
    report = as_report(evaluate(classifier_artifact(torch.eye(3), torch.zeros(3), "cRT"), features_artifact(),
                                EvalSettings()), "r")
    stuck = Artifact("s" * 64, {"kind": "classifier", "metrics": {"converged": 0.0}}, {})
    fine = Artifact("g" * 64, {"kind": "classifier", "metrics": {"converged": 1.0}}, {})
    assert [row["not_converged"] for row in compare_rows([report, report], [stuck, fine])] == [1, 0]
    assert compare_rows([report])[0]["not_converged"] == 0  # without its classifier nothing is claimed
    assert "| cRT [not converged: 1 of 1] |" in markdown(methods_cells(compare_rows([report], [stuck])))


def test_temperature_scaling_from_retrain_changes_calibration_not_accuracy():
    """The temperature retrain fits on validation: eval reports ECE and NLL before and after, top-1 unchanged,
    and the validation NLL it was fitted on went down."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_stages_retrain import make_features, run

    from ltstg.recipe import EvalSettings, RetrainSettings
    from ltstg.stages.evaluate import evaluate
    from ltstg.store import Artifact

    features = make_features()
    out = run(RetrainSettings(epochs=10, batch_size=32, lr=1e-2), features)
    assert out.tensors["temperature"].shape == (1,) and out.metrics["temperature"] != 1.0
    assert out.metrics["val_nll_calibrated"] < out.metrics["val_nll"]
    classifier = Artifact("c" * 64, {"kind": "classifier", "info": out.info, "metrics": out.metrics}, out.tensors)
    report = evaluate(classifier, features, EvalSettings())
    plain = Artifact("c" * 64, {"kind": "classifier", "info": out.info},
                     {k: v for k, v in out.tensors.items() if k != "temperature"})
    without = evaluate(plain, features, EvalSettings())
    assert report.metrics["top1"] == without.metrics["top1"] and report.metrics["few"] == without.metrics["few"]
    assert report.metrics["ece"] == without.metrics["ece"] and "ece_calibrated" not in without.metrics
    assert report.metrics["temperature"] == pytest.approx(float(out.tensors["temperature"]))
    assert report.metrics["nll_calibrated"] != report.metrics["nll"]


def test_the_sparse_confusion_is_the_dense_one_and_a_many_class_report_stays_small():
    """A report keeps the confusion matrix's nonzero cells (issue 24): the dense matrix, rebuilt, is the bincount
    one; at 2,000 classes the report holds no C x C tensor (iNaturalist's 8,142 made 506 MiB per report)."""
    generator = torch.Generator().manual_seed(0)
    labels, preds = torch.randint(0, 50, (900,), generator=generator), torch.randint(0, 50, (900,), generator=generator)
    assert torch.equal(dense_confusion(*confusion_pairs(preds, labels), 50), confusion_matrix(preds, labels, 50))
    assert torch.equal(per_class_accuracy(preds, labels, 50),
                       confusion_matrix(preds, labels, 50).diagonal().double() / torch.bincount(labels, minlength=50))
    classes, dim = 2000, 8
    weight = torch.randn(classes, dim, generator=generator)
    test_labels = torch.arange(classes).repeat(2)  # (4000,)
    test = weight[test_labels] + 0.1 * torch.randn(len(test_labels), dim, generator=generator)
    tensors = {"train_features": test, "train_labels": test_labels, "test_features": test, "test_labels": test_labels,
               "class_counts": torch.full((classes,), 2)}
    features = Artifact("f" * 64, {"kind": "features", "info": {}}, tensors)
    out = evaluate(classifier_artifact(weight, torch.zeros(classes), "x"), features, EvalSettings())
    assert max(t.numel() for t in out.tensors.values()) <= 2 * len(test_labels)
    assert dense_confusion(out.tensors["confusion_pairs"], out.tensors["confusion_counts"], classes).sum() == 4000
