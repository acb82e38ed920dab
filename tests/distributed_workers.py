"""A pool of gloo worker processes for tests/test_distributed.py, spawned once per module.

Worker w of the pool runs `serve`: it joins a world of `size` processes, makes the groups
of the first 1, 2, ... size ranks, then runs cases sent by the test process: case(rank,
group, spec) on the ranks of the requested world size, returning the result (or the error
as (type name, message)) and the collectives it issued, counted by wrapping
torch.distributed's functions."""

from __future__ import annotations

import datetime
import os
import traceback

import torch
import torch.distributed as dist

import gumbel_ext
import gumbel_ext.distributed as gd

_COLLECTIVES = ["all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce", "broadcast", "reduce",
                "reduce_scatter_tensor", "all_to_all_single", "send", "recv", "scatter", "gather", "barrier",
                "all_gather_object", "broadcast_object_list"]
COUNTS = {"calls": 0, "bytes": 0, "names": []}


def _wrap(name):
    fn = getattr(dist, name, None)
    if fn is None:
        return
    sent = 1 if name in ("all_gather_single", "all_gather_into_tensor") else 0  # the input's position

    def counted(*args, **kwargs):
        COUNTS["calls"] += 1
        COUNTS["names"].append(name)
        t = args[sent] if len(args) > sent else None
        if isinstance(t, torch.Tensor):
            COUNTS["bytes"] += t.numel() * t.element_size()
        return fn(*args, **kwargs)

    setattr(dist, name, counted)


def slices(V, sizes):
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return list(zip(starts, sizes))


def local_part(full, dim, sizes, rank):
    start, n = slices(full.shape[dim], sizes)[rank]
    return full.narrow(dim, start, n).clone()


# ----------------------------------------------------------------------------- cases
def case_sample(rank, group, spec):
    x = local_part(spec["full"], spec["dim"], spec["sizes"], rank)
    torch.manual_seed(spec.get("seed", 0) + (spec.get("seed_skew", 0) if rank == 1 else 0))
    kw = dict(spec.get("kwargs", {}))
    if rank == 1 and "rank1_kwargs" in spec:
        kw.update(spec["rank1_kwargs"])
    if rank == 1 and "rank1_dtype" in spec:
        x = x.to(spec["rank1_dtype"])
    if rank == 1 and "rank1_shape" in spec:
        x = torch.zeros(spec["rank1_shape"], dtype=x.dtype)
    return gd.sample(x, spec.get("num_samples", 1), spec["dim"], group=group, **kw)


def case_softmax(rank, group, spec):
    """Forward and the gradient of sum(out * w) for a fixed weight w (the full one, sliced)."""
    x = local_part(spec["full"], spec["dim"], spec["sizes"], rank).requires_grad_()
    torch.manual_seed(spec.get("seed", 0) + (spec.get("seed_skew", 0) if rank == 1 else 0))
    y = gd.gumbel_softmax(x, dim=spec["dim"], group=group, **spec.get("kwargs", {}))
    w = local_part(spec["weight"], spec["dim"], spec["sizes"], rank)
    (y * w).sum().backward()
    return y.detach(), x.grad


