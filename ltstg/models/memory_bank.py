"""FIFO memory of recent head-class features, so ground truth sees more same-class samples than one batch holds."""
from __future__ import annotations

import torch
from torch import nn


class MemoryBank(nn.Module):
    """Ring buffer of the last `size` (feature, label, sample id) triples; buffers follow .to() and state_dict."""

    def __init__(self, size: int, num_features: int) -> None:
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
        # the same count on the host, so `contents` needs no device sync; None until read once (after a load)
        self._filled: int | None = 0
        self.register_load_state_dict_post_hook(lambda module, incompatible: setattr(module, "_filled", None))

    @torch.no_grad()
    def push(self, features: torch.Tensor, labels: torch.Tensor, sample_ids: torch.Tensor) -> None:
        """Append a batch, overwriting the oldest entries; stays on the device (no host sync)."""
        if self.size == 0:
            return
        # a batch larger than the bank keeps only its newest `size` rows
        features, labels, sample_ids = features[-self.size:], labels[-self.size:], sample_ids[-self.size:]
        n = features.shape[0]
        slots = (self.pointer + torch.arange(n, device=self.pointer.device)) % self.size  # (n,)
        self.features[slots] = features.detach().to(self.features.dtype)
        self.labels[slots] = labels.to(torch.long)
        self.sample_ids[slots] = sample_ids.to(torch.long)
        self.pointer.copy_((self.pointer + n) % self.size)
        self.count.copy_((self.count + n).clamp(max=self.size))
        if self._filled is not None:
            self._filled = min(self._filled + n, self.size)

    def contents(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The filled entries, oldest first."""
        if self._filled is None:  # one sync after a checkpoint was loaded, then none
            self._filled = int(self.count)
        count = self._filled
        # the oldest entry sits `count` slots behind the pointer
        order = (self.pointer - count + torch.arange(count, device=self.pointer.device)) % max(self.size, 1)  # (n,)
        return self.features[order], self.labels[order], self.sample_ids[order]
