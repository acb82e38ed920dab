"""Token sampling with gumbel_ext.sample: a decode loop whose requests keep their tokens
whatever batch they are decoded in.

    python3 examples/token_sampling.py            # 32k vocabulary, 32 requests, 64 steps
    python3 examples/token_sampling.py --quick    # seconds (what `make test` runs)

The "language model" is random: an embedding table E [V, d], a recurrent state
h <- tanh(h W + E[token]) and logits = h U^T. What matters here is the sampling. Every
request carries its own seed and sampling settings (temperature -- one request is greedy,
T = 0 -- top-k, top-p, min-p), and every step samples the whole batch in one call:

    gumbel_ext.sample(logits, temperature=T, top_k=k, top_p=p, min_p=m,
                      seeds=seeds, offsets=positions * stride, return_logprobs=True)

A row's noise depends only on its own (seed, offset), not on its place in the batch. So a
request decoded alone and the same request decoded amid others that join, finish and get
reshuffled every step (continuous batching) produce the same tokens. The script shows it,
and shows the contrast: with one generator for the whole batch (``seeds=None``), the noise
follows the row's position and the tokens change with the batch. Exit status 1 if the
tokens of a seeded request change.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

try:
    import gumbel_ext
except ImportError:  # run from a source checkout without installing: use the checkout's package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import gumbel_ext

class RandomLM:
    """A fixed random recurrent model: enough to make each step's logits depend on the
    tokens drawn so far, which is what makes a wrong token visible in every later step.
    The output matrix is not the embedding's transpose: tied, a token's own embedding
    would score it |E[t]|^2 higher next step and the model would repeat one token."""

    def __init__(self, vocab: int, width: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.randn(vocab, width, generator=g)
        self.mix = torch.randn(width, width, generator=g) / width**0.5
        self.head = torch.randn(vocab, width, generator=g) * (3.0 / width**0.5)  # logits' std ~2 nats

    def step(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return torch.tanh(state @ self.mix + self.embed[tokens])

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        return state @ self.head.T


@dataclass
class Request:
    name: str
    prompt: List[int]
    seed: int
    temperature: float
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    start: int = 0  # the decode step at which it joins the batch
    length: int = 16  # tokens to generate
    tokens: List[int] = field(default_factory=list)
    logprobs: List[float] = field(default_factory=list)


def make_requests(n: int, vocab: int, length: int, seed: int = 1) -> List[Request]:
    g = torch.Generator().manual_seed(seed)
    settings = [  # (temperature, top_k, top_p, min_p), cycled over the requests
        (0.8, 50, 0.9, 0.0),
        (0.0, 0, 1.0, 0.0),  # greedy
        (1.0, 0, 0.95, 0.05),
        (1.2, 20, 1.0, 0.0),
    ]
    out = []
    for i in range(n):
        t, k, p, m = settings[i % len(settings)]
        prompt = torch.randint(vocab, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        start = int(torch.randint(0, max(length // 2, 1), (1,), generator=g)) if i else 0
        size = int(torch.randint(length // 2, length + 1, (1,), generator=g)) if i else length
        out.append(Request(f"req{i}", prompt, seed=1000 + 7919 * i, temperature=t, top_k=k, top_p=p, min_p=m, start=start, length=size))
    return out


def row_stride(vocab: int) -> int:
    """Noise counters one row consumes per draw: by the noise contract (docs/semantics.md)
    column c takes lane c % 4 of Philox counter offset/4 + c/4, so a row of V columns uses
    offsets [offset, offset + round_up(V, 4)). Advancing a request's offset by this much per
    decoded token gives every token fresh noise."""
    return 4 * ((vocab + 3) // 4)


def decode(
    lm: RandomLM,
    requests: List[Request],
    vocab: int,
    per_request: bool,
    shuffle_seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, List[int]]:
    """Continuous batching: each step samples every active request in one call; requests
    join at their start step and leave when done; with shuffle_seed the rows are shuffled
    every step. Returns each request's tokens."""
    width = lm.mix.shape[0]
    state: Dict[str, torch.Tensor] = {}
    for r in requests:  # "prefill": run the prompt through the recurrence
        h = torch.zeros(width)
        for t in r.prompt:
            h = lm.step(h, torch.tensor(t))
        state[r.name] = h
        r.tokens, r.logprobs = [], []
    shuffle = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    step = 0
    while any(len(r.tokens) < r.length for r in requests):
        active = [r for r in requests if r.start <= step and len(r.tokens) < r.length]
        step += 1
        if not active:
            continue
        if shuffle is not None:
            active = [active[i] for i in torch.randperm(len(active), generator=shuffle)]
        logits = lm.logits(torch.stack([state[r.name] for r in active]))
        if per_request:
            col = lambda attr, dtype: torch.tensor([getattr(r, attr) for r in active], dtype=dtype)  # noqa: E731
            positions = torch.tensor([len(r.tokens) for r in active])
            tokens, logprobs = gumbel_ext.sample(
                logits,
                temperature=col("temperature", torch.float32),
                top_k=col("top_k", torch.int64),
                top_p=col("top_p", torch.float32),
                min_p=col("min_p", torch.float32),
                seeds=col("seed", torch.int64),
                offsets=positions * row_stride(vocab),
                return_logprobs=True,
            )
        else:  # one generator for the batch; temperature applied by hand, no filters
            temps = torch.tensor([max(r.temperature, 1e-4) for r in active]).unsqueeze(1)
            tokens, logprobs = gumbel_ext.sample(logits / temps, generator=generator), None
        for i, r in enumerate(active):
            r.tokens.append(int(tokens[i]))
            if logprobs is not None:
                r.logprobs.append(float(logprobs[i]))
        new = lm.step(torch.stack([state[r.name] for r in active]), tokens)
        for i, r in enumerate(active):
            state[r.name] = new[i]
    return {r.name: list(r.tokens) for r in requests}