def case_gradcheck(rank, group, spec):
    """A distributed gradcheck in float64: the Jacobian of the whole vocabulary-parallel map
    (every output slice w.r.t. every element of every input slice), by central differences
    where only the owning rank perturbs its element, against the one from backward with a
    one-hot output gradient on the owning rank. hard=True is checked against the soft map's
    numerical Jacobian (the straight-through gradient). Returns the max abs difference."""
    full, dim, sizes = spec["full"], spec["dim"], spec["sizes"]
    x0 = local_part(full, dim, sizes, rank)
    kw = spec["kwargs"]
    V = full.shape[dim]
    R = full.numel() // V
    eps = 1e-6

    def forward(x, hard=kw.get("hard", False)):
        return gd.gumbel_softmax(x, dim=dim, group=group, **{**kw, "hard": hard})

    def gather(t):  # this rank's slice of every row -> the full [R, V] on every rank
        t2 = t.movedim(dim, -1).reshape(R, -1)
        width = max(sizes)  # gloo gathers equal sizes: pad, then cut
        padded = torch.zeros(R, width, dtype=t.dtype)
        padded[:, :t2.shape[1]] = t2
        parts = [torch.zeros(R, width, dtype=t.dtype) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([p[:, :n] for p, n in zip(parts, sizes)], -1)

    numeric = torch.zeros(R * V, R * V, dtype=torch.float64)  # [input, output]
    owner_of = [w for w, (_, n) in enumerate(slices(V, sizes)) for _ in range(n)]
    start = slices(V, sizes)[rank][0]
    for r in range(R):
        for c in range(V):
            outs = []
            for sign in (1, -1):
                x = x0.clone()
                if owner_of[c] == rank:
                    x.movedim(dim, -1).reshape(R, -1)[r, c - start] += sign * eps
                outs.append(gather(forward(x, hard=False)))  # hard: its straight-through target
            numeric[r * V + c] = ((outs[0] - outs[1]) / (2 * eps)).reshape(-1)
    analytic = torch.zeros(R * V, R * V, dtype=torch.float64)
    for r in range(R):
        for c in range(V):
            x = x0.clone().requires_grad_()
            y = forward(x)
            gout = torch.zeros_like(y)
            if owner_of[c] == rank:
                gout.movedim(dim, -1).reshape(R, -1)[r, c - start] = 1.0
            y.backward(gout)
            analytic[:, r * V + c] = gather(x.grad).reshape(-1)
    return float((numeric - analytic).abs().max())


def case_bench(rank, group, spec):
    """benchmarks/distributed.py's measurement, tiny, on the pool's ranks."""
    from benchmarks import distributed as bench
    return bench.measure(rank, dist.get_world_size(group), group, spec["batches"], spec["vocab"], spec["iters"])


CASES = {f.__name__: f for f in (case_sample, case_softmax, case_gradcheck, case_bench)}


# ------------------------------------------------------------------------------ pool
def serve(rank, size, port, inbox, outbox):
    for name in _COLLECTIVES:
        _wrap(name)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=30))
    groups = {w: (dist.new_group(list(range(w))) if w < size else None) for w in range(1, size + 1)}
    outbox.put((rank, "ready", None))
    while True:
        msg = inbox.get()
        if msg is None:
            break
        case, world, spec = msg
        if rank >= world:
            outbox.put((rank, "skip", None))
            continue
        COUNTS.update(calls=0, bytes=0, names=[])
        try:
            result = ("ok", CASES[case](rank, groups[world], spec))
        except Exception as e:  # the test checks every rank's error
            result = ("error", (type(e).__name__, str(e), traceback.format_exc()))
        outbox.put((rank, result, dict(COUNTS)))
    dist.destroy_process_group()


def case_dtensor(rank, group, spec):
    """A DTensor of the full logits placed as spec["placement"] (a Shard dim, or None for
    Replicate) on a 1-D mesh of the world, built from each rank's own chunk (torch.chunk
    sizes, as DTensor shards): returns (sample, this rank's slices of the soft output and
    the gradient, the slice's dim and offset)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard

    world = dist.get_world_size(group)
    mesh = init_device_mesh("cpu", (world,))
    full, weight, d = spec["full"], spec["weight"], spec["placement"]
    if d is None:
        placement, lo, n = Replicate(), 0, None
    else:
        size = full.shape[d]
        per = -(-size // world)  # torch.chunk sizes; trailing ranks may hold nothing
        lo = min(rank * per, size)
        n = max(0, min(per, size - lo))
        placement = Shard(d)
    cut = (lambda t: t) if d is None else (lambda t: t.narrow(d, lo, n).contiguous())

    def make(requires_grad=False):
        local = cut(full).requires_grad_(requires_grad)
        return DTensor.from_local(local, mesh, [placement], run_check=False, shape=full.shape,
                                  stride=full.stride()), local

    kw = spec.get("kwargs", {})
    torch.manual_seed(0)
    idx = gd.sample(make()[0], spec.get("num_samples", 1), spec["dim"], **kw)
    x, _ = make()
    x = x.detach().requires_grad_()
    torch.manual_seed(1)
    y = gd.gumbel_softmax(x, tau=0.7, dim=spec["dim"], seeds=kw.get("seeds"))
    (y.to_local() * cut(weight)).sum().backward()
    idx_local = idx.to_local()
    return idx_local, placement_of(idx), y.to_local().detach(), x.grad.to_local(), d, lo, n


def placement_of(t):
    return str(t.placements[0])


CASES["case_dtensor"] = case_dtensor
