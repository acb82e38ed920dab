"""The token sampler behind ``sample(..., temperature=, top_k=, top_p=, min_p=, seeds=,
offsets=, return_logprobs=)``: argument checks, normalization of per-row arguments, and
the choice between the fused op gumbel_ext::sample_filtered and the reference. Semantics:
Note [Sampler semantics] and Note [Per-row noise keys] in csrc/cpu/sample_kernels.h."""

from __future__ import annotations

import math
import numbers
from typing import List, Optional, Tuple, Union

import torch

from . import _keyed_noise, _ops, reference

Scalar = Union[int, float, torch.Tensor, None]

_OP = "gumbel_ext::sample_filtered"
_CUDA_MAX_DRAWN = 1024  # kSamplerMaxDrawn in csrc/cuda/sample_filtered_kernels.cuh


def _fused_device_types() -> frozenset:
    if not _ops.AVAILABLE:
        return frozenset()
    return frozenset(
        device_type
        for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA"))
        if torch._C._dispatch_has_kernel_for_dispatch_key(_OP, key)
    )


# Computed once: a constant torch.compile can trace through.
FUSED_DEVICE_TYPES = _fused_device_types()

if _ops.AVAILABLE:

    @torch.library.register_fake(_OP)
    def _sample_filtered_fake(logits, num_samples, dim, temperature, temperature_rows, top_k, top_k_rows, top_p,
                              top_p_rows, min_p, min_p_rows, seeds, offsets, return_logprobs, generator=None):
        shape = _ops._sample_shape(logits, num_samples, dim)
        idx = logits.new_empty(shape, dtype=torch.int64)
        lp = logits.new_empty(shape if return_logprobs else (0,), dtype=torch.float32)
        return idx, lp


def _row_shape(logits: torch.Tensor, dim: int) -> List[int]:
    shape = list(logits.shape)
    if shape:
        del shape[dim]
    return shape


def _check_values() -> bool:
    # Reading values syncs the device: not under torch.compile, CUDA graph capture, or on
    # CUDA at all (the sampler promises no host sync there).
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def _rows_tensor(name: str, t: torch.Tensor, logits: torch.Tensor, dim: int, dtype: torch.dtype,
                 integral: bool) -> torch.Tensor:
    """A per-row argument broadcast to the logits' shape without ``dim``, flattened to
    [rows] in row order, contiguous, in ``dtype``."""
    if integral and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
        raise TypeError(f"gumbel_ext.sample: {name} must be an integer tensor, got {t.dtype}")
    if not integral and not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"gumbel_ext.sample: {name} must be a floating point tensor, got {t.dtype}")
    if t.device != logits.device:
        raise ValueError(f"gumbel_ext.sample: {name} is on {t.device} but logits are on {logits.device}")
    rows = _row_shape(logits, dim)
    if not _ops._broadcasts_to(t.shape, rows):
        raise ValueError(
            f"gumbel_ext.sample: {name} of shape {tuple(t.shape)} must be broadcastable to the logits' "
            f"shape without dim {dim}, {tuple(rows)} (one value per row)"
        )
    return t.to(dtype).expand(rows).reshape(-1).contiguous()


def _scalar_or_rows(name: str, value: Scalar, off, logits: torch.Tensor, dim: int, integral: bool,
                    ok, what: str) -> Tuple[Union[int, float], Optional[torch.Tensor]]:
    if value is None:
        return off, None
    if isinstance(value, torch.Tensor):
        t = _rows_tensor(name, value, logits, dim, torch.int64 if integral else torch.float64, integral)
        if _check_values() and t.device.type != "cuda" and t.numel() and not bool(ok(t).all()):
            raise ValueError(f"gumbel_ext.sample: every entry of {name} must be {what}")
        return off, t
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or (integral and not isinstance(value, numbers.Integral)):
        kind = "an int" if integral else "a float"
        raise TypeError(f"gumbel_ext.sample: {name} must be {kind}, a tensor or None, got {type(value).__name__}")
    if not ok(value):
        raise ValueError(f"gumbel_ext.sample: {name} must be {what}, got {value}")
    return (int(value) if integral else float(value)), None


def _finite(t):
    if not isinstance(t, torch.Tensor):
        return math.isfinite(t)
    return torch.isfinite(t) if t.dtype.is_floating_point else torch.ones_like(t, dtype=torch.bool)


