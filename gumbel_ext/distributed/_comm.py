"""The two collectives gumbel_ext.distributed uses, both in NCCL and gloo: an all_gather into
one flat tensor (rank-major along dim 0) and an all_reduce. torch >= 2.13 names the first
all_gather_single (all_gather_into_tensor is deprecated there); older ones only have the latter."""

from __future__ import annotations

import torch
import torch.distributed as dist


LOCAL = "local"  # a group of this process alone: no communication (row-sharded DTensors)


def all_gather(out: torch.Tensor, inp: torch.Tensor, group) -> None:
    if group is LOCAL:
        out.copy_(inp.reshape(out.shape))
        return
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, inp, group=group)


def all_reduce(t: torch.Tensor, op, group) -> None:
    if group is LOCAL:
        return
    dist.all_reduce(t, op=op, group=group)
