"""Vocabulary-parallel sampling (issue #14) on the CPU with gloo: gumbel_ext.distributed.sample
on each rank's slice against all-gather-then-sample (every rank gathers the [B, V] logits and
calls gumbel_ext.sample), as tensor-parallel serving engines do today.

    python3 -m benchmarks.distributed [--quick] [--iters N] [--out DIR]

Spawns world sizes 2 and 4 on localhost (one gloo process per rank, torch threads = cores /
world), B = 64 and 256, V = 128256, float32 logits, plain sampling (temperature 1, one
generator seeded alike on every rank) and temperature 0.7 with per-row seeds. Per call: the
median over --iters calls of the slowest rank's wall time (a barrier before each call), and
the bytes each rank sends, counted by wrapping torch.distributed's collectives. Every call's
tokens are checked equal between the two methods. On one machine gloo's "network" is
loopback memory copies, so the time ratio understates what the bytes ratio saves on a real
interconnect. Writes <out>/distributed[-quick].json and .md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

WORLDS = (2, 4)
BATCHES = (64, 256)
VOCAB = 128256
_SENT = {"all_gather_single": 1, "all_gather_into_tensor": 1, "all_reduce": 0, "all_gather": 1}
BYTES = {"n": 0}


def _count_bytes():
    if BYTES.get("wrapped"):
        return
    BYTES["wrapped"] = True
    for name, pos in _SENT.items():
        fn = getattr(dist, name, None)
        if fn is None:
            continue

        def counted(*args, _fn=fn, _pos=pos, **kwargs):
            t = args[_pos]
            ts = t if isinstance(t, (list, tuple)) else [t]
            BYTES["n"] += sum(x.numel() * x.element_size() for x in ts if isinstance(x, torch.Tensor))
            return _fn(*args, **kwargs)

        setattr(dist, name, counted)


def _gather_then_sample(local, world, group, **kw):
    import gumbel_ext
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local.contiguous(), group=group)
    return gumbel_ext.sample(torch.cat(parts, dim=-1), **kw)


def measure(rank, world, group, batches, vocab, iters):
    """This rank's rows of the table (every rank returns the same, max-reduced, times)."""
    import gumbel_ext.distributed as gd

    _count_bytes()
    rows = []
    for B in batches:
        torch.manual_seed(0)
        full = torch.randn(B, vocab) * 4
        n = vocab // world  # equal slices: the gather baseline needs equal sizes
        local = full[:, rank * n:(rank + 1) * n].contiguous()
        seeds = torch.arange(B, dtype=torch.int64)
        for label, kw in (("plain", {}), ("T=0.7, seeds", {"temperature": 0.7, "seeds": seeds})):
            times = {"ours": [], "gather": []}
            sent = {}
            for it in range(iters + 1):  # the first call is a warm-up
                for method in ("ours", "gather"):
                    torch.manual_seed(100 + it)
                    dist.barrier(group=group)
                    BYTES["n"] = 0
                    t0 = time.perf_counter()
                    if method == "ours":
                        tokens = gd.sample(local, group=group, **kw)
                    else:
                        ref = _gather_then_sample(local, world, group, **kw)
                    dt = torch.tensor([time.perf_counter() - t0])
                    sent[method] = BYTES["n"]
                    dist.all_reduce(dt, op=dist.ReduceOp.MAX, group=group)
                    if it:
                        times[method].append(float(dt))
                if not torch.equal(tokens, ref):
                    raise AssertionError("gumbel_ext.distributed.sample != all-gather-then-sample")
            rows.append({"world": world, "B": B, "V": n * world, "mode": label,
                         "ours_ms": 1e3 * statistics.median(times["ours"]),
                         "gather_ms": 1e3 * statistics.median(times["gather"]),
                         "ours_bytes_per_rank": sent["ours"], "gather_bytes_per_rank": sent["gather"]})
    return rows


def _worker(rank, world, port, batches, vocab, iters, out_q):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    rows = measure(rank, world, None, batches, vocab, iters)
    if rank == 0:
        out_q.put(rows)
    dist.destroy_process_group()


def run(worlds, batches, vocab, iters):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    rows = []
    for world in worlds:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        q = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(r, world, port, batches, vocab, iters, q)) for r in range(world)]
        for p in procs:
            p.start()
        rows += q.get(timeout=1800)
        for p in procs:
            p.join()
            if p.exitcode:
                raise RuntimeError(f"a rank of world size {world} failed (exit code {p.exitcode})")
    return rows


def markdown(rows) -> str:
    lines = ["| world | B x V | mode | ours ms | gather+sample ms | speed-up | ours bytes/rank | gather bytes/rank "
             "| bytes ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['world']} | {r['B']} x {r['V']} | {r['mode']} | {r['ours_ms']:.2f} | "
                     f"{r['gather_ms']:.2f} | "
                     f"{r['gather_ms'] / r['ours_ms']:.2f}x | {r['ours_bytes_per_rank']:,} | "
                     f"{r['gather_bytes_per_rank']:,} | {r['gather_bytes_per_rank'] / r['ours_bytes_per_rank']:.0f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="world size 2, B = 8, V = 4096, 3 calls")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        rows = run((2,), (8,), 4096, 3)
    else:
        rows = run(WORLDS, BATCHES, VOCAB, args.iters)
    md = markdown(rows)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "distributed-quick" if args.quick else "distributed"
    meta = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "iters": 3 if args.quick else args.iters}
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (out / f"{stem}.md").write_text(f"Vocabulary-parallel sample on CPU/gloo ({meta}); medians, one run.\n\n" + md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
