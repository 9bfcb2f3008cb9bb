"""`augment.scope: tail` for the augmenters that change every class as their authors ran them (noise, dropout,
ISDA): the same augmenter, its changes kept on the STG's tail classes only, so that it is compared with the STG
on the samples the STG changes. The STG keeps to its scope itself."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ltstg.errors import LtstgError

if TYPE_CHECKING:
    import torch

    from ltstg.store import Artifact


class TailOnly:
    """`inner` on the whole batch (its draws and running statistics as without a scope), head samples put back."""

    def __init__(self, inner: Any, head_classes: torch.Tensor, num_classes: int) -> None:
        import torch

        self.inner = inner
        self.is_tail = torch.ones(num_classes, dtype=torch.bool, device=head_classes.device)  # (C,)
        self.is_tail[head_classes.long()] = False

    def augment(self, features: torch.Tensor, labels: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        import torch

        augmented = self.inner.augment(features, labels, generator=generator)  # (B, D)
        tail = self.is_tail.to(labels.device)[labels].unsqueeze(1)  # (B, 1)
        return torch.where(tail, augmented, features)

    def __getattr__(self, name: str) -> Any:
        """The inner augmenter's state (ISDA's running statistics), so checkpoints keep and restore it."""
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


def scoped(augmenter: Any, augment: Any, stg: Artifact | None, num_classes: int) -> Any:
    """The augmenter kept to the STG's tail where `augment.scope` is tail (the STG does that itself)."""
    if augment.name == "stg" or getattr(augment, "scope", "all") != "tail":
        return augmenter
    if stg is None:  # check_inputs refuses this first
        raise LtstgError("augment.scope tail needs the STG's head/tail split: an STG artifact (`ltstg fit-stg`).")
    return TailOnly(augmenter, stg["head_classes"], num_classes)
