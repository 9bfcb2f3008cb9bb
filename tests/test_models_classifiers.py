import pytest
import torch

from ltstg.errors import LtstgError
from ltstg.models.classifiers import LinearClassifier, LwsClassifier, tau_normalize

WEIGHT = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # norms 5 and 1
BIAS = torch.tensor([0.5, -1.0])
FEATURES = torch.tensor([[1.0, 1.0], [2.0, -1.0]])


def test_linear_classifier_shape_and_seeded_init():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        first = LinearClassifier(2, 3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        second = LinearClassifier(2, 3)
    assert first(FEATURES).shape == (2, 3)
    assert set(first.state_dict()) == {"weight", "bias"}
    assert torch.equal(first.weight, second.weight)


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


def test_tau_normalize_hand_checked():
    weight, bias = tau_normalize(WEIGHT, BIAS, 1.0)
    assert torch.allclose(weight, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    assert torch.equal(bias, torch.zeros(2))
    half, _ = tau_normalize(WEIGHT, None, 0.5)
    assert torch.allclose(half, torch.tensor([[3.0, 4.0], [0.0, 1.0]]) / torch.tensor([[5.0**0.5], [1.0]]))
    same, _ = tau_normalize(WEIGHT, BIAS, 0.0)
    assert torch.equal(same, WEIGHT)
    assert torch.equal(WEIGHT, torch.tensor([[3.0, 4.0], [0.0, 1.0]]))  # input untouched


def test_tau_normalized_weights_load_into_linear_classifier():
    weight, bias = tau_normalize(WEIGHT, BIAS, 1.0)
    classifier = LinearClassifier(2, 2)
    classifier.load_state_dict({"weight": weight, "bias": bias})
    # [1,1] -> [1.4, 1.0]; the head class's lead shrinks from 7.5 vs 0 to 1.4 vs 1.0
    assert torch.allclose(classifier(FEATURES[:1]), torch.tensor([[1.4, 1.0]]))


def test_scaled_linear_starts_at_stage1_and_folds_its_scales():
    from ltstg.models.classifiers import ScaledLinearClassifier

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
