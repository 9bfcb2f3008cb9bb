"""Class-balanced sampling for classifier re-training (cRT, Kang et al., 2020)."""
from __future__ import annotations

import torch

from ltstg.errors import LtstgError


def class_balanced_indices(labels: torch.Tensor, num_draws: int, *, generator: torch.Generator) -> torch.Tensor:
    """Draw a class uniformly, then a sample of it uniformly, so every class is seen equally often.

    Draws are independent (with replacement), like classifier-balancing's ClassAwareSampler in
    expectation; classes absent from `labels` are never drawn. Indices live on `labels`' device.
    """
    if labels.dim() != 1 or labels.numel() == 0:
        raise LtstgError(f"class-balanced sampling needs a non-empty 1-D label tensor, got shape {tuple(labels.shape)}.")
    if num_draws < 0:
        raise LtstgError(f"class-balanced sampling needs num_draws >= 0, got {num_draws}.")
    device = labels.device
    order = torch.argsort(labels, stable=True)  # (N,), sample indices grouped by class
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)  # (K,) for the K present classes
    starts = torch.cumsum(counts, dim=0) - counts  # (K,)
    classes = torch.randint(counts.numel(), (num_draws,), generator=generator, device=device)  # (num_draws,)
    # float64 keeps the within-class position exact for classes of up to 2^53 samples.
    within = torch.rand(num_draws, generator=generator, device=device, dtype=torch.float64)
    position = (within * counts[classes]).long().clamp_max(counts[classes] - 1)
    return order[starts[classes] + position]


class ClassAwareSampler:
    """Kang et al.'s ClassAwareSampler, which MiSLAS reuses: classes come in shuffled cycles, each pick yields
    `per_class` consecutive samples of that class, and a class's samples come in shuffled cycles of their
    own, so within a class none repeats until all were drawn. Its position carries over from one epoch to
    the next as the published sampler's iterators do; `state_dict` keeps it in a checkpoint.

    Deterministic per generator; indices live on `labels`' device. Classes absent from `labels` are never drawn.
    """

    def __init__(self, labels: torch.Tensor, per_class: int, *, generator: torch.Generator) -> None:
        if labels.dim() != 1 or labels.numel() == 0:
            raise LtstgError(f"class-aware sampling needs a non-empty 1-D label tensor, got shape {tuple(labels.shape)}.")
        if per_class < 1:
            raise LtstgError(f"class-aware sampling needs samples_per_class >= 1, got {per_class}.")
        self.device, self.per_class, self.generator = labels.device, per_class, generator
        order = torch.argsort(labels.cpu(), stable=True)  # sample indices grouped by class, ascending within it
        _, counts = torch.unique_consecutive(labels.cpu()[order], return_counts=True)
        self.members = [part.tolist() for part in torch.split(order, counts.tolist())]  # each present class's samples
        self.class_cycle, self.class_next = self._shuffled(len(self.members)), 0
        self.member_cycles = [self._shuffled(len(m)) for m in self.members]
        self.member_next = [0] * len(self.members)

    def _shuffled(self, n: int) -> list[int]:
        return torch.randperm(n, generator=self.generator, device=self.generator.device).tolist()

    def _next_class(self) -> int:
        if self.class_next == len(self.class_cycle):  # a cycle through the classes is complete: a new order
            self.class_cycle, self.class_next = self._shuffled(len(self.class_cycle)), 0
        self.class_next += 1
        return self.class_cycle[self.class_next - 1]

    def _next_member(self, k: int) -> int:
        if self.member_next[k] == len(self.member_cycles[k]):  # every sample of the class was drawn: reshuffle
            self.member_cycles[k], self.member_next[k] = self._shuffled(len(self.members[k])), 0
        self.member_next[k] += 1
        return self.members[k][self.member_cycles[k][self.member_next[k] - 1]]

    def draws(self, num_draws: int) -> torch.Tensor:
        """The next `num_draws` sample indices (one epoch); a group that the epoch's end cuts short is not
        continued, as the published generator starts its groups afresh each epoch."""
        out: list[int] = []
        while len(out) < num_draws:
            k = self._next_class()
            out.extend(self._next_member(k) for _ in range(min(self.per_class, num_draws - len(out))))
        return torch.tensor(out, dtype=torch.long, device=self.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"class_cycle": torch.tensor(self.class_cycle), "class_next": torch.tensor(self.class_next),
                 "member_next": torch.tensor(self.member_next)}
        state.update({f"member_cycle.{k}": torch.tensor(cycle) for k, cycle in enumerate(self.member_cycles)})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.class_cycle, self.class_next = state["class_cycle"].tolist(), int(state["class_next"])
        self.member_next = state["member_next"].tolist()
        self.member_cycles = [state[f"member_cycle.{k}"].tolist() for k in range(len(self.members))]
