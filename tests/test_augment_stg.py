import pytest
import torch

from ltstg.augment.stg import StgAugmenter
from ltstg.errors import LtstgError

# Classes 0 and 1 are head classes with prototypes along e0 and e1; classes 2 and 3 are tail.
HEAD = torch.tensor([0, 1])
PROTOTYPES = torch.eye(2, 4)


def _prototypes(dim):
    return torch.eye(2, dim)
COUNTS = torch.tensor([400, 100, 25, 4])


class FakeStg:
    """Fixed mu per token (token + 1) and a fixed var; records what it was called with."""

    def __init__(self, var=0.0):
        self.var = var
        self.calls = []

    def __call__(self, features, token_index):
        self.calls.append((features.clone(), token_index.clone()))
        mu = (token_index.float() + 1).unsqueeze(1).expand_as(features).clone()
        return mu, torch.full_like(features, self.var)


def _batch(n_tail=4, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    head = torch.randn(4, dim, generator=g)
    tail = torch.rand(n_tail, dim, generator=g)
    tail[:, 0] += 5.0  # every tail feature is closest (cosine) to head class 0's prototype
    features = torch.cat([head, tail])
    labels = torch.cat([torch.tensor([0, 1, 0, 1]), torch.tensor([2, 3] * (n_tail // 2))])
    return features, labels


def test_beta_values():
    augmenter = StgAugmenter(FakeStg(), PROTOTYPES, HEAD, COUNTS)
    assert torch.allclose(augmenter.beta, torch.tensor([0.1, 0.2, 0.4, 1.0]))


def test_zero_count_class_is_rejected():
    with pytest.raises(LtstgError):
        StgAugmenter(FakeStg(), PROTOTYPES, HEAD, torch.tensor([400, 100, 0, 4]))


def test_fixed_mu_zero_var_gives_exact_shift():
    fake = FakeStg(var=0.0)
    augmenter = StgAugmenter(fake, PROTOTYPES, HEAD, COUNTS, lam=1.5, t=1.0)  # t=1: every dim augmented
    features, labels = _batch()
    out = augmenter.augment(features, labels, generator=torch.Generator().manual_seed(3))
    tail = labels >= 2
    beta = augmenter.beta[labels[tail]].unsqueeze(1)
    expected = features[tail] + torch.ones_like(features[tail]) * 1.5 * beta  # token 0 -> mu = 1
    assert torch.equal(out[tail], expected)


def test_each_dim_is_either_original_or_augmented():
    augmenter = StgAugmenter(FakeStg(var=0.0), PROTOTYPES, HEAD, COUNTS, lam=1.0, t=0.5)
    features, labels = _batch(n_tail=20)
    out = augmenter.augment(features, labels, generator=torch.Generator().manual_seed(4))
    tail = labels >= 2
    shifted = features[tail] + augmenter.beta[labels[tail]].unsqueeze(1)
    original = out[tail] == features[tail]
    assert torch.all(original | (out[tail] == shifted))
    assert original.any() and (~original).any()


def test_mask_keeps_fraction_one_minus_t():
    augmenter = StgAugmenter(FakeStg(var=0.0), _prototypes(64), HEAD, COUNTS, lam=1.0, t=0.3)
    features, labels = _batch(n_tail=400, dim=64)
    out = augmenter.augment(features, labels, generator=torch.Generator().manual_seed(5))
    tail = labels >= 2
    kept = (out[tail] == features[tail]).float().mean().item()  # 25600 dims
    assert abs(kept - 0.7) < 0.02


def test_var_sets_spread():
    augmenter = StgAugmenter(FakeStg(var=4.0), _prototypes(8), HEAD, torch.tensor([400, 100, 4, 4]), lam=0.5, t=1.0)
    features, labels = _batch(n_tail=2000, dim=8)
    out = augmenter.augment(features, labels, generator=torch.Generator().manual_seed(6))
    tail = labels >= 2
    shift = out[tail] - features[tail]  # (sqrt(4) * eps + 1) * 0.5 * 1
    assert abs(shift.mean().item() - 0.5) < 0.02
    assert abs(shift.std().item() - 1.0) < 0.02


def test_head_features_untouched_and_not_sent_to_stg():
    fake = FakeStg(var=1.0)
    augmenter = StgAugmenter(fake, PROTOTYPES, HEAD, COUNTS)
    features, labels = _batch(n_tail=6)
    before = features.clone()
    out = augmenter.augment(features, labels, generator=torch.Generator().manual_seed(7))
    head = labels < 2
    assert torch.equal(out[head], before[head])
    assert torch.equal(features, before)
    (called, _), = fake.calls
    assert torch.equal(called, before[~head])


def test_all_head_batch_skips_stg():
    fake = FakeStg()
    augmenter = StgAugmenter(fake, PROTOTYPES, HEAD, COUNTS)
    features = torch.randn(3, 4)
    out = augmenter.augment(features, torch.tensor([0, 1, 0]), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, features) and fake.calls == []


def test_nearest_head_choice_and_borrowed():
    fake = FakeStg()
    head = torch.tensor([3, 0])  # token 0 is class 3, token 1 is class 0
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    augmenter = StgAugmenter(fake, prototypes, head, torch.tensor([200, 5, 5, 300]))
    features = torch.tensor([[10.0, 1.0], [0.1, 2.0], [-1.0, 5.0], [3.0, 0.0]])
    labels = torch.tensor([1, 2, 1, 2])
    augmenter.augment(features, labels, generator=torch.Generator().manual_seed(0))
    assert fake.calls[0][1].tolist() == [0, 1, 1, 0]
    classes, cosine = augmenter.borrowed(features)
    assert classes.tolist() == [3, 0, 0, 3]
    assert torch.allclose(cosine[3], torch.tensor(1.0))
    assert torch.allclose(cosine[0], torch.tensor(10.0 / 101**0.5))


def test_seeded_determinism():
    augmenter = StgAugmenter(FakeStg(var=1.0), PROTOTYPES, HEAD, COUNTS)
    features, labels = _batch(n_tail=10)
    first = augmenter.augment(features, labels, generator=torch.Generator().manual_seed(11))
    second = augmenter.augment(features, labels, generator=torch.Generator().manual_seed(11))
    other = augmenter.augment(features, labels, generator=torch.Generator().manual_seed(12))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_predict_runs_without_grad():
    seen = []

    def predict(features, token_index):
        seen.append(torch.is_grad_enabled())
        return torch.zeros_like(features), torch.zeros_like(features)

    augmenter = StgAugmenter(predict, PROTOTYPES, HEAD, COUNTS)
    features, labels = _batch()
    augmenter.augment(features, labels, generator=torch.Generator().manual_seed(0))
    assert seen == [False]
