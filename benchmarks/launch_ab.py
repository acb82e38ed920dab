"""A/B timing of the CUDA launch knobs in the first GPU session (issue 12), gumbel_ext's
ops only, each setting in its own process:

    python3 -m benchmarks.launch_ab --out DIR [--deadline-s 55]
    python3 -m benchmarks.launch_ab --dry-run --out DIR     # CPU, tiny shapes (make test)

The knobs are read once per process (csrc/cuda/launch_settings.h), so
every setting runs in a fresh worker process with the variables set, one after another on
the same GPU:

- ``GUMBEL_EXT_SPLIT`` auto | off | workspace (docs/performance.md, "Rows split across
  blocks"): 64x128256 fp32 soft fwd, hard fwd+bwd, sample; 8192x32000 fp32 soft fwd,
  hard fwd+bwd.
- ``GUMBEL_EXT_ALIGNED_ROWS`` auto | off (docs/performance.md, "Warp kernels'
  occupancy"): 4096x1000 fp32 and bf16 soft fwd, hard fwd, soft fwd+bwd.

Both knobs at auto is one configuration, so one worker, ``auto``, times every case and is
the baseline of both; then ``split-off``, ``aligned-off`` and ``split-workspace`` (the
least valuable last: the deadline drops it first). Inputs are drawn on the device; times
are medians and IQRs of benchmarks.measure; after its timings a worker records, through
the profiler, which gumbel_ext kernels each case launched (so the table shows that the
setting took effect).

Before each worker the time left is checked: a worker that cannot finish is recorded as
skipped, never started; each gets a subprocess timeout too, and rewrites its own JSON
after every case, so a killed worker still gives what it measured. The parent rewrites
<out>/launch-ab.json and <out>/launch-ab.md (per knob: case, setting, median, time / the
auto setting's of the same run, GB/s of the bytes moved, kernels) after every worker.
Exit status 1 when a worker failed or timed out (a case error included), else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import gpu_targets, report
from .implementations import IMPLS
from .measure import first_call_seconds, measure
from .workloads import Case, Workload

SPLIT, ALIGNED = "GUMBEL_EXT_SPLIT", "GUMBEL_EXT_ALIGNED_ROWS"

GPU_WORKLOADS = {
    "lm-128k": gpu_targets.TARGET_WORKLOADS["lm-128k"],
    "lm-32k-batch": gpu_targets.TARGET_WORKLOADS["lm-32k-batch"],
    "classifier": Workload("classifier", (4096, 1000), user="ImageNet-size classifier head"),
}
# --dry-run: the same names and code paths, sizes a 2-core CPU runs in well under a second.
DRY_WORKLOADS = {
    "lm-128k": gpu_targets.DRY_WORKLOADS["lm-128k"],
    "lm-32k-batch": gpu_targets.DRY_WORKLOADS["lm-32k-batch"],
    "classifier": Workload("classifier", (16, 100), user="dry-run stand-in"),
}


def split_cases(w: Dict[str, Workload]) -> List[Case]:
    """Few long rows (auto: P = 8 slices per row on an H200) and many (auto: P = 2, two
    62.5 KiB slices instead of one 125 KiB block per row)."""
    long_, batch = w["lm-128k"], w["lm-32k-batch"]
    return [Case(long_, "fp32", "soft", "fwd"), Case(long_, "fp32", "hard", "fwd+bwd"),
            Case(long_, "fp32", "sample", "fwd"),
            Case(batch, "fp32", "soft", "fwd"), Case(batch, "fp32", "hard", "fwd+bwd")]


def aligned_cases(w: Dict[str, Workload]) -> List[Case]:
    return [Case(w["classifier"], d, m, p) for d in ("fp32", "bf16")
            for m, p in (("soft", "fwd"), ("hard", "fwd"), ("soft", "fwd+bwd"))]


@dataclass(frozen=True)
class Knob:
    env: str
    settings: Tuple[str, ...]  # "auto" first: the baseline of the ratios
    cases: Callable[[Dict[str, Workload]], List[Case]]
    what: str


KNOBS = (
    Knob(SPLIT, ("auto", "off", "workspace"), split_cases,
         "rows of >= 8192 columns: auto splits a row across P blocks exchanging through a thread-block "
         "cluster on sm_90 (P = 8 at 64x128256, 2 at 8192x32000 fp32), off runs one block per row, "
         "workspace splits through the sm_80 exchange (global workspace, cooperative launch)"),
    Knob(ALIGNED, ("auto", "off"), aligned_cases,
         "rows of up to 1024 columns, 16-byte aligned: auto runs the warp kernels' aligned-rows copy (8 blocks "
         "per SM for the forward: one wave at 4096x1000), off the general copy (4)"),
)
KNOB_BY_ENV = {k.env: k for k in KNOBS}


@dataclass(frozen=True)
class Worker:
    name: str
    knob: Optional[str]  # None: every knob at auto, timing every knob's cases
    setting: str = "auto"

    def env(self) -> Dict[str, str]:
        """Every knob set explicitly, so a variable left in the caller's environment cannot
        leak into the baseline."""
        env = {k.env: "auto" for k in KNOBS}
        if self.knob:
            env[self.knob] = self.setting
        return env

    def cases(self, workloads: Dict[str, Workload]) -> List[Tuple[str, Case]]:
        """(knob, case): the knob whose A/B the case belongs to."""
        knobs = KNOBS if self.knob is None else (KNOB_BY_ENV[self.knob],)
        return [(k.env, c) for k in knobs for c in k.cases(workloads)]


WORKERS = (
    Worker("auto", None),
    Worker("split-off", SPLIT, "off"),
    Worker("aligned-off", ALIGNED, "off"),
    Worker("split-workspace", SPLIT, "workspace"),
)


# What a worker needs before it is worth starting, in seconds: a fresh process imports
# torch and gumbel_ext and creates its CUDA context (~6 s on a warm H200 machine), the
# profiler's first start (~2 s), then each case's warm-up and timing (~0.6 s at 0.2 s of
# timing). Its timeout: twice that plus 15 s, never past the deadline (the dry run: the
# deadline alone, as a loaded 2-core CPU can take seconds to import torch).
def worker_allowance(n_cases: int, dry_run: bool) -> float:
    return 1.0 if dry_run else 8.0 + 0.6 * n_cases


def worker_timeout(need: float, left: float, dry_run: bool) -> float:
    return left if dry_run else min(left, 2 * need + 15.0)


# ----------------------------------------------------------------------- the worker
def time_case(case: Case, device: torch.device, seed: int, min_run_time: float) -> Tuple[dict, Callable[[], object]]:
    """gumbel_ext alone on one case, timed as benchmarks.gpu_targets times it; returns the
    entry and the call (for the kernel pass)."""
    x = gpu_targets.make_input(case, device, seed)
    grad = None
    if case.pass_ == "fwd+bwd":
        x.requires_grad_(True)
        grad = gpu_targets.make_input(case, device, seed + 1)
    fwd = next(i for i in IMPLS if i.key == "gumbel_ext").build(case)
    call = (lambda: fwd(x)) if grad is None else (lambda: torch.autograd.grad(fwd(x), x, grad))
    estimate = first_call_seconds(call, device)  # the warm-up
    t = measure(call, estimate=estimate, min_run_time=min_run_time, min_runs=3)
    w = case.workload
    entry = {"key": case.key, "shape": w.shape_label, "dtype": case.dtype, "mode": case.mode, "pass": case.pass_,
             "bytes_moved": case.bytes_moved(), "median_s": t.median, "iqr_s": t.iqr, "runs": t.runs,
             "number_per_run": t.number_per_run, "gbps": case.bytes_moved() / t.median / 1e9}
    return entry, call


_KERNEL_NAME = re.compile(r"(\w+_kernel)(<[^()]*>)?")


def short_kernel_name(name: str) -> Optional[str]:
    """`void gumbel_ext::cuda::warp_forward_kernel<float, 8, true>(gumbel_ext::cuda::...)`
    -> `warp_forward_kernel<float, 8, true>`: the template arguments say which copy or
    exchange ran (kAlignedRows, kCluster). None for what is not a kernel (an op's name)."""
    head = name.replace("(anonymous namespace)::", "").split("(", 1)[0]  # the name, not its arguments
    found = _KERNEL_NAME.search(head)
    return found.group(1) + (found.group(2) or "") if found else None


def launched_kernels(call: Callable[[], object], device: torch.device) -> List[str]:
    """The gumbel_ext kernels one call launches. On the CPU (the dry run) the same code
    profiles the CPU ops, which are no kernels: []."""
    cuda = device.type == "cuda"
    activity = torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[activity]) as prof:
        call()
        if cuda:
            torch.cuda.synchronize()
    names = [short_kernel_name(e.name) for e in prof.events() if "gumbel_ext" in e.name]
    names = [n for n in names if n]
    return sorted(set(names), key=names.index)


