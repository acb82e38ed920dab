#!/usr/bin/env python3
"""The first GPU session (issue 12): one command, under 8 minutes on a fresh H100/H200.

    python3 scripts/gpu_session.py                 # on the GPU machine; files into $OUT
    python3 scripts/gpu_session.py --dry-run       # CPU rehearsal, tiny sizes (make test runs it)
    python3 scripts/gpu_session.py --steps build,risks --budget 240   # a rerun after a fix

Steps, most valuable first; each runs in its own process group, capped by its own limit
and by the time left in the budget, and is killed (never left hanging) at the cap. A step
without the time it needs to be useful is skipped and reported; every later step still
gets its turn.

  env        nvidia-smi, torch, nvcc, git revision
  build      setup.py build_ext --inplace for the GPU present only (TORCH_CUDA_ARCH_LIST from
             the device), with all cores; then checks that the CUDA kernels are registered
  test_cuda  pytest tests/test_cuda.py
  risks      pytest tests/test_cuda_risks.py (graphs at long rows, a user generator under
             capture, hard == soft backward at 8192x32000, misaligned rows, CPU == CUDA)
  sanitizer  compute-sanitizer --tool memcheck over test_every_strategy_small (the answer,
             supported or not, is recorded)
  bench      python3 -m benchmarks.gpu_targets (target cases only, copy and noise floors)
  ab         python3 -m benchmarks.launch_ab: the launch knobs GUMBEL_EXT_SPLIT (auto, off,
             workspace) and GUMBEL_EXT_ALIGNED_ROWS (auto, off), each setting timed in its
             own process on gumbel_ext's ops alone, to pick their defaults from
  others     what time is left: the CUDA-parametrized tests of the other test files

--dry-run runs the same steps on the CPU: the build is `setup.py --dry-run` (make test has
just built), the test steps run (every CUDA test skips there), the GPU-only sanitizer is
reported as skipped, the bench and ab run tiny shapes, and `others` only collects.

Files in --out (default $OUT, else benchmarks/results/gpu-session/), at most 8 (the device
tool returns 8): gpu-session.log (everything printed), gpu-session.json (the machine and
each step's status, time and summary), <device>-targets.json and .md (the benchmark record
and the targets table), launch-ab.json and .md (the knobs' A/B record and table): six.
Exit status 0 when no step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET_S = 450.0  # 7.5 min: under 8 minutes, with the tool's 10-minute limit 2.5 min away
RESERVE_S = 10.0  # kept back for writing the results after the last step
# -v: a test step killed at its cap still shows which tests ran and how they ended;
# faulthandler_timeout: a test stuck for a minute dumps its stack into the log.
PYTEST = [sys.executable, "-m", "pytest", "-rfEs", "-p", "no:cacheprovider", "--maxfail=50",
          "-o", "faulthandler_timeout=60"]
# The test files `others` leaves out: run by earlier steps, or CPU-only (the emulator, the
# nvcc check, the JIT build, the per-ISA CPU kernels, the CPU benchmark suite, this session).
OTHERS_IGNORE = ("test_cuda.py", "test_cuda_risks.py", "test_cuda_emulated.py", "test_split_rows_emulated.py",
                 "test_cuda_check.py", "test_build_paths.py", "test_cpu_isa.py", "test_bench.py",
                 "test_gpu_session.py")


STEP_NAMES = ("env", "build", "test_cuda", "risks", "sanitizer", "bench", "ab", "others")


@dataclass
class Step:
    name: str
    cap_s: float  # the most this step may take
    min_s: float  # below this much time left, it is skipped
    command: Optional[List[str]] = None  # None: skipped, with `why`
    why: str = ""
    env: dict = field(default_factory=dict)
    essential: bool = False  # if it fails, the later steps are skipped


@dataclass
class Outcome:
    name: str
    status: str  # ok, FAILED, TIMED OUT, skipped
    seconds: float = 0.0
    cap_s: float = 0.0
    returncode: Optional[int] = None
    summary: str = ""
    command: str = ""


class Log:
    """Everything goes to stdout (the device tool returns its tail) and to one log file."""

    def __init__(self, path: Path):
        self.file = path.open("w", encoding="utf-8", errors="replace")

    def __call__(self, text: str) -> None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
        self.file.write(text if text.endswith("\n") else text + "\n")
        self.file.flush()


def run_step(step: Step, left_s: float, log: Log) -> Outcome:
    """Run one step within min(its cap, the time left); kill its whole process group at the cap."""
    cap = min(step.cap_s, left_s)
    if step.command is None:
        log(f"== {step.name}: skipped ({step.why})")
        return Outcome(step.name, "skipped", summary=step.why)
    if cap < step.min_s:
        why = f"not enough time left ({left_s:.0f} s; needs {step.min_s:.0f} s)"
        log(f"== {step.name}: skipped, {why}")
        return Outcome(step.name, "skipped", summary=why)
    command = [w.replace("{deadline}", f"{max(cap - 20, 10):.0f}") for w in step.command]
    shown = " ".join(command)
    log(f"== {step.name} (cap {cap:.0f} s): {shown}")
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **step.env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    # Read whatever arrives (pytest's progress dots come without a newline) and check the
    # clock at least once a second, so a silent hang is killed at the cap too.
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    pending, tail, timed_out = b"", [], False
    while True:
        remaining = cap - (time.monotonic() - start)
        if remaining <= 0:
            timed_out = True
            break
        if not sel.select(timeout=min(remaining, 1.0)):
            if proc.poll() is not None:  # exited; a leftover child may still hold the pipe
                break
            continue
        chunk = os.read(proc.stdout.fileno(), 1 << 16)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            text = line.decode(errors="replace")
            log(text)
            tail = (tail + [text])[-40:]
    if pending:
        log(pending.decode(errors="replace"))
        tail.append(pending.decode(errors="replace"))
    sel.close()
    _kill_group(proc)  # at the cap; else only what the step left behind (compile workers)
    rc = proc.wait()
    seconds = time.monotonic() - start
    summary = _summarize(step.name, tail)
    if timed_out:
        status, summary = "TIMED OUT", f"killed at {cap:.0f} s; last: {summary}"
    else:
        status = "ok" if rc == 0 else "FAILED"
    log(f"== {step.name}: {status} in {seconds:.0f} s (exit {rc}) {summary}")
    return Outcome(step.name, status, round(seconds, 1), round(cap, 1), rc, summary, shown)


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _summarize(name: str, tail: Sequence[str]) -> str:
    """pytest's last line (counts), the sanitizer's verdict, else the last line printed."""
    text = "\n".join(tail)
    if name == "sanitizer":
        found = re.search(r"ERROR SUMMARY: \d+ errors?", text)
        if found:
            return found.group(0)
    for line in reversed(tail):
        if re.search(r"\b(passed|failed|skipped|error|errors|no tests ran|deselected|selected)\b", line) and (
            " in " in line
        ):
            return line.strip("= ").strip()
    return tail[-1].strip()[:300] if tail else ""


def _python(code: str) -> List[str]:
    return [sys.executable, "-c", code]


def _device_arch() -> Optional[str]:
    """The present GPU's compute capability ("9.0"), or None without a GPU."""
    try:
        out = subprocess.run(_python(
            "import torch; print('%d.%d' % torch.cuda.get_device_capability() if torch.cuda.is_available() else '')"),
            capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _sanitizer() -> Optional[str]:
    found = shutil.which("compute-sanitizer")
    for home in filter(None, (os.environ.get("CUDA_HOME"), "/usr/local/cuda")):
        candidate = Path(home) / "bin" / "compute-sanitizer"
        if not found and candidate.exists():
            found = str(candidate)
    return found


ENV_CODE = """
import platform, torch
print('python', platform.python_version(), '| torch', torch.__version__, '| CUDA', torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('device', torch.cuda.get_device_name(0), '| capability %d.%d' % (p.major, p.minor),
          '| %d SMs | %.0f GiB' % (p.multi_processor_count, p.total_memory / 2**30))
else:
    print('device: no CUDA device')
"""

KERNEL_CHECK = (
    "import torch, gumbel_ext; from gumbel_ext import _ops; "
    "assert _ops.AVAILABLE, 'gumbel_ext._C did not load'; "
    "dev = 'cuda' if torch.cuda.is_available() else 'cpu'; "
    "assert _ops.has_kernel(torch.device(dev)), f'no fused {dev} kernels registered'; "
    "print('fused kernels registered for', sorted(_ops.KERNEL_DEVICE_TYPES))"
)


def plan(out: Path, dry_run: bool, arch: Optional[str], budget_s: float) -> List[Step]:
    env_cmd = ["bash", "-c",
               "date -u '+%Y-%m-%d %H:%M:%S UTC'; "
               "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader "
               "|| echo 'nvidia-smi: not available'; "
               "nvcc --version 2>/dev/null | tail -n 1 || echo 'nvcc: not found'; "
               "git describe --always --dirty 2>/dev/null || echo 'git: no repository'; nproc; "
               f"{sys.executable} -c \"$ENV_CODE\""]
    build_env = {"MAX_JOBS": str(os.cpu_count() or 1)}
    if arch:
        build_env["TORCH_CUDA_ARCH_LIST"] = arch
    # Dry run: setup.py parses its command and builds its extension list, but compiles
    # nothing (make test has just built; rebuilding would replace the loaded module).
    setup = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"] + (["--help"] if dry_run else [])
    build = ["bash", "-c", " ".join(map(_quote, setup)) + " && " + " ".join(map(_quote, _python(KERNEL_CHECK)))]
    sanitizer = _sanitizer()
    sanitizer_step = Step("sanitizer", 60, 20)  # the least valuable check of its group: the bench comes next
    if dry_run or arch is None:
        sanitizer_step.why = f"GPU only (compute-sanitizer: {sanitizer or 'not found'})"
    elif sanitizer is None:
        sanitizer_step.why = "compute-sanitizer not found"
    else:
        # Memory errors only: CUDA API calls that return an expected error code (torch's
        # event queries) are not what this step looks for.
        sanitizer_step.command = [sanitizer, "--tool", "memcheck", "--error-exitcode", "86", "--print-limit", "20",
                                  "--report-api-errors", "no",
                                  *PYTEST, "-q", "tests/test_cuda_risks.py", "-k", "every_strategy_small"]
        # Without the caching allocator, memcheck sees each tensor's own bounds.
        sanitizer_step.env = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    bench = [sys.executable, "-m", "benchmarks.gpu_targets", "--out", str(out), "--deadline-s", "{deadline}"]
    ab = [sys.executable, "-m", "benchmarks.launch_ab", "--out", str(out), "--deadline-s", "{deadline}"]
    others = [*PYTEST, "-v", "tests", "-k", "cuda", *(f"--ignore=tests/{f}" for f in OTHERS_IGNORE)]
    return [
        Step("env", 60, 5, env_cmd, env={"ENV_CODE": ENV_CODE}),
        Step("build", 240, 60, build, env=build_env, essential=True),
        Step("test_cuda", 120, 20, [*PYTEST, "-v", "--durations=10", "tests/test_cuda.py"]),
        Step("risks", 90, 20, [*PYTEST, "-v", "--durations=10", "tests/test_cuda_risks.py"]),
        sanitizer_step,
        Step("bench", 180, 45, bench + (["--dry-run"] if dry_run else [])),
        # Four worker processes of ~10-15 s each (benchmarks/launch_ab.py): at the 75 s cap
        # all four start by the 55 s deadline; at 45 s (deadline 25 s) still auto and split-off.
        Step("ab", 75, 45, ab + (["--dry-run"] if dry_run else [])),
        Step("others", budget_s, 20, others + (["--collect-only"] if dry_run else [])),
    ]


def _quote(word: str) -> str:
    return word if re.fullmatch(r"[\w@%+=:,./-]+", word) else "'" + word.replace("'", "'\\''") + "'"


def session(out: Path, dry_run: bool, budget_s: float, steps: Optional[List[Step]] = None,
            only: Optional[Sequence[str]] = None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "gpu-session.log")
    start = time.monotonic()
    arch = None if dry_run else _device_arch()
    if not dry_run and arch is None:
        log("gpu_session: no CUDA device here (use --dry-run on a CPU)")
        return 2
    steps = steps if steps is not None else plan(out, dry_run, arch, budget_s)
    log(f"gpu_session: {'DRY RUN, ' if dry_run else ''}budget {budget_s:.0f} s, arch {arch or 'none'}, "
        f"{os.cpu_count()} CPUs, out {out}")
    outcomes: List[Outcome] = []
    broken = ""
    for step in steps:
        left = budget_s - RESERVE_S - (time.monotonic() - start)
        if only is not None and step.name not in only:
            step = Step(step.name, step.cap_s, step.min_s, None, "not selected (--steps)")
        elif broken:
            step = Step(step.name, step.cap_s, step.min_s, None, f"{broken} failed")
        outcome = run_step(step, left, log)
        outcomes.append(outcome)
        if step.essential and outcome.status != "ok":
            broken = step.name
        _write_json(out, dry_run, budget_s, time.monotonic() - start, arch, outcomes)  # after each step: a kill keeps it
    total = time.monotonic() - start
    _write_json(out, dry_run, budget_s, total, arch, outcomes)
    log("")
    log(f"{'step':<10} {'status':<10} {'seconds':>7} {'cap':>5}  summary")
    for o in outcomes:
        log(f"{o.name:<10} {o.status:<10} {o.seconds:>7.0f} {o.cap_s:>5.0f}  {o.summary[:150]}")
    log(f"total {total:.0f} s of {budget_s:.0f} s; files: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0 if all(o.status in ("ok", "skipped") for o in outcomes) else 1


def _write_json(out: Path, dry_run: bool, budget_s: float, wall_s: float, arch, outcomes: List[Outcome]) -> None:
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": dry_run,
              "budget_s": budget_s, "wall_s": round(wall_s, 1), "arch": arch,
              "steps": [asdict(o) for o in outcomes]}
    (out / "gpu-session.json").write_text(json.dumps(record, indent=1) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="rehearse on the CPU with tiny sizes")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all steps (default 450)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "benchmarks/results/gpu-session"))
    p.add_argument("--steps", help=f"comma-separated subset, for a rerun (default: all of {', '.join(STEP_NAMES)})")
    args = p.parse_args(argv)
    only = None
    if args.steps:
        only = [name.strip() for name in args.steps.split(",") if name.strip()]
        unknown = sorted(set(only) - set(STEP_NAMES))
        if unknown:
            p.error(f"--steps: unknown {unknown}; choose from {', '.join(STEP_NAMES)}")
    os.environ["PYTHONUNBUFFERED"] = "1"
    return session(args.out.resolve(), args.dry_run, args.budget, only=only)


if __name__ == "__main__":
    sys.exit(main())
