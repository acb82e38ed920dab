"""Vocabulary-parallel ``gumbel_softmax``: the rank's slice of the unsharded output.

Note [One exchange per direction]
Forward: each rank perturbs its slice (x = acc(logit) + g, g the fused noise of its global
columns) and sends, per row, its max m_w, its sum s_w = sum exp((x - m_w) / tau), and the
global index of its first maximal x: one all_gather of [rows, 3] float64. Every rank then
has X = max m_w, S = sum s_w exp((m_w - X) / tau) and the hard index (lowest global index
among the ranks with m_w == X: exactly the unsharded argmax), and writes its slice of
y = exp((x - X) / tau) / S, or of the one-hot.
Backward: dL/dx_c = y_c (grad_c - sum_c' grad_c' y_c') / tau; the dot is one all_reduce SUM
of [rows]. hard=True saves the logits it was given and (X, S) per row, nothing of the
logits' size: y_soft is regenerated from the noise keys, rounded to the output dtype as the
fused backward rounds it (straight-through gradient = the soft one).
S is summed in another order than the unsharded kernel's (per rank, then across ranks), so
the soft output and the gradients agree within float rounding, not bit for bit."""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
import torch.distributed as dist

from ..functional import _check_logits, _wrap_dim
from . import _args, _comm, _dtensor, _layout, _noise
from ._sample import _PAD_INDEX, _merge

_NAME = "gumbel_ext.distributed.gumbel_softmax"


def _rows(t: torch.Tensor, dim: int):
    v = t.reshape(1, 1) if t.dim() == 0 else t.movedim(dim, -1)
    batch = list(v.shape[:-1])
    R = 1
    for d in batch:
        R *= d
    return v.reshape(R, v.shape[-1]), batch


def _unrows(y: torch.Tensor, like: torch.Tensor, batch, dim: int) -> torch.Tensor:
    if like.dim() == 0:
        return y.reshape(())
    return y.reshape(batch + [y.shape[-1]]).movedim(-1, dim)


class _VocabParallelGumbelSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, tau: float, hard: bool, dim: int, lay, seeds, offsets, row_ids):
        x2, batch = _rows(logits.detach(), dim)
        R, L = x2.shape
        acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
        inv_tau = torch.tensor(1.0 / tau, dtype=acc).item()  # rounded to acc, as the kernel's
        g = _noise.local_noise(R, logits.device, lay.key, lay.key_offset, seeds, offsets, row_ids, lay.col_start,
                               L)
        xp = x2.to(acc) + g.to(acc)
        packed = torch.empty((R, 3), dtype=torch.float64, device=logits.device)
        packed[:, 0], packed[:, 1], packed[:, 2] = float("-inf"), 0.0, _PAD_INDEX
        if L:
            m, am = xp.max(-1)
            finite = torch.isfinite(m)
            safe_m = torch.where(finite, m, torch.zeros_like(m))
            s = torch.exp((xp - safe_m.unsqueeze(-1)) * inv_tau).sum(-1, dtype=torch.float64)
            packed[:, 0] = m.double()
            packed[:, 1] = torch.where(finite, s, torch.zeros_like(s))
            packed[:, 2] = (am + lay.col_start).double()
        gathered = torch.empty((lay.world * R, 3), dtype=torch.float64, device=logits.device)
        _comm.all_gather(gathered, packed, lay.group)  # rank-major along dim 0
        gathered = gathered.view(lay.world, R, 3)
        m_w, s_w, i_w = gathered[..., 0].t(), gathered[..., 1].t(), gathered[..., 2].t()  # [R, W]
        X = m_w.amax(-1)  # NaN-propagating
        ok = torch.isfinite(X)
        X_safe = torch.where(ok, X, torch.zeros_like(X))
        scale = torch.where(m_w == float("-inf"), torch.zeros_like(m_w),
                            torch.exp((m_w - X_safe.unsqueeze(-1)) * inv_tau))
        S = (s_w * scale).sum(-1)
        nan = torch.tensor(float("nan"), dtype=logits.dtype, device=logits.device)
        if hard:
            best = i_w.gather(-1, _merge(m_w, i_w, 1)).squeeze(-1).to(torch.int64) - lay.col_start
            inside = (best >= 0) & (best < L)
            y = torch.zeros((R, L), dtype=logits.dtype, device=logits.device)
            rows = inside.nonzero().squeeze(-1)
            y[rows, best[rows]] = 1
            y = torch.where(ok.unsqueeze(-1), y, nan)
            ctx.save_for_backward(logits, X_safe, S, seeds, offsets)
        else:
            e = torch.exp((xp - X_safe.to(acc).unsqueeze(-1)) * inv_tau)
            y = (e * (1.0 / S).to(acc).unsqueeze(-1)).to(logits.dtype)
            y = torch.where(ok.unsqueeze(-1), y, nan)
            ctx.save_for_backward(y, seeds, offsets)
        ctx.args = (tau, hard, dim, lay, row_ids, batch, inv_tau, acc)
        return _unrows(y, logits, batch, dim)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        tau, hard, dim, lay, row_ids, batch, inv_tau, acc = ctx.args
        if hard:
            logits, X, S, seeds, offsets = ctx.saved_tensors
            x2, _ = _rows(logits, dim)
            R, L = x2.shape
            g = _noise.local_noise(R, logits.device, lay.key, lay.key_offset, seeds, offsets, row_ids,
                                   lay.col_start, L)
            e = torch.exp((x2.to(acc) + g.to(acc) - X.to(acc).unsqueeze(-1)) * inv_tau)
            y = (e * (1.0 / S).to(acc).unsqueeze(-1)).to(logits.dtype).to(acc)  # as the soft forward wrote it
            like = logits
        else:
            y_out, seeds, offsets = ctx.saved_tensors
            y, _ = _rows(y_out, dim)
            y = y.to(acc)
            like = y_out
        g2, _ = _rows(grad, dim)
        g2 = g2.to(acc)
        dot = (g2 * y).sum(-1, dtype=torch.float64)
        _comm.all_reduce(dot, dist.ReduceOp.SUM, lay.group)
        grad_logits = (y * (g2 - dot.to(acc).unsqueeze(-1)) * inv_tau).to(like.dtype)
        return _unrows(grad_logits, like, batch, dim), None, None, None, None, None, None, None


