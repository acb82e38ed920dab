"""Compile-check the CUDA kernels without a GPU (the Makefile's `cuda-check`, run by CI).

nvcc compiles every csrc/cuda/*.cu translation unit (so every dtype instantiation) with
-c, for sm_80 and sm_90 by default, against the installed torch's headers and with the
flags of the real build (gumbel_ext/_build.py NVCC_FLAGS plus torch's COMMON_NVCC_FLAGS).
One nvcc run per architecture, each under one C++ standard: C++20 (what this torch's
cpp_extension passes) for the first, C++17 (what torch < 2.12 passes; the GPU machines'
torch 2.11 among them) for the others, so both standards are checked at no extra cost.
Exit status 1 on any compile error, on any warning raised in this project's own files
(warnings inside torch's headers are only counted), and on any register spill or stack
frame in this project's kernels, read from ptxas's resource report: a spill is a silent
slowdown that only a GPU would otherwise show (cub's own kernels are only reported).
Without nvcc: a skip message and exit 0.

A CPU-only torch wheel ships c10/cuda headers but not the generated
c10/cuda/impl/cuda_cmake_macros.h; a one-line stand-in goes into a build-only include
dir (build/cuda-check/include), never into torch or the sources.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "cuda-check"
DEFAULT_ARCHS = ["80", "90"]
WARNING = re.compile(r"warning", re.IGNORECASE)
# ptxas -v: "Compiling entry function '<mangled>' for 'sm_90'", then "Function properties
# for <mangled>", "<n> bytes stack frame, <n> bytes spill stores, <n> bytes spill loads",
# "Used <n> registers, ...".
ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+a?)'")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGISTERS = re.compile(r"Used (\d+) registers")
OURS = "gumbel_ext"  # in every mangled name of this project's kernels


def find_nvcc() -> Optional[str]:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    fallback = Path("/usr/local/cuda/bin/nvcc")
    return str(fallback) if fallback.is_file() else None


def load_build_config():
    sys.path.insert(0, str(ROOT / "gumbel_ext"))
    try:
        import _build  # the flags and source list of the real build
    finally:
        sys.path.pop(0)
    return _build


def include_dirs() -> List[str]:
    from torch.utils.cpp_extension import include_paths

    dirs = include_paths()
    macros = Path("c10") / "cuda" / "impl" / "cuda_cmake_macros.h"
    if not any((Path(d) / macros).is_file() for d in dirs):
        stand_in = BUILD / "include" / macros
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#define C10_CUDA_BUILD_SHARED_LIBS\n")
        dirs = [str(BUILD / "include")] + dirs
    return dirs


def nvcc_command(nvcc: str, source: Path, obj: Path, archs: List[str], build, std: str = "c++20") -> List[str]:
    import torch
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    flags = list(build.NVCC_FLAGS) + [f for f in COMMON_NVCC_FLAGS if f not in build.NVCC_FLAGS]
    flags.append(f"-std={std}")
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    cmd = [nvcc, "-c", str(source), "-o", str(obj)] + flags
    cmd += [f"-I{d}" for d in include_dirs()]
    cmd += ["-Xptxas", "-v"]  # the resource report that resources() reads
    cmd += [
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        "-DTORCH_EXTENSION_NAME=_C",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        "-Xcompiler",
        "-fPIC",
    ]
    for arch in archs:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return cmd


def own_warnings(output: str) -> List[str]:
    """Warning lines that point into this project's sources (not torch's headers)."""
    csrc = str(ROOT / "csrc")
    return [
        line for line in output.splitlines()
        if WARNING.search(line) and (csrc in line or line.startswith("csrc/"))
    ]


def resources(output: str) -> List[Tuple[str, str, int, int, int]]:
    """(kernel, arch, registers, stack frame bytes, spill bytes) of every entry function
    ptxas compiled, from its -v report."""
    found = []
    kernel = arch = None
    regs = 0
    frame = (0, 0, 0)
    for line in output.splitlines():
        entry = ENTRY.search(line)
        if entry:
            if kernel is not None:
                found.append((kernel, arch, regs, frame[0], frame[1] + frame[2]))
            kernel, arch = entry.groups()
            regs, frame = 0, (0, 0, 0)
            continue
        match = FRAME.search(line)
        if match:
            frame = tuple(int(v) for v in match.groups())
        match = REGISTERS.search(line)
        if match:
            regs = int(match.group(1))
    if kernel is not None:
        found.append((kernel, arch, regs, frame[0], frame[1] + frame[2]))
    return found


def spilling(output: str) -> List[str]:
    """This project's kernels with a stack frame or register spills."""
    return [
        f"{kernel} ({arch}): {regs} registers, {frame} B stack frame, {spill} B spilled"
        for kernel, arch, regs, frame, spill in resources(output)
        if OURS in kernel and (frame or spill)
    ]


