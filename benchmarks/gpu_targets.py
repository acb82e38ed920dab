"""The CUDA target benchmark of the first GPU session (issue 12): only the cases the
targets are stated on, with two floors measured in the same run, inside a time budget.

    python3 -m benchmarks.gpu_targets --out DIR [--deadline-s 180]
    python3 -m benchmarks.gpu_targets --dry-run --out DIR     # CPU, tiny shapes (make test)

Cases, most valuable first: 8192x32000 fp32 (soft and hard, fwd and fwd+bwd), 256x10 fp32,
8192x32000 bf16, 64x128256 sample. Peers: torch.softmax, F.gumbel_softmax eager and
torch.compile of it -- one compiled function per mode for the whole run (no dynamo reset,
Inductor specializes per shape/dtype as any user's program would); each case's first
compiled call is timed apart as compile_s. Floors per case: a device-to-device copy moving
the case's bytes (bytes_moved / 2 copied: read + write) and the noise-only kernel
(`gumbel_ext.gumbel_noise`, N float32 written; twice for hard fwd+bwd, whose backward
regenerates it). Inputs are drawn on the device.

Before each case the time left is checked: a case that cannot finish is recorded as
skipped, never started. The JSON and the table are rewritten after every case, so a run
killed from outside still leaves what it measured. Writes <out>/<device>-targets.json and .md (the
case table and the targets table of benchmarks.cuda_targets).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import cuda_targets, report
from .check import check_case
from .implementations import IMPLS
from .measure import first_call_seconds, measure
from .workloads import Case, Workload

TARGET_WORKLOADS = {
    "lm-32k-batch": Workload("lm-32k-batch", (8192, 32000), user="LM training step (CUDA targets)"),
    "rl-head": Workload("rl-head", (256, 10), user="RL policy / VAE categorical head"),
    "lm-128k": Workload("lm-128k", (64, 128256), user="LM sampling, 128k vocabulary"),
}
# --dry-run: the same names and code paths, sizes a 2-core CPU runs in seconds.
DRY_WORKLOADS = {
    "lm-32k-batch": Workload("lm-32k-batch", (16, 320), user="dry-run stand-in"),
    "rl-head": Workload("rl-head", (256, 10), user="dry-run stand-in"),
    "lm-128k": Workload("lm-128k", (4, 1283), user="dry-run stand-in"),
}


def target_cases(workloads: Dict[str, Workload]) -> List[Case]:
    """Most targets per second first: fp32 at the target shape, then 256x10 (four targets
    that cost a few seconds), bf16, and the sample case, which has no target."""
    big = [[Case(workloads["lm-32k-batch"], d, m, p) for p in ("fwd", "fwd+bwd") for m in ("soft", "hard")]
           for d in ("fp32", "bf16")]
    small = [Case(workloads["rl-head"], "fp32", m, p) for p in ("fwd", "fwd+bwd") for m in ("soft", "hard")]
    return big[0] + small + big[1] + [Case(workloads["lm-128k"], "fp32", "sample", "fwd")]


class Peers:
    """The implementations of one run. The compiled functions are made once per mode and
    reused by every case (torch.compile caches one specialization per shape/dtype/grad)."""

    def __init__(self, compile_backend: str):
        self.backend = compile_backend
        self._compiled: Dict[tuple, Callable] = {}
        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(torch._dynamo.config, limit, max(64, getattr(torch._dynamo.config, limit)))

    def build(self, key: str, case: Case) -> Callable[[torch.Tensor], torch.Tensor]:
        if key != "compiled":
            return next(i for i in IMPLS if i.key == key).build(case)
        key = (case.mode, case.workload.dim)
        if key not in self._compiled:
            eager = next(i for i in IMPLS if i.key == "eager").build(case)
            self._compiled[key] = torch.compile(eager, dynamic=False, backend=self.backend)
        return self._compiled[key]


def peer_keys(case: Case) -> Tuple[str, ...]:
    extra = ("multinomial",) if case.mode == "sample" else ()
    return ("gumbel_ext", "softmax", "eager", "compiled") + extra


def make_input(case: Case, device: torch.device, seed: int) -> torch.Tensor:
    """Standard-normal logits drawn where they are used (a CPU randn of 262M elements
    would cost seconds per case)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(case.workload.shape, generator=gen, device=device, dtype=case.torch_dtype)


