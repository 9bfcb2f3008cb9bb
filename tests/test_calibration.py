"""Temperature scaling: recovers a known temperature, lowers validation NLL, never changes a prediction."""
import pytest
import torch
import torch.nn.functional as F

from ltstg.calibration import MAX_TEMPERATURE, MIN_TEMPERATURE, fit_temperature


def overconfident(n=4000, classes=5, temperature=3.0, seed=0):
    """Labels drawn from softmax(z), then logits sharpened to z · temperature: the fit should find it again."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 2  # (N, C)
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=g).squeeze(1)  # (N,)
    return logits * temperature, labels


def test_recovers_the_temperature_that_made_the_logits_overconfident():
    logits, labels = overconfident(temperature=3.0)
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.08)
    under, under_labels = overconfident(temperature=0.5, seed=1)
    assert fit_temperature(under, under_labels) == pytest.approx(0.5, rel=0.08)


def test_lowers_nll_and_keeps_every_prediction():
    logits, labels = overconfident()
    temperature = fit_temperature(logits, labels)
    assert F.cross_entropy(logits / temperature, labels) < F.cross_entropy(logits, labels) - 0.1
    assert torch.equal((logits / temperature).argmax(dim=1), logits.argmax(dim=1))
    for other in (temperature * 0.8, temperature * 1.25):  # it is the minimum
        assert F.cross_entropy(logits / temperature, labels) <= F.cross_entropy(logits / other, labels)


def test_separable_logits_stay_within_bounds_and_an_empty_set_keeps_one():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    assert MIN_TEMPERATURE <= fit_temperature(logits, torch.tensor([0, 1])) <= MAX_TEMPERATURE
    assert fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 1.0


def test_deterministic():
    logits, labels = overconfident()
    assert fit_temperature(logits, labels) == fit_temperature(logits.clone(), labels.clone())
