"""DTensor inputs of gumbel_ext.distributed (1-D device meshes).

Note [DTensor placements]
  - Shard(dim), the category dim: the vocabulary-parallel path on the mesh's process group,
    the column offset taken from the DTensor's own layout. sample returns a Replicate()
    DTensor of indices, gumbel_softmax a DTensor with the input's placement.
  - Shard(d), another dim: every row is whole on its rank, so each rank computes its rows
    locally, with no communication. The noise of a row is keyed by its GLOBAL row index
    (and a per-row seeds/offsets/temperature tensor, given for the global rows, is cut the
    same way), so the values equal the unsharded call's. The output is sharded alike.
  - Replicate(): the unsharded call on every rank.
Without seeds, every rank draws its key from its own generator; the ranks' generators must
agree, as for any random DTensor op (the vocabulary-parallel path checks it, the local paths
cannot without communicating). Why a wrapper and not register_sharding: these are Python
functions over several ops (and a process-group exchange for Shard(dim)), not one aten op
whose output placement follows from its inputs' -- register_sharding needs the latter, and
its strategies cannot express "Shard(dim) in, Replicate out via our own collective"
(pytorch#167977, #167219 track the op-level limits)."""

from __future__ import annotations

from typing import List, Optional

import torch

_NAME = "gumbel_ext.distributed"


def is_dtensor(x) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without DTensor
        return False
    return isinstance(x, DTensor)


def _placement(x, dim: int):
    from torch.distributed.tensor import Replicate, Shard

    if x.device_mesh.ndim != 1:
        raise NotImplementedError(f"{_NAME}: DTensors on a {x.device_mesh.ndim}-D device mesh are not supported; "
                                  "use a 1-D mesh")
    (p,) = x.placements
    if isinstance(p, Replicate):
        return "replicate", None
    if isinstance(p, Shard):
        return ("vocab" if p.dim == dim else "rows"), p.dim
    raise NotImplementedError(f"{_NAME}: DTensor placement {p} is not supported (Shard or Replicate only)")


def _global_offset(x) -> List[int]:
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(x.shape, x.device_mesh, x.placements)
    return list(offset)


def _local_rows(x, dim: int, t: torch.Tensor, shard_dim: int) -> torch.Tensor:
    """The entries of a global per-row tensor (the logits' shape without dim, or broadcastable)
    that belong to this rank's rows."""
    rows_shape = [s for i, s in enumerate(x.shape) if i != dim]
    d = shard_dim if shard_dim < dim else shard_dim - 1
    local_len = x.to_local().shape[shard_dim]
    return t.expand(rows_shape).narrow(d, _global_offset(x)[shard_dim], local_len)


def _row_ids(x, dim: int, shard_dim: int) -> torch.Tensor:
    rows_shape = [s for i, s in enumerate(x.shape) if i != dim]
    n = 1
    for s in rows_shape:
        n *= s
    ids = torch.arange(n, dtype=torch.int64, device=x.to_local().device).reshape(rows_shape)
    return _local_rows(x, dim, ids, shard_dim).reshape(-1)


def _wrap_dim(x, dim: int) -> int:
    if not -max(x.dim(), 1) <= dim < max(x.dim(), 1):
        raise IndexError(f"{_NAME}: dim {dim} out of range for a {x.dim()}-D DTensor")
    return dim % max(x.dim(), 1)


def _cut(x, dim, shard_dim, **per_row):
    return {k: (_local_rows(x, dim, v, shard_dim).contiguous() if isinstance(v, torch.Tensor) else v)
            for k, v in per_row.items()}


def sample(x, num_samples, dim, *, group, temperature, top_k, top_p, min_p, seeds, offsets, generator,
           return_logprobs):
    from torch.distributed.tensor import DTensor, Replicate, Shard

    from . import _sample

    dim = _wrap_dim(x, dim)
    kind, shard_dim = _placement(x, dim)
    local = x.to_local()
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seeds=seeds, offsets=offsets,
              generator=generator, return_logprobs=return_logprobs)
    mesh = x.device_mesh
    if kind == "vocab":
        out = _sample._sample(local, num_samples, dim, group=mesh.get_group(0),
                              column_offset=_global_offset(x)[dim], **kw)
        placements = [Replicate()]
    elif kind == "rows":
        kw.update(_cut(x, dim, shard_dim, temperature=temperature, seeds=seeds, offsets=offsets))
        out = _sample._sample(local, num_samples, dim, _row_ids=_row_ids(x, dim, shard_dim), _local=True, **kw)
        out_dim = shard_dim if num_samples > 1 or shard_dim < dim else shard_dim - 1
        placements = [Shard(out_dim)]
    else:
        out = _sample._sample(local, num_samples, dim, _local=True, **kw)
        placements = [Replicate()]
    wrap = lambda t: DTensor.from_local(t, mesh, placements, run_check=False)  # noqa: E731
    return (wrap(out[0]), wrap(out[1])) if return_logprobs else wrap(out)


def gumbel_softmax(x, tau, hard, dim, *, group, seeds, offsets, generator):
    from torch.distributed.tensor import DTensor

    from . import _softmax

    dim = _wrap_dim(x, dim)
    kind, shard_dim = _placement(x, dim)
    local = x.to_local()
    mesh = x.device_mesh
    kw = dict(generator=generator, seeds=seeds, offsets=offsets)
    if kind == "vocab":
        y = _softmax._gumbel_softmax(local, tau, hard, dim, group=mesh.get_group(0),
                                     column_offset=_global_offset(x)[dim], **kw)
    elif kind == "rows":
        kw.update(_cut(x, dim, shard_dim, seeds=seeds, offsets=offsets))
        y = _softmax._gumbel_softmax(local, tau, hard, dim, _row_ids=_row_ids(x, dim, shard_dim), _local=True, **kw)
    else:
        y = _softmax._gumbel_softmax(local, tau, hard, dim, _local=True, **kw)
    return DTensor.from_local(y, mesh, x.placements, run_check=False)
