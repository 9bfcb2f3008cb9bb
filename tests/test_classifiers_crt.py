import torch

from ltstg.classifiers.crt import build
from ltstg.models.heads import LinearClassifier
from ltstg.data.features import TrainingFeatures
from ltstg.methods import get_classifier

WEIGHT = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
BIAS = torch.tensor([0.5, -1.0])
FEATURES = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
INPUTS = TrainingFeatures(FEATURES, torch.tensor([0, 1]), None, torch.tensor([1, 1]), WEIGHT, BIAS)


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


def test_registered_as_a_trained_classifier_that_starts_fresh():
    entry = get_classifier("crt")
    assert entry.build is build and entry.trainable and entry.post_hoc is None
    assert entry.label == "cRT" and entry.auto_init == "fresh" and set(entry.inits) == {"fresh", "stage1"}


def test_fresh_is_seeded_privately_and_stage1_is_the_stage1_classifier():
    torch.manual_seed(123)
    expected = torch.rand(2)
    torch.manual_seed(123)
    fresh, again, other = build(None, INPUTS, 0, "fresh"), build(None, INPUTS, 0, "fresh"), build(None, INPUTS, 1, "fresh")
    assert torch.rand(2).equal(expected)  # the global RNG is untouched
    assert torch.equal(fresh.weight, again.weight) and not torch.equal(fresh.weight, other.weight)
    warm = build(None, INPUTS, 0, "stage1")
    weight, bias = warm.folded()
    assert torch.equal(weight, WEIGHT) and torch.equal(bias, BIAS)
    assert torch.allclose(warm(FEATURES), FEATURES @ WEIGHT.T + BIAS)
