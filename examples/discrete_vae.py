"""A categorical VAE on scikit-learn's digits, trained with F.gumbel_softmax and with gumbel_ext.

    python3 examples/discrete_vae.py            # ~5 seeds x 2 runs, about a minute on 2 CPU cores
    python3 examples/discrete_vae.py --quick    # a few seconds (what `make test` runs)

The model: binarized 8x8 digit images (1797 of them, shipped inside scikit-learn: nothing
is downloaded) -> MLP encoder -> 20 categorical latents with 10 categories each, sampled
with the straight-through Gumbel-Softmax (``hard=True``, tau annealed from 1 to 0.5) -> MLP
decoder -> Bernoulli pixel probabilities. The prior is uniform.

The same model code is trained twice per seed: once as written (it calls
``F.gumbel_softmax``), once under ``gumbel_ext.patch_torch()``, which swaps in the fused
kernel and changes nothing else. Same seed, so the same initial weights and the same
batches; only the noise differs (the two draw it differently). Printed: time per epoch for both, the time
of the Gumbel call itself (forward + backward, measured inside the training step), and its
share of the step. So you see both numbers: how much faster the call is, and how much faster
the whole step is. The PNG has the held-out ELBO curves of both (mean and range over seeds),
reconstructions and samples from the prior.

The two ELBO curves must agree within the seed-to-seed spread: the script checks it and
exits with status 1 if not (tests/test_examples.py runs ``--quick``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

try:
    import gumbel_ext
except ImportError:  # run from a source checkout without installing: use the checkout's package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import gumbel_ext

LATENTS, CATEGORIES = 20, 10
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Config:
    epochs: int = 30
    seeds: int = 5
    hidden: int = 256
    batch: int = 32
    lr: float = 5e-3
    tau_start: float = 1.0
    tau_end: float = 0.5


QUICK = Config(epochs=10, seeds=4, hidden=128)
Z_MAX = 5.0  # see agreement()


def load_digits(device: torch.device):
    """The 8x8 images binarized at half intensity (pixel values 0..16 -> 0/1), so the
    Bernoulli likelihood is a true likelihood, as in the usual binarized-MNIST VAE; a fixed
    80/20 split, independent of the training seed."""
    from sklearn.datasets import load_digits as sk_load_digits

    x = (torch.tensor(sk_load_digits().data) > 8).to(torch.float32)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    x = x[perm].to(device)
    n_train = int(0.8 * len(x))
    return x[:n_train], x[n_train:]


class CategoricalVAE(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, LATENTS * CATEGORIES))
        self.decoder = nn.Sequential(nn.Linear(LATENTS * CATEGORIES, hidden), nn.ReLU(), nn.Linear(hidden, 64))

    def posterior_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).view(-1, LATENTS, CATEGORIES)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z.flatten(1))  # pixel logits


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(q || uniform prior) per image, summed over the latents."""
    log_q = torch.log_softmax(logits, -1)
    return (log_q.exp() * (log_q + math.log(CATEGORIES))).sum((1, 2))


