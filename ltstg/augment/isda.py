"""Class-level Gaussian augmentation (ISDA-style), the baseline STG's per-sample Gaussians replace."""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ltstg.errors import LtstgError
from ltstg.methods import Settings, register_augmenter, scope_field

if TYPE_CHECKING:
    import torch

    from ltstg.data.features import TrainingFeatures
    from ltstg.store import Artifact


class IsdaAugment(Settings):
    name: Literal["isda"] = "isda"
    scope: Literal["tail", "all"] = scope_field("all")
    lam: float = Field(0.5, ge=0, description="strength λ of the class-conditional Gaussian (running diagonal covariance)")


class IsdaAugmenter:
    """a + sqrt(lam * Sigma_y) * eps with Sigma_y a running diagonal covariance of class y.

    ISDA (Wang et al., 2019) minimises an upper bound of the expected loss instead of sampling; we
    sample explicitly so every augmenter shares one interface, and keep lam constant (ISDA anneals
    lam0 * epoch / epochs; a caller may set `lam` between epochs). The paper does not say which it used.
    """

    def __init__(self, num_classes: int, dim: int, *, lam: float = 0.5, device: torch.device | str = "cpu") -> None:
        import torch

        if num_classes < 1 or dim < 1:
            raise LtstgError(f"ISDA needs num_classes >= 1 and dim >= 1, got {num_classes} and {dim}.")
        if not lam >= 0:
            raise LtstgError(f"ISDA lam must be >= 0, got {lam}.")
        self.lam = float(lam)
        # float64 statistics: a long run merges many batches and the sums must not drift.
        self.means = torch.zeros(num_classes, dim, dtype=torch.float64, device=device)  # (C, D)
        self.vars = torch.zeros(num_classes, dim, dtype=torch.float64, device=device)  # (C, D), population variance
        self.counts = torch.zeros(num_classes, dtype=torch.long, device=device)  # (C,)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Merge one batch's per-class moments into the running ones (Chan et al.), exact for any batching.

        Only the rows of the classes in the batch are read and written: O(B·D) per step, not O(C·D) (at
        iNaturalist's 8,142 classes the whole table is 133 MB of float64). Finding them is one host sync on a GPU.
        """
        import torch

        values = features.detach().to(self.means.device, torch.float64, copy=True)  # (B, D), changed in place below
        present, slot = torch.unique(labels.to(self.means.device), return_inverse=True)  # (U,), (B,)
        batch_counts = torch.bincount(slot, minlength=present.numel())  # (U,), all > 0
        batch_n = batch_counts.double().unsqueeze(1)  # (U, 1)
        batch_means = values.new_zeros(present.numel(), values.shape[1]).index_add_(0, slot, values).div_(batch_n)
        centred = values.sub_(batch_means[slot])  # `values` is this step's own float64 copy
        batch_m2 = values.new_zeros(batch_means.shape).index_add_(0, slot, centred.square_())  # (U, D)

        old_n = self.counts[present].double().unsqueeze(1)  # (U, 1)
        total = old_n + batch_n
        old_means = self.means[present]
        delta = batch_means.sub_(old_means)  # (U, D), in place: every step's (U, D) pass counts at 2048-d
        # Chan et al.: M2 = M2_old + M2_batch + δ² · n_old · n_batch / n, then the population variance M2 / n
        m2 = self.vars[present].mul_(old_n).add_(batch_m2).addcmul_(delta.square(), old_n * batch_n / total)
        self.vars[present] = m2.div_(total)
        self.means[present] = old_means.addcmul_(delta, batch_n / total)
        self.counts[present] += batch_counts

    def augment(self, features: torch.Tensor, labels: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Update with the original batch first, then sample, so a class's first batch is already covered."""
        import torch

        self.update(features, labels)
        variance = self.vars[labels.to(self.vars.device)].to(features.device, features.dtype)  # (B, D)
        noise = torch.randn(features.shape, generator=generator, device=features.device, dtype=features.dtype)
        return features + (self.lam * variance).sqrt() * noise

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The running statistics, so a resumed retrain continues with the same covariances."""
        return {"means": self.means.clone(), "vars": self.vars.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore statistics saved by `state_dict`, refusing ones built for another shape."""
        import torch

        expected = {"means": self.means, "vars": self.vars, "counts": self.counts}
        if set(state) != set(expected):
            raise LtstgError(f"ISDA state must have keys {sorted(expected)}, got {sorted(state)}.")
        for key, current in expected.items():
            if tuple(state[key].shape) != tuple(current.shape):
                raise LtstgError(
                    f"ISDA state {key!r} has shape {tuple(state[key].shape)}, expected {tuple(current.shape)}; "
                    "it was saved for another number of classes or feature size."
                )
        self.means = state["means"].to(self.means.device, torch.float64).clone()
        self.vars = state["vars"].to(self.vars.device, torch.float64).clone()
        self.counts = state["counts"].to(self.counts.device, torch.long).clone()


@register_augmenter(IsdaAugment, label="ISDA", no_op="lam", position=2)
def build(settings: IsdaAugment, inputs: TrainingFeatures, stg: Artifact | None, device: torch.device) -> IsdaAugmenter:
    return IsdaAugmenter(num_classes=inputs.num_classes, dim=inputs.dim, lam=settings.lam, device=device)
