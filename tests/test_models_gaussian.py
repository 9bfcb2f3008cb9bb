"""Tests for ltstg.models.gaussian."""
import torch

from ltstg.models.gaussian import diagonal_gaussian_kl, pairwise_kl


def _random_gaussians(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, dim, generator=g, dtype=torch.float64)  # (N, D)
    var = torch.rand(n, dim, generator=g, dtype=torch.float64) * 2 + 0.2  # (N, D)
    return mu, var


def test_kl_matches_monte_carlo_estimate():
    mu, var = _random_gaussians(2, 3, seed=0)
    g = torch.Generator().manual_seed(1)
    samples = mu[0] + var[0].sqrt() * torch.randn(400_000, 3, generator=g, dtype=torch.float64)  # (S, D)
    p = torch.distributions.Normal(mu[0], var[0].sqrt())
    q = torch.distributions.Normal(mu[1], var[1].sqrt())
    estimate = (p.log_prob(samples) - q.log_prob(samples)).sum(dim=1).mean()
    exact = diagonal_gaussian_kl(mu[0], var[0], mu[1], var[1])
    assert exact.item() > 0.1
    assert abs(exact.item() - estimate.item()) < 0.02 * exact.item() + 0.01


def test_kl_of_one_dimension_by_hand():
    # KL(N(0,1) ‖ N(1,2)) = ½(log 2 + (1 + 1)/2 − 1) = ½ log 2
    kl = diagonal_gaussian_kl(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([2.0]))
    assert torch.isclose(kl, torch.tensor(0.5 * torch.log(torch.tensor(2.0)).item()))


def test_kl_of_identical_gaussians_is_zero():
    mu, var = _random_gaussians(5, 7, seed=2)
    assert torch.equal(diagonal_gaussian_kl(mu, var, mu, var), torch.zeros(5, dtype=torch.float64))


def test_kl_broadcasts_to_a_matrix():
    mu, var = _random_gaussians(4, 3, seed=3)
    matrix = diagonal_gaussian_kl(mu[:, None], var[:, None], mu[None], var[None])
    assert matrix.shape == (4, 4)
    assert torch.isclose(matrix[1, 2], diagonal_gaussian_kl(mu[1], var[1], mu[2], var[2]))


def test_pairwise_kl_zero_diagonal_non_negative_and_entrywise():
    mu, var = _random_gaussians(6, 5, seed=4)
    kl = pairwise_kl(mu, var)
    assert kl.shape == (6, 6)
    assert torch.equal(kl.diagonal(), torch.zeros(6, dtype=torch.float64))
    assert (kl >= 0).all()
    off_diagonal = kl[~torch.eye(6, dtype=torch.bool)]
    assert (off_diagonal > 0).all()
    for i, j in [(0, 1), (1, 0), (3, 5)]:
        assert torch.isclose(kl[i, j], diagonal_gaussian_kl(mu[i], var[i], mu[j], var[j]))
    assert not torch.isclose(kl[0, 1], kl[1, 0])  # KL is not symmetric


def test_pairwise_kl_in_blocks_equals_one_block():
    mu, var = _random_gaussians(7, 4, seed=5)
    assert torch.allclose(pairwise_kl(mu, var, max_elements=8), pairwise_kl(mu, var))