def _write_atomically(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".tmp")
    report.write_json(tmp, record)
    os.replace(tmp, path)  # a kill mid-write leaves the previous version, never half a file


def _error_text(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def run_worker(worker: Worker, out_json: Path, dry_run: bool, min_run_time: float, seed: int) -> int:
    """Time the worker's cases in this process (its knobs set by the parent), then record
    their kernels; the JSON is rewritten after every case."""
    device = torch.device("cpu" if dry_run else "cuda")
    workloads = DRY_WORKLOADS if dry_run else GPU_WORKLOADS
    record = {"worker": worker.name, "env": {k.env: os.environ.get(k.env) for k in KNOBS}, "cases": []}
    calls = []
    for knob, case in worker.cases(workloads):
        t0 = time.perf_counter()
        try:
            entry, call = time_case(case, device, seed, min_run_time)
        except Exception as err:  # noqa: BLE001 -- one case's error is recorded, the rest still run
            entry, call = {"key": case.key, "error": _error_text(err)}, None
        record["cases"].append({"knob": knob, **entry})
        calls.append(call)
        _write_atomically(out_json, record)
        print(f"  {worker.name} {case.key}: {report.fmt_time(entry.get('median_s'))}"
              f"{' ' + entry['error'] if 'error' in entry else ''} ({time.perf_counter() - t0:.1f} s)", flush=True)
    # After every timing: the profiler is never active while a case is timed.
    for entry, call in zip(record["cases"], calls):
        if call is None:
            continue
        try:
            entry["kernels"] = launched_kernels(call, device)
        except Exception as err:  # noqa: BLE001 -- the timings stand without the kernel names
            entry["kernels_error"] = _error_text(err)
    _write_atomically(out_json, record)
    return 1 if any("error" in c for c in record["cases"]) else 0


# ----------------------------------------------------------------------- the parent
def spawn_worker(worker: Worker, tmp: Path, timeout: float, args: argparse.Namespace) -> dict:
    """One worker process: its output goes to this process's output (the session log)."""
    out_json = tmp / f"{worker.name}.json"
    command = [sys.executable, "-m", "benchmarks.launch_ab", "--worker", worker.name, "--worker-json", str(out_json),
               "--min-run-time", str(args.min_run_time), "--seed", str(args.seed)]
    command += ["--dry-run"] if args.dry_run else []
    entry = {"name": worker.name, "knob": worker.knob, "setting": worker.setting, "env": worker.env(),
             "timeout_s": round(timeout, 1)}
    settings = " ".join(f"{k}={v}" for k, v in worker.env().items())
    print(f"{worker.name}: {settings} (timeout {timeout:.0f} s)", flush=True)
    t0 = time.perf_counter()
    try:
        rc = subprocess.run(command, cwd=report.REPO, env={**os.environ, **worker.env()}, timeout=timeout).returncode
        entry.update(status="ok" if rc == 0 else "FAILED", returncode=rc)
    except subprocess.TimeoutExpired:
        entry.update(status="TIMED OUT", returncode=None)
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    try:
        done = json.loads(out_json.read_text())
        entry["env_seen"], entry["cases"] = done["env"], done["cases"]  # env_seen: the knobs the worker read
    except (OSError, ValueError, KeyError):
        entry["cases"] = []
    return entry


def comparisons(record: dict) -> List[dict]:
    """One row per (knob, case, setting), knob-major: the setting's median, IQR, GB/s and
    kernels, and its time / the auto setting's in the same run (None without both)."""
    rows = []
    for knob in KNOBS:
        measured: Dict[Tuple[str, str], dict] = {}  # (setting, case key) -> the case entry
        keys: List[str] = []
        for worker in record["workers"]:
            if worker.get("knob") not in (None, knob.env):
                continue  # another knob's worker
            setting = worker.get("env", {}).get(knob.env)
            for case in worker.get("cases", []):
                if case.get("knob") != knob.env:
                    continue  # the auto worker times every knob's cases
                measured.setdefault((setting, case["key"]), case)
                if case["key"] not in keys:
                    keys.append(case["key"])
        for key in keys:
            auto = measured.get(("auto", key), {}).get("median_s")
            for setting in knob.settings:
                case = measured.get((setting, key))
                median = (case or {}).get("median_s")
                rows.append({"knob": knob.env, "case": key, "setting": setting, "median_s": median,
                             "iqr_s": (case or {}).get("iqr_s"), "gbps": (case or {}).get("gbps"),
                             "ratio": median / auto if median and auto else None,
                             "kernels": (case or {}).get("kernels", []),
                             "error": (case or {}).get("error") or ("" if case else "not measured")})
    return rows


def table_rows(record: dict, knob: str) -> List[List[str]]:
    rows = [["case", "setting", "median", "/ auto", "GB/s", "kernels"]]
    for r in comparisons(record):
        if r["knob"] != knob:
            continue
        if r["median_s"] is None:
            rows.append([r["case"], r["setting"], r["error"][:80], "", "", ""])
            continue
        spread = f" ±{100 * r['iqr_s'] / r['median_s']:.0f}%" if r["iqr_s"] is not None else ""
        rows.append([r["case"], r["setting"], report.fmt_time(r["median_s"]) + spread,
                     f"{r['ratio']:.3f}x" if r["ratio"] else "", f"{r['gbps']:.4g}" if r["gbps"] else "",
                     ", ".join(r["kernels"])])
    return rows


def write_markdown(path: Path, record: dict) -> None:
    meta = record["meta"]
    lines = [f"# gumbel_ext launch knobs, A/B: {meta['device']}", "", report.describe_machine(meta), "",
             f"Run time {record['wall_s']:.0f} s; command `{meta['command']}`.", "",
             "gumbel_ext's op alone, inputs drawn on the device. Each setting ran in its own process (the knobs "
             "are read once per process), one after another on the same GPU. Medians per call (±IQR as % of "
             "the median); `/ auto` is the setting's time / the auto setting's in this run: above 1.000x, auto "
             "is faster. GB/s: the bytes an ideal kernel moves / time. Kernels: the gumbel_ext kernels one "
             "call launched (profiler; none on a CPU)."]
    if record.get("dry_run"):
        lines += ["", "**Dry run** (CPU, tiny shapes): the knobs change nothing here; only the code paths ran."]
    for knob in KNOBS:
        rows = table_rows(record, knob.env)
        lines += ["", f"## {knob.env}", "", knob.what + ".", ""]
        lines += [report.render(rows, "github") if len(rows) > 1 else "(nothing measured)"]
    lines += ["", "## Workers", ""]
    for w in record["workers"]:
        env = " ".join(f"{k}={v}" for k, v in w["env"].items())
        if w["status"] == "skipped":
            lines.append(f"- {w['name']} ({env}): skipped, {w['reason']}")
        else:
            errors = [c for c in w["cases"] if "error" in c]
            lines.append(f"- {w['name']} ({env}): {w['status']} in {w['seconds']:.0f} s (timeout "
                         f"{w['timeout_s']:.0f} s), cases timed: {len(w['cases']) - len(errors)}"
                         + "".join(f"; {c['key']}: {c['error']}" for c in errors))
    path.write_text("\n".join(lines) + "\n")


def _write_files(out: Path, record: dict, start: float) -> None:
    record["wall_s"] = time.perf_counter() - start
    report.write_json(out / "launch-ab.json", record)
    write_markdown(out / "launch-ab.md", record)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.launch_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="folder for launch-ab.json and launch-ab.md")
    p.add_argument("--deadline-s", type=float, default=55.0, help="start no worker that cannot finish by then")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes (the knobs change nothing)")
    p.add_argument("--min-run-time", type=float, help="seconds of timing per case (default 0.2; dry run 0.001)")
    p.add_argument("--seed", type=int, default=0)
    # Internal: how the parent starts one worker.
    p.add_argument("--worker", choices=[w.name for w in WORKERS], help=argparse.SUPPRESS)
    p.add_argument("--worker-json", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker and not args.worker_json:
        p.error("--worker needs --worker-json")
    if not args.worker and not args.out:
        p.error("--out is required")
    if args.min_run_time is None:
        args.min_run_time = 0.001 if args.dry_run else 0.2
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker = next(w for w in WORKERS if w.name == args.worker)
        return run_worker(worker, args.worker_json, args.dry_run, args.min_run_time, args.seed)
    start = time.perf_counter()
    if not args.dry_run and not torch.cuda.is_available():
        print("launch_ab: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    meta = report.machine_info(device)
    meta["command"] = " ".join(["python3", "-m", "benchmarks.launch_ab", *(argv if argv is not None else sys.argv[1:])])
    if device.type == "cuda":
        meta["driver"] = gpu_targets._driver_version()
    print(report.describe_machine(meta), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    workloads = DRY_WORKLOADS if args.dry_run else GPU_WORKLOADS
    record = {"meta": meta, "dry_run": args.dry_run,
              "settings": {"min_run_time_s": args.min_run_time, "seed": args.seed, "deadline_s": args.deadline_s},
              "knobs": {k.env: list(k.settings) for k in KNOBS}, "workers": [], "wall_s": 0.0}
    # The worker files live outside --out: the GPU session returns at most 8 files.
    with tempfile.TemporaryDirectory(prefix="launch-ab-") as tmp:
        for worker in WORKERS:
            left = args.deadline_s - (time.perf_counter() - start)
            need = worker_allowance(len(worker.cases(workloads)), args.dry_run)
            if left < need:
                reason = f"out of time ({left:.0f} s left, needs ~{need:.0f} s)"
                record["workers"].append({"name": worker.name, "knob": worker.knob, "setting": worker.setting,
                                          "env": worker.env(), "status": "skipped", "reason": reason, "cases": []})
                print(f"skip {worker.name}: {reason}", flush=True)
            else:
                timeout = worker_timeout(need, left, args.dry_run)
                record["workers"].append(spawn_worker(worker, Path(tmp), timeout, args))
            _write_files(args.out, record, start)  # after every worker: a kill keeps what was measured
    _write_files(args.out, record, start)
    print((args.out / "launch-ab.md").read_text(), flush=True)
    bad = [w["name"] for w in record["workers"] if w["status"] in ("FAILED", "TIMED OUT")]
    done = sum(w["status"] == "ok" for w in record["workers"])
    skipped = sum(w["status"] == "skipped" for w in record["workers"])
    print(f"launch_ab: {done} of {len(WORKERS)} workers ok, {skipped} skipped"
          f"{', FAILED: ' + ', '.join(bad) if bad else ''} in {record['wall_s']:.0f} s", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
