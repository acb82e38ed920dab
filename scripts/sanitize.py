"""`make sanitize`: the extension built with AddressSanitizer and UndefinedBehaviorSanitizer
in its own folder (build-sanitize/, a JIT build: the in-place module is untouched), then the
fast CPU test suites under it, once per forced copy of the CPU kernels.

Python itself is not instrumented, so the ASan runtime is preloaded (it must come first in
the process's library list). Leak detection is off: CPython and torch keep allocations
alive until exit on purpose. allocator_may_return_null=1 lets the out-of-memory tests see
torch's own error instead of ASan's abort on an 8 TB request. Any report is fatal
(-fno-sanitize-recover, halt_on_error), so a clean exit means a clean run.

Usage: python3 scripts/sanitize.py [--capability default|avx2|avx512 ...] [-- pytest args]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_DIR = ROOT / "build-sanitize"
SANITIZE_FLAGS = "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g1"

# Every suite that runs the CPU ops. test_cpu_isa.py, test_layouts.py and the golden noise
# test set each copy themselves, so they run once; the CUDA suites, the benchmark suite and the
# build-path and release suites (which compile their own, uninstrumented, builds) are left
# out.
PER_COPY_SUITES = [
    "tests/test_forward.py",
    "tests/test_backward.py",
    "tests/test_errors.py",
    "tests/test_op_checks.py",
    "tests/test_hardening.py",
    "tests/test_properties.py",
    "tests/test_statistics.py",
    "tests/test_api_extras.py",
    "tests/test_torch_integration.py",
    "tests/test_reference_rng.py",
]
ONCE_SUITES = ["tests/test_cpu_isa.py", "tests/test_layouts.py", "tests/golden/test_golden_noise.py"]
# The "no AVX outside the ISA copies" check is about the shipped build (make test runs it
# there). Under ASan, GCC 12 no longer inlines std::vector<long>::_M_default_append in the
# ISA files and emits weak AVX copies of it there, and only there: no baseline object
# defines it, so only ISA code calls it, but the check (which sees only the final library)
# cannot tell that apart from a real leak and fails.
ONCE_DESELECT = ["tests/test_cpu_isa.py::test_avx_instructions_only_in_isa_copies"]


def _runtime(name: str) -> str:
    cxx = os.environ.get("CXX", "c++")
    path = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True, check=True).stdout
    return path.strip()


def sanitizer_env() -> dict:
    env = dict(os.environ)
    env.update(
        GUMBEL_EXT_FORCE_JIT="1",
        GUMBEL_EXT_BUILD_DIR=str(BUILD_DIR),
        GUMBEL_EXT_JIT_FLAGS=SANITIZE_FLAGS,
        # libstdc++ too: python does not link it, and ASan's __cxa_throw interceptor,
        # set up before torch loads it, would otherwise fail its CHECK on the first C++
        # exception (torch raising IndexError for a bad dim, say).
        LD_PRELOAD=" ".join([_runtime("libasan.so"), _runtime("libstdc++.so.6")]),
        ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:abort_on_error=0",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
    )
    env.pop("GUMBEL_EXT_CPU_CAPABILITY", None)
    return env


def run(cmd, env, label):
    start = time.monotonic()
    print(f"== {label}: {' '.join(cmd)}", flush=True)
    code = subprocess.run(cmd, env=env, cwd=ROOT).returncode
    seconds = time.monotonic() - start
    print(f"== {label}: exit {code}, {seconds:.0f} s", flush=True)
    if code != 0:
        sys.exit(f"sanitize: {label} failed (exit {code})")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capability", action="append", help="copies to run (default: every one compiled in)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    env = sanitizer_env()
    times = {}
    # Building is importing: the JIT build compiles on first import, with the flags above.
    probe = "import torch, gumbel_ext; assert gumbel_ext._EXTENSION_AVAILABLE; print(*torch.ops.gumbel_ext._cpu_capabilities())"
    times["build"] = run([sys.executable, "-c", probe], env, "build")
    available = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.split()
    capabilities = args.capability or available
    pytest = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"] + args.pytest_args
    for capability in capabilities:
        if capability not in available:
            sys.exit(f"sanitize: the {capability} copy is not available here ({', '.join(available)})")
        copy_env = dict(env, GUMBEL_EXT_CPU_CAPABILITY=capability)
        times[capability] = run(pytest + PER_COPY_SUITES, copy_env, f"tests, {capability} copy")
    deselect = [arg for test in ONCE_DESELECT for arg in ("--deselect", test)]
    times["every copy"] = run(pytest + ONCE_SUITES + deselect, env, "suites that set each copy themselves")
    print("sanitize: clean. Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
