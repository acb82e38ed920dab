"""Vocabulary-parallel ``sample``: each rank's local Gumbel-max candidates (value, GLOBAL
index), exchanged in one all_gather, merge to exactly the unsharded sample.

Note [Same float operations as the unsharded op]
The merge is exact only if every rank computes each element's key with the very float
operations of the unsharded op (csrc/cpu/group_kernels.h / sample_kernels.h):
  - plain path (temperature 1.0, no seeds, no log-probs; the op gumbel_ext::sample):
    key = acc(x) + g, acc = float32 (float64 for float64 logits);
  - sampler path (gumbel_ext::sample_filtered): key = (acc(x) - M) / acc(T) + g with M the
    ROW's max over the whole vocabulary -- one all_reduce MAX of [rows] first -- and greedy
    rows (T == 0) ranked by acc(x) itself, no noise. top-k keeps x >= the row's k-th largest
    logit: each rank's top-k values go with the row max in one all_gather instead.
g is the fused noise of the element's global (row, column), bit for bit (keyed_noise), so
each key equals the unsharded one, and (key, index) pairs carried exactly (float64 holds
every float32 and every index < 2^53) merge by value, then lowest index: the unsharded
argmax / Gumbel-top-k rule. Log-probs need sum exp(z) over the vocabulary: a per-row partial
sum in the same exchange (float64; its summation order differs, so log-probs agree within
float rounding, not bit for bit)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from .. import sampling
from ..functional import _check_logits, _wrap_dim
from . import _args, _comm, _dtensor, _layout, _noise

_NAME = "gumbel_ext.distributed.sample"
_PAD_INDEX = float(2**53)  # a pad candidate's index: after every real one on ties


def _local_topk(key: torch.Tensor, k: int):
    """The k largest keys of each row (k <= length), lowest index on ties, in drawn order:
    (values [R, k], local indices [R, k])."""
    if k == 1:
        v, i = key.max(dim=-1, keepdim=True)  # the first maximal index
        return v, i
    vals, idx = key.topk(k, dim=-1)
    kth = vals[:, -1:]
    exact = (key >= kth).sum(-1) == k  # no tie straddles the cut: topk's set is the answer
    if not bool(exact.all()):
        order = torch.sort(key, dim=-1, descending=True, stable=True).indices[:, :k]
        idx = torch.where(exact.unsqueeze(-1), idx, order)
        vals = key.gather(-1, idx)
    # Order the chosen set by (value desc, index asc).
    by_index = torch.sort(idx, dim=-1, stable=True)
    idx, vals = by_index.values, vals.gather(-1, by_index.indices)
    by_value = torch.sort(vals, dim=-1, descending=True, stable=True)
    return by_value.values, idx.gather(-1, by_value.indices)


def _merge(values: torch.Tensor, index: torch.Tensor, k: int):
    """values/index [R, n] (float64) -> the k best by (value desc, index asc): positions."""
    by_index = torch.sort(index, dim=-1, stable=True).indices
    v = values.gather(-1, by_index)
    by_value = torch.sort(v, dim=-1, descending=True, stable=True).indices
    return by_index.gather(-1, by_value)[:, :k]


def _reference_sampler(device: torch.device, plain: bool) -> bool:
    """Whether the unsharded call runs the torch-op reference sampler with the key (seed, 0):
    a device without the fused gumbel_ext::sample_filtered other than CUDA (on CUDA the
    reference takes the generator's (seed, offset) and reserves 4 * ceil(V / 4) counters, as
    the fused CUDA op does)."""
    return (not plain and device.type not in ("cpu", "cuda")
            and device.type not in sampling.FUSED_DEVICE_TYPES)


def _first_failing_row(*masks: torch.Tensor) -> Optional[int]:
    bad = masks[0]
    for m in masks[1:]:
        bad = bad | m
    rows = bad.nonzero()
    return int(rows[0]) if len(rows) else None


def sample(local_logits: torch.Tensor, num_samples: int = 1, dim: int = -1, *, group=None,
           temperature=1.0, top_k=None, top_p=None, min_p=None, seeds: Optional[torch.Tensor] = None,
           offsets: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
           return_logprobs: bool = False, column_offset: Optional[int] = None):
    """Draw category indices from logits whose category dim is sharded over the ranks of a
    process group; every rank returns the same indices, equal (``torch.equal``) to
    :func:`gumbel_ext.sample` on the concatenated logits with the same generator state or
    seeds.

    Each rank draws the noise of its own global columns and sends a few numbers per row
    (its best candidates, and with ``temperature``/``seeds``/``return_logprobs`` the row max
    first): O(rows x world size) scalars per call, never O(rows x V).

    Parameters
    ----------
    local_logits : Tensor
        This rank's contiguous slice of the logits along ``dim``; slices are in rank order
        (or placed by ``column_offset``) and may differ in length, even be empty. Every other
        dim, the dtype and the device type must be the same on every rank.
    num_samples : int, default 1
        As in :func:`gumbel_ext.sample` (Gumbel-top-k without replacement for ``k > 1``).
    dim : int, default -1
        The (sharded) category dim.
    group : ProcessGroup, optional
        The ranks sharing the vocabulary; None is the default group.
    temperature : float or Tensor, default 1.0
        As in :func:`gumbel_ext.sample`, including ``0`` (greedy) and one value per row.
    top_k : int or int Tensor, optional
        As in :func:`gumbel_ext.sample` (the k largest logits, ties at the boundary kept): each
        rank sends its top-k values with the row max, in the same one collective.
    top_p, min_p : None
        Not supported vocabulary-parallel yet: raise ``NotImplementedError``.
    seeds, offsets : int64 Tensor, optional
        Per-row noise keys, as in :func:`gumbel_ext.sample`; the same on every rank.
    generator : torch.Generator, optional
        Without seeds each rank draws the call's key from its generator (or the default one)
        as the unsharded op does; the ranks' keys must agree, else every rank raises.
    return_logprobs : bool, default False
        Also return the float32 log-probabilities (a global log-sum-exp; equal to the
        unsharded ones within float rounding).
    column_offset : int, optional
        This rank's first global column; default: the sum of the lower ranks' lengths.

    Returns
    -------
    LongTensor, or (LongTensor, FloatTensor) with ``return_logprobs``
        The same on every rank, shaped as :func:`gumbel_ext.sample`'s result.

    Notes
    -----
    Every call starts with one fixed-size all_gather of a metadata record (shape, dtype,
    slice length, noise key, arguments) that every rank validates alike, so a mismatch
    raises the same error on every rank instead of hanging; an argument error on one rank
    makes the others raise too. See docs/distributed.md.
    """
    if _dtensor.is_dtensor(local_logits):
        return _dtensor.sample(local_logits, num_samples, dim, group=group, temperature=temperature, top_k=top_k,
                               top_p=top_p, min_p=min_p, seeds=seeds, offsets=offsets, generator=generator,
                               return_logprobs=return_logprobs)
    return _sample(local_logits, num_samples, dim, group=group, temperature=temperature, top_k=top_k, top_p=top_p,
                   min_p=min_p, seeds=seeds, offsets=offsets, generator=generator,
                   return_logprobs=return_logprobs, column_offset=column_offset)


def _sample(local_logits: torch.Tensor, num_samples: int = 1, dim: int = -1, *, group=None,
           temperature=1.0, top_k=None, top_p=None, min_p=None, seeds: Optional[torch.Tensor] = None,
           offsets: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
           return_logprobs: bool = False, column_offset: Optional[int] = None,
           _row_ids: Optional[torch.Tensor] = None, _local: bool = False):
    """The implementation: _row_ids maps local rows to global ones, _local skips the exchange."""
    device = local_logits.device if isinstance(local_logits, torch.Tensor) else torch.device("cpu")
    error = None
    x = None
    nk = _args.NoiseKey()
    mode = params = 0
    try:
        _check_logits(local_logits, "distributed.sample")
        x = local_logits.detach()
        dim = _wrap_dim(x, dim)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"{_NAME}: num_samples must be an int >= 1, got {num_samples!r}")
        filters = [n for n, v in (("top_p", top_p), ("min_p", min_p)) if v is not None]
        if filters:
            raise NotImplementedError(f"{_NAME}: the filters {', '.join(filters)} are not supported "
                                      "vocabulary-parallel yet (docs/distributed.md); gather the logits and "
                                      "call gumbel_ext.sample")
        _args.check_placement(_NAME, x, column_offset, generator)
        plain = (isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature == 1.0
                 and seeds is None and offsets is None and top_k is None and return_logprobs is False)
        k_val, k_rows = sampling._scalar_or_rows("top_k", top_k, 0, x, dim, True, lambda t: t >= 0,
                                                 ">= 0 (0 means off)")
        temp, temp_rows = sampling._scalar_or_rows(
            "temperature", temperature, 1.0, x, dim, False,
            lambda t: sampling._finite(t) & (t >= 0), "finite and >= 0")
        if not isinstance(return_logprobs, bool):
            raise TypeError(f"{_NAME}: return_logprobs must be a bool, got {type(return_logprobs).__name__}")
        nk = _args.noise_key(_NAME, x, dim, device, seeds, offsets, generator)
        if not nk.seeded and _reference_sampler(device, plain):
            nk.key_offset = 0  # the reference sampler keys rows by the seed alone (reference.row_keys)
        mode = num_samples * 4 + int(plain) * 2 + int(return_logprobs)
        params = (_layout.float_bits(temp) ^ _layout.tensor_hash(temp_rows) ^ (k_val * 0x9E3779B97F4A7C1)
                  ^ (_layout.tensor_hash(k_rows) * 3)) & ((1 << 63) - 1)
    except Exception as e:  # reported to every rank by the exchange
        error = e
    lay = _args.agree(_NAME, 1, group, device, x, dim, nk, mode, params, column_offset, error, _local)
    seeds, offsets = nk.seeds, nk.offsets
    if not nk.seeded and _layout.has_rows(x, dim):
        # The counters the unsharded call reserves: 4 * ceil(V / 4), or the reference
        # sampler's 4 (reference.draw_rng_state with length 1).
        _noise.advance_key(device, generator, 1 if _reference_sampler(device, plain) else lay.vocab)
    if num_samples > lay.vocab:
        raise ValueError(f"{_NAME}: num_samples={num_samples} exceeds the {lay.vocab} categories along dim "
                         "(sampling without replacement)")
    top_k_rows = None if plain or (k_rows is None and k_val == 0) else (k_rows if k_rows is not None else k_val)
    return _sample_rows(x, dim, num_samples, lay, plain, temp, temp_rows, seeds, offsets, return_logprobs,
                        _row_ids, top_k_rows)


def _sample_rows(x, dim, k, lay, plain, temp, temp_rows, seeds, offsets, return_logprobs, row_ids, top_k_rows=None):
    rows_view = x.reshape(1, 1) if x.dim() == 0 else x.movedim(dim, -1)
    batch = list(rows_view.shape[:-1])
    L = rows_view.shape[-1]
    R = 1
    for d in batch:
        R *= d
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if R == 0:
        idx = _shape(torch.empty((0, k), dtype=torch.int64, device=x.device), batch, k, dim, x.dim())
        return (idx, idx.to(torch.float32)) if return_logprobs else idx
    xa = rows_view.reshape(R, L).to(acc)
    g = _noise.local_noise(R, x.device, lay.key, lay.key_offset, seeds, offsets, row_ids, lay.col_start, L).to(acc)
    W = lay.world
    if plain:
        key = g.add_(xa)  # g is this call's own tensor: x + g in place
        greedy = None
    else:
        local = torch.full((R, 2), float("-inf"), dtype=torch.float64, device=x.device)
        if L:
            m = xa.amax(-1)
            bad = ~(m < float("inf"))  # NaN or +inf in the slice
            local[:, 0] = torch.where(bad, torch.full_like(m, float("-inf")), m).double()
            local[:, 1] = bad.double()
        kth = None
        if top_k_rows is not None:
            # top-k (Note [Sampler semantics]): keep x >= the row's k-th largest logit. Each
            # rank's top-Kmax values travel with the row max and flags in one all_gather.
            K = (top_k_rows.to(x.device).reshape(R) if isinstance(top_k_rows, torch.Tensor)
                 else torch.full((R,), top_k_rows, dtype=torch.int64, device=x.device))
            active = (K > 0) & (K < lay.vocab)
            kmax = int(K[active].max()) if bool(active.any()) else 0
            tops = torch.full((R, kmax), float("-inf"), dtype=torch.float64, device=x.device)
            if kmax and L:
                tops[:, :min(kmax, L)] = xa.topk(min(kmax, L), dim=-1).values.double()
            packed = torch.cat([local, tops], dim=-1).contiguous()
            gathered = torch.empty((W * R, packed.shape[1]), dtype=torch.float64, device=x.device)
            _comm.all_gather(gathered, packed, lay.group)
            gathered = gathered.view(W, R, -1)
            local = gathered[:, :, :2].amax(0)
            if kmax:
                all_tops = gathered[:, :, 2:].permute(1, 0, 2).reshape(R, -1).sort(-1, descending=True).values
                kth = all_tops.gather(-1, (K.clamp(1, kmax) - 1).unsqueeze(-1))
                kth = torch.where(active.unsqueeze(-1), kth, torch.full_like(kth, float("-inf"))).to(acc)
        else:
            # Global row max and NaN/+inf flags: one all_reduce MAX of [R, 2].
            _comm.all_reduce(local, dist.ReduceOp.MAX, lay.group)
        M_glob, bad_glob = local[:, 0], local[:, 1] > 0
        r = _first_failing_row(bad_glob, M_glob == float("-inf"))
        if r is not None:
            if bool(bad_glob[r]):
                raise ValueError(f"gumbel_ext.sample: row {r} of the logits holds NaN or +inf")
            raise ValueError(f"gumbel_ext.sample: row {r} has no finite logit to draw from (all -inf)")
        M = M_glob.to(acc).unsqueeze(-1)
        T = (temp_rows.to(acc) if temp_rows is not None
             else torch.full((R,), temp, dtype=acc, device=x.device)).unsqueeze(-1)
        greedy = T == 0
        # A division by the per-row T, as the kernel divides (never a multiply by 1 / T).
        z = (xa - M).div_(torch.where(greedy, torch.ones_like(T), T))
        if temp_rows is None and temp == 0:
            key = xa  # every row greedy: rank by the logit itself, no noise
        elif temp_rows is None:
            key = g.add_(z)  # g is this call's own tensor: z + g in place
        else:
            key = torch.where(greedy, xa, z + g)
        if kth is not None:
            keep = xa >= kth
            key = torch.where(keep | greedy, key, torch.full_like(key, float("-inf")))
            z_kept = torch.where(keep, z, torch.full_like(z, float("-inf")))
        else:
            z_kept = z
    # Local candidates: the min(k, L) best, padded to k.
    kk = min(k, L)
    cand = torch.full((R, k), float("-inf"), dtype=torch.float64, device=x.device)
    cidx = torch.full((R, k), _PAD_INDEX, dtype=torch.float64, device=x.device)
    czed = torch.zeros((R, k), dtype=torch.float64, device=x.device)
    if kk:
        v, i = _local_topk(key, kk)
        cand[:, :kk] = v.double()
        cidx[:, :kk] = (i + lay.col_start).double()
        if return_logprobs:
            czed[:, :kk] = z.gather(-1, i).double()
    parts = [cand, cidx]
    if return_logprobs:
        # Greedy rows: softmax at T = 1 over every logit (filters ignored).
        z_sum = z if kth is None else torch.where(greedy, z, z_kept)
        sum_e = torch.exp(z_sum).double().sum(-1, keepdim=True) if L else torch.zeros((R, 1), dtype=torch.float64,
                                                                                    device=x.device)
        parts += [czed, sum_e]
    packed = torch.cat(parts, dim=-1).contiguous()
    gathered = torch.empty((W * R, packed.shape[1]), dtype=torch.float64, device=x.device)
    _comm.all_gather(gathered, packed, lay.group)  # rank-major along dim 0
    gathered = gathered.view(W, R, -1)
    g_vals = gathered[:, :, :k].permute(1, 0, 2).reshape(R, W * k)
    g_idx = gathered[:, :, k:2 * k].permute(1, 0, 2).reshape(R, W * k)
    pick = _merge(g_vals, g_idx, k)
    best_vals = g_vals.gather(-1, pick)
    best_idx = g_idx.gather(-1, pick)
    if plain:
        bad = ~(g_vals < float("inf")).all(-1)  # NaN or +inf anywhere
        short = (best_vals == float("-inf")).any(-1)
        r = _first_failing_row(bad, short)
        if r is not None:
            if bool(bad[r]):
                raise ValueError(f"gumbel_ext.sample: row {r} of the logits holds NaN or +inf")
            if k == 1:
                raise ValueError(f"gumbel_ext.sample: row {r} has no finite logit to draw from (all -inf)")
            raise ValueError(f"gumbel_ext.sample: num_samples={k} exceeds the finite logits of row {r} "
                             "(sampling without replacement)")
    else:
        short = (best_vals == float("-inf")).any(-1) & ~greedy.squeeze(-1)
        r = _first_failing_row(short)
        if r is not None:
            raise ValueError(f"gumbel_ext.sample: num_samples={k} exceeds the tokens row {r} keeps after "
                             "filtering (sampling without replacement)")
    idx = best_idx.to(torch.int64)
    lp = None
    if return_logprobs:
        g_z = gathered[:, :, 2 * k:3 * k].permute(1, 0, 2).reshape(R, W * k)
        total = gathered[:, :, 3 * k].sum(0).unsqueeze(-1)  # [R, 1]
        lp = (g_z.gather(-1, pick) - torch.log(total)).to(torch.float32)
    idx, lp = _shape(idx, batch, k, dim, x.dim()), (None if lp is None else _shape(lp, batch, k, dim, x.dim()))
    return (idx, lp) if return_logprobs else idx


def _shape(t: torch.Tensor, batch, k: int, dim: int, ndim: int) -> torch.Tensor:
    """[R, k] -> the unsharded op's output shape (dim removed for k == 1, else replaced by k)."""
    if ndim == 0:
        return t.reshape(()) if k == 1 else t.reshape(k)
    if k == 1:
        return t.reshape(batch)
    return t.reshape(batch + [k]).movedim(-1, dim)
