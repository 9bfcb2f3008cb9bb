"""Sample-specific semantic transformation augmentation for tail classes (paper Sec. 3.4, Eq. 3-4)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import Field

from ltstg.errors import LtstgError
from ltstg.methods import Settings, register_augmenter, scope_field

if TYPE_CHECKING:
    import torch

    from ltstg.data.features import TrainingFeatures
    from ltstg.store import Artifact

Predict = Callable[["torch.Tensor", "torch.Tensor"], tuple["torch.Tensor", "torch.Tensor"]]
MU_MODES = ("eq3", "relative", "zero")  # how μ enters the shift; StgAugment.mu in the recipe
BORROW_CHUNK = 8192  # rows per nearest-prototype lookup, so (N, H) similarities never sit in memory at once


class StgAugment(Settings):
    name: Literal["stg"] = "stg"
    scope: Literal["tail", "all"] = scope_field("tail")
    lam: float = Field(1.5, ge=0, description="global strength λ")
    t: float = Field(0.5, gt=0, lt=1, description="a dimension keeps the original value where m > t")
    mu: Literal["eq3", "relative", "zero"] = Field(
        "eq3",
        description="eq3: the paper's shift a + (√Σε + μ)λβ; relative: μ minus the borrowed head mean's offset from "
        "the sample's own class mean, so the shift stays around its class; zero: Σ only (μ = 0)",
    )


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
        scope: str = "tail",
    ) -> None:
        import torch

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
        if scope not in ("tail", "all"):
            raise LtstgError(f"STG scope must be tail or all, got {scope!r}.")
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
        # the classes whose samples are shifted: the tail (the paper), or with scope all every class, a head
        # sample then borrowing from its nearest head class (often its own)
        self.changed = self.is_tail if scope == "tail" else torch.ones_like(self.is_tail)

    def borrowed(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which head class each feature borrows a token from, and the cosine that chose it (Table 5 reports)."""
        from ltstg.models.prototypes import nearest_prototype

        index, cosine = nearest_prototype(features, self.prototypes.to(features.device, features.dtype))
        return self.head_classes.to(features.device)[index], cosine

    def augment(self, features: torch.Tensor, labels: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Eq. 3-4 on tail samples (every sample with scope all); head samples come back unchanged since the STG
        was fit on them."""
        import torch

        from ltstg.models.prototypes import nearest_prototype

        if features.dim() != 2 or labels.shape != features.shape[:1]:
            raise LtstgError(
                f"augment takes features (B, D) and labels (B,), got {tuple(features.shape)} and {tuple(labels.shape)}."
            )
        out = features.clone()
        changed = self.changed.to(labels.device)[labels]  # (B,)
        rows = torch.nonzero(changed).flatten()
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


def stg_arguments(
    stg: Artifact,
    augment: Any,
    class_counts: torch.Tensor,
    device: torch.device | str,
    *,
    features: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, Any]:
    """StgAugmenter's arguments: the trained STG (eval mode), its head classes and prototypes, and the
    classes' counts (and, for the relative shift, training means); shared by retrain, the API and inspect."""
    import torch

    from ltstg.models.prototypes import class_means
    from ltstg.models.stg import load_stg, stg_problems

    problems = stg_problems(stg, class_counts.numel(), stg.info.get("num_features", -1))
    if problems:
        raise LtstgError("\n".join(problems))
    means = None
    if augment.mu == "relative":  # only the relative shift needs every class's mean (a loop over C)
        if features is None or labels is None:
            raise LtstgError("STG mu 'relative' needs the training features (a features artifact) for the class means.")
        means = class_means(features.to(device, torch.float32), labels.to(device), torch.arange(class_counts.numel()))
    return {
        "predict": load_stg(stg, device),
        "prototypes": stg["head_prototypes"].to(device, torch.float32),
        "head_classes": stg["head_classes"].to(device, torch.long),
        "class_counts": class_counts.to(device, torch.long),
        "lam": augment.lam,
        "t": augment.t,
        "mu": augment.mu,
        "class_means": means,
        "scope": augment.scope,
    }


def checks(settings: Any, features: Artifact, stg: Artifact | None) -> list[str]:
    """The stg artifact must fit these features and leave a tail, or the run would be plain cRT."""
    from ltstg.models.stg import stg_problems

    train = features["train_features"]
    return stg_problems(stg, features["class_counts"].numel(), train.shape[1] if train.dim() == 2 else -1)


def borrowed(augmenter: StgAugmenter, inputs: TrainingFeatures) -> dict[str, torch.Tensor]:
    """The head class each training sample borrows and its cosine; -1 and NaN for the samples it leaves as they are
    (head samples, unless its scope is all)."""
    import torch

    heads, cosines = [], []
    with torch.no_grad():
        for chunk in torch.split(inputs.features, BORROW_CHUNK):
            head, cosine = augmenter.borrowed(chunk)
            heads.append(head)
            cosines.append(cosine)
    tail = augmenter.changed.to(inputs.labels.device)[inputs.labels]  # (N,)
    head = torch.where(tail, torch.cat(heads), torch.full_like(tail, -1, dtype=torch.long))  # (N,)
    cosine = torch.where(tail, torch.cat(cosines), torch.full_like(tail, float("nan"), dtype=torch.float32))  # (N,)
    return {"borrowed_head": head.cpu(), "borrowed_cosine": cosine.cpu()}


@register_augmenter(StgAugment, label="STG", no_op="lam", checks=checks, outputs=borrowed, position=1)
def build(settings: StgAugment, inputs: TrainingFeatures, stg: Artifact | None, device: torch.device) -> StgAugmenter:
    if stg is None:  # check_inputs refuses this first; kept for callers that build directly
        from ltstg.models.stg import stg_problems

        raise LtstgError("\n".join(stg_problems(stg, inputs.num_classes, inputs.dim)))
    return StgAugmenter(
        **stg_arguments(stg, settings, inputs.class_counts, device, features=inputs.features, labels=inputs.labels)
    )
