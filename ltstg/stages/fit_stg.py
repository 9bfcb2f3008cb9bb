"""Stage 2: learn the Semantic Transformation Generator on frozen head-class features (paper Sec. 3.3).

Each step takes a mini-batch of head features, builds per-sample ground truth (μ_i, diag Σ_i) from
the other same-class features in the batch and in a FIFO memory of recent features (Eq. 1), smooths
it per sample across iterations, and regresses s(a_i + p_{y_i}) onto it (Eq. 2). Tail classes never
take part. Each epoch ends with a checkpoint (paced once writing one takes seconds), so a killed run
continues where it stopped.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ltstg.data.balanced import class_balanced_indices
from ltstg.errors import LtstgError
from ltstg.stages.finite import Diverged, diverged
from ltstg.models.memory_bank import MemoryBank
from ltstg.models.prototypes import class_means
from ltstg.models.stg import SemanticTransformationGenerator, build_stg
from ltstg.models.stg_targets import SmoothedTargets, class_sums, stg_loss, targets_from_sums, transformation_targets
from ltstg.recipe import StgSettings, machine_memory_bytes
from ltstg.progress import Progress, silent
from ltstg.stages import Checkpoint, Output, Stateful, keep, require_kind, resume
from ltstg.store import SHORT, Artifact

REPORT_EVERY = 10  # steps between progress reports (each one reads the loss back from the device)
FALLBACK = "fell back to the larger half of the classes, as fewer than two classes have more"
MIN_ANCHOR_SHARE = 0.5  # below this, most head samples never train the STG: said, and kept in the artifact
PAPER_MEMORY = 1200  # the paper's m (its Table 6: 0, 600, 1200; larger was better)
EXPECTED_ENTRIES = 8  # entries of its least drawn head class that `memory: auto` expects to hold: P(>= 2) = 0.997
CHECKPOINT_PACE = 20  # a slow epoch checkpoint waits until 20x the last one's writing time has passed: <= 5% writing
QUICK_WRITE = 1.0  # seconds: a checkpoint written faster than this is written every epoch


@dataclass(frozen=True)
class _Head:
    """The head-class training features, split into the part that trains the STG and the held-out part."""

    head: torch.Tensor  # (H,) class ids, ascending
    class_names: list[str]
    head_names: list[str]  # (H,)
    num_classes: int
    features: torch.Tensor  # (N_head, D), held-out rows included: the one copy, indexed by the rows below
    tokens: torch.Tensor  # (N_head,)
    train_rows: torch.Tensor  # (N_train,) rows of `features` that train the STG
    held_rows: torch.Tensor  # (N_held,) rows kept out to measure it
    split: str  # the split rule in words, as it was applied

    @property
    def num_tokens(self) -> int:
        return self.head.numel()

    @property
    def train_t(self) -> torch.Tensor:
        return self.tokens[self.train_rows]  # (N_train,)

    @property
    def tail(self) -> list[int]:
        head_set = set(self.head.tolist())
        return [c for c in range(self.num_classes) if c not in head_set]


@dataclass(frozen=True)
class _Fit:
    """What one epoch of STG training reads and updates."""

    settings: StgSettings
    features: torch.Tensor  # (N_head, D)
    train_rows: torch.Tensor  # (N_train,): a sample id is a position in it
    train_t: torch.Tensor  # (N_train,)
    device: torch.device
    model: SemanticTransformationGenerator
    optimizer: torch.optim.Optimizer
    memory: MemoryBank
    smoothed: SmoothedTargets
    generator: torch.Generator
    progress: Progress

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.train_rows.numel() / self.settings.batch_size)

    @property
    def total_steps(self) -> int:
        return self.settings.epochs * self.steps_per_epoch

    def stateful(self) -> Stateful:
        """The checkpoint's objects, under the names checkpoints have always used."""
        return {"stg": self.model, "optimizer": self.optimizer, "memory": self.memory, "targets": self.smoothed}


