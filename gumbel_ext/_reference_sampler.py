"""The token sampler in plain PyTorch: the oracle of the fused CPU kernel and the path on
devices without one (CUDA included: only tensor ops, no host sync unless a value check is
asked for). Semantics: Note [Sampler semantics] and Note [Per-row noise keys] in
csrc/cpu/sample_kernels.h. Re-exported by gumbel_ext.reference."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .reference import _MASK32, _acc_dtype, draw_rng_state, philox4x32_10


def keyed_noise(keys: torch.Tensor, offsets: torch.Tensor, row_ctr: torch.Tensor, length: int,
                col_start: int = 0) -> torch.Tensor:
    """Float32 Gumbel noise ``[R, length]``: row j is the noise contract's row ``row_ctr[j]``
    under key ``keys[j]`` and counter start ``offsets[j]`` (int64 tensors of shape [R]), at
    columns ``col_start .. col_start + length - 1``."""
    c = torch.arange(col_start, col_start + length, device=keys.device, dtype=torch.int64).view(1, -1)
    n = offsets.view(-1, 1) // 4 + c // 4
    r = row_ctr.view(-1, 1).expand_as(n)
    words = philox4x32_10((n & _MASK32, (n >> 32) & _MASK32, r & _MASK32, (r >> 32) & _MASK32), keys.view(-1, 1))
    bits = torch.stack(words, dim=-1).gather(-1, (c % 4).expand_as(n).unsqueeze(-1)).squeeze(-1)
    u = ((bits >> 9).to(torch.float32) + 0.5) * 2.0**-23
    return -torch.log(-torch.log(u))


def row_keys(
    rows: int, device: torch.device, seeds: Optional[torch.Tensor], offsets: Optional[torch.Tensor],
    generator: Optional[torch.Generator] = None, length: int = 1,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(keys, offsets, row counters) per row: the caller's seeds with counter row 0, or the
    (seed, offset) the fused op takes from the generator for rows of ``length`` (offset 0
    on the CPU, the reserved Philox offset on CUDA) for all rows with counter row r."""
    if seeds is not None:
        zeros = torch.zeros(rows, dtype=torch.int64, device=device)
        return seeds.reshape(rows), offsets.reshape(rows), zeros
    seed, offset = draw_rng_state(device, generator, length)
    return seed.expand(rows), offset.expand(rows), torch.arange(rows, device=device)


def _per_row(value, rows_tensor: Optional[torch.Tensor], rows: int, dtype, device) -> torch.Tensor:
    if rows_tensor is not None:
        return rows_tensor.reshape(rows, 1).to(dtype)
    return torch.full((rows, 1), value, dtype=dtype, device=device)


def sample_filtered(
    logits: torch.Tensor, num_samples: int, dim: int, temperature: float, temperature_rows: Optional[torch.Tensor],
    top_k: int, top_k_rows: Optional[torch.Tensor], top_p: float, top_p_rows: Optional[torch.Tensor],
    min_p: float, min_p_rows: Optional[torch.Tensor], seeds: Optional[torch.Tensor], offsets: Optional[torch.Tensor],
    return_logprobs: bool, generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """gumbel_ext::sample_filtered in torch ops (same arguments, same results on the CPU
    for the same seeds; per-row tensors flattened to [rows])."""
    acc = _acc_dtype(logits.dtype)
    x = logits.reshape(1, 1) if logits.dim() == 0 else logits.movedim(dim, -1)
    batch_shape = x.shape[:-1]
    V = x.shape[-1]
    R = x.numel() // V if V else 0
    dev = logits.device
    x = x.reshape(R, V).to(acc)
    if R == 0:
        idx = torch.empty(R, num_samples, dtype=torch.int64, device=dev)
        lp = torch.empty(R, num_samples, dtype=torch.float32, device=dev)
    else:
        idx, lp = _sample_rows(x, num_samples, temperature, temperature_rows, top_k, top_k_rows, top_p, top_p_rows,
                               min_p, min_p_rows, seeds, offsets, generator)
    idx = idx.reshape(*batch_shape, num_samples)
    lp = lp.reshape(*batch_shape, num_samples)
    if logits.dim() == 0:
        idx, lp = idx.reshape(num_samples), lp.reshape(num_samples)
        if num_samples == 1:
            idx, lp = idx.reshape(()), lp.reshape(())
    elif num_samples == 1:
        idx, lp = idx.squeeze(-1), lp.squeeze(-1)
    else:
        idx, lp = idx.movedim(-1, dim), lp.movedim(-1, dim)
    if not return_logprobs:
        lp = torch.empty(0, dtype=torch.float32, device=dev)
    return idx, lp


def _sample_rows(x, ns, temperature, temperature_rows, top_k, top_k_rows, top_p, top_p_rows, min_p, min_p_rows,
                 seeds, offsets, generator):
    R, V = x.shape
    dev, acc = x.device, x.dtype
    T = _per_row(temperature, temperature_rows, R, torch.float64, dev).to(acc)
    k = _per_row(top_k, top_k_rows, R, torch.int64, dev)
    p = _per_row(top_p, top_p_rows, R, torch.float64, dev)
    m = _per_row(min_p, min_p_rows, R, torch.float64, dev).to(acc)
    greedy = T == 0
    M = x.amax(dim=-1, keepdim=True)
    z = (x - M) / torch.where(greedy, torch.ones_like(T), T)
    e = torch.exp(z)
    keep = torch.ones_like(x, dtype=torch.bool)
    # top-k on the raw logits; ties with the k-th largest are kept.
    k_eff = torch.where((k <= 0) | (k >= V), torch.full_like(k, V), k)
    x_sorted = torch.sort(x, dim=-1, descending=True).values
    keep &= x >= x_sorted.gather(-1, k_eff - 1)
    # top-p over the top-k survivors: the boundary token's e and every e >= it.
    ek = torch.where(keep, e, torch.zeros_like(e)).double()
    e_sorted = torch.sort(ek, dim=-1, descending=True).values
    cum = e_sorted.cumsum(-1)
    target = p * ek.sum(-1, keepdim=True)
    n = (cum < target).sum(-1, keepdim=True).clamp(max=V - 1)
    e_p = torch.where(p < 1, e_sorted.gather(-1, n), torch.zeros_like(p))
    keep &= ek >= e_p
    keep &= e >= m
    g = keyed_noise(*row_keys(R, dev, seeds, offsets, generator, V), V).to(acc)
    key = torch.where(keep, z + g, torch.full_like(z, float("-inf")))
    key = torch.where(greedy, x, key)
    # A stable descending sort gives ties to the lowest index, as the kernel does.
    idx = torch.sort(key, dim=-1, descending=True, stable=True).indices[:, :ns]
    zl = torch.where(keep & ~greedy, z, torch.full_like(z, float("-inf")))
    zl = torch.where(greedy, x - M, zl)
    lp = torch.log_softmax(zl.double(), dim=-1).gather(-1, idx).float()
    return idx, lp
