"""Sample-specific semantic transformation augmentation for tail classes (paper Sec. 3.4, Eq. 3-4)."""
from __future__ import annotations

from typing import Callable

import torch

from ltstg.errors import LtstgError
from ltstg.models.prototypes import nearest_prototype

Predict = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
MU_MODES = ("eq3", "relative", "zero")  # how μ enters the shift; StgAugment.mu in the recipe


class StgAugmenter:
    """Shift each tail feature by a transformation the STG learned on its most similar head class.

    `predict(features (B, D), token_index (B,)) -> (mu (B, D), var (B, D))` is the trained STG in eval
    mode; `token_index` is a position in `head_classes`, whose rows of `prototypes` are the head means.
    """

    def __init__(
        self,
        predict: Predict,
        prototypes: torch.Tensor,
        head_classes: torch.Tensor,
        class_counts: torch.Tensor,
        *,
        lam: float = 1.5,
        t: float = 0.5,
        mu: str = "eq3",
        class_means: torch.Tensor | None = None,
    ) -> None:
        num_classes = class_counts.numel()
        if head_classes.numel() == 0:
            raise LtstgError("STG augmentation needs at least one head class; check the split (stg.head_rule).")
        if prototypes.dim() != 2 or prototypes.shape[0] != head_classes.numel():
            raise LtstgError(
                f"STG prototypes must be one row per head class: got shape {tuple(prototypes.shape)} "
                f"for {head_classes.numel()} head classes."
            )
        if head_classes.min() < 0 or head_classes.max() >= num_classes:
            raise LtstgError(f"head classes must lie in [0, {num_classes}), got {head_classes.tolist()}.")
        if (class_counts <= 0).any():
            empty = torch.nonzero(class_counts <= 0).flatten().tolist()
            # beta_y = (n_min / n_y)^(1/2) is undefined when a class has no training samples.
            raise LtstgError(f"every class needs at least one training sample for STG's beta; empty classes: {empty}.")
        if not lam >= 0:
            raise LtstgError(f"STG lam must be >= 0, got {lam}.")
        if not 0 <= t <= 1:
            raise LtstgError(f"STG threshold t must be in [0, 1], got {t}.")
        if mu not in MU_MODES:
            raise LtstgError(f"unknown STG mu mode {mu!r}; known modes: {', '.join(MU_MODES)}.")
        if mu == "relative" and (class_means is None or class_means.shape != (num_classes, prototypes.shape[1])):
            raise LtstgError(f"STG mu 'relative' needs the (C, D) training mean of every class; got {class_means}.")
        self.predict = predict
        self.prototypes = prototypes  # (H, D)
        self.head_classes = head_classes.long()  # (H,)
        self.lam = float(lam)
        self.t = float(t)
        self.mu = mu
        self.class_means = class_means  # (C, D) or None
        counts = class_counts.double()
        # n_min is over all classes, as the paper writes min(n_1, ..., n_C).
        self.beta = (counts.min() / counts).sqrt().float()  # (C,)
        self.is_tail = torch.ones(num_classes, dtype=torch.bool, device=class_counts.device)  # (C,)
        self.is_tail[self.head_classes.to(class_counts.device)] = False

    def borrowed(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which head class each feature borrows a token from, and the cosine that chose it (Table 5 reports)."""
        index, cosine = nearest_prototype(features, self.prototypes.to(features.device, features.dtype))
        return self.head_classes.to(features.device)[index], cosine

    def augment(self, features: torch.Tensor, labels: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Eq. 3-4 on tail samples; head samples come back unchanged since the STG was fit on them."""
        out = features.clone()
        tail = self.is_tail.to(labels.device)[labels]  # (B,)
        rows = torch.nonzero(tail).flatten()
        if rows.numel() == 0:
            return out
        original = features[rows]  # (T, D)
        prototypes = self.prototypes.to(features.device, features.dtype)
        token_index, _ = nearest_prototype(original, prototypes)  # (T,)
        with torch.no_grad():
            mu, var = self.predict(original, token_index)  # (T, D) each
        mu = mu.to(features.dtype)
        if self.mu == "zero":
            mu = torch.zeros_like(mu)
        elif self.mu == "relative":
            # not the paper's: μ ≈ (head mean − a) pulls a into the borrowed head class; subtracting the
            # head-to-own-class offset (m_h − m_y) keeps the sample-specific part and centres it on class y
            means = self.class_means.to(features.device, features.dtype)
            head_class = self.head_classes.to(features.device)[token_index]  # (T,)
            mu = mu - (means[head_class] - means[labels[rows]])
        std = var.to(features.dtype).clamp_min(0).sqrt()
        beta = self.beta.to(features.device, features.dtype)[labels[rows]].unsqueeze(1)  # (T, 1)
        noise = torch.randn(original.shape, generator=generator, device=features.device, dtype=features.dtype)
        augmented = original + (std * noise + mu) * self.lam * beta  # Eq. 3
        # Eq. 4 writes 1[m>t] and 1[m<t]; m == t has probability zero, we send it to the augmented side.
        draw = torch.rand(original.shape, generator=generator, device=features.device)  # m ~ U(0, 1) per dimension
        out[rows] = torch.where(draw > self.t, original, augmented)
        return out
