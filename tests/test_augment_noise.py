import pytest
import torch

from ltstg.augment.noise import NoiseAugmenter
from ltstg.errors import LtstgError


def test_noise_has_requested_std_and_zero_mean():
    features = torch.randn(4000, 8, generator=torch.Generator().manual_seed(0))
    before = features.clone()
    out = NoiseAugmenter(0.3).augment(features, torch.zeros(4000, dtype=torch.long),
                                      generator=torch.Generator().manual_seed(1))
    noise = out - features
    assert abs(noise.std().item() - 0.3) < 0.005
    assert abs(noise.mean().item()) < 0.005
    assert torch.equal(features, before)


def test_zero_std_is_identity():
    features = torch.randn(5, 3)
    out = NoiseAugmenter(0.0).augment(features, torch.zeros(5, dtype=torch.long), generator=torch.Generator())
    assert torch.equal(out, features)


def test_seeded():
    features = torch.randn(5, 3)
    labels = torch.zeros(5, dtype=torch.long)
    augmenter = NoiseAugmenter(1.0)
    a = augmenter.augment(features, labels, generator=torch.Generator().manual_seed(7))
    b = augmenter.augment(features, labels, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_negative_std_rejected():
    with pytest.raises(LtstgError):
        NoiseAugmenter(-0.1)
