import pytest
import torch

from ltstg.data.balanced import ClassAwareSampler, class_balanced_indices
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


def test_class_aware_sampling_cycles_classes_in_groups_and_each_class_without_replacement():
    """Kang et al.'s ClassAwareSampler with num_samples_cls 4: every cycle of C groups visits each class once,
    a group is 4 draws of one class, and a class repeats none of its samples before it used them all."""
    labels = _labels()  # 100, 10 and 1 samples
    sampler = ClassAwareSampler(labels, 4, generator=torch.Generator().manual_seed(0))
    draws = torch.cat([sampler.draws(108) for _ in range(4)])  # 4 epochs of 27 whole groups
    groups = labels[draws].view(-1, 4)  # (G, 4)
    assert (groups == groups[:, :1]).all()  # a group is one class
    cycles = groups[: len(groups) // 3 * 3, 0].view(-1, 3)  # (cycles, C): each a permutation of the classes
    assert (cycles.sort(dim=1).values == torch.arange(3)).all()
    assert len({tuple(c.tolist()) for c in cycles}) > 1  # ... reshuffled between cycles
    of_class_1 = draws[labels[draws] == 1]
    for start in range(0, len(of_class_1) - 9, 10):  # every 10 draws of a 10-sample class are its 10 samples
        assert sorted(of_class_1[start:start + 10].tolist()) == sorted(torch.nonzero(labels == 1).flatten().tolist())
    head = draws[labels[draws] == 0]
    assert head[:100].unique().numel() == 100  # its first 100 draws, over several epochs, are its 100 samples


def test_class_aware_sampling_is_seeded_and_resumes_from_its_state():
    labels = _labels()
    first = ClassAwareSampler(labels, 4, generator=torch.Generator().manual_seed(5))
    a = [first.draws(50) for _ in range(3)]
    generator = torch.Generator().manual_seed(5)
    second = ClassAwareSampler(labels, 4, generator=generator)
    b0 = second.draws(50)
    state, generator_state = second.state_dict(), generator.get_state()
    third_generator = torch.Generator()
    third = ClassAwareSampler(labels, 4, generator=third_generator)  # a restarted run: other state until loaded
    third.load_state_dict(state)
    third_generator.set_state(generator_state)
    assert torch.equal(a[0], b0) and torch.equal(torch.cat(a[1:]), torch.cat([third.draws(50), third.draws(50)]))
    other = ClassAwareSampler(labels, 4, generator=torch.Generator().manual_seed(6)).draws(50)
    assert not torch.equal(other, a[0])
    with pytest.raises(LtstgError, match="samples_per_class >= 1"):
        ClassAwareSampler(labels, 0, generator=torch.Generator())