def show(tokens: List[int], n: int = 12) -> str:
    return " ".join(str(t) for t in tokens[:n]) + (" ..." if len(tokens) > n else "")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 2048-token vocabulary, 8 requests, 12 steps")
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--requests", type=int)
    parser.add_argument("--steps", type=int)
    args = parser.parse_args(argv)
    vocab, n, steps = (2048, 8, 12) if args.quick else (32000, 32, 64)
    vocab, n, steps = args.vocab or vocab, args.requests or n, args.steps or steps
    lm = RandomLM(vocab, 64 if args.quick else 256)
    batch = make_requests(n, vocab, steps)
    target = batch[0]  # req0: temperature 0.8, top-k 50, top-p 0.9
    print(f"random LM head, vocabulary {vocab}; {n} requests, up to {steps} tokens each, joining at different steps")

    alone = decode(lm, [target], vocab, per_request=True)[target.name]
    logprob = sum(target.logprobs) / len(target.logprobs)
    batch_a = decode(lm, batch, vocab, per_request=True, shuffle_seed=0)
    batch_b = decode(lm, batch[::-1], vocab, per_request=True, shuffle_seed=1)
    in_batch, again = batch_a[target.name], batch_b[target.name]
    same = alone == in_batch == again
    # Every other request too: the same tokens in both batch orders and shufflings.
    others_changed = [name for name in batch_a if batch_a[name] != batch_b[name]]
    same &= not others_changed
    print(f"\nper-request seeds ({target.name}: T={target.temperature}, top_k={target.top_k}, top_p={target.top_p}):")
    print(f"  alone                                {show(alone)}   mean log-prob {logprob:.3f}")
    print(f"  in a batch of {n}, shuffled each step  {show(in_batch)}")
    print(f"  in another order, shuffled otherwise {show(again)}")
    print(f"  -> {'the same tokens' if same else 'TOKENS CHANGED'} ({len(alone)} tokens)")
    print(f"  all {n} requests, the two batch orders: "
          + (f"TOKENS CHANGED for {', '.join(others_changed)}" if others_changed else "the same tokens"))
    greedy = next((r for r in batch if r.temperature == 0), None)
    if greedy is not None:  # T = 0 rows take the argmax: no noise at all
        print(f"  greedy request {greedy.name} in the same batch: {show(greedy.tokens)}")

    # The contrast: one generator for the batch. The noise of a row follows its position,
    # so the same request gets other tokens when the batch around it changes.
    alone = decode(lm, [target], vocab, per_request=False, generator=torch.Generator().manual_seed(0))[target.name]
    in_batch = decode(lm, batch, vocab, per_request=False, shuffle_seed=0, generator=torch.Generator().manual_seed(0))[target.name]
    differ = next((i for i, (a, b) in enumerate(zip(alone, in_batch)) if a != b), None)
    print("\none generator for the whole batch (seeds=None), for contrast:")
    print(f"  alone                                {show(alone)}")
    print(f"  in a batch of {n}, shuffled each step  {show(in_batch)}")
    print(f"  -> {'the same tokens' if differ is None else f'different from token {differ} on'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
