import torch

from ltstg.models.heads import LinearClassifier
from ltstg.classifiers.tau_norm import tau_norm, tau_normalize
from ltstg.data.features import TrainingFeatures
from ltstg.methods import get_classifier
from ltstg.recipe import RetrainSettings

WEIGHT = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # norms 5 and 1
BIAS = torch.tensor([0.5, -1.0])
FEATURES = torch.tensor([[1.0, 1.0], [2.0, -1.0]])


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


def test_registered_as_post_hoc_with_tau_in_every_id():
    entry = get_classifier("tau-norm")
    assert entry.post_hoc is tau_norm and not entry.trainable and entry.label == "τ-norm" and entry.in_every_id
    inputs = TrainingFeatures(FEATURES, torch.tensor([0, 1]), None, torch.tensor([1, 1]), WEIGHT, BIAS)
    weight, bias = tau_norm(RetrainSettings(classifier="tau-norm", tau=0.5), inputs)
    assert torch.equal(weight, tau_normalize(WEIGHT, BIAS, 0.5)[0]) and torch.equal(bias, torch.zeros(2))
