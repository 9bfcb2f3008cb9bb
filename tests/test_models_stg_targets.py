"""Tests for ltstg.models.stg_targets."""
import pytest
import torch

from ltstg.models.gaussian import diagonal_gaussian_kl
from ltstg.models.stg_targets import SmoothedTargets, stg_loss, transformation_targets

# A hand-sized batch, 2-D features (x, 2x) so the second dimension is the first times 2 (μ ×2, Σ ×4).
# class 0: id 0 → 1, id 1 → 2, id 2 → 4;  class 1: id 3 → 10.
BATCH_X = torch.tensor([1.0, 2.0, 4.0, 10.0])
BATCH_LABELS = torch.tensor([0, 0, 0, 1])
BATCH_IDS = torch.tensor([0, 1, 2, 3])
# memory: id 5 → 6 (class 0), an earlier copy of id 0 → 1 (class 0: features are frozen, so a copy holds the
# sample's feature), id 6 → 12 (class 1).
MEMORY_X = torch.tensor([6.0, 1.0, 12.0])
MEMORY_LABELS = torch.tensor([0, 0, 1])
MEMORY_IDS = torch.tensor([5, 0, 6])


def _features(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([x, 2 * x], dim=1)  # (n, 2)


def _targets(pool_x, pool_labels, pool_ids, **kwargs):
    return transformation_targets(
        _features(BATCH_X), BATCH_LABELS, BATCH_IDS, _features(pool_x), pool_labels, pool_ids, num_classes=2, **kwargs
    )


def _expect(mu: torch.Tensor, var: torch.Tensor, row: int, mu_x: float, var_x: float) -> None:
    assert torch.allclose(mu[row], torch.tensor([mu_x, 2 * mu_x]))
    assert torch.allclose(var[row], torch.tensor([var_x, 4 * var_x]))


def test_batch_only_by_hand():
    mu, var, valid = _targets(BATCH_X, BATCH_LABELS, BATCH_IDS)
    # anchor 1: neighbours 2, 4 → diffs 1, 3 → μ 2, Σ ((2−1)² + (2−3)²)/2 = 1 (anchor itself excluded)
    _expect(mu, var, 0, 2.0, 1.0)
    # anchor 2: neighbours 1, 4 → diffs −1, 2 → μ 0.5, Σ (1.5² + 1.5²)/2 = 2.25
    _expect(mu, var, 1, 0.5, 2.25)
    # anchor 4: neighbours 1, 2 → diffs −3, −2 → μ −2.5, Σ (0.5² + 0.5²)/2 = 0.25
    _expect(mu, var, 2, -2.5, 0.25)
    # anchor 10: no other class-1 sample → masked, zeros, no NaN
    assert valid.tolist() == [True, True, True, False]
    assert torch.equal(mu[3], torch.zeros(2)) and torch.equal(var[3], torch.zeros(2))


def test_with_memory_by_hand():
    pool_x = torch.cat([BATCH_X, MEMORY_X])
    pool_labels = torch.cat([BATCH_LABELS, MEMORY_LABELS])
    pool_ids = torch.cat([BATCH_IDS, MEMORY_IDS])
    mu, var, valid = _targets(pool_x, pool_labels, pool_ids)
    # anchor 1 (id 0): neighbours 2, 4, 6; its copy in memory (id 0 → 1) is excluded
    # → diffs 1, 3, 5 → μ 3, Σ (4 + 0 + 4)/3 = 8/3
    _expect(mu, var, 0, 3.0, 8 / 3)
    # anchor 2 (id 1): neighbours 1, 4, 6 and the id-0 entry in memory, 1 (another sample: it counts)
    # → diffs −1, 2, 4, −1 → μ 1, Σ (2² + 1² + 3² + 2²)/4 = 18/4
    _expect(mu, var, 1, 1.0, 18 / 4)
    # anchor 4 (id 2): neighbours 1, 2, 6, 1 → diffs −3, −2, 2, −3
    # → μ −1.5, Σ (1.5² + 0.5² + 3.5² + 1.5²)/4 = 17/4
    _expect(mu, var, 2, -1.5, 17 / 4)
    # anchor 10 (id 3): one neighbour (12) < min_neighbors 2 → masked
    assert valid.tolist() == [True, True, True, False]
    assert torch.equal(mu[3], torch.zeros(2))
    # with min_neighbors 1 the single neighbour gives μ 2, Σ 0
    mu, var, valid = _targets(pool_x, pool_labels, pool_ids, min_neighbors=1)
    assert valid.all()
    _expect(mu, var, 3, 2.0, 0.0)


def test_stale_copy_of_the_anchor_is_excluded():
    # only the anchor and its own copy in class 0: no neighbours at all
    anchors = torch.tensor([[1.0]])
    mu, var, valid = transformation_targets(
        anchors, torch.tensor([0]), torch.tensor([7]),
        torch.tensor([[1.0], [1.0]]), torch.tensor([0, 0]), torch.tensor([7, 7]), num_classes=1, min_neighbors=1,
    )
    assert not valid.item() and mu.item() == 0.0 and var.item() == 0.0


def _slow_targets(anchors, anchor_labels, anchor_ids, pool, pool_labels, pool_ids, min_neighbors):
    """Eq. 1 written out one anchor at a time, in float64."""
    mus, variances, valid = [], [], []
    for a, y, i in zip(anchors.double(), anchor_labels.tolist(), anchor_ids.tolist()):
        mask = (pool_labels == y) & (pool_ids != i)
        diffs = pool.double()[mask] - a  # (k, D)
        if len(diffs) < min_neighbors:
            mus.append(torch.zeros_like(a))
            variances.append(torch.zeros_like(a))
            valid.append(False)
            continue
        mu = diffs.mean(dim=0)
        mus.append(mu)
        variances.append(((mu - diffs) ** 2).mean(dim=0))
        valid.append(True)
    return torch.stack(mus), torch.stack(variances), torch.tensor(valid)


def test_vectorised_matches_slow_reference_on_random_data():
    g = torch.Generator().manual_seed(0)
    batch, memory, dim = 48, 120, 16
    # far from the origin relative to the spread, which breaks a naive float32 E[a²] − E[a]²
    anchors = 50 + torch.randn(batch, dim, generator=g)  # (B, D)
    anchor_labels = torch.randint(0, 10, (batch,), generator=g)  # (B,)
    anchor_ids = torch.randperm(1000, generator=g)[:batch]  # (B,)
    memory_features = 50 + torch.randn(memory, dim, generator=g)  # (M, D)
    memory_labels = torch.randint(0, 12, (memory,), generator=g)  # (M,)
    memory_ids = torch.randint(1000, 1100, (memory,), generator=g)  # (M,) other samples, some there twice
    memory_ids[:10] = anchor_ids[:10]  # earlier copies of some anchors: same sample, so same label and feature
    memory_labels[:10] = anchor_labels[:10]
    memory_features[:10] = anchors[:10]
    copies = memory_ids == 1050
    memory_labels[copies], memory_features[copies] = memory_labels[copies][0], memory_features[copies][0]
    anchor_labels[-2:] = torch.tensor([98, 99])  # rare classes: 98 has one neighbour in memory, 99 none
    memory_labels[-1] = 98
    pool = torch.cat([anchors, memory_features])
    pool_labels = torch.cat([anchor_labels, memory_labels])
    pool_ids = torch.cat([anchor_ids, memory_ids])
    mu, var, valid = transformation_targets(anchors, anchor_labels, anchor_ids, pool, pool_labels, pool_ids,
                                            num_classes=100, min_neighbors=3)
    slow_mu, slow_var, slow_valid = _slow_targets(anchors, anchor_labels, anchor_ids, pool, pool_labels,
                                                  pool_ids, 3)
    assert torch.equal(valid, slow_valid)
    assert 0 < valid.sum() < batch  # both branches exercised
    assert mu.dtype == torch.float32
    assert torch.allclose(mu.double(), slow_mu, atol=1e-4)
    assert torch.allclose(var.double(), slow_var, atol=1e-4)


def test_smoothing_running_average():
    smoothed = SmoothedTargets(4, 2, momentum=0.75, device="cpu")
    ids = torch.tensor([0, 1])
    # first sighting of 0 stores raw; 1 is invalid: returned raw, not stored
    mu, var = smoothed.update(ids, torch.tensor([[4.0, 8.0], [0.0, 0.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]]),
                              torch.tensor([True, False]))
    assert torch.equal(mu, torch.tensor([[4.0, 8.0], [0.0, 0.0]])) and torch.equal(var[0], torch.ones(2))
    # second sighting of 0: 0.75·4 + 0.25·8 = 5, 0.75·8 + 0.25·0 = 6; Σ 0.75·1 + 0.25·5 = 2
    # first valid sighting of 1 stores raw
    mu, var = smoothed.update(ids, torch.tensor([[8.0, 0.0], [3.0, 3.0]]), torch.tensor([[5.0, 5.0], [2.0, 2.0]]),
                              torch.tensor([True, True]))
    assert torch.allclose(mu, torch.tensor([[5.0, 6.0], [3.0, 3.0]]))
    assert torch.allclose(var, torch.tensor([[2.0, 2.0], [2.0, 2.0]]))
    # an invalid row leaves the stored value alone
    smoothed.update(ids[:1], torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([False]))
    mu, _ = smoothed.update(ids[:1], torch.tensor([[1.0, 2.0]]), torch.ones(1, 2), torch.tensor([True]))
    assert torch.allclose(mu, torch.tensor([[0.75 * 5 + 0.25 * 1, 0.75 * 6 + 0.25 * 2]]))


def test_momentum_zero_returns_the_new_targets():
    smoothed = SmoothedTargets(4, 2, momentum=0.0, device="cpu")
    ids = torch.tensor([2])
    smoothed.update(ids, torch.ones(1, 2), torch.ones(1, 2), torch.tensor([True]))
    mu, var = smoothed.update(ids, torch.full((1, 2), 7.0), torch.full((1, 2), 3.0), torch.tensor([True]))
    assert torch.equal(mu, torch.full((1, 2), 7.0)) and torch.equal(var, torch.full((1, 2), 3.0))


def test_smoothing_state_dict_round_trip_continues_exactly():
    g = torch.Generator().manual_seed(3)
    first = SmoothedTargets(10, 3, momentum=0.9, device="cpu")
    steps = [(torch.randperm(10, generator=g)[:4], torch.randn(4, 3, generator=g), torch.rand(4, 3, generator=g))
             for _ in range(4)]
    valid = torch.tensor([True, True, False, True])
    for ids, mu, var in steps[:2]:
        first.update(ids, mu, var, valid)
    state = {name: tensor.clone() for name, tensor in first.state_dict().items()}
    resumed = SmoothedTargets(10, 3, momentum=0.9, device="cpu")
    resumed.load_state_dict(state)
    for ids, mu, var in steps[2:]:
        expected = first.update(ids, mu, var, valid)
        got = resumed.update(ids, mu, var, valid)
        assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    with pytest.raises(ValueError):
        SmoothedTargets(11, 3, momentum=0.9, device="cpu").load_state_dict(state)


def _loss_inputs():
    g = torch.Generator().manual_seed(4)
    pred_mu = torch.randn(5, 4, generator=g).requires_grad_()  # (B, D)
    pred_var = (torch.rand(5, 4, generator=g) + 0.5).requires_grad_()  # (B, D)
    target_mu = torch.randn(5, 4, generator=g)  # (B, D)
    target_var = torch.rand(5, 4, generator=g) + 0.5  # (B, D)
    return pred_mu, pred_var, target_mu, target_var


def test_mse_loss_by_hand():
    pred_mu, pred_var = torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 2.0]])
    loss = stg_loss(pred_mu, pred_var, torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 4.0]]), torch.tensor([True]),
                    kind="mse", mu_weight=2.0, var_weight=0.5)
    # mean over dims of 2·(1, 9) + 0.5·(1, 4) = (2.5, 20) → 11.25
    assert torch.isclose(loss, torch.tensor(11.25))


