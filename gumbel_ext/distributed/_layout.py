"""The one small collective every vocabulary-parallel call starts with: a fixed-size int64
record per rank (shape, dtype, slice length, noise key, arguments), all-gathered, then
validated identically on every rank.

Note [Agreement before exchange]
Every later collective of a call has a size that depends on the arguments (rows, num_samples),
so ranks that disagree about them would deadlock or mix garbage. The record has the same
size for every call, so its all_gather cannot deadlock; every rank then runs the same checks
on the same gathered records and raises the same error, naming the ranks that differ. A rank
whose local argument checks failed sends a flag instead, so the others raise too rather than
wait for it. The record also carries the noise key: without seeds, each rank draws its key
from its own generator (as the unsharded op does) and a rank whose generator state differs
is an error on every rank, never a silently different sample."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import List, Optional, Sequence


import torch
import torch.distributed as dist

from . import _comm

_MAGIC = 0x67756D62  # "gumb"
_MAX_DIMS = 6
_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
_DEVICES = ["cpu", "cuda"]
_MASK63 = (1 << 63) - 1

# Field positions in the record.
(F_MAGIC, F_OP, F_NDIM, F_DIM, F_DTYPE, F_DEVICE, F_LENGTH, F_ROWS, F_SHAPE_HASH, F_KEY, F_OFFSET, F_SEEDED,
 F_MODE, F_PARAMS, F_COLUMN_OFFSET, F_ERROR) = range(16)
F_DIMS = 16
RECORD = F_DIMS + _MAX_DIMS


def float_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def tensor_hash(t: Optional[torch.Tensor]) -> int:
    """An int64 fingerprint of a per-row tensor's values (positions matter); 0 for None."""
    if t is None:
        return 0
    b = t.detach().to("cpu", torch.float64 if t.dtype.is_floating_point else torch.int64).reshape(-1).contiguous()
    bits = b.view(torch.int64)
    mult = torch.arange(bits.numel(), dtype=torch.int64) * 0x9E3779B1 + 0x85EBCA77
    return int(((bits ^ (bits >> 29)) * mult).sum()) ^ (bits.numel() << 40)


def has_rows(x: torch.Tensor, dim: int) -> bool:
    """Whether the logits have rows (an empty slice of the vocabulary still has them)."""
    return all(d > 0 for i, d in enumerate(x.shape) if i != dim)


def _shape_text(dims: Sequence[int], dim: int) -> str:
    return "[" + ", ".join("*" if i == dim else str(d) for i, d in enumerate(dims)) + "]"


@dataclass
class Layout:
    """What every rank agreed on: the group, this rank's place, the global column range of
    its slice, and the noise key (seed, offset) drawn from the generator (when no seeds)."""

    group: Optional[dist.ProcessGroup]
    rank: int
    world: int
    col_start: int
    vocab: int
    lengths: List[int]
    key: int
    key_offset: int


def _record(op: int, x: Optional[torch.Tensor], dim: int, key: int, key_offset: int, seeded: bool, mode: int,
            params: int, column_offset: Optional[int], error: bool) -> torch.Tensor:
    rec = [0] * RECORD
    rec[F_MAGIC], rec[F_OP], rec[F_ERROR] = _MAGIC, op, int(error)
    if x is not None and not error:
        shape = list(x.shape)
        rec[F_NDIM], rec[F_DIM] = x.dim(), dim
        rec[F_DTYPE] = _DTYPES.index(x.dtype) if x.dtype in _DTYPES else 99
        rec[F_DEVICE] = _DEVICES.index(x.device.type) if x.device.type in _DEVICES else 99
        rec[F_LENGTH] = shape[dim] if shape else 1
        rows = 1
        h = 0x345678
        for i, d in enumerate(shape):
            if i != dim:
                rows *= d
                h = (h * 1000003 ^ (d + 1)) & _MASK63
        rec[F_ROWS], rec[F_SHAPE_HASH] = rows, h
        for i in range(min(len(shape), _MAX_DIMS)):
            rec[F_DIMS + i] = -2 if i == dim else shape[i]
        rec[F_KEY], rec[F_OFFSET], rec[F_SEEDED] = key, key_offset, int(seeded)
        rec[F_MODE], rec[F_PARAMS] = mode, params
        rec[F_COLUMN_OFFSET] = -1 if column_offset is None else int(column_offset)
    return torch.tensor(rec, dtype=torch.int64)


def local_layout(x: torch.Tensor, dim: int, key: int, key_offset: int) -> Layout:
    """The Layout of a call that owns the whole vocabulary (no exchange, no checks)."""
    from ._comm import LOCAL

    length = x.shape[dim] if x.dim() else 1
    return Layout(LOCAL, 0, 1, 0, length, [length], key, key_offset)


