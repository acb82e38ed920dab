"""``keyed_noise``: any columns of any rows of the noise contract, each row under its own
key -- the fused op gumbel_ext::keyed_noise (csrc/keyed_noise.cpp) where a device has it,
else the same draws in torch ops. Used by ``gumbel_softmax(seeds=)`` and by the
vocabulary-parallel functions of :mod:`gumbel_ext.distributed`, which draw the noise of
their global columns only."""

from __future__ import annotations

import torch

from . import _ops, _reference_sampler

_OP = "gumbel_ext::keyed_noise"


def _has_op(device_type: str) -> bool:
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return _ops.AVAILABLE and key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(_OP, key)


FUSED_DEVICE_TYPES = frozenset(d for d in ("cpu", "cuda") if _has_op(d))

if _ops.AVAILABLE:

    @torch.library.register_fake(_OP)
    def _keyed_noise_fake(keys, offsets, row_ctr, col_start, length):
        for t in (offsets, row_ctr):
            if t.device != keys.device:
                raise ValueError(f"gumbel_ext.keyed_noise: all tensors must be on {keys.device}, got {t.device}")
        return keys.new_empty((keys.shape[0], length), dtype=torch.float32)


def keyed_noise_reference(keys: torch.Tensor, offsets: torch.Tensor, row_ctr: torch.Tensor, col_start: int,
                          length: int) -> torch.Tensor:
    """The same draws in torch ops (its log is torch.log: equal to the fused noise within
    a few ulp, not bit for bit; Note [Noise log] in csrc/gumbel_noise.h)."""
    return _reference_sampler.keyed_noise(keys, offsets, row_ctr, length, col_start)


def keyed_noise(keys: torch.Tensor, offsets: torch.Tensor, row_ctr: torch.Tensor, col_start: int = 0,
                length: int = 0) -> torch.Tensor:
    """Float32 Gumbel noise ``[R, length]``: row j is the noise contract's row
    ``row_ctr[j]`` under key ``keys[j]`` and counter start ``offsets[j]`` (int64 tensors of
    shape [R]), at global columns ``col_start .. col_start + length - 1``."""
    if keys.device.type in FUSED_DEVICE_TYPES:
        return torch.ops.gumbel_ext.keyed_noise(keys, offsets, row_ctr, int(col_start), int(length))
    return keyed_noise_reference(keys, offsets, row_ctr, int(col_start), int(length))
