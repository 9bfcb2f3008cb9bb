"""The Semantic Transformation Generator: feature + class token in, a Gaussian over shifts out (paper Eq. 2)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

VAR_FLOOR = 1e-6  # keeps Σ strictly positive even where softplus/exp underflow to 0


def _mlp(num_features: int, hidden: int, depth: int) -> nn.Sequential:
    """Linear-BN-ReLU blocks then a Linear back to D, the paper's "MLP with batch normalization and ReLU"."""
    layers: list[nn.Module] = []
    width = num_features
    for _ in range(depth - 1):
        layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, num_features))
    return nn.Sequential(*layers)


class SemanticTransformationGenerator(nn.Module):
    """Predict a per-sample diagonal Gaussian of semantic shifts, so tail samples can borrow head-class variety."""

    def __init__(
        self,
        num_features: int,
        num_tokens: int,
        *,
        hidden: int = 256,
        depth: int = 2,
        token_std: float = 0.02,
        var_activation: Literal["softplus", "exp"] = "softplus",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if var_activation not in ("softplus", "exp"):
            raise ValueError(f"unknown var_activation {var_activation!r}; known: softplus, exp")
        self.num_features = num_features
        self.var_activation = var_activation
        # paper: tokens "initiated by the normal distribution"; the std is ours (stg.token_std).
        # Token k belongs to the k-th head class.
        self.tokens = nn.Parameter(torch.empty(num_tokens, num_features))  # (T, D)
        nn.init.normal_(self.tokens, std=token_std)
        # paper is silent on width and depth of the two MLPs (stg.hidden, stg.depth)
        self.mu_head = _mlp(num_features, hidden, depth)
        self.var_head = _mlp(num_features, hidden, depth)

    def forward(self, features: torch.Tensor, token_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (mu, var) of the shift distribution for each feature given its (borrowed) class token."""
        inputs = features + self.tokens[token_index]  # (B, D)
        mu = self.mu_head(inputs)  # (B, D)
        raw = self.var_head(inputs)  # (B, D)
        # paper only says Σ is predicted; how it is kept positive is ours (stg.var_activation)
        if self.var_activation == "softplus":
            var = F.softplus(raw) + VAR_FLOOR  # (B, D)
        else:
            var = torch.exp(raw) + VAR_FLOOR  # (B, D), raw read as a log-variance
        return mu, var
