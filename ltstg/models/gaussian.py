"""Closed-form KL divergences between diagonal Gaussians, for the STG loss and per-sample reports."""
from __future__ import annotations

import torch


def diagonal_gaussian_kl(
    mu_p: torch.Tensor, var_p: torch.Tensor, mu_q: torch.Tensor, var_q: torch.Tensor
) -> torch.Tensor:
    """KL(N(mu_p, var_p) ‖ N(mu_q, var_q)) summed over the last dim; broadcasts so callers can build matrices."""
    # var_q / var_p is exactly 1 for equal inputs, so KL(p‖p) comes out exactly 0
    terms = torch.log(var_q / var_p) + (var_p + (mu_p - mu_q) ** 2) / var_q - 1.0  # (..., D)
    return 0.5 * terms.sum(dim=-1)


def pairwise_kl(mu: torch.Tensor, var: torch.Tensor, *, max_elements: int = 1 << 24) -> torch.Tensor:
    """KL(N_i ‖ N_j) for every pair of N Gaussians, in row blocks so N×N×D never sits in memory at once."""
    n, dim = mu.shape
    rows = max(1, max_elements // max(1, n * dim))
    blocks = [
        diagonal_gaussian_kl(mu[start:start + rows, None], var[start:start + rows, None], mu[None], var[None])
        for start in range(0, n, rows)
    ]
    kl = torch.cat(blocks) if blocks else mu.new_zeros(0, 0)  # (N, N)
    # rounding can leave tiny negatives between near-identical Gaussians; KL itself is never negative
    return kl.clamp_min(0.0)
