import pytest
import torch

from ltstg.classifiers.lws import build
from ltstg.models.heads import LwsClassifier
from ltstg.data.features import TrainingFeatures
from ltstg.errors import LtstgError
from ltstg.methods import get_classifier

WEIGHT = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # norms 5 and 1
BIAS = torch.tensor([0.5, -1.0])
FEATURES = torch.tensor([[1.0, 1.0], [2.0, -1.0]])


def test_lws_starts_as_stage1_classifier():
    lws = LwsClassifier(WEIGHT, BIAS)
    # hand-checked: [1,1] -> [3+4+0.5, 1-1] = [7.5, 0]; [2,-1] -> [6-4+0.5, -1-1] = [2.5, -2]
    assert torch.allclose(lws(FEATURES), torch.tensor([[7.5, 0.0], [2.5, -2.0]]))


def test_lws_scales_whole_logit_and_trains_only_scales():
    lws = LwsClassifier(WEIGHT, BIAS)
    with torch.no_grad():
        lws.scales.copy_(torch.tensor([2.0, 0.5]))
    logits = lws(FEATURES)
    assert torch.allclose(logits, torch.tensor([[15.0, 0.0], [5.0, -1.0]]))
    assert [name for name, _ in lws.named_parameters()] == ["scales"]
    logits.sum().backward()
    assert torch.allclose(lws.scales.grad, torch.tensor([10.0, -2.0]))  # sum of the raw logits per class
    assert lws.weight.grad is None


def test_lws_rejects_mismatched_bias():
    with pytest.raises(LtstgError):
        LwsClassifier(WEIGHT, torch.zeros(3))


def test_lws_folds_scales_into_weight_and_bias_by_hand():
    entry = get_classifier("lws")
    assert entry.build is build and entry.label == "LWS" and entry.inits == ("stage1",)
    stage1 = TrainingFeatures(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), None, torch.tensor([1, 1]),
                              torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0.5, 0.25]))
    model = build(None, stage1, 0, "stage1")
    with torch.no_grad():
        model.scales.copy_(torch.tensor([2.0, 3.0]))
    weight, bias = model.folded()
    assert torch.equal(weight, torch.tensor([[4.0, 0.0], [0.0, 3.0]]))
    assert torch.equal(bias, torch.tensor([1.0, 0.75]))
    features = torch.tensor([[1.0, 2.0]])
    assert torch.allclose(model(features), features @ weight.T + bias)  # (2 + 0.5) * 2 = 5, (2 + 0.25) * 3 = 6.75
    assert torch.allclose(model(features), torch.tensor([[5.0, 6.75]]))
