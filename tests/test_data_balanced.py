import pytest
import torch

from ltstg.data.balanced import class_balanced_indices
from ltstg.errors import LtstgError


def _labels():
    labels = torch.cat([torch.zeros(100), torch.ones(10), torch.full((1,), 2)]).long()
    return labels[torch.randperm(111, generator=torch.Generator().manual_seed(0))]


def test_classes_drawn_uniformly_on_100_10_1():
    labels = _labels()
    indices = class_balanced_indices(labels, 30000, generator=torch.Generator().manual_seed(1))
    assert indices.shape == (30000,) and indices.dtype == torch.long
    frequency = torch.bincount(labels[indices], minlength=3).float() / 30000
    assert torch.allclose(frequency, torch.full((3,), 1 / 3), atol=0.015)


def test_samples_uniform_within_class():
    labels = _labels()
    indices = class_balanced_indices(labels, 30000, generator=torch.Generator().manual_seed(2))
    hits = torch.bincount(indices, minlength=111)
    members = torch.nonzero(labels == 1).flatten()
    share = hits[members].float() / hits[members].sum()
    assert torch.allclose(share, torch.full((10,), 0.1), atol=0.02)
    only = torch.nonzero(labels == 2).item()
    assert hits[only] == (labels[indices] == 2).sum()


def test_absent_classes_never_drawn_and_seeded():
    labels = torch.tensor([5, 0, 5, 5, 0])
    first = class_balanced_indices(labels, 1000, generator=torch.Generator().manual_seed(3))
    second = class_balanced_indices(labels, 1000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    assert set(labels[first].tolist()) == {0, 5}
    assert abs((labels[first] == 0).float().mean().item() - 0.5) < 0.05


def test_empty_labels_rejected():
    with pytest.raises(LtstgError):
        class_balanced_indices(torch.zeros(0, dtype=torch.long), 10, generator=torch.Generator())