def standard_for(index: int) -> str:
    """The C++ standard of the index-th architecture's run (see the module docstring)."""
    return "c++20" if index == 0 else "c++17"


def compile_one(nvcc: str, source: Path, archs: List[str], build, std: str) -> Tuple[Path, int, str, float]:
    obj = BUILD / "obj" / f"{source.stem}-{'-'.join(archs)}.o"
    obj.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(
        nvcc_command(nvcc, source, obj, archs, build, std),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return source, proc.returncode, proc.stdout, time.perf_counter() - start


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(DEFAULT_ARCHS),
                        help="comma-separated SM versions (default: 80,90)")
    parser.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("JOBS", os.cpu_count() or 1)))
    parser.add_argument("-v", "--verbose", action="store_true", help="print nvcc's full output")
    parser.add_argument("sources", nargs="*", help="only these .cu files (default: csrc/cuda/*.cu)")
    args = parser.parse_args(argv)

    nvcc = find_nvcc()
    if nvcc is None:
        print("cuda-check: SKIPPED -- nvcc not found (set CUDA_HOME or put nvcc on PATH); "
              "the CUDA kernels were not compile-checked.")
        return 0
    build = load_build_config()
    sources = [Path(s).resolve() for s in args.sources] or [Path(s) for s in build.cuda_sources(ROOT / "csrc")]
    if not sources:
        print("cuda-check: FAILED -- no csrc/cuda/*.cu sources found")
        return 1
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    runs = [(arch, standard_for(i)) for i, arch in enumerate(archs)]
    print(f"cuda-check: {nvcc}, " + ", ".join(f"sm_{a} as {std}" for a, std in runs) +
          f", {len(sources)} translation units, {args.jobs} jobs", flush=True)

    failed = 0
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [(pool.submit(compile_one, nvcc, s, [arch], build, std), arch, std)
                   for s in sources for arch, std in runs]
        for future, arch, std in futures:
            source, rc, output, seconds = future.result()
            name = f"{source.relative_to(ROOT)} sm_{arch} {std}"
            ours = own_warnings(output)
            other = sum(1 for line in output.splitlines() if WARNING.search(line)) - len(ours)
            spills = spilling(output) if rc == 0 else []
            if rc != 0 or ours or spills:
                failed += 1
                why = " -- warnings in our sources" if ours else " -- register spills" if spills else ""
                print(f"  FAIL {name} ({seconds:.0f} s){why}")
                print("\n".join(spills) if spills and not ours else output)
                continue
            kernels = [r for r in resources(output) if OURS in r[0]]
            note = f", {other} warning lines in torch headers" if other else ""
            most = max((r[2] for r in kernels), default=0)
            print(f"  ok   {name} ({seconds:.0f} s, {len(kernels)} kernels, no spills, "
                  f"<= {most} registers{note})", flush=True)
            if args.verbose and output.strip():
                print(output)
    if failed:
        print(f"cuda-check: FAILED ({failed} of {len(futures)} compiles)")
        return 1
    print("cuda-check: all CUDA translation units compile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