def fit_stg(
    settings: StgSettings,
    features: Artifact,
    *,
    seed: int,
    device: torch.device,
    generator: torch.Generator,
    progress: Progress = silent,
    checkpoint: Checkpoint | None = None,
) -> Output:
    """Learn per-sample shift distributions on head classes only, so tail samples can borrow them later."""
    settings = with_memory_size(settings, features["class_counts"])
    data = _head_data(settings, features, device, generator)
    fit = _setup(settings, data, seed=seed, device=device, generator=generator, progress=progress)
    start_epoch, saved = resume(checkpoint, fit.stateful(), generator, epochs=settings.epochs)
    curve = [float(x) for x in saved.get("curve", [])]
    anchor_shares = [float(x) for x in saved.get("anchor_shares", [])]  # absent in checkpoints before it existed
    pace = _CheckpointPace()
    for epoch in range(start_epoch, settings.epochs):
        loss, anchor_share = fit_one_epoch(fit, epoch)
        stop = diverged("fit-stg", epoch, loss, "lower stg.lr, or keep the targets in float32 (stg.target_storage), "
                        "since float16 overflows above 65504.")
        if stop:
            raise Diverged(stop)
        curve.append(loss)
        anchor_shares.append(anchor_share)  # the share of training samples that trained as anchors
        if epoch + 1 < settings.epochs and pace.due():  # the last epoch's state is the artifact itself
            with pace.writing():
                keep(checkpoint, fit.stateful(), generator, epoch=epoch, curve=curve, anchor_shares=anchor_shares)
        progress("fit-stg", (epoch + 1) * fit.steps_per_epoch, fit.total_steps, epoch=epoch + 1, loss=curve[-1])
    return _stg_output(settings, data, fit.model, curve, anchor_shares)


class _CheckpointPace:
    """When an epoch ends with a checkpoint: while writing one takes under QUICK_WRITE, every epoch; once it does
    not (the running targets are 2 x N x D: gigabytes at iNaturalist), only when CHECKPOINT_PACE times the last
    write's time has passed since it, so writing takes at most 1 / CHECKPOINT_PACE of the run. A resume from
    any epoch gives the same STG, so this changes what a kill costs, never the result."""

    def __init__(self, clock: Any = time.perf_counter) -> None:
        self.clock = clock
        self.last_end = clock()
        self.last_took = 0.0

    def due(self) -> bool:
        return self.last_took < QUICK_WRITE or self.clock() - self.last_end >= CHECKPOINT_PACE * self.last_took

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        started = self.clock()
        yield
        self.last_end = self.clock()
        self.last_took = self.last_end - started


def _head_data(settings: StgSettings, features: Artifact, device: torch.device, generator: torch.Generator) -> _Head:
    """Checked head-class features on `device`, with the seeded hold-out drawn from `generator`."""
    train_features, train_labels, class_counts = _checked_inputs(features)
    head = select_head_classes(class_counts, settings)  # (H,)
    token_of_class = torch.full((class_counts.numel(),), -1, dtype=torch.long)  # (C,)
    token_of_class[head] = torch.arange(head.numel())
    head_rows = torch.nonzero(token_of_class[train_labels] >= 0).flatten()  # (N_head,), ascending
    # only head rows ever leave this point: tail features (whatever they hold) cannot reach the STG
    head_features = train_features[head_rows].to(device=device, dtype=torch.float32)  # (N_head, D)
    head_tokens = token_of_class[train_labels[head_rows]].to(device)  # (N_head,)
    if not bool(torch.isfinite(head_features).all()):
        raise LtstgError("the features artifact has NaN or infinite head-class training features; re-extract the features.")
    class_names = list(features.info.get("class_names") or [str(c) for c in range(class_counts.numel())])
    head_names = [str(class_names[c]) for c in head.tolist()]
    held_out = _holdout_mask(head_tokens, head.numel(), settings, generator, head_names)
    return _Head(
        head, class_names, head_names, int(class_counts.numel()), head_features, head_tokens,
        torch.nonzero(~held_out).flatten(), torch.nonzero(held_out).flatten(), split_rule(settings, class_counts),
    )