def _timed(call: Callable[[], object], device: torch.device, min_run_time: float, compiled: bool) -> dict:
    first = first_call_seconds(call, device)  # warm-up (and the compile)
    estimate = first_call_seconds(call, device) if compiled else first
    t = measure(call, estimate=estimate, min_run_time=min_run_time, min_runs=3)
    entry = {"median_s": t.median, "iqr_s": t.iqr, "runs": t.runs, "number_per_run": t.number_per_run,
             "first_call_s": first}
    if compiled:
        entry["compile_s"] = first
    return entry


def measure_floors(case: Case, x: torch.Tensor, min_run_time: float) -> dict:
    """The two floors of one case, timed like the implementations.

    copy: a device-to-device copy of bytes_moved / 2 bytes (it reads and writes them), the
    memory floor measured on this device instead of a data sheet. noise: the noise-only
    kernel over the case's elements (hard fwd+bwd draws the noise twice)."""
    device = x.device
    half = case.bytes_moved() // 2
    src = torch.empty(half, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    copy = _timed(lambda: dst.copy_(src), device, min_run_time, False)
    del src, dst
    rng = torch.tensor([7, 0], dtype=torch.int64, device=device)
    xd = x.detach()
    noise = _timed(lambda: torch.ops.gumbel_ext.gumbel_noise(xd, case.workload.dim, rng), device, min_run_time, False)
    calls = 2 if (case.mode == "hard" and case.pass_ == "fwd+bwd") else 1
    return {
        "copy_bytes_moved": 2 * half,
        "copy_s": copy["median_s"],
        "copy_gbps": 2 * half / copy["median_s"] / 1e9,
        "noise_s_per_call": noise["median_s"],
        "noise_calls": calls,
        "noise_s": calls * noise["median_s"],
    }


def run_case(case: Case, peers: Peers, device: torch.device, seed: int, min_run_time: float) -> dict:
    x = make_input(case, device, seed)
    grad = None
    if case.pass_ == "fwd+bwd":
        x.requires_grad_(True)
        grad = make_input(case, device, seed + 1)
    check = check_case(case, x, grad)
    results: Dict[str, dict] = {}
    for key in peer_keys(case):
        if key == "gumbel_ext" and check.status == "FAIL":
            results[key] = {"error": "failed the correctness check: not timed"}
            continue
        try:
            fwd = peers.build(key, case)
            call = (lambda: fwd(x)) if grad is None else (lambda: torch.autograd.grad(fwd(x), x, grad))
            entry = _timed(call, device, min_run_time, key == "compiled")
            entry["gbps"] = case.bytes_moved() / entry["median_s"] / 1e9
            results[key] = entry
        except Exception as err:  # noqa: BLE001 -- a peer that cannot run is reported, not fatal
            results[key] = {"error": " ".join(f"{type(err).__name__}: {err}".split())[:300]}
    try:
        floors = measure_floors(case, x, min_run_time)
    except Exception as err:  # noqa: BLE001
        floors = {"error": " ".join(f"{type(err).__name__}: {err}".split())[:300]}
    fused = results.get("gumbel_ext", {}).get("median_s")
    if fused and "copy_s" in floors:
        results["gumbel_ext"]["pct_copy"] = 100 * floors["copy_s"] / fused
    w = case.workload
    return {
        "key": case.key, "workload": w.name, "shape": w.shape_label, "dim": w.dim, "numel": w.numel,
        "dtype": case.dtype, "mode": case.mode, "pass": case.pass_, "bytes_moved": case.bytes_moved(),
        "check": vars(check), "results": results, "floors": floors,
        "speedups": {k: r["median_s"] / fused for k, r in results.items()
                     if k != "gumbel_ext" and fused and "median_s" in r},
    }


# What a case needs before it is worth starting, in seconds: the check, torch.compile's
# first call (each case is a new shape, dtype or grad mode for it), the timings.
def _case_allowance(case: Case, dry_run: bool) -> float:
    if dry_run:
        return 1.0
    return 15.0 + (8.0 if case.workload.numel > 1e8 else 2.0)


def _driver_version() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu_targets", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for <device>-targets.json and .md")
    p.add_argument("--deadline-s", type=float, default=240.0, help="stop starting cases after this many seconds")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, torch.compile with the eager backend")
    p.add_argument("--min-run-time", type=float, help="seconds of timing per measurement (default 0.1; dry run 0.001)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.dry_run:
        device, workloads, backend, min_run_time = torch.device("cpu"), DRY_WORKLOADS, "eager", 0.001
    else:
        if not torch.cuda.is_available():
            print("gpu_targets: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
            return 2
        device, workloads, backend, min_run_time = torch.device("cuda"), TARGET_WORKLOADS, "inductor", 0.1
    min_run_time = args.min_run_time or min_run_time
    meta = report.machine_info(device)
    meta["command"] = " ".join(["python3", "-m", "benchmarks.gpu_targets", *(argv if argv is not None else sys.argv[1:])])
    if device.type == "cuda":
        meta["driver"] = _driver_version()
    print(report.describe_machine(meta), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{meta['device']}-targets"
    peers = Peers(backend)
    record = {
        "meta": meta, "preset": "gpu-targets" + (" (dry run)" if args.dry_run else ""),
        "settings": {"min_run_time_s": min_run_time, "seed": args.seed, "deadline_s": args.deadline_s,
                     "torch_compile": {"dynamic": False, "backend": backend, "dynamo_reset_per_case": False}},
        "implementations": [{"key": i.key, "label": i.label, "role": i.role} for i in IMPLS],
        "cases": [], "skipped": [], "wall_s": 0.0,
    }
    for case in target_cases(workloads):
        left = args.deadline_s - (time.perf_counter() - start)
        need = _case_allowance(case, args.dry_run)
        if left < need:
            record["skipped"].append({"key": case.key, "reason": f"out of time ({left:.0f} s left, needs ~{need:.0f} s)"})
            print(f"skip {case.key}: {record['skipped'][-1]['reason']}", flush=True)
            continue
        t0 = time.perf_counter()
        record["cases"].append(run_case(case, peers, device, args.seed, min_run_time))
        fused = record["cases"][-1]["results"].get("gumbel_ext", {})
        print(f"{case.key}: {report.fmt_time(fused.get('median_s'))} in {time.perf_counter() - t0:.1f} s "
              f"(check {record['cases'][-1]['check']['status']})", flush=True)
        record["wall_s"] = time.perf_counter() - start
        # After every case: a kill from outside keeps what was measured.
        report.write_json(stem.with_suffix(".json"), record)
        write_markdown(stem.with_suffix(".md"), record)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    record["wall_s"] = time.perf_counter() - start
    report.write_json(stem.with_suffix(".json"), record)
    write_markdown(stem.with_suffix(".md"), record)
    print(stem.with_suffix(".md").read_text())
    return 1 if any(c["check"]["status"] == "FAIL" for c in record["cases"]) else 0


def write_markdown(path: Path, record: dict) -> None:
    impls = [i for i in record["implementations"] if any(i["key"] in c["results"] for c in record["cases"])]
    rows = report.table_rows(record["cases"], impls) if record["cases"] else None
    lines = [f"# gumbel_ext CUDA targets: {record['meta']['device']}", "", report.describe_machine(record["meta"]), "",
             f"Run time {record['wall_s']:.0f} s; command `{record['meta']['command']}`.", ""]
    if rows:
        lines += [report.render(rows, "github"), "", report.LEGEND, ""]
        if report.compile_summary(record):
            lines += [report.compile_summary(record), ""]
    lines += ["## Targets", "", cuda_targets.render(cuda_targets.evaluate(cuda_targets.cases_of(record, "this run")))]
    for s in record["skipped"]:
        lines.append(f"- skipped {s['key']}: {s['reason']}")
    for c in record["cases"]:
        if c["check"]["status"] == "FAIL":
            lines.append(f"- **Correctness FAILED** for {c['key']}: {c['check']['detail']}")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
