"""``make bench``: gumbel_ext against F.gumbel_softmax (eager and torch.compile), the
sampling baselines and the softmax floor, on named workloads.

    python3 -m benchmarks.run             # default set, about 2 minutes on a 2-core CPU
    python3 -m benchmarks.run --quick     # smoke run, seconds
    python3 -m benchmarks.run --full      # every workload x dtype x mode x pass
    python3 -m benchmarks.run --device cpu --workloads classifier,lm-128k --dtypes bf16

Writes <out>/<device>[-quick|-full|-custom].json, .md and .png (see benchmarks/README.md)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from . import report
from .check import check_case
from .implementations import IMPL_KEYS, IMPLS, impls_for
from .measure import first_call_seconds, measure
from .memory import cuda_peak_bytes, saved_tensor_bytes
from .workloads import DTYPES, MODES, PASSES, Case, Preset, find_workloads, make_cases, make_input, preset_for

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _csv(choices: Optional[Sequence[str]] = None):
    def parse(text: str) -> List[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if choices is not None and t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {list(choices)}")
        return items

    return parse


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke run on tiny tensors (seconds)")
    size.add_argument("--full", action="store_true", help="every workload, dtype, mode and pass")
    p.add_argument("--workloads", type=_csv(), help="comma-separated workload names (see workloads.py)")
    p.add_argument("--dtypes", type=_csv(DTYPES), help=f"comma-separated, from {list(DTYPES)}")
    p.add_argument("--modes", type=_csv(MODES), help=f"comma-separated, from {list(MODES)}")
    p.add_argument("--passes", type=_csv(PASSES), help=f"comma-separated, from {list(PASSES)}")
    p.add_argument("--impls", type=_csv(IMPL_KEYS), help=f"comma-separated, from {list(IMPL_KEYS)}")
    p.add_argument("--min-run-time", type=float, help="seconds of timing per measurement")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (default: benchmarks/results)")
    p.add_argument("--seed", type=int, default=0, help="seed of the input logits")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p.parse_args(argv)


def _preset(args: argparse.Namespace, device: torch.device) -> tuple:
    name = "quick" if args.quick else "full" if args.full else "default"
    preset = preset_for(name, device.type)
    custom = any(getattr(args, a) for a in ("workloads", "dtypes", "modes", "passes", "impls"))
    workloads = find_workloads(args.workloads) if args.workloads else preset.workloads
    preset = Preset(
        workloads,
        tuple(args.dtypes or preset.dtypes),
        tuple(args.modes or preset.modes),
        tuple(args.passes or preset.passes),
        args.min_run_time or preset.min_run_time,
        preset.min_runs,
    )
    stem_suffix = "-custom" if custom else "" if name == "default" else f"-{name}"
    return name + (" (custom)" if custom else ""), preset, stem_suffix


def _error(err: BaseException) -> Dict[str, str]:
    return {"error": " ".join(f"{type(err).__name__}: {err}".split())[:300]}


def run_impl(impl, case: Case, x: torch.Tensor, grad: Optional[torch.Tensor], preset: Preset,
             device: torch.device, peak: Optional[float]) -> dict:
    if impl.compiled:
        # One compile per case, timed apart, and no recompile limit across cases.
        torch._dynamo.reset()
    forward = impl.build(case)
    if grad is None:
        def call():
            return forward(x)
    else:
        def call():
            return torch.autograd.grad(forward(x), x, grad)

    first = first_call_seconds(call, device)  # also the warm-up
    # A compiled first call is mostly compile: size the measurement on a second call.
    estimate = first_call_seconds(call, device) if impl.compiled else first
    t = measure(call, estimate=estimate, min_run_time=preset.min_run_time, min_runs=preset.min_runs)
    entry = {
        "median_s": t.median,
        "iqr_s": t.iqr,
        "runs": t.runs,
        "number_per_run": t.number_per_run,
        "first_call_s": first,
        "gbps": case.bytes_moved() / t.median / 1e9,
    }
    if impl.compiled:
        entry["compile_s"] = first
    if peak:
        entry["pct_peak"] = 100 * case.bytes_moved() / t.median / peak
    if grad is not None and impl.role != "floor":
        saved = saved_tensor_bytes(lambda: forward(x), [x])
        entry.update(saved_bytes=saved.total_bytes, saved_beyond_inputs_bytes=saved.beyond_inputs_bytes)
    peak_bytes = cuda_peak_bytes(call, device)
    if peak_bytes is not None:
        entry["cuda_peak_bytes"] = peak_bytes
    return entry


def run_case(case: Case, impls, preset: Preset, device: torch.device, seed: int, peak, progress) -> dict:
    x = make_input(case, device, seed)
    grad = None
    if case.pass_ == "fwd+bwd":
        x.requires_grad_(True)
        grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1)).to(x)
    check = check_case(case, x, grad)
    results = {}
    for impl in impls:
        progress.set_postfix_str(f"{case.key} {impl.key}", refresh=True)
        if impl.key == "gumbel_ext" and check.status == "FAIL":
            results[impl.key] = {"error": "failed the correctness check: not timed"}
        else:
            try:
                results[impl.key] = run_impl(impl, case, x, grad, preset, device, peak)
            except Exception as err:  # noqa: BLE001 -- a baseline that cannot run is reported, not fatal
                results[impl.key] = _error(err)
        progress.update(1)
    fused = results.get("gumbel_ext", {}).get("median_s")
    speedups = {
        k: r["median_s"] / fused for k, r in results.items() if k != "gumbel_ext" and fused and "median_s" in r
    }
    w = case.workload
    return {
        "key": case.key,
        "workload": w.name,
        "shape": w.shape_label,
        "dim": w.dim,
        "numel": w.numel,
        "dtype": case.dtype,
        "mode": case.mode,
        "pass": case.pass_,
        "bytes_moved": case.bytes_moved(),
        "check": vars(check),
        "results": results,
        "speedups": speedups,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm  # after argparse: --help works without the bench extras

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    preset_name, preset, suffix = _preset(args, device)
    keys = tuple(args.impls or IMPL_KEYS)
    cases = make_cases(preset.workloads, preset.dtypes, preset.modes, preset.passes)
    plan = [(c, impls_for(c, keys)) for c in cases]
    meta = report.machine_info(device)
    peak = report.peak_bandwidth(device)
    print(report.describe_machine(meta), flush=True)

    start = time.perf_counter()
    records = []
    with tqdm(total=sum(len(i) for _, i in plan), desc="bench", unit="impl", file=sys.stderr) as progress:
        for case, impls in plan:
            records.append(run_case(case, impls, preset, device, args.seed, peak, progress))
    wall = time.perf_counter() - start

    used = [i for i in IMPLS if any(i.key in r["results"] for r in records)]
    record = {
        "meta": meta,
        "preset": preset_name,
        "settings": {
            "workloads": [w.name for w in preset.workloads],
            "dtypes": list(preset.dtypes),
            "modes": list(preset.modes),
            "passes": list(preset.passes),
            "min_run_time_s": preset.min_run_time,
            "min_runs": preset.min_runs,
            "seed": args.seed,
            "torch_compile": {"dynamic": False, "dynamo_reset_per_case": True},
        },
        "implementations": [{"key": i.key, "label": i.label, "role": i.role} for i in used],
        "cases": records,
        "wall_s": wall,
    }
    if hasattr(os, "getloadavg"):
        meta["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]

    impls = record["implementations"]
    print(report.render(report.table_rows(records, impls), "simple"))
    print(report.LEGEND)
    if report.compile_summary(record):
        print(report.compile_summary(record))

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (meta["device"] + suffix)
    report.write_json(stem.with_suffix(".json"), record)
    plotted = not args.no_plot and report.write_plot(stem.with_suffix(".png"), record)
    report.write_markdown(
        stem.with_suffix(".md"), record, report.table_rows(records, impls), stem.with_suffix(".png").name if plotted else None
    )
    written = [stem.with_suffix(s) for s in (".json", ".md") + ((".png",) if plotted else ())]
    print(f"\n{len(records)} cases in {wall:.0f} s; wrote " + ", ".join(str(p) for p in written))

    failed = [r["key"] for r in records if r["check"]["status"] == "FAIL"]
    if failed:
        print(f"CORRECTNESS FAILED (not timed): {failed}", file=sys.stderr)
        for r in records:
            if r["check"]["status"] == "FAIL":
                print(f"  {r['key']}: {r['check']['detail']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
