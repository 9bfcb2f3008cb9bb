import pytest
import torch

from ltstg.augment.isda import IsdaAugmenter
from ltstg.errors import LtstgError
from tests.host_syncs import LargestOutput


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.zeros(37), torch.ones(11), torch.full((1,), 2)]).long()
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    features = torch.randn(labels.numel(), 5, generator=g, dtype=torch.float64) * 3 + labels.unsqueeze(1) * 10
    return features, labels


def test_running_merge_equals_full_data_statistics():
    features, labels = _data()
    augmenter = IsdaAugmenter(4, 5)  # class 3 never appears
    for piece in torch.split(torch.arange(labels.numel()), [1, 7, 20, 2, 19]):
        augmenter.update(features[piece], labels[piece])
    assert augmenter.counts.tolist() == [37, 11, 1, 0]
    for c in range(3):
        rows = features[labels == c]
        assert torch.allclose(augmenter.means[c], rows.mean(dim=0), atol=1e-10)
        assert torch.allclose(augmenter.vars[c], rows.var(dim=0, unbiased=False), atol=1e-10)
    assert torch.equal(augmenter.means[3], torch.zeros(5)) and torch.equal(augmenter.vars[3], torch.zeros(5))


def test_augment_updates_with_original_batch():
    features, labels = _data()
    augmenter = IsdaAugmenter(3, 5)
    augmenter.augment(features.float(), labels, generator=torch.Generator().manual_seed(0))
    rows = features[labels == 0]
    assert torch.allclose(augmenter.vars[0], rows.var(dim=0, unbiased=False), atol=1e-4)


def test_samples_have_lam_times_class_variance():
    g = torch.Generator().manual_seed(1)
    scale = torch.tensor([1.0, 2.0, 0.5, 3.0])
    features = torch.randn(20000, 4, generator=g) * scale
    labels = torch.zeros(20000, dtype=torch.long)
    augmenter = IsdaAugmenter(2, 4, lam=0.5)
    out = augmenter.augment(features, labels, generator=torch.Generator().manual_seed(2))
    spread = (out - features).std(dim=0)
    expected = (0.5 * augmenter.vars[0]).sqrt().float()
    assert torch.allclose(spread, expected, rtol=0.03)
    assert torch.allclose(expected, 0.5**0.5 * scale, rtol=0.03)


def test_single_sample_class_is_not_moved():
    augmenter = IsdaAugmenter(2, 3)
    features = torch.randn(1, 3)
    out = augmenter.augment(features, torch.tensor([1]), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, features)


def test_state_dict_round_trip():
    features, labels = _data()
    first = IsdaAugmenter(3, 5)
    first.update(features, labels)
    second = IsdaAugmenter(3, 5)
    second.load_state_dict(first.state_dict())
    batch = features[:8].float()
    a = first.augment(batch, labels[:8], generator=torch.Generator().manual_seed(3))
    b = second.augment(batch, labels[:8], generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(first.counts, second.counts)


def test_state_dict_for_other_shape_is_rejected():
    with pytest.raises(LtstgError):
        IsdaAugmenter(3, 5).load_state_dict(IsdaAugmenter(3, 6).state_dict())


def test_a_step_reads_and_writes_only_the_rows_of_the_classes_in_its_batch():
    """At 8,142 classes the whole table is 133 MB of float64: a step must cost O(B·D), not O(C·D) (issue 24)."""
    num_classes, dim = 2000, 8
    augmenter = IsdaAugmenter(num_classes, dim, lam=0.5)
    g = torch.Generator().manual_seed(0)
    features = torch.randn(16, dim, generator=g)
    labels = torch.tensor([3, 3, 7, 1999] * 4)
    before = {k: v.clone() for k, v in augmenter.state_dict().items()}
    with LargestOutput() as seen:
        augmenter.augment(features, labels, generator=g)
    assert seen.largest < num_classes * dim // 10
    untouched = torch.ones(num_classes, dtype=torch.bool)
    untouched[[3, 7, 1999]] = False
    for key, value in augmenter.state_dict().items():
        assert torch.equal(value[untouched], before[key][untouched]), key
    assert augmenter.counts[[3, 7, 1999]].tolist() == [8, 4, 4]
    rows = features[labels == 3].double()
    assert torch.allclose(augmenter.vars[3], rows.var(dim=0, unbiased=False))
