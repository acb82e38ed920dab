"""The token sampler on the CPU (issue #13): gumbel_ext.sample with temperature / top-k /
top-p / min-p against the sort-based sampler serving code writes, and each filter's cost
over plain sample. Part of ``make bench``; alone:

    python3 -m benchmarks.sampler [--quick] [--min-run-time S] [--out DIR]

Logits are standard normal (as in benchmarks/workloads.py) times --scale: N(0, 1) logits
over a 128k vocabulary are nearly flat, the worst case for top-p (it keeps most of the
row); a scale of 4 is closer to a trained LM's peaked rows. Medians of
torch.utils.benchmark blocked_autorange at torch's thread count, all in one run; ratios
only within it. Writes <out>/cpu-sampler[-quick].md and .json."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

import gumbel_ext

from .measure import first_call_seconds, measure

SHAPES = {"lm-128k": (64, 128256), "lm-32k": (1024, 32000)}
QUICK_SHAPES = {"tiny": (8, 4000)}
# Decode batches: fewer rows than threads, so each row is split across the threads (Note
# [One row across threads] in csrc/cpu/sample_kernels.h). --decode times them with all
# threads and with one (what such a row got before the split), in the same run.
DECODE_SHAPES = {"decode-1": (1, 128256), "decode-4": (4, 128256)}
TEMPERATURE, TOP_K, TOP_P, MIN_P = 0.7, 50, 0.9, 0.05


def peer_sample(x: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, top-k, top-p by a full sort, then multinomial: the usual serving code."""
    x = x / temperature
    kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
    x = x.masked_fill(x < kth, float("-inf"))
    sorted_x, order = torch.sort(x, dim=-1, descending=True)
    probs = sorted_x.softmax(-1)
    drop = probs.cumsum(-1) - probs >= top_p
    x = x.scatter(-1, order, sorted_x.masked_fill(drop, float("-inf")))
    return torch.multinomial(x.softmax(-1), 1).squeeze(-1)


def variants(x: torch.Tensor):
    seeds = torch.arange(x.shape[0], dtype=torch.int64)
    s = gumbel_ext.sample
    return {
        "peer: sort-based T+top-k+top-p+multinomial": lambda: peer_sample(x, TEMPERATURE, TOP_K, TOP_P),
        "sample (plain, today's op)": lambda: s(x),
        f"sample T={TEMPERATURE}, seeds": lambda: s(x, temperature=TEMPERATURE, seeds=seeds),
        f"sample top_k={TOP_K}": lambda: s(x, temperature=TEMPERATURE, top_k=TOP_K, seeds=seeds),
        f"sample top_p={TOP_P}": lambda: s(x, temperature=TEMPERATURE, top_p=TOP_P, seeds=seeds),
        f"sample min_p={MIN_P}": lambda: s(x, temperature=TEMPERATURE, min_p=MIN_P, seeds=seeds),
        f"sample top_k={TOP_K} + top_p={TOP_P}": lambda: s(x, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P,
                                                          seeds=seeds),
        "  + min_p + logprobs": lambda: s(x, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P, min_p=MIN_P,
                                          seeds=seeds, return_logprobs=True),
    }


def run(shapes, scale: float, min_run_time: float):
    results = []
    for name, shape in shapes.items():
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * scale
        row = {"workload": name, "shape": list(shape), "scale": scale, "ms": {}}
        for label, fn in variants(x).items():
            estimate = first_call_seconds(fn, x.device)
            row["ms"][label] = measure(fn, estimate=estimate, min_run_time=min_run_time, min_runs=3).median * 1e3
        results.append(row)
    return results


def run_decode(scale: float, min_run_time: float):
    results = []
    threads = torch.get_num_threads()
    for name, shape in DECODE_SHAPES.items():
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * scale
        row = {"workload": name, "shape": list(shape), "scale": scale, "threads": threads, "ms": {}, "ms_1thread": {}}
        for label, fn in variants(x).items():
            if label.startswith("peer"):
                continue
            for key, n in (("ms", threads), ("ms_1thread", 1)):
                torch.set_num_threads(n)
                try:
                    estimate = first_call_seconds(fn, x.device)
                    row[key][label] = measure(fn, estimate=estimate, min_run_time=min_run_time, min_runs=3).median * 1e3
                finally:
                    torch.set_num_threads(threads)
        results.append(row)
    return results


def decode_table(results) -> str:
    lines = []
    for row in results:
        lines += [f"### {row['workload']} {row['shape'][0]}x{row['shape'][1]}, logits N(0,1) x {row['scale']}", "",
                  f"| variant | ms, {row['threads']} threads (row split) | ms, 1 thread | speedup |",
                  "|---|---:|---:|---:|"]
        for k, v in row["ms"].items():
            one = row["ms_1thread"][k]
            lines.append(f"| {k} | {v:.3f} | {one:.3f} | {one / v:.2f} |")
        lines.append("")
    return "\n".join(lines)


def table(results) -> str:
    lines = []
    for row in results:
        ms = row["ms"]
        peer = next(v for k, v in ms.items() if k.startswith("peer"))
        plain = ms["sample (plain, today's op)"]
        lines += [f"### {row['workload']} {row['shape'][0]}x{row['shape'][1]}, logits N(0,1) x {row['scale']}", "",
                  "| variant | ms (median) | x plain sample | speedup vs peer |", "|---|---:|---:|---:|"]
        for k, v in ms.items():
            lines.append(f"| {k} | {v:.3f} | {v / plain:.2f} | {peer / v:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.sampler", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one tiny shape (seconds)")
    p.add_argument("--scale", type=float, nargs="+", default=[1.0, 4.0], help="logit scales (default 1 4)")
    p.add_argument("--min-run-time", type=float, default=0.3)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--decode", action="store_true",
                   help="only the decode shapes 1x128256 and 4x128256, with all threads and with one")
    args = p.parse_args(argv)
    if args.decode:
        results = [r for scale in args.scale for r in run_decode(scale, args.min_run_time)]
        text = (f"# Token sampler, CPU decode shapes ({platform.processor() or platform.machine()}, "
                f"torch {torch.__version__})\n\nT={TEMPERATURE}; rows split across threads vs one thread, "
                "same run, medians.\n\n" + decode_table(results))
        print(text)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cpu-sampler-decode.md").write_text(text)
        (args.out / "cpu-sampler-decode.json").write_text(json.dumps(results, indent=1))
        return
    shapes = QUICK_SHAPES if args.quick else SHAPES
    results = [r for scale in args.scale for r in run(shapes, scale, 0.02 if args.quick else args.min_run_time)]
    header = (f"# Token sampler, CPU ({platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__})\n\n"
              f"T={TEMPERATURE}; peer = sort-based temperature + top-k={TOP_K} + top-p={TOP_P} + multinomial.\n\n")
    text = header + table(results)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "cpu-sampler" + ("-quick" if args.quick else "")
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
