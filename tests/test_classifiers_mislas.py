from typing import get_args

import pytest
import torch

from ltstg.classifiers.mislas import MislasSettings, build, parameter_groups, smoothing
from ltstg.models.heads import ScaledLinearClassifier
from ltstg.data.features import TrainingFeatures
from ltstg.errors import LtstgError
from ltstg.methods import get_classifier
from ltstg.recipe import RetrainSettings
from ltstg.training import SMOOTH_SHAPES

WEIGHT = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
BIAS = torch.tensor([0.5, -1.0])
INPUTS = TrainingFeatures(torch.zeros(3, 2), torch.tensor([0, 0, 1]), None, torch.tensor([2, 1]), WEIGHT, BIAS)


def test_scaled_linear_starts_at_stage1_and_folds_its_scales():
    model = ScaledLinearClassifier(WEIGHT, BIAS)
    features = torch.randn(4, WEIGHT.shape[1])
    assert torch.allclose(model(features), features @ WEIGHT.T + BIAS)  # unit scales: the stage-1 classifier
    with torch.no_grad():
        model.scales.copy_(torch.arange(1.0, WEIGHT.shape[0] + 1))
        model.linear.weight.add_(0.5)
    weight, bias = model.folded()
    assert torch.allclose(model(features), features @ weight.T + bias)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {"linear.weight", "linear.bias", "scales"}
    with pytest.raises(LtstgError):
        ScaledLinearClassifier(WEIGHT, torch.zeros(7))


def test_registered_with_its_flat_fields_in_every_id():
    entry = get_classifier("mislas")
    assert entry.build is build and entry.label == "MiSLAS" and entry.in_every_id
    assert entry.auto_init == "stage1" and set(entry.inits) == {"fresh", "stage1"}
    assert set(MislasSettings.model_fields) <= set(RetrainSettings.model_fields)
    assert set(SMOOTH_SHAPES) == set(get_args(MislasSettings.model_fields["smooth_shape"].annotation))


def test_the_linear_layer_learns_at_lr_times_lr_factor_and_smoothing_follows_the_counts():
    settings = RetrainSettings(classifier="mislas", lr=0.01, lr_factor=0.5, smooth_head=0.4, smooth_tail=0.1)
    model = build(settings, INPUTS, 0, "stage1")
    assert torch.equal(model.folded()[0], WEIGHT)
    linear, scales = parameter_groups(model, settings)
    assert linear["lr"] == pytest.approx(0.005) and "lr" not in scales and scales["params"] == [model.scales]
    epsilon = smoothing(settings, INPUTS)  # (C,): the larger class gets smooth_head, the smaller smooth_tail
    assert epsilon.tolist() == pytest.approx([0.4, 0.1])
    fresh = build(settings, INPUTS, 0, "fresh")
    assert not torch.equal(fresh.folded()[0], WEIGHT)