def exchange(name: str, op: int, group, device: torch.device, x: Optional[torch.Tensor], dim: int, key: int,
             key_offset: int, seeded: bool, mode: int, params: int, column_offset: Optional[int],
             local_error: Optional[BaseException]) -> Layout:
    """All-gathers this rank's record and validates all of them (Note [Agreement before
    exchange]); raises the same error on every rank, or returns the Layout."""
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    mine = _record(op, x, dim, key, key_offset, seeded, mode, params, column_offset, local_error is not None)
    records = torch.empty(world * RECORD, dtype=torch.int64, device=device)
    _comm.all_gather(records, mine.to(device), group)
    recs = records.view(world, RECORD).cpu().tolist()
    failed = [w for w, r in enumerate(recs) if r[F_ERROR]]
    if failed:
        if local_error is not None:
            raise local_error
        raise RuntimeError(f"{name}: rank(s) {failed} failed their argument checks (see the error there); "
                           "no rank returns a result")

    def differ(field: int) -> bool:
        return any(r[field] != recs[0][field] for r in recs)

    def listing(fmt) -> str:
        return "; ".join(f"rank {w}: {fmt(r)}" for w, r in enumerate(recs))

    if any(r[F_MAGIC] != _MAGIC for r in recs) or differ(F_OP):
        raise RuntimeError(f"{name}: the ranks of the group are not all in the same gumbel_ext.distributed call")
    if differ(F_DEVICE):
        raise ValueError(f"{name}: the logits must be on the same device type on every rank; "
                         + listing(lambda r: _DEVICES[r[F_DEVICE]] if r[F_DEVICE] < len(_DEVICES) else "other"))
    if differ(F_NDIM) or differ(F_DIM) or differ(F_SHAPE_HASH) or differ(F_ROWS) or any(
            differ(F_DIMS + i) for i in range(_MAX_DIMS)):
        raise ValueError(
            f"{name}: the logits' dims other than dim (*) must be identical on every rank; "
            + listing(lambda r: _shape_text([r[F_DIMS + i] for i in range(min(r[F_NDIM], _MAX_DIMS))], r[F_DIM])
                      + ("..." if r[F_NDIM] > _MAX_DIMS else "") + f" (dim={r[F_DIM]})"))
    if differ(F_DTYPE):
        raise TypeError(f"{name}: the logits must have the same dtype on every rank; "
                        + listing(lambda r: str(_DTYPES[r[F_DTYPE]]) if r[F_DTYPE] < len(_DTYPES) else "other"))
    if differ(F_SEEDED):
        raise ValueError(f"{name}: seeds must be given on every rank or on none; "
                         + listing(lambda r: "seeds" if r[F_SEEDED] else "generator"))
    if differ(F_KEY) or differ(F_OFFSET):
        what = "seeds/offsets" if recs[0][F_SEEDED] else "generator states (seed, offset)"
        hint = ("pass the same seeds and offsets on every rank" if recs[0][F_SEEDED] else
                "seed every rank's generator alike (torch.manual_seed(s) on all ranks, or the same "
                "generator= state) and make the same random calls, or pass seeds=")
        raise RuntimeError(f"{name}: the {what} differ across ranks, so the shards would draw different noise; "
                           f"{hint}. " + listing(lambda r: f"key={r[F_KEY]}, offset={r[F_OFFSET]}"))
    if differ(F_MODE) or differ(F_PARAMS):
        raise ValueError(f"{name}: the sampling arguments (num_samples, temperature / tau, hard, "
                         "return_logprobs) must be identical on every rank")
    lengths = [r[F_LENGTH] for r in recs]
    given = [r[F_COLUMN_OFFSET] for r in recs]
    if any(g >= 0 for g in given):
        if any(g < 0 for g in given):
            raise ValueError(f"{name}: column_offset must be given on every rank or on none")
        spans = sorted((g, g + n) for g, n in zip(given, lengths))
        expected = 0
        for lo, hi in spans:
            if lo != expected:
                raise ValueError(f"{name}: the slices given by column_offset must tile the vocabulary without "
                                 f"gaps or overlaps; " + listing(lambda r: f"columns [{r[F_COLUMN_OFFSET]}, "
                                                                 f"{r[F_COLUMN_OFFSET] + r[F_LENGTH]})"))
            expected = hi
        col_start = given[rank]
    else:
        col_start = sum(lengths[:rank])
    return Layout(group, rank, world, col_start, sum(lengths), lengths, recs[0][F_KEY], recs[0][F_OFFSET])