def sample_filtered(
    logits: torch.Tensor, num_samples: int, dim: int, *, temperature, top_k, top_p, min_p, seeds, offsets,
    generator: Optional[torch.Generator], return_logprobs: bool,
):
    """``sample`` with the sampler arguments; ``dim`` already wrapped and ``num_samples``
    checked by the caller."""
    temp, temp_rows = _scalar_or_rows(
        "temperature", temperature, 1.0, logits, dim, False, lambda t: _finite(t) & (t >= 0), "finite and >= 0"
    )
    k, k_rows = _scalar_or_rows("top_k", top_k, 0, logits, dim, True, lambda t: t >= 0, ">= 0 (0 means off)")
    p, p_rows = _scalar_or_rows("top_p", top_p, 1.0, logits, dim, False, lambda t: (t > 0) & (t <= 1), "in (0, 1]")
    m, m_rows = _scalar_or_rows("min_p", min_p, 0.0, logits, dim, False, lambda t: (t >= 0) & (t <= 1), "in [0, 1]")
    if not isinstance(return_logprobs, bool):
        raise TypeError(f"gumbel_ext.sample: return_logprobs must be a bool, got {type(return_logprobs).__name__}")
    if offsets is not None and seeds is None:
        raise ValueError("gumbel_ext.sample: offsets given without seeds; pass seeds (offsets default to 0)")
    if seeds is not None:
        if generator is not None:
            raise ValueError("gumbel_ext.sample: pass seeds/offsets or a generator, not both")
        for name, t in (("seeds", seeds), ("offsets", offsets)):
            if t is not None and not isinstance(t, torch.Tensor):
                raise TypeError(f"gumbel_ext.sample: {name} must be an int64 tensor, got {type(t).__name__}")
            if t is not None and t.dtype != torch.int64:
                raise TypeError(f"gumbel_ext.sample: {name} must be an int64 tensor, got {t.dtype}")
        seeds = _rows_tensor("seeds", seeds, logits, dim, torch.int64, True)
        offsets = (
            torch.zeros_like(seeds) if offsets is None
            else _rows_tensor("offsets", offsets, logits, dim, torch.int64, True)
        )
        if _check_values() and offsets.device.type != "cuda" and offsets.numel() and bool((offsets < 0).any()):
            raise ValueError("gumbel_ext.sample: every entry of offsets must be >= 0")
    args = (logits.detach(), num_samples, dim, temp, temp_rows, k, k_rows, p, p_rows, m, m_rows, seeds, offsets,
            return_logprobs)
    # The CUDA kernel gathers the draws of a row on chip: at most _CUDA_MAX_DRAWN of them.
    if logits.device.type in FUSED_DEVICE_TYPES and (logits.device.type != "cuda" or num_samples <= _CUDA_MAX_DRAWN):
        idx, lp = torch.ops.gumbel_ext.sample_filtered(*args, generator)
    else:
        idx, lp = reference.sample_filtered(*args, generator)
    return (idx, lp) if return_logprobs else idx


def seeded_noise(logits: torch.Tensor, dim: int, seeds: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The float32 noise of every element under per-row keys (Note [Per-row noise keys]):
    row r's column c gets what ``sample(..., seeds=seeds, offsets=offsets)`` perturbs
    its logit c with. ``seeds`` / ``offsets`` flattened to [rows] by ``_rows_tensor``."""
    x = logits.reshape(1) if logits.dim() == 0 else logits.movedim(dim, -1)
    # The fused op where the device has it: bit for bit the noise sample(seeds=) uses.
    g = _keyed_noise.keyed_noise(seeds, offsets, torch.zeros_like(seeds), 0, x.shape[-1]).reshape(x.shape)
    return g.reshape(()) if logits.dim() == 0 else g.movedim(-1, dim)


def gumbel_softmax_seeded(logits: torch.Tensor, tau, hard: bool, dim: int, seeds, offsets) -> torch.Tensor:
    """``gumbel_softmax`` with per-row seeds: the noise is a function of (seeds, offsets)
    alone, so forward and backward (autograd through torch ops) see the same draws, and an
    RL trainer regenerates a rollout's noise from the same tensors. The noise is the fused
    gumbel_ext::keyed_noise (bit-identical to sample(seeds=)); the softmax runs in torch ops."""
    if offsets is not None and seeds is None:
        raise ValueError("gumbel_ext.gumbel_softmax: offsets given without seeds; pass seeds (offsets default to 0)")
    for name, t in (("seeds", seeds), ("offsets", offsets)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.dtype != torch.int64):
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"gumbel_ext.gumbel_softmax: {name} must be an int64 tensor, got {got}")
    seeds = _rows_tensor("seeds", seeds, logits, dim, torch.int64, True)
    offsets = torch.zeros_like(seeds) if offsets is None else _rows_tensor("offsets", offsets, logits, dim,
                                                                            torch.int64, True)
    if logits.numel() == 0:
        return logits.clone()
    noise = seeded_noise(logits, dim, seeds, offsets)
    y_soft = reference.soft_from_noise(logits, noise, tau, dim)
    if hard:
        y_soft = y_soft.to(logits.dtype)
        y_hard = reference.hard_from_noise(logits, noise, dim).to(logits.dtype)
        return y_hard + (y_soft - y_soft.detach())
    return y_soft.to(logits.dtype)
