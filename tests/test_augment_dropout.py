import pytest
import torch

from ltstg.augment.dropout import DropoutAugmenter
from ltstg.errors import LtstgError


def _features():
    return torch.rand(2000, 16, generator=torch.Generator().manual_seed(0)) + 0.5  # no zeros


def test_drop_rate_and_survivor_scale():
    features = _features()
    before = features.clone()
    out = DropoutAugmenter(0.25).augment(features, torch.zeros(2000, dtype=torch.long),
                                         generator=torch.Generator().manual_seed(1))
    dropped = out == 0
    assert abs(dropped.float().mean().item() - 0.25) < 0.01
    assert torch.equal(out[~dropped], features[~dropped] / 0.75)
    assert abs(out.mean().item() - features.mean().item()) < 0.01
    assert torch.equal(features, before)


def test_zero_p_is_identity():
    features = _features()
    out = DropoutAugmenter(0.0).augment(features, torch.zeros(2000, dtype=torch.long), generator=torch.Generator())
    assert torch.equal(out, features)


def test_seeded():
    features = _features()
    labels = torch.zeros(2000, dtype=torch.long)
    a = DropoutAugmenter(0.5).augment(features, labels, generator=torch.Generator().manual_seed(3))
    b = DropoutAugmenter(0.5).augment(features, labels, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_bad_p_rejected(p):
    with pytest.raises(LtstgError):
        DropoutAugmenter(p)
