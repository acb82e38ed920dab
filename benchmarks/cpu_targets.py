"""The CPU targets of issue 4, measured in one run: gumbel_ext.gumbel_softmax against
F.gumbel_softmax (eager and torch.compile) and torch.softmax on the same tensor.

    python3 benchmarks/cpu_targets.py [--quick] [--no-compile] [--json out.json]
    GUMBEL_EXT_CPU_CAPABILITY=avx2 python3 benchmarks/cpu_targets.py   # another ISA copy

Times are medians of torch.utils.benchmark.Timer.blocked_autorange on all of torch's
threads; every ratio divides two medians taken in this run. On a shared machine the
absolute numbers move with the load (printed with the results); the ratios much less.
"copy" (x.clone()) is the cost of returning a new tensor of the output's size: for
outputs above glibc's mmap threshold (32 MiB) every call pays fresh page faults, which
THP_MEM_ALLOC_ENABLE=1 (torch's huge-page allocations) reduces.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gumbel_ext  # noqa: E402

THREADS = torch.get_num_threads()


def median_ms(fn, min_run_time):
    fn()  # warm-up (allocations, lazy init, compilation)
    timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=THREADS)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def forward_fns(x, hard, dim=-1, with_compile=True):
    fns = {
        "ours": lambda: gumbel_ext.gumbel_softmax(x, hard=hard, dim=dim),
        "eager": lambda: F.gumbel_softmax(x, hard=hard, dim=dim),
        "softmax": lambda: torch.softmax(x, dim=dim),
        # A fresh tensor of the output's size: allocation and first touch of its pages,
        # the floor for any op that returns one (it dominates at 1024 x 32000).
        "copy": lambda: x.clone(),
    }
    if with_compile:
        compiled = torch.compile(F.gumbel_softmax, dynamic=False)
        fns["compile"] = lambda: compiled(x, hard=hard, dim=dim)
    return fns


def fwd_bwd_fns(x, hard, dim=-1):
    leaf = x.detach().requires_grad_()
    grad = torch.randn_like(x)

    def run(f):
        def step():
            leaf.grad = None
            f(leaf, hard=hard, dim=dim).backward(grad)

        return step

    return {"ours": run(gumbel_ext.gumbel_softmax), "eager": run(F.gumbel_softmax)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter timing runs")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(F.gumbel_softmax)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    run_time = 0.3 if args.quick else 1.0
    torch.manual_seed(0)

    capability = torch.ops.gumbel_ext._cpu_capability() if gumbel_ext._EXTENSION_AVAILABLE else "reference"
    print(f"torch {torch.__version__}, {THREADS} threads, gumbel_ext CPU kernels: {capability}, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    results = []

    def record(case, fns, targets):
        times = {name: median_ms(fn, run_time) for name, fn in fns.items()}
        row = {"case": case, "ms": times}
        line = f"{case:42s} " + "  ".join(f"{k} {v:8.3f} ms" for k, v in times.items())
        checks = []
        for label, baseline, want, kind in targets:
            if baseline not in times:
                continue
            ratio = times[baseline] / times["ours"] if kind == "speedup" else times["ours"] / times[baseline]
            ok = ratio >= want if kind == "speedup" else ratio <= want
            row[label] = ratio
            checks.append(f"{label} {ratio:6.2f}{'x' if kind == 'speedup' else ''} "
                          f"({'>=' if kind == 'speedup' else '<='} {want}) {'ok' if ok else 'MISSED'}")
        print(line + ("\n    " + " | ".join(checks) if checks else ""), flush=True)
        results.append(row)
        return times

    fp32_times = {}
    for shape in [(4096, 1000), (1024, 32000)]:
        x = torch.randn(shape)
        for hard in (False, True):
            mode = "hard" if hard else "soft"
            case = f"fwd {mode} {shape[0]}x{shape[1]} fp32"
            times = record(
                case,
                forward_fns(x, hard, with_compile=not args.no_compile),
                [("vs eager", "eager", 20, "speedup"), ("vs compile", "compile", 10, "speedup"),
                 ("time/softmax", "softmax", 1.5, "ratio")],
            )
            fp32_times[(shape, hard)] = times["ours"]
            for dtype in (torch.bfloat16, torch.float16):
                xd = x.to(dtype)
                t = median_ms(lambda: gumbel_ext.gumbel_softmax(xd, hard=hard), run_time)
                ratio = t / fp32_times[(shape, hard)]
                name = str(dtype).replace("torch.", "")
                print(f"    {name}: {t:.3f} ms = {ratio:.2f} x fp32 (<= 1.5) {'ok' if ratio <= 1.5 else 'MISSED'}")
                results.append({"case": f"{case} as {name}", "ms": {"ours": t}, "time/fp32": ratio})
            record(f"fwd+bwd {mode} {shape[0]}x{shape[1]} fp32", fwd_bwd_fns(x, hard),
                   [("vs eager", "eager", 10, "speedup")])

    x = torch.randn(256, 10)
    for hard in (False, True):
        record(f"fwd {'hard' if hard else 'soft'} 256x10 fp32", forward_fns(x, hard, with_compile=False),
               [("vs eager", "eager", 3, "speedup")])
    x = torch.randn(64, 256, 32, 32)
    for hard in (False, True):
        record(f"fwd {'hard' if hard else 'soft'} 64x256x32x32 dim=1 fp32",
               forward_fns(x, hard, dim=1, with_compile=False), [("vs eager", "eager", 10, "speedup")])

    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"capability": capability, "threads": THREADS, "results": results}, indent=1))


if __name__ == "__main__":
    main()
