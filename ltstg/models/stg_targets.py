"""Ground truth and loss for training the STG: per-sample shift statistics from same-class neighbours (paper Eq. 1)."""
from __future__ import annotations

from typing import Literal

import torch

TARGET_VAR_FLOOR = 1e-6  # the KL divides by and logs the target variance, which is 0 for identical neighbours


def transformation_targets(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    anchor_ids: torch.Tensor,
    pool_features: torch.Tensor,
    pool_labels: torch.Tensor,
    pool_ids: torch.Tensor,
    *,
    num_classes: int,
    min_neighbors: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and biased diagonal variance of {a_j − a_i} over other same-class samples in the pool (Eq. 1).

    Entries that share the anchor's sample id (the anchor itself, or a copy of it in memory) are not
    neighbours; other samples count once per pool entry. Every entry of one id holds the same feature (the
    features are frozen), so an anchor's own entries are taken out of its class's sums as count × a_i.
    Labels lie in [0, num_classes). Costs O((B + P)·D + C·D), not O(B·P·D): per-class sums, no B × P matrix
    of features. Anchors with fewer than `min_neighbors` neighbours get valid=False and zeros.
    """
    sums, squares, counts = class_sums(pool_features, pool_labels, num_classes)  # (C, D), (C, D), (C,)
    own = (anchor_ids[:, None] == pool_ids[None, :]).sum(dim=1)  # (B,) the anchor's own entries in the pool
    return targets_from_sums(anchors, sums[anchor_labels], squares[anchor_labels], counts[anchor_labels], own,
                             min_neighbors=min_neighbors)


def class_sums(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, ...]:
    """Per class: the sum of the features, of their squares (C, D) in float64, and the count (C,); no host sync."""
    values = features.detach().double()  # (n, D)
    sums = values.new_zeros(num_classes, values.shape[1]).index_add_(0, labels, values)
    squares = values.new_zeros(sums.shape).index_add_(0, labels, values.square())
    counts = torch.zeros(num_classes, dtype=torch.long, device=labels.device).index_add_(
        0, labels, torch.ones_like(labels))  # bincount would read the largest label back on a GPU
    return sums, squares, counts


def targets_from_sums(
    anchors: torch.Tensor,
    sums: torch.Tensor,
    squares: torch.Tensor,
    counts: torch.Tensor,
    own: torch.Tensor,
    *,
    min_neighbors: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 1 from each anchor's class sums over its pool (Σa (B, D), Σa² (B, D), count (B,)), after taking out
    its `own` (B,) entries, which equal the anchor: (μ (B, D), Σ (B, D), valid (B,)) in the anchors' dtype."""
    # paper is silent on how few neighbours are too few; we take 2, below which Σ is 0 (stg.min_neighbors)
    # float64 accumulation: E[a²] − E[a]² cancels badly in float32 (and in TF32 matmuls) when |a| >> spread
    anchors64 = anchors.detach().double()  # (B, D)
    own64 = own.double().unsqueeze(1)  # (B, 1)
    k = counts.double().unsqueeze(1) - own64  # (B, 1) neighbours
    valid = k.squeeze(1) >= max(min_neighbors, 1)  # (B,)
    k = k.clamp_min(1.0)
    neighbor_mean = (sums - own64 * anchors64) / k  # (B, D)
    # mean_j (μ_i − (a_j − a_i))² = variance of the neighbours a_j themselves, since μ_i + a_i is their mean
    var = ((squares - own64 * anchors64.square()) / k - neighbor_mean.square()).clamp_min(0.0)  # (B, D)
    mu = neighbor_mean - anchors64  # (B, D)
    keep = valid[:, None]
    mu = torch.where(keep, mu, torch.zeros_like(mu)).to(anchors.dtype)
    var = torch.where(keep, var, torch.zeros_like(var)).to(anchors.dtype)
    return mu, var, valid


class SmoothedTargets:
    """Average each sample's target over iterations so one odd batch can't swing it (paper: "smoothly update")."""

    def __init__(self, num_samples: int, dim: int, momentum: float, device: torch.device | str,
                 dtype: torch.dtype = torch.float32) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        # paper is silent on the averaging rule; we take an exponential moving average (stg.smoothing)
        self.momentum = momentum
        rows = num_samples if momentum > 0 else 0  # momentum 0 never reads the store, so don't hold N×D twice
        # stored in `dtype` (stg.target_storage: float16 halves 2 x N x D), blended in the targets' own dtype
        self.mu = torch.zeros(rows, dim, device=device, dtype=dtype)  # (N, D)
        self.var = torch.zeros(rows, dim, device=device, dtype=dtype)  # (N, D)
        self.seen = torch.zeros(rows, dtype=torch.bool, device=device)  # (N,)

    @torch.no_grad()
    def update(
        self, ids: torch.Tensor, mu: torch.Tensor, var: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blend this iteration's targets into each sample's running value and return the smoothed targets."""
        if self.momentum == 0:
            return mu, var
        first = ~self.seen[ids]  # (B,)
        keep_new = (first | ~valid)[:, None]  # (B, 1): first sighting stores raw; invalid rows pass through
        m = self.momentum
        mu_smoothed = torch.where(keep_new, mu, m * self.mu[ids].to(mu.dtype) + (1 - m) * mu)  # (B, D)
        var_smoothed = torch.where(keep_new, var, m * self.var[ids].to(var.dtype) + (1 - m) * var)  # (B, D)
        # every row of the batch written back, invalid ones unchanged: a boolean mask would be a host sync
        stored = valid[:, None]
        self.mu[ids] = torch.where(stored, mu_smoothed.to(self.mu.dtype), self.mu[ids])
        self.var[ids] = torch.where(stored, var_smoothed.to(self.var.dtype), self.var[ids])
        self.seen[ids] = self.seen[ids] | valid
        return mu_smoothed, var_smoothed

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors, so a checkpoint loads with weights_only=True."""
        return {"mu": self.mu, "var": self.var, "seen": self.seen}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the running values in place, on this object's device."""
        for name in ("mu", "var", "seen"):
            mine = getattr(self, name)
            if state[name].shape != mine.shape:
                raise ValueError(f"smoothed targets {name}: shape {tuple(state[name].shape)} != {tuple(mine.shape)}")
            mine.copy_(state[name])  # a checkpoint of the other storage dtype converts


def stg_loss(
    pred_mu: torch.Tensor,
    pred_var: torch.Tensor,
    target_mu: torch.Tensor,
    target_var: torch.Tensor,
    valid: torch.Tensor,
    *,
    kind: Literal["mse", "kl"],
    mu_weight: float = 1.0,
    var_weight: float = 1.0,
) -> torch.Tensor:
    """Regress the predicted Gaussian onto the ground truth, averaged over anchors that have ground truth."""
    # paper is silent on the regression loss (stg.loss); both are averaged over dimensions, not summed,
    # so the scale (and Adam's lr) doesn't depend on D
    if kind == "mse":
        mu_term = (pred_mu - target_mu).square()  # (B, D)
        var_term = (pred_var - target_var).square()  # (B, D)
    elif kind == "kl":
        # KL(N(target) ‖ N(pred)) split into its mean part and its variance part, each weighted
        target_var = target_var.clamp_min(TARGET_VAR_FLOOR)
        mu_term = 0.5 * (target_mu - pred_mu).square() / pred_var  # (B, D)
        var_term = 0.5 * (torch.log(pred_var / target_var) + target_var / pred_var - 1.0)  # (B, D)
    else:
        raise ValueError(f"unknown STG loss {kind!r}; known: mse, kl")
    per_anchor = (mu_weight * mu_term + var_weight * var_term).mean(dim=1)  # (B,)
    per_anchor = torch.where(valid, per_anchor, torch.zeros_like(per_anchor))
    return per_anchor.sum() / valid.sum().clamp_min(1)
