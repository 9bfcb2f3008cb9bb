import math

import pytest
import torch
import torch.nn.functional as F

from ltstg.errors import LtstgError
from ltstg.metrics import classification_metrics, confusion_matrix, expected_calibration_error, per_class_accuracy

# A: conf .90 right, B: conf .88 wrong (same bin 13), C: conf .70 right (bin 10), D: conf .75 wrong (bin 11)
PROBS = torch.tensor([[0.9, 0.1], [0.12, 0.88], [0.3, 0.7], [0.75, 0.25]])
LABELS = torch.tensor([0, 0, 1, 1])


def test_ece_hand_checked():
    # bin 13: |0.5 - 0.89| * 2/4 = 0.195; bin 10: |1 - 0.7| / 4 = 0.075; bin 11: |0 - 0.75| / 4 = 0.1875
    assert math.isclose(expected_calibration_error(PROBS, LABELS), 0.4575, abs_tol=1e-6)
    # one bin: |mean accuracy - mean confidence| = |0.5 - 0.8075|
    assert math.isclose(expected_calibration_error(PROBS, LABELS, bins=1), 0.3075, abs_tol=1e-6)


def test_confusion_matrix_and_per_class_accuracy():
    preds = torch.tensor([0, 1, 1, 1, 2, 0])
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    matrix = confusion_matrix(preds, labels, 4)
    assert matrix.tolist() == [[2, 1, 0, 0], [0, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    accuracy = per_class_accuracy(preds, labels, 4)
    assert torch.allclose(accuracy[:2], torch.tensor([2 / 3, 2 / 3], dtype=torch.float64))
    assert accuracy[2:].isnan().all()  # no test samples


def _logits_for(preds, num_classes):
    return F.one_hot(preds, num_classes).float() * 5.0


def test_groups_from_train_counts():
    train_counts = torch.tensor([500, 101, 100, 20, 19, 1])
    labels = torch.arange(6).repeat_interleave(4)
    correct = [4, 2, 0, 1, 3, 4]  # per class, out of 4
    preds = labels.clone()
    for c, hits in enumerate(correct):
        preds[c * 4 + hits: c * 4 + 4] = (c + 1) % 6
    result = classification_metrics(_logits_for(preds, 6), labels, train_counts)
    assert math.isclose(result["top1"], 14 / 24)
    assert math.isclose(result["many"], 0.75)  # classes 0 (1.0), 1 (0.5)
    assert math.isclose(result["medium"], 0.125)  # classes 2 (0.0), 3 (0.25): 100 and 20 are medium
    assert math.isclose(result["few"], 0.875)  # classes 4 (0.75), 5 (1.0)
    assert all(isinstance(value, float) for value in result.values())


def test_empty_groups_left_out_and_untested_classes_skipped():
    labels = torch.tensor([0, 0, 1, 1])
    preds = torch.tensor([0, 1, 1, 1])
    result = classification_metrics(_logits_for(preds, 3), labels, torch.tensor([500, 5, 200]))
    assert set(result) == {"top1", "mean_class", "many", "few", "ece", "nll"}
    assert math.isclose(result["many"], 0.5)  # class 2 has no test samples and is not counted as 0
    assert not any(math.isnan(value) for value in result.values())


def test_nll_and_ece_match_references():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 7, generator=g) * 3
    labels = torch.randint(7, (300,), generator=g)
    result = classification_metrics(logits, labels, torch.full((7,), 50))
    assert math.isclose(result["nll"], F.cross_entropy(logits, labels).item(), rel_tol=1e-6)
    assert math.isclose(result["ece"], expected_calibration_error(logits.softmax(dim=1), labels), rel_tol=1e-9)
    assert set(result) == {"top1", "mean_class", "medium", "ece", "nll"}


def test_mismatched_train_counts_rejected():
    with pytest.raises(LtstgError):
        classification_metrics(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([10, 10]))