def _setup(
    settings: StgSettings, data: _Head, *, seed: int, device: torch.device, generator: torch.Generator,
    progress: Progress,
) -> _Fit:
    """A fresh STG, its optimizer, the feature memory (with its per-class sums) and the smoothed targets."""
    num_train, num_features = data.train_rows.numel(), data.features.shape[1]
    model = build_stg(
        num_features, data.num_tokens, hidden=settings.hidden, depth=settings.depth, token_std=settings.token_std,
        var_activation=settings.var_activation, seed=seed,
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    _check_memory_fits(settings.memory, num_features, device)
    memory = MemoryBank(settings.memory, num_features, num_classes=data.num_tokens, num_samples=num_train).to(device)
    smoothed = SmoothedTargets(num_train, num_features, settings.smoothing, device,
                               dtype=getattr(torch, settings.target_storage))
    return _Fit(settings, data.features, data.train_rows, data.train_t, device, model, optimizer, memory, smoothed,
                generator, progress)


def _check_memory_fits(size: int, num_features: int, device: torch.device) -> None:
    """The memory's entries against what `device` holds, before the allocator fails on them with a traceback."""
    needs = size * (4 * num_features + 16)  # float32 features, int64 label and sample id
    has = torch.cuda.mem_get_info(device)[1] if device.type == "cuda" else machine_memory_bytes()
    if needs > has:
        raise LtstgError(
            f"stg.memory {size} needs {needs / 1e9:.1f} GB for its entries ({num_features} features each), more than "
            f"the {has / 1e9:.1f} GB of {device}; lower stg.memory (auto sizes it from the class counts)."
        )


def fit_one_epoch(fit: _Fit, epoch: int) -> tuple[float, float]:
    """One pass over the head training samples: (mean loss per anchor, share of samples that were anchors)."""
    settings = fit.settings
    fit.model.train()
    fit.memory.rebuild()  # its running per-class sums recomputed from what it holds: no float drift across epochs
    order = _epoch_order(fit.train_t, settings.balanced, fit.generator).to(fit.device)  # (N_train,)
    loss_sum = torch.zeros((), dtype=torch.float64, device=fit.device)
    anchors = torch.zeros((), dtype=torch.long, device=fit.device)
    trained = torch.zeros(fit.train_t.numel(), dtype=torch.bool, device=fit.device)  # anchored at least once
    shown = fit.progress is not silent  # reading the loss is a host sync: only for a reader
    for step in range(fit.steps_per_epoch):
        batch = order[step * settings.batch_size : (step + 1) * settings.batch_size]  # (B,)
        # paper is silent on a last batch of one sample; BatchNorm can't train on it, so it is skipped
        if batch.numel() < 2:
            continue
        _fit_step(fit, batch, trained, loss_sum, anchors)
        if shown and step % REPORT_EVERY == 0:
            running = float(loss_sum) / int(anchors) if int(anchors) else float("nan")
            done = epoch * fit.steps_per_epoch + step + 1
            fit.progress("fit-stg", done, fit.total_steps, epoch=epoch + 1, loss=running)
    anchors = int(anchors)
    if anchors == 0:
        raise LtstgError(
            f"no training sample of epoch {epoch + 1} found {settings.min_neighbors} same-class neighbours in "
            "its mini-batch and memory; raise stg.batch_size or stg.memory, or lower stg.min_neighbors."
        )
    return float(loss_sum) / anchors, float(trained.float().mean())


def _fit_step(fit: _Fit, batch: torch.Tensor, trained: torch.Tensor, loss_sum: torch.Tensor, anchors: torch.Tensor) -> None:
    """Regress the STG onto one batch's smoothed targets (Eq. 1-2); adds loss x anchors and anchors to the
    running sums and marks `trained`, all on the device.

    The pool of Eq. 1 is the batch and the memory: each anchor's class sums are the memory's running ones
    plus the batch's, less its own entries (O(B·D + H·D) per step, whatever the memory's size). Its one host
    sync is whether the batch has an anchor at all: without one the optimizer must not step (Adam would
    still move the weights on zero gradients)."""
    settings = fit.settings
    batch_x, batch_t, batch_ids = fit.features[fit.train_rows[batch]], fit.train_t[batch], batch  # id = position
    memory = fit.memory
    sums, squares, counts = class_sums(batch_x, batch_t, memory.class_counts.numel())  # (H, D), (H, D), (H,)
    own = (batch_ids[:, None] == batch_ids[None, :]).sum(dim=1) + memory.copies[batch_ids]  # (B,)
    target_mu, target_var, valid = targets_from_sums(
        batch_x, sums[batch_t] + memory.class_sums[batch_t], squares[batch_t] + memory.class_squares[batch_t],
        counts[batch_t] + memory.class_counts[batch_t], own, min_neighbors=settings.min_neighbors,
    )  # (B, D), (B, D), (B,)
    target_mu, target_var = fit.smoothed.update(batch_ids, target_mu, target_var, valid)
    num_valid = valid.sum()
    # a batch where no anchor has enough same-class neighbours carries no signal: no step
    if bool(num_valid):
        pred_mu, pred_var = fit.model(batch_x, batch_t)  # (B, D) each
        loss = stg_loss(
            pred_mu, pred_var, target_mu, target_var, valid,
            kind=settings.loss, mu_weight=settings.mu_weight, var_weight=settings.var_weight,
        )
        fit.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        fit.optimizer.step()
        loss_sum += loss.detach().double() * num_valid
        anchors += num_valid
        trained[batch_ids] = trained[batch_ids] | valid  # no boolean mask: that would be a host sync
    # pushed after the step, so the batch never sees itself twice in one pool
    memory.push(batch_x, batch_t, batch_ids)


def _stg_output(
    settings: StgSettings, data: _Head, model: SemanticTransformationGenerator, curve: list[float],
    anchor_shares: list[float],
) -> Output:
    """The STG's weights with its head split and prototypes, and its held-out quality next to a class-level guess."""
    model.eval()
    quality = heldout_quality(model, data.features, data.tokens, data.train_rows, data.held_rows, data.num_tokens,
                              settings.min_neighbors)
    # prototypes from every training image of the class, held-out ones included: they serve stage 3's lookup
    prototypes = class_means(data.features, data.tokens, torch.arange(data.num_tokens))  # (H, D)
    tensors = {f"stg.{name}": value.detach().cpu().clone() for name, value in model.state_dict().items()}
    tensors["head_classes"] = data.head.clone()
    tensors["head_prototypes"] = prototypes.cpu()
    tensors["curve.loss"] = torch.tensor(curve, dtype=torch.float32)  # (epochs,)
    if anchor_shares:
        tensors["curve.anchor_share"] = torch.tensor(anchor_shares, dtype=torch.float32)  # (epochs,)
    tail = data.tail
    metrics = {
        "train_loss": curve[-1], "num_head_classes": float(data.num_tokens), "num_tail_classes": float(len(tail)),
        **quality,
    }
    if anchor_shares:
        metrics["anchor_share"] = anchor_shares[-1]
    key_metric = "heldout_gain" if quality else "train_loss"
    return Output("stg", tensors, metrics, _stg_info(settings, data), key_metric=key_metric,
                  notes=_stg_notes(settings, data, anchor_shares))


def _stg_info(settings: StgSettings, data: _Head) -> dict[str, Any]:
    tail = data.tail
    return {
        "split": data.split,
        "head_classes": data.head.tolist(),
        "head_class_names": data.head_names,
        "tail_classes": tail,
        "tail_class_names": [str(data.class_names[c]) for c in tail],
        "num_classes": data.num_classes,
        "num_features": int(data.features.shape[1]),
        "num_tokens": data.num_tokens,
        "hidden": settings.hidden,
        "depth": settings.depth,
        "var_activation": settings.var_activation,
        "token_std": settings.token_std,
        "num_train": int(data.train_rows.numel()),
        "num_heldout": int(data.held_rows.numel()),
    }


def _stg_notes(settings: StgSettings, data: _Head, anchor_shares: list[float]) -> list[str]:
    """What the user should know about this STG: a split rule that fell back, too few anchors, no tail class."""
    notes = [data.split] if FALLBACK in data.split else []
    if anchor_shares and anchor_shares[-1] < MIN_ANCHOR_SHARE:
        notes.append(
            f"only {100 * anchor_shares[-1]:.0f}% of the head training samples found {settings.min_neighbors} same-class "
            "neighbours in their mini-batch and memory in the last epoch, so the rest never trained the STG; raise "
            f"stg.memory or stg.batch_size{'' if settings.balanced else ', or set stg.balanced'}"
        )
    if not data.tail:
        notes.append(f"{data.split} makes every class head: no tail class will borrow from this STG")
    return notes


def with_memory_size(settings: StgSettings, class_counts: torch.Tensor) -> StgSettings:
    """`memory: auto` resolved for these counts: the paper's 1200, or more where a FIFO of 1200 would hold
    fewer than EXPECTED_ENTRIES entries of the least drawn head class. Its share of the draws is 1/H with
    stg.balanced, else its images over all head images; the memory is EXPECTED_ENTRIES over that share.
    At CIFAR-LT that stays 1200; at iNaturalist-2018 shape it is tens of thousands, which a step can afford
    since it reads the memory's per-class sums, not its entries."""
    if settings.memory != "auto":
        return settings
    counts = class_counts[select_head_classes(class_counts, settings)].double()  # (H,)
    share = 1 / counts.numel() if settings.balanced else float(counts.min() / counts.sum())
    return settings.model_copy(update={"memory": max(PAPER_MEMORY, math.ceil(EXPECTED_ENTRIES / share))})


def select_head_classes(class_counts: torch.Tensor, settings: StgSettings) -> torch.Tensor:
    """The head classes under the recipe's split rule (ascending ids); the others are tail.

    paper is silent on the split ("most samples belong to only a few head classes"); stg.head_rule picks it.
    Under the count rule, fewer than two head classes fall back to the larger half (DESIGN).
    """
    order = torch.sort(-class_counts, stable=True).indices  # (C,) largest first; ties keep lower ids first
    larger_half = order[: max(class_counts.numel() // 2, 1)]
    if settings.head_rule == "count":
        head = torch.nonzero(class_counts > settings.head_min_count).flatten()
        if head.numel() < 2:
            head = larger_half
    elif settings.head_rule == "share":
        cumulative = torch.cumsum(class_counts[order].double(), dim=0) / class_counts.sum()  # (C,)
        # the fewest largest classes whose images reach the share, and always at least two for the STG to contrast
        size = max(int(torch.searchsorted(cumulative, torch.tensor(settings.head_share, dtype=torch.float64))) + 1, 2)
        head = order[:size]
    else:
        head = larger_half
    return torch.sort(head).values.long()


def split_rule(settings: StgSettings, class_counts: torch.Tensor | None = None) -> str:
    """The split in words, as it applies to these counts, for the artifact, its notes and errors."""
    if settings.head_rule == "count":
        rule = f"stg.head_rule=count (more than {settings.head_min_count} training images)"
        above = None if class_counts is None else int((class_counts > settings.head_min_count).sum())
        if above is not None and above < 2:
            return f"{rule} {FALLBACK} ({above} class{'' if above == 1 else 'es'} above the count)"
        return rule
    if settings.head_rule == "share":
        return f"stg.head_rule=share (the largest classes holding {settings.head_share:g} of the training images)"
    return "stg.head_rule=half (the larger half of the classes)"


@torch.no_grad()
def heldout_quality(
    model: SemanticTransformationGenerator,
    features: torch.Tensor,
    tokens: torch.Tensor,
    train_rows: torch.Tensor,
    held_rows: torch.Tensor,
    num_tokens: int,
    min_neighbors: int,
) -> dict[str, float]:
    """MSE of the STG's (μ, Σ) on held-out head samples against full-class ground truth, next to a class-level guess.

    Ground truth of a held-out sample uses every training feature of its class (no smoothing). The trivial
    predictor gives each sample of class c the average full-class ground truth of c's training samples.
    """
    if held_rows.numel() == 0:
        return {}
    train_t, held_x, held_t = tokens[train_rows], features[held_rows], tokens[held_rows]
    pred_mu, pred_var = model(held_x, held_t)  # (N_held, D) each
    sums = torch.zeros(4, dtype=torch.float64, device=held_x.device)  # stg μ, stg Σ, trivial μ, trivial Σ
    count = 0
    for token in range(num_tokens):
        class_rows = torch.nonzero(train_t == token).flatten()
        class_held = torch.nonzero(held_t == token).flatten()
        if class_held.numel() == 0:
            continue
        pool_x = features[train_rows[class_rows]]  # (n, D): one class, so every label below is 0 of 1
        pool_t, pool_ids = torch.zeros_like(class_rows), torch.arange(class_rows.numel(), device=held_x.device)
        # each training sample's own full-class ground truth (itself excluded), averaged: the class-level guess
        own_mu, own_var, own_valid = transformation_targets(
            pool_x, pool_t, pool_ids, pool_x, pool_t, pool_ids, num_classes=1, min_neighbors=min_neighbors
        )
        class_mu = own_mu[own_valid].double().mean(dim=0)  # (D,)
        class_var = own_var[own_valid].double().mean(dim=0)  # (D,)
        held_ids = class_rows.numel() + torch.arange(class_held.numel(), device=held_x.device)  # never in the pool
        target_mu, target_var, valid = transformation_targets(
            held_x[class_held], torch.zeros_like(class_held), held_ids, pool_x, pool_t, pool_ids, num_classes=1,
            min_neighbors=min_neighbors,
        )
        target_mu, target_var = target_mu[valid].double(), target_var[valid].double()  # (k, D)
        rows = class_held[valid]
        sums[0] += (pred_mu[rows].double() - target_mu).square().sum()
        sums[1] += (pred_var[rows].double() - target_var).square().sum()
        sums[2] += (class_mu - target_mu).square().sum()
        sums[3] += (class_var - target_var).square().sum()
        count += target_mu.numel()
    if count == 0:
        return {}
    stg_mu, stg_var, trivial_mu, trivial_var = (sums / count).tolist()
    stg_total = stg_mu + stg_var
    return {
        "heldout_mu_mse": stg_mu,
        "heldout_var_mse": stg_var,
        "trivial_mu_mse": trivial_mu,
        "trivial_var_mse": trivial_var,
        "heldout_gain": (trivial_mu + trivial_var) / stg_total if stg_total > 0 else float("inf"),
    }


def _checked_inputs(features: Artifact) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shapes, label range and counts, checked before any training, so bad input fails early."""
    require_kind(features, "features")
    train_features = features["train_features"]
    train_labels = features["train_labels"]
    class_counts = features["class_counts"]
    label = f"features artifact {features.id[:SHORT]}"
    if train_features.dim() != 2 or train_features.shape[0] == 0:
        raise LtstgError(f"{label}: train_features must be a non-empty (N, D) matrix, got {tuple(train_features.shape)}.")
    if train_labels.shape != (train_features.shape[0],):
        raise LtstgError(
            f"{label}: train_labels has shape {tuple(train_labels.shape)}, expected ({train_features.shape[0]},)."
        )
    if class_counts.dim() != 1 or class_counts.numel() < 2:
        raise LtstgError(f"{label}: fit-stg needs at least 2 classes, got {class_counts.numel()}.")
    train_labels, class_counts = train_labels.long(), class_counts.long()
    if train_labels.min() < 0 or train_labels.max() >= class_counts.numel():
        raise LtstgError(f"{label}: train_labels lie outside [0, {class_counts.numel()}).")
    if not torch.equal(torch.bincount(train_labels, minlength=class_counts.numel()), class_counts):
        raise LtstgError(f"{label}: class_counts disagrees with train_labels; re-extract the features.")
    return train_features.float(), train_labels, class_counts


def _holdout_mask(
    tokens: torch.Tensor, num_tokens: int, settings: StgSettings, generator: torch.Generator, names: list[str]
) -> torch.Tensor:
    """Seeded per-class choice of held-out samples; every head class must keep enough to form an anchor."""
    held_out = torch.zeros(tokens.numel(), dtype=torch.bool, device=tokens.device)  # (N_head,)
    for token in range(num_tokens):
        members = torch.nonzero(tokens == token).flatten()
        count = members.numel()
        # paper has no held-out set; it only serves the quality report (stg.holdout)
        take = math.floor(settings.holdout * count + 1e-9)
        if settings.holdout > 0 and count >= 3:
            take = max(take, 1)
        if count - take < settings.min_neighbors + 1:
            raise LtstgError(
                f"head class {names[token]} keeps {count - take} training samples after the hold-out, too few for any "
                f"sample to have stg.min_neighbors={settings.min_neighbors} same-class neighbours; lower "
                "stg.min_neighbors or stg.holdout, or choose a split whose head classes are larger (stg.head_rule)."
            )
        if take:
            pick = torch.randperm(count, generator=generator, device=generator.device)[:take].to(members.device)
            held_out[members[pick]] = True
    return held_out


def _epoch_order(train_t: torch.Tensor, balanced: bool, generator: torch.Generator) -> torch.Tensor:
    """One epoch's sample order: a plain seeded shuffle, or class-balanced draws of the same length."""
    num_train = train_t.numel()
    if balanced:
        # paper samples plainly; class-balanced batches are our option (stg.balanced)
        return class_balanced_indices(train_t.to(generator.device), num_train, generator=generator)
    return torch.randperm(num_train, generator=generator, device=generator.device)
