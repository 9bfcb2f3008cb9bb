"""FIFO memory of recent head-class features, so ground truth sees more same-class samples than one batch holds."""
from __future__ import annotations

import torch
from torch import nn


class MemoryBank(nn.Module):
    """Ring buffer of the last `size` (feature, label, sample id) triples; buffers follow .to() and state_dict.

    With `num_classes` and `num_samples` it also keeps what fit-stg's ground truth reads of it, updated as
    entries come and go: per class the sum of the features, of their squares and the count (C, D), (C, D),
    (C,) in float64, and per sample id its number of entries (N,). A step then costs O(B·D) whatever the
    size, so the memory can hold enough neighbours for every head class. They are rebuilt from the ring after
    a checkpoint is loaded and by `rebuild` (fit-stg: every epoch, which also bounds float drift).
    """

    def __init__(self, size: int, num_features: int, *, num_classes: int = 0, num_samples: int = 0) -> None:
        super().__init__()
        if size < 0:
            raise ValueError(f"memory size must be >= 0, got {size}")
        self.size = size
        self.register_buffer("features", torch.zeros(size, num_features))  # (M, D)
        self.register_buffer("labels", torch.zeros(size, dtype=torch.long))  # (M,)
        self.register_buffer("sample_ids", torch.zeros(size, dtype=torch.long))  # (M,)
        # pointer = slot the next entry goes to; count = filled slots. Tensors, so a resumed run continues exactly.
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.tracked = num_classes > 0
        # derived from the ring, so not in checkpoints (older ones load as they are)
        self.register_buffer("class_sums", torch.zeros(num_classes, num_features, dtype=torch.float64), persistent=False)
        self.register_buffer("class_squares", torch.zeros(num_classes, num_features, dtype=torch.float64),
                             persistent=False)
        self.register_buffer("class_counts", torch.zeros(num_classes, dtype=torch.long), persistent=False)
        self.register_buffer("copies", torch.zeros(num_samples if self.tracked else 0, dtype=torch.long),
                             persistent=False)
        # the same count on the host, so `contents` needs no device sync; None until read once (after a load)
        self._filled: int | None = 0
        self.register_load_state_dict_post_hook(lambda module, incompatible: module._loaded())

    def _loaded(self) -> None:
        self._filled = None
        if self.tracked:
            self.rebuild()

    @torch.no_grad()
    def push(self, features: torch.Tensor, labels: torch.Tensor, sample_ids: torch.Tensor) -> None:
        """Append a batch, overwriting the oldest entries; stays on the device (no host sync)."""
        if self.size == 0:
            return
        # a batch larger than the bank keeps only its newest `size` rows
        features, labels, sample_ids = features[-self.size:], labels[-self.size:], sample_ids[-self.size:]
        n = features.shape[0]
        slots = (self.pointer + torch.arange(n, device=self.pointer.device)) % self.size  # (n,)
        if self.tracked:  # out with the entries overwritten (only filled slots count), in with the new ones
            filled = (slots < self.count).to(torch.float64)  # (n,) the ring fills slot 0, 1, ... first
            self._count(self.features[slots], self.labels[slots], self.sample_ids[slots], -filled)
            self._count(features, labels, sample_ids, torch.ones_like(filled))
        self.features[slots] = features.detach().to(self.features.dtype)
        self.labels[slots] = labels.to(torch.long)
        self.sample_ids[slots] = sample_ids.to(torch.long)
        self.pointer.copy_((self.pointer + n) % self.size)
        self.count.copy_((self.count + n).clamp(max=self.size))
        if self._filled is not None:
            self._filled = min(self._filled + n, self.size)

    def _count(self, features: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, sign: torch.Tensor) -> None:
        """Add (sign 1) or take out (sign -1; 0 for an empty slot) entries from the per-class sums."""
        values = features.detach().double() * sign[:, None]  # (n, D)
        self.class_sums.index_add_(0, labels, values)
        self.class_squares.index_add_(0, labels, values * features.detach().double())
        self.class_counts.index_add_(0, labels, sign.long())
        self.copies.index_add_(0, ids, sign.long())

    @torch.no_grad()
    def rebuild(self) -> None:
        """The per-class sums and per-id counts recomputed from the entries held: O(M·D)."""
        features, labels, ids = self.contents()
        for table in (self.class_sums, self.class_squares, self.class_counts, self.copies):
            table.zero_()
        self._count(features, labels, ids, torch.ones(labels.numel(), dtype=torch.float64, device=labels.device))

    def contents(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The filled entries, oldest first."""
        if self._filled is None:  # one sync after a checkpoint was loaded, then none
            self._filled = int(self.count)
        count = self._filled
        # the oldest entry sits `count` slots behind the pointer
        order = (self.pointer - count + torch.arange(count, device=self.pointer.device)) % max(self.size, 1)  # (n,)
        return self.features[order], self.labels[order], self.sample_ids[order]
