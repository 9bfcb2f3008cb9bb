"""Mixup targets, soft cross-entropy, and the warm-up/multistep/cosine lr factor with a resumable scheduler."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltstg.errors import LtstgError
from ltstg.training import lr_factor, make_scheduler, mixup, soft_cross_entropy

CAO = {"epochs": 200, "warmup_epochs": 5, "schedule": "multistep", "milestones": (160, 180), "gamma": 0.1}


def test_mixup_mixes_inputs_and_targets_with_the_drawn_lam_and_perm():
    inputs = torch.randn(8, 3, 4, 4)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    mixed, targets = mixup(inputs, labels, 4, 1.0, np.random.default_rng(0), torch.Generator().manual_seed(0))
    lam = float(np.random.default_rng(0).beta(1.0, 1.0))
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    one_hot = F.one_hot(labels, 4).float()
    torch.testing.assert_close(mixed, lam * inputs + (1 - lam) * inputs[perm])
    torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot[perm])
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert not torch.equal(mixed, inputs)


def test_mixup_label_smoothing_rows_sum_to_one():
    labels = torch.tensor([0, 1, 2])
    _, targets = mixup(torch.randn(3, 5), labels, 10, 0.5, np.random.default_rng(1), torch.Generator().manual_seed(1),
                       label_smoothing=0.1)
    torch.testing.assert_close(targets.sum(1), torch.ones(3))
    assert targets.min() >= 0.01 - 1e-6


def test_mixup_alpha_zero_is_off():
    inputs, labels = torch.randn(4, 2), torch.tensor([1, 0, 1, 2])
    mixed, targets = mixup(inputs, labels, 3, 0.0, np.random.default_rng(0), torch.Generator())
    assert torch.equal(mixed, inputs)
    assert torch.equal(targets, F.one_hot(labels, 3).float())
    _, smoothed = mixup(inputs, labels, 3, 0.0, np.random.default_rng(0), torch.Generator(), label_smoothing=0.3)
    torch.testing.assert_close(smoothed[0], torch.tensor([0.1, 0.8, 0.1]))
    with pytest.raises(LtstgError):
        mixup(inputs, labels, 3, -1.0, np.random.default_rng(0), torch.Generator())


def test_soft_cross_entropy_matches_torch():
    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    one_hot = F.one_hot(labels, 5).float()
    torch.testing.assert_close(soft_cross_entropy(logits, one_hot), F.cross_entropy(logits, labels))
    probabilities = torch.softmax(torch.randn(6, 5), dim=1)
    torch.testing.assert_close(soft_cross_entropy(logits, probabilities), F.cross_entropy(logits, probabilities))


def test_lr_factor_warmup_and_multistep():
    assert lr_factor(0.0, **CAO) == 0.0
    assert lr_factor(2.5, **CAO) == pytest.approx(0.5)
    assert lr_factor(4.99, **CAO) == pytest.approx(0.998)
    assert lr_factor(5.0, **CAO) == 1.0
    assert lr_factor(159.9, **CAO) == 1.0
    assert lr_factor(160.0, **CAO) == pytest.approx(0.1)
    assert lr_factor(179.9, **CAO) == pytest.approx(0.1)
    assert lr_factor(180.0, **CAO) == pytest.approx(0.01)


def test_lr_factor_cosine_and_constant():
    cosine = {"epochs": 105, "warmup_epochs": 5, "schedule": "cosine", "milestones": (), "gamma": 0.1}
    assert lr_factor(5.0, **cosine) == pytest.approx(1.0)
    assert lr_factor(55.0, **cosine) == pytest.approx(0.5)
    assert lr_factor(105.0, **cosine) == pytest.approx(0.0, abs=1e-12)
    no_warmup = {"epochs": 100, "warmup_epochs": 0, "milestones": (), "gamma": 0.1}
    assert lr_factor(50.0, schedule="cosine", **no_warmup) == pytest.approx(0.5)
    assert lr_factor(99.0, schedule="constant", **no_warmup) == 1.0
    with pytest.raises(LtstgError, match="multistep"):
        lr_factor(1.0, epochs=10, warmup_epochs=0, schedule="linear", milestones=(), gamma=0.1)


def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)


SMALL = {"epochs": 4, "warmup_epochs": 1, "schedule": "multistep", "milestones": (3,), "gamma": 0.1}


def _run(optimizer, scheduler, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_scheduler_steps_per_iteration():
    optimizer = _optimizer()
    lrs = _run(optimizer, make_scheduler(optimizer, 10, **SMALL), 40)
    assert lrs[0] == pytest.approx(0.1 * 0.05)
    assert lrs[9] == pytest.approx(0.1 * 0.95)
    assert lrs[10] == pytest.approx(0.1) and lrs[29] == pytest.approx(0.1)
    assert lrs[30] == pytest.approx(0.01) and lrs[39] == pytest.approx(0.01)


def test_scheduler_resumes_from_state_dict():
    optimizer = _optimizer()
    scheduler = make_scheduler(optimizer, 10, **SMALL)
    uninterrupted = _run(optimizer, scheduler, 25)
    saved_optimizer, saved_scheduler = optimizer.state_dict(), scheduler.state_dict()
    uninterrupted += _run(optimizer, scheduler, 15)

    resumed_optimizer = _optimizer()
    resumed = make_scheduler(resumed_optimizer, 10, **SMALL)
    resumed_optimizer.load_state_dict(saved_optimizer)
    resumed.load_state_dict(saved_scheduler)
    assert _run(resumed_optimizer, resumed, 15) == pytest.approx(uninterrupted[25:])
    fresh_optimizer = _optimizer()
    assert _run(fresh_optimizer, make_scheduler(fresh_optimizer, 10, **SMALL), 15) != pytest.approx(uninterrupted[25:])


def test_label_aware_smoothing_runs_from_tail_to_head():
    from ltstg.training import label_aware_smoothing

    counts = [500, 100, 50, 5]
    concave = label_aware_smoothing(counts, 0.4, 0.1, "concave")
    linear = label_aware_smoothing(counts, 0.4, 0.1, "linear")
    convex = label_aware_smoothing(counts, 0.4, 0.1, "convex")
    for eps in (concave, linear, convex):
        assert eps[0].item() == pytest.approx(0.4) and eps[-1].item() == pytest.approx(0.1)
        assert (eps[:-1] >= eps[1:]).all()  # more images, more smoothing
    x = (100 - 5) / (500 - 5)
    assert linear[1].item() == pytest.approx(0.1 + 0.3 * x)
    assert concave[1].item() == pytest.approx(0.1 + 0.3 * np.sin(x * np.pi / 2))
    assert convex[1] < linear[1] < concave[1]
    assert torch.equal(label_aware_smoothing([7, 7], 0.3, 0.0), torch.full((2,), 0.3))  # one size: all are "head"
    with pytest.raises(LtstgError, match="shape"):
        label_aware_smoothing(counts, 0.4, 0.1, "wavy")


def test_smoothed_cross_entropy_matches_torch_label_smoothing():
    from ltstg.training import smoothed_cross_entropy

    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(smoothed_cross_entropy(logits, labels, torch.zeros(5)), F.cross_entropy(logits, labels))
    torch.testing.assert_close(
        smoothed_cross_entropy(logits, labels, torch.full((5,), 0.2)), F.cross_entropy(logits, labels, label_smoothing=0.2)
    )
    per_class = torch.tensor([0.0, 0.5, 0.0, 0.0, 0.0])  # only label-1 rows are smoothed
    expected = torch.stack([
        F.cross_entropy(logits[i : i + 1], labels[i : i + 1], label_smoothing=float(per_class[labels[i]])) for i in range(6)
    ]).mean()
    torch.testing.assert_close(smoothed_cross_entropy(logits, labels, per_class), expected)