def gumbel_softmax(local_logits: torch.Tensor, tau=1.0, hard: bool = False, dim: int = -1, *, group=None,
                   generator: Optional[torch.Generator] = None, seeds: Optional[torch.Tensor] = None,
                   offsets: Optional[torch.Tensor] = None, column_offset: Optional[int] = None) -> torch.Tensor:
    """Gumbel-softmax over logits whose category dim is sharded over the ranks of a process
    group: returns this rank's slice of the unsharded :func:`gumbel_ext.gumbel_softmax`
    output, differentiable.

    ``hard=True`` gives exactly the rank's slice of the unsharded one-hot; the soft output
    and the gradients equal the unsharded slice within float rounding (the sum of
    exponentials runs in another order). Forward: one all_gather of per-row
    (max, sum-exp, argmax) triples; backward: one all_reduce of the per-row sum of
    grad * y. ``hard=True`` keeps nothing of the logits' size besides the logits (the noise
    is regenerated in backward from its keys).

    Parameters
    ----------
    local_logits : Tensor
        This rank's contiguous slice along ``dim``; other dims, dtype and device type equal
        on every rank.
    tau : float, default 1.0
        Temperature > 0 (a tensor tau is not supported vocabulary-parallel yet).
    hard : bool, default False
        The exact one-hot, with the soft sample's gradient (straight-through).
    dim : int, default -1
        The (sharded) category dim.
    group : ProcessGroup, optional
        The ranks sharing the vocabulary; None is the default group.
    generator : torch.Generator, optional
        Without seeds, each rank's key comes from its generator and must agree across ranks.
    seeds, offsets : int64 Tensor, optional
        Per-row noise keys, as in :func:`gumbel_ext.gumbel_softmax`.
    column_offset : int, optional
        This rank's first global column; default: the sum of the lower ranks' lengths.

    Returns
    -------
    Tensor
        This rank's slice of the output: the shape, dtype and device of ``local_logits``.
    """
    if _dtensor.is_dtensor(local_logits):
        return _dtensor.gumbel_softmax(local_logits, tau, hard, dim, group=group, seeds=seeds, offsets=offsets,
                                       generator=generator)
    return _gumbel_softmax(local_logits, tau, hard, dim, group=group, generator=generator, seeds=seeds,
                           offsets=offsets, column_offset=column_offset)


def _gumbel_softmax(local_logits: torch.Tensor, tau=1.0, hard: bool = False, dim: int = -1, *, group=None,
                   generator: Optional[torch.Generator] = None, seeds: Optional[torch.Tensor] = None,
                   offsets: Optional[torch.Tensor] = None, column_offset: Optional[int] = None,
                   _row_ids: Optional[torch.Tensor] = None, _local: bool = False) -> torch.Tensor:
    """The implementation: _row_ids maps local rows to global ones, _local skips the exchange."""
    device = local_logits.device if isinstance(local_logits, torch.Tensor) else torch.device("cpu")
    error = None
    x = None
    nk = _args.NoiseKey()
    mode = params = 0
    try:
        _check_logits(local_logits, "distributed.gumbel_softmax")
        x = local_logits
        dim = _wrap_dim(x, dim)
        if isinstance(tau, torch.Tensor):
            raise NotImplementedError(f"{_NAME}: a tensor tau is not supported vocabulary-parallel yet; pass a float")
        if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"{_NAME}: tau must be a finite number > 0, got {tau!r}")
        _args.check_placement(_NAME, x, column_offset, generator)
        nk = _args.noise_key(_NAME, x, dim, device, seeds, offsets, generator)
        mode = int(bool(hard))
        params = _layout.float_bits(tau)
    except Exception as e:  # reported to every rank by the exchange
        error = e
    lay = _args.agree(_NAME, 2, group, device, x, dim, nk, mode, params, column_offset, error, _local)
    if not nk.seeded and _layout.has_rows(x, dim):
        _noise.advance_key(device, generator, lay.vocab)
    return _VocabParallelGumbelSoftmax.apply(x, float(tau), bool(hard), dim, lay, nk.seeds, nk.offsets, _row_ids)