def neg_log_likelihood(pixel_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(pixel_logits, x, reduction="none").sum(1)


def clock() -> float:
    """Seconds, for timing CPU work. With one torch thread every op (backward too: autograd
    runs a CPU-only graph on the calling thread) runs on this thread, so its CPU time is
    what the step costs, and it does not count the time other processes hold the core --
    on a shared machine wall time can be several times longer and varies from run to run.
    With more threads, wall time (the other threads' CPU time is not this thread's)."""
    return time.thread_time() if torch.get_num_threads() == 1 else time.perf_counter()


class GumbelTimer:
    """Times the Gumbel call inside the training step: its forward directly, its backward
    between two gradient hooks -- one on the call's output (fires when autograd reaches
    the call) and one on its input (fires when the call's backward has produced the
    gradient). On CUDA the marks are CUDA events, so nothing extra synchronizes; on the
    CPU they read `clock()`."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pairs: List[tuple] = []

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return clock()

    def call(self, fn: Callable[[], torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        start = self.mark()
        out = fn()
        self.pairs.append((start, self.mark()))
        marks = {}
        out.register_hook(lambda grad: marks.__setitem__("start", self.mark()))
        logits.register_hook(lambda grad: self.pairs.append((marks["start"], self.mark())))
        return out

    def seconds(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            total = sum(a.elapsed_time(b) for a, b in self.pairs) / 1e3
        else:
            total = sum(b - a for a, b in self.pairs)
        self.pairs.clear()
        return total


def train_step(model, opt, x, tau, timer: GumbelTimer) -> torch.Tensor:
    logits = model.posterior_logits(x)
    # The KL is built before the Gumbel call, so autograd (which runs the most recently
    # created nodes first) finishes the Gumbel call's backward before it reaches the KL's:
    # the two hooks of GumbelTimer bracket the call's backward and nothing else.
    kl = kl_to_uniform(logits)
    gumbel_in = logits.view_as(logits)  # the hooked input: only the Gumbel call reads it
    # Looked up at call time, so gumbel_ext.patch_torch() swaps it for the fused kernel.
    z = timer.call(lambda: F.gumbel_softmax(gumbel_in, tau=tau, hard=True), gumbel_in)
    loss = (neg_log_likelihood(model.decode(z), x) + kl).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


@torch.no_grad()
def elbo(model, x: torch.Tensor, generator: torch.Generator) -> float:
    """Held-out ELBO per image (nats), one discrete sample z ~ q per image. The sample is
    drawn with torch.multinomial from a fixed generator: the same evaluator for both runs."""
    logits = model.posterior_logits(x)
    probs = torch.softmax(logits, -1).flatten(0, 1)
    idx = torch.multinomial(probs.cpu(), 1, generator=generator).view(logits.shape[:2]).to(x.device)
    z = F.one_hot(idx, CATEGORIES).to(x.dtype)
    return -(neg_log_likelihood(model.decode(z), x) + kl_to_uniform(logits)).mean().item()


@dataclass
class Run:
    name: str
    seed: int
    elbo: List[float] = field(default_factory=list)  # held-out, after each epoch
    epoch_s: List[float] = field(default_factory=list)  # training time of each epoch
    gumbel_s: List[float] = field(default_factory=list)  # of which in the Gumbel call
    model: Optional[CategoricalVAE] = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# What each run trains under: the model code always calls F.gumbel_softmax.
IMPLEMENTATIONS: Dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "torch": contextlib.nullcontext,
    "gumbel_ext": gumbel_ext.patch_torch,
}


def train(name: str, seed: int, cfg: Config, data, device: torch.device) -> Run:
    x_train, x_test = data
    torch.manual_seed(seed)  # initial weights, and the Gumbel noise
    # The batch order has its own generator: the two implementations take different amounts
    # from the default one, which would otherwise give them different batches after epoch 1.
    batches = torch.Generator().manual_seed(seed)
    model = CategoricalVAE(cfg.hidden).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    timer = GumbelTimer(device)
    run = Run(name, seed, model=model)
    ratio = cfg.tau_end / cfg.tau_start
    with IMPLEMENTATIONS[name]():
        for epoch in range(cfg.epochs):
            tau = cfg.tau_start * ratio ** (epoch / max(cfg.epochs - 1, 1))  # geometric annealing
            order = torch.randperm(len(x_train), generator=batches).to(device)
            synchronize(device)
            start = clock() if device.type == "cpu" else time.perf_counter()
            for i in range(0, len(x_train), cfg.batch):
                train_step(model, opt, x_train[order[i : i + cfg.batch]], tau, timer)
            synchronize(device)
            run.epoch_s.append((clock() if device.type == "cpu" else time.perf_counter()) - start)
            run.gumbel_s.append(timer.seconds())
            run.elbo.append(elbo(model, x_test, torch.Generator().manual_seed(seed)))
    return run


# ------------------------------------------------------------------------------ report
def summary_elbo(run: Run) -> float:
    """A run's final ELBO: the mean over its last third of epochs (less noisy than one epoch)."""
    tail = run.elbo[-max(len(run.elbo) // 3, 1) :]
    return sum(tail) / len(tail)


def agreement(runs: Dict[str, List[Run]]) -> Dict[str, float]:
    """Do the two implementations train equally well? The difference of their mean final
    ELBOs, in units of its standard error estimated from the seed-to-seed spread (Welch).
    |z| <= Z_MAX passes. The standard error is itself estimated from a few seeds (about
    2 * seeds - 2 degrees of freedom), so z is Student-t distributed, not normal: with 4
    seeds a sampler of the right distribution exceeds 5 with probability about 0.25%
    (with 5 seeds, 0.1%); one of softmax(logits / 2) instead (tests/test_examples.py tries
    it) lands near z = -28."""
    a, b = ([summary_elbo(r) for r in runs[k]] for k in ("torch", "gumbel_ext"))
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    diff = statistics.mean(b) - statistics.mean(a)
    return {"torch": statistics.mean(a), "gumbel_ext": statistics.mean(b), "diff": diff, "se": se, "z": diff / se}


def median(values: List[float]) -> float:
    return statistics.median(values)


def isolated_call_s(fn, cfg: Config, device: torch.device) -> float:
    """Median seconds of one forward + backward of the Gumbel call alone, at the training
    step's shape, by torch.utils.benchmark (same clock as the step)."""
    from torch.utils import benchmark

    logits = torch.randn(cfg.batch, LATENTS, CATEGORIES, device=device, requires_grad=True)
    grad = torch.randn_like(logits)
    timer = benchmark.Timer(
        "torch.autograd.grad(fn(logits, tau=0.7, hard=True), logits, grad)",
        globals={"torch": torch, "fn": fn, "logits": logits, "grad": grad},
        num_threads=torch.get_num_threads(),
        **({"timer": clock} if device.type == "cpu" else {}),
    )
    return timer.blocked_autorange(min_run_time=0.3).median


def report_timing(runs: Dict[str, List[Run]], cfg: Config, device: torch.device) -> None:
    # The first epoch of each run is left out: it carries one-off costs (allocator, caches).
    clock_name = "CPU time of the training thread" if torch.get_num_threads() == 1 else "wall time"
    if runs["torch"][0].model is not None and next(runs["torch"][0].model.parameters()).is_cuda:
        clock_name = "wall time, CUDA events for the call"
    print(f"\ntime per epoch ({clock_name}; median over {cfg.seeds} seeds x {cfg.epochs - 1} epochs, first epoch of each run left out):")
    rows = {}
    for name, rs in runs.items():
        epoch = median([t for r in rs for t in r.epoch_s[1:]])
        call = median([t for r in rs for t in r.gumbel_s[1:]])
        share = median([g / e for r in rs for g, e in zip(r.gumbel_s[1:], r.epoch_s[1:])])
        rows[name] = (epoch, call, share)
        print(f"  {name:<11} epoch {epoch * 1e3:8.1f} ms   Gumbel call (fwd+bwd) {call * 1e3:7.1f} ms = {share:5.1%} of the step")
    (e0, c0, _), (e1, c1, _) = rows["torch"], rows["gumbel_ext"]
    print(f"  gumbel_ext vs F.gumbel_softmax: the call {c0 / c1:.1f}x faster, the training step {e0 / e1:.2f}x faster")
    # The call alone, without the step around it (warm caches, no hooks): what a benchmark of
    # the call reports, against what the step gains.
    t0 = isolated_call_s(F.gumbel_softmax, cfg, device)
    t1 = isolated_call_s(gumbel_ext.gumbel_softmax, cfg, device)
    print(
        f"  the call alone at [{cfg.batch}, {LATENTS}, {CATEGORIES}], fwd+bwd (torch.utils.benchmark): "
        f"F.gumbel_softmax {t0 * 1e6:.0f} us, gumbel_ext {t1 * 1e6:.0f} us, {t0 / t1:.1f}x"
    )


def tiles(images: torch.Tensor, rows: int, cols: int):
    """[rows * cols, 64] images -> one array of rows x cols 8x8 tiles, a 1-pixel gap between."""
    padded = F.pad(images.view(rows, cols, 8, 8), (0, 1, 0, 1))
    return padded.permute(0, 2, 1, 3).reshape(rows * 9, cols * 9)[:-1, :-1].numpy()


def plot(runs: Dict[str, List[Run]], data, path: str, device: torch.device) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 4.4))
    grid = fig.add_gridspec(1, 3, width_ratios=[1.3, 1, 1])
    ax = fig.add_subplot(grid[0])
    for (name, rs), color in zip(runs.items(), ["tab:blue", "tab:orange"]):
        curves = torch.tensor([r.elbo for r in rs])
        epochs = range(1, curves.shape[1] + 1)
        label = "F.gumbel_softmax" if name == "torch" else "gumbel_ext (patch_torch)"
        ax.plot(epochs, curves.mean(0).numpy(), color=color, label=f"{label}, mean of {len(rs)} seeds")
        ax.fill_between(epochs, curves.min(0).values.numpy(), curves.max(0).values.numpy(), color=color, alpha=0.2)
    ax.set(xlabel="epoch", ylabel="held-out ELBO (nats / image)", title="categorical VAE on digits")
    ax.legend(loc="best")

    model = runs["gumbel_ext"][0].model
    x = data[1][:8]
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        probs = torch.softmax(model.posterior_logits(x), -1).flatten(0, 1).cpu()
        z = F.one_hot(torch.multinomial(probs, 1, generator=gen).view(8, LATENTS), CATEGORIES).float()
        recon = torch.sigmoid(model.decode(z.to(device))).cpu()
        prior = F.one_hot(torch.randint(CATEGORIES, (16, LATENTS), generator=gen), CATEGORIES).float()
        samples = torch.sigmoid(model.decode(prior.to(device))).cpu()
    # rows of four: originals, their reconstructions, the next four originals, theirs
    pairs = torch.stack([x.cpu()[:4], recon[:4], x.cpu()[4:], recon[4:]]).flatten(0, 1)
    ax = fig.add_subplot(grid[1])
    ax.imshow(tiles(pairs, 4, 4), cmap="gray_r")
    ax.set(title="held-out digits (rows 1, 3)\nand reconstructions (rows 2, 4)", xticks=[], yticks=[])
    ax = fig.add_subplot(grid[2])
    ax.imshow(tiles(samples, 4, 4), cmap="gray_r")
    ax.set(title="samples from the uniform prior", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.seeds} seeds x {QUICK.epochs} epochs, a smaller MLP")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    # One thread by default: at this model's size (64x256 matrices) intra-op threads cost
    # more than they save, and on a busy machine a multi-threaded op stalls on whichever of
    # its threads was preempted, which makes the timings meaningless.
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads); default 1")
    parser.add_argument("--epochs", type=int, help="override the preset")
    parser.add_argument("--seeds", type=int, help="seeds per implementation (>= 2: the spread needs two)")
    parser.add_argument("--out", help="PNG path (default examples/results/discrete_vae[-quick].png)")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    cfg = Config(**{**cfg.__dict__, **{k: v for k, v in (("epochs", args.epochs), ("seeds", args.seeds)) if v}})
    if cfg.seeds < 2:
        parser.error("--seeds must be >= 2: the agreement check needs the seed-to-seed spread")
    out = args.out or os.path.join(HERE, "results", "discrete_vae" + ("-quick" if args.quick else "") + ".png")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    data = load_digits(device)
    print(
        f"categorical VAE, {LATENTS} latents x {CATEGORIES} categories, hard=True, tau {cfg.tau_start} -> {cfg.tau_end}; "
        f"digits: {len(data[0])} train / {len(data[1])} held out; {device}, {torch.get_num_threads()} threads; "
        f"{cfg.seeds} seeds x {cfg.epochs} epochs per implementation"
    )
    runs: Dict[str, List[Run]] = {"torch": [], "gumbel_ext": []}
    for seed in range(cfg.seeds):  # interleaved, so machine noise hits both alike
        for name in runs:
            run = train(name, seed, cfg, data, device)
            runs[name].append(run)
            print(f"  seed {seed} {name:<11} final ELBO {summary_elbo(run):8.2f}   {sum(run.epoch_s):6.2f} s")

    report_timing(runs, cfg, device)
    a = agreement(runs)
    ok = abs(a["z"]) <= Z_MAX
    print(
        f"\nfinal held-out ELBO (mean of the last third of epochs, mean over seeds): "
        f"F.gumbel_softmax {a['torch']:.2f}, gumbel_ext {a['gumbel_ext']:.2f}; difference {a['diff']:+.2f} "
        f"= {a['z']:+.2f} standard errors of the seed-to-seed spread: {'agree' if ok else 'DISAGREE'}"
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    plot(runs, data, out, device)
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
