"""Vocabulary-parallel sampling: a tensor-parallel LM head whose ranks never gather the logits.

    torchrun --nproc-per-node 2 examples/vocab_parallel_sampling.py   # 2 gloo ranks on the CPU
    python3 examples/vocab_parallel_sampling.py --quick                # spawns 2 ranks itself

Each rank holds a contiguous slice of the output projection U [V, d] (as Megatron, vLLM and
SGLang shard an LM head; here V = 50257 does not divide by the world size, so the slices are
uneven) and computes only its slice of the logits, h @ U_slice^T. Every decode step samples
the batch with

    gumbel_ext.distributed.sample(local_logits, temperature=T, seeds=seeds,
                                  offsets=step * stride, return_logprobs=True)

which exchanges a few numbers per row (the row max and each rank's best candidate), never
the [B, V] logits. The "model" is a fixed random recurrence (h <- tanh(h W + E[token])), so
a wrong token would change every later step. Rank 0 also runs the unsharded decode --
gumbel_ext.sample on the full logits with the same seeds -- and checks that the tokens are
identical at every step, and that the log-probs agree within 1e-5. Exit status 1 if not.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

import torch
import torch.distributed as dist

try:
    import gumbel_ext
except ImportError:  # run from a source checkout without installing: use the checkout's package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import gumbel_ext
import gumbel_ext.distributed as gd


def vocab_slice(vocab: int, rank: int, world: int):
    """Rank `rank`'s contiguous [start, end) of the vocabulary; the first V % world get one more."""
    base, extra = divmod(vocab, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class RandomLM:
    """A fixed random recurrent model with a (shardable) LM head."""

    def __init__(self, vocab: int, width: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.randn(vocab, width, generator=g)
        self.mix = torch.randn(width, width, generator=g) / width**0.5
        self.head = torch.randn(vocab, width, generator=g) / width**0.5 * 4

    def step(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return torch.tanh(h @ self.mix + self.embed[tokens])


def decode(lm: RandomLM, batch: int, steps: int, head_rows: slice, sampler, temperature: torch.Tensor,
           seeds: torch.Tensor):
    """Tokens [steps, batch] and log-probs, sampling with `sampler(logits, offsets)`."""
    h = torch.zeros(batch, lm.mix.shape[0])
    tokens = torch.zeros(batch, dtype=torch.int64)
    stride = 4 * ((lm.head.shape[0] + 3) // 4)  # counters a row of V categories consumes
    out, lps = [], []
    for step in range(steps):
        h = lm.step(h, tokens)
        logits = h @ lm.head[head_rows].T
        tokens, lp = sampler(logits, torch.full((batch,), step * stride, dtype=torch.int64))
        out.append(tokens)
        lps.append(lp)
    return torch.stack(out), torch.stack(lps)


def run_decode(rank: int, world: int, group=None, steps: int = 8, vocab: int = 50257, batch: int = 4) -> bool:
    lm = RandomLM(vocab, 64)
    start, end = vocab_slice(vocab, rank, world)
    temperature = torch.tensor([0.0, 0.7, 1.0, 1.3])[:batch]  # one greedy request
    seeds = torch.arange(batch, dtype=torch.int64) * 1009 + 17

    def sharded(logits, offsets):
        return gd.sample(logits, temperature=temperature, seeds=seeds, offsets=offsets, return_logprobs=True,
                         group=group)

    def unsharded(logits, offsets):
        return gumbel_ext.sample(logits, temperature=temperature, seeds=seeds, offsets=offsets,
                                 return_logprobs=True)

    tokens, lps = decode(lm, batch, steps, slice(start, end), sharded, temperature, seeds)
    ref_tokens, ref_lps = decode(lm, batch, steps, slice(0, vocab), unsharded, temperature, seeds)
    same = torch.equal(tokens, ref_tokens)
    close = bool((lps - ref_lps).abs().max() <= 1e-5)
    if rank == 0:
        print(f"world size {world}, vocabulary {vocab} in slices of "
              f"{[vocab_slice(vocab, r, world)[1] - vocab_slice(vocab, r, world)[0] for r in range(world)]}")
        print(f"tokens of request 0..{batch - 1} (rows), {steps} steps:")
        for b in range(batch):
            print(f"  T={float(temperature[b]):.1f}: {tokens[:, b].tolist()}")
        print(f"sharded == unsharded tokens: {same}; log-probs within 1e-5: {close}")
    return same and close


def _spawned(rank: int, world: int, port: int, steps: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ok = run_decode(rank, world, steps=steps)
    finally:
        dist.destroy_process_group()
    if not ok:
        sys.exit(1)  # mp.spawn raises in the parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="spawn 2 gloo ranks, 3 steps")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)
    if "RANK" in os.environ:  # under torchrun
        dist.init_process_group("gloo")
        try:
            ok = run_decode(dist.get_rank(), dist.get_world_size(), steps=args.steps)
            flags = torch.tensor([int(ok)])
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)
            return 0 if bool(flags) else 1
        finally:
            dist.destroy_process_group()
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    steps = 3 if args.quick else args.steps
    try:
        mp.spawn(_spawned, args=(2, port, steps), nprocs=2)
    except mp.ProcessExitedException:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