def test_kl_loss_is_the_gaussian_kl_per_dimension():
    pred_mu, pred_var, target_mu, target_var = _loss_inputs()
    valid = torch.ones(5, dtype=torch.bool)
    loss = stg_loss(pred_mu, pred_var, target_mu, target_var, valid, kind="kl")
    expected = diagonal_gaussian_kl(target_mu, target_var, pred_mu, pred_var).mean() / 4
    assert torch.isclose(loss, expected)
    assert stg_loss(target_mu, target_var, target_mu, target_var, valid, kind="kl").abs() < 1e-6
    # zero target variance is floored, not a NaN
    zero_var = stg_loss(pred_mu, pred_var, target_mu, torch.zeros(5, 4), valid, kind="kl")
    assert torch.isfinite(zero_var)


@pytest.mark.parametrize("kind", ["mse", "kl"])
def test_loss_ignores_invalid_rows(kind):
    pred_mu, pred_var, target_mu, target_var = _loss_inputs()
    valid = torch.tensor([True, False, True, False, True])
    loss = stg_loss(pred_mu, pred_var, target_mu, target_var, valid, kind=kind)
    wild_mu, wild_var = target_mu.clone(), target_var.clone()
    wild_mu[~valid] = 1e3
    wild_var[~valid] = 1e3
    assert torch.isclose(stg_loss(pred_mu, pred_var, wild_mu, wild_var, valid, kind=kind), loss)
    kept = stg_loss(pred_mu[valid], pred_var[valid], target_mu[valid], target_var[valid],
                    torch.ones(3, dtype=torch.bool), kind=kind)
    assert torch.isclose(loss, kept)  # averaged over the 3 valid anchors, not all 5
    loss.backward()
    assert torch.equal(pred_mu.grad[~valid], torch.zeros(2, 4))
    assert pred_mu.grad[valid].abs().sum() > 0


@pytest.mark.parametrize("kind", ["mse", "kl"])
def test_loss_with_no_valid_anchor_is_zero_and_backward_works(kind):
    pred_mu, pred_var, _, _ = _loss_inputs()
    loss = stg_loss(pred_mu, pred_var, torch.zeros(5, 4), torch.zeros(5, 4), torch.zeros(5, dtype=torch.bool),
                    kind=kind)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(pred_mu.grad, torch.zeros(5, 4)) and torch.equal(pred_var.grad, torch.zeros(5, 4))
