import torch

from ltstg.classifiers.stage1 import stage1
from ltstg.data.features import TrainingFeatures
from ltstg.methods import get_classifier

WEIGHT = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
BIAS = torch.tensor([0.5, -1.0])


def test_none_is_the_stage1_classifier_as_a_copy():
    entry = get_classifier("none")
    assert entry.post_hoc is stage1 and entry.label == "CE (stage 1)" and not entry.in_every_id
    inputs = TrainingFeatures(torch.zeros(2, 2), torch.tensor([0, 1]), None, torch.tensor([1, 1]), WEIGHT, BIAS)
    weight, bias = stage1(None, inputs)
    assert torch.equal(weight, WEIGHT) and torch.equal(bias, BIAS)
    assert weight.data_ptr() != WEIGHT.data_ptr() and bias.data_ptr() != BIAS.data_ptr()
