"""Count the operations that make a GPU run wait for the device, on the CPU: the host reads of a tensor
(`item`, `int`, `float`, `bool`) and boolean-mask indexing (its size is only known after a `nonzero`).

`torch.cuda.set_sync_debug_mode` says the same on a GPU; this sees the ops behind it wherever the test runs.
It cannot see device-to-host copies (`.cpu()`, `.tolist()`, `.numpy()`): on the CPU they are no ops. Only
the GPU tests see those.

`LargestOutput` records the largest tensor any op made: a test can say a step never built a table of
all classes, on any device."""
from __future__ import annotations

import os
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_READS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
          "aten.masked_scatter_.default"}


def _bool_index(name: str, args: tuple) -> bool:
    if not name.startswith(("aten.index.", "aten.index_put", "aten._index_put")) or len(args) < 2:
        return False
    indices = args[1] if isinstance(args[1], (list, tuple)) else []
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


def _optimizer_step_counter() -> bool:
    """torch.optim reads its `step` counter with `.item()`; on a GPU that counter stays on the host (unless
    capturable or fused), so the read is no sync there."""
    return any(f"torch{os.sep}optim{os.sep}" in frame.filename for frame in traceback.extract_stack())


class HostSyncs(TorchDispatchMode):
    """`with HostSyncs() as syncs: ...` then `syncs.seen`: the name of every syncing op, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if (name in _READS and not (name == "aten._local_scalar_dense.default" and _optimizer_step_counter())) \
                or _bool_index(name, args):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


class LargestOutput(TorchDispatchMode):
    """The most elements any op made, so a test can say a step never built a (C, D) table (reading a few rows of
    one is an index op whose output has those rows only)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inplace_on_state = str(func).startswith(("aten.index_put_", "aten._index_put_impl_"))
        if not inplace_on_state:  # writing rows into the table returns the table itself
            tensors = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            self.largest = max([self.largest] + [t.numel() for t in tensors if t is not None])
        return out
