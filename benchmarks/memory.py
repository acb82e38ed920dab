"""Memory figures: what autograd keeps alive for backward (every device), and the peak
allocation of a call (CUDA, from the caching allocator)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch


@dataclass
class Saved:
    total_bytes: int  # every distinct storage the graph keeps for backward
    beyond_inputs_bytes: int  # the same without storages of the inputs (alive anyway)


def saved_tensor_bytes(forward: Callable[[], object], inputs: Iterable[torch.Tensor]) -> Saved:
    """Run ``forward()`` with saved-tensor hooks and sum the storages it saves.

    Storages are counted once each (a view saves its whole storage alive); the result of
    ``forward`` is dropped before returning, so only the figure survives."""
    storages = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[(t.device, storage.data_ptr())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    own = {(x.device, x.untyped_storage().data_ptr()) for x in inputs}
    total = sum(storages.values())
    return Saved(total, total - sum(n for k, n in storages.items() if k in own))


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Peak bytes allocated during ``fn()`` above what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del out
    return peak
