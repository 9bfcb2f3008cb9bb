"""The Semantic Transformation Generator: feature + class token in, a Gaussian over shifts out (paper Eq. 2)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ltstg.store import SHORT, Artifact, require_kind

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


def build_stg(
    num_features: int, num_tokens: int, *, hidden: int, depth: int, token_std: float, var_activation: str, seed: int
) -> SemanticTransformationGenerator:
    """Build on the CPU from a private seed, so the global RNG is untouched and every device starts alike."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return SemanticTransformationGenerator(
            num_features, num_tokens, hidden=hidden, depth=depth, token_std=token_std, var_activation=var_activation
        )


def load_stg(stg: Artifact, device: torch.device | str) -> SemanticTransformationGenerator:
    """Rebuild the trained STG from an stg artifact (eval mode, on `device`) for retrain and inspect."""
    require_kind(stg, "stg")
    info = stg.info
    model = build_stg(
        info["num_features"], info["num_tokens"], hidden=info["hidden"], depth=info["depth"],
        token_std=info["token_std"], var_activation=info["var_activation"], seed=0,
    )
    state = {name[len("stg."):]: value for name, value in stg.tensors.items() if name.startswith("stg.")}
    model.load_state_dict(state)
    return model.to(device).eval()


def stg_problems(stg: Artifact | None, num_classes: int, dim: int, *, needs_tail: bool = True) -> list[str]:
    """Why this stg artifact can't shift these features, if it can't; one line each, for retrain, the API and inspect."""
    if stg is None:
        return ["augment 'stg' needs an stg artifact; fit one with `ltstg fit-stg` and pass --stg ID."]
    require_kind(stg, "stg")
    label = f"stg artifact {stg.id[:SHORT]}"
    missing = [name for name in ("head_classes", "head_prototypes") if name not in stg.tensors]
    if missing:
        return [f"{label} lacks {', '.join(missing)}; refit it with this ltstg version."]
    head, prototypes = stg["head_classes"], stg["head_prototypes"]
    problems = []
    if stg.info.get("num_features") != dim or prototypes.dim() != 2 or prototypes.shape[1] != dim:
        problems.append(
            f"{label} was fit on {stg.info.get('num_features')}-dimensional features but these are {dim}-dimensional; "
            "fit the STG on the same features artifact."
        )
    if head.dim() != 1 or prototypes.shape[0] != head.numel() or head.numel() == 0:
        problems.append(
            f"{label}: head_classes {tuple(head.shape)} and head_prototypes {tuple(prototypes.shape)} disagree."
        )
    elif head.min() < 0 or head.max() >= num_classes:
        problems.append(
            f"{label}: head classes lie outside [0, {num_classes}); fit the STG on the same features artifact."
        )
    elif needs_tail and torch.unique(head).numel() == num_classes:
        split = stg.info.get("split", "its head/tail split")
        problems.append(
            f"{label}: {split} makes all {num_classes} classes head, so the STG augmenter would change no sample "
            "and the result would be plain cRT; refit with a split that leaves a tail (stg.head_rule=share or half)."
        )
    return problems
