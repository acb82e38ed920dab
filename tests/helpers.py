"""Shared test utilities: call the fused op directly (to get its rng_state) and the
reference with the same noise; tolerance tables per dtype; build a SIMT-emulation harness
(tests/emulation) that runs the CUDA kernels on the CPU."""

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional, Sequence

import pytest
import torch

from gumbel_ext import reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Fused vs reference on the same noise: they differ only by float rounding (libm vs SLEEF
# log/exp, summation order), so within a few ulps of the output dtype -- for float64 a
# few ulps of float32, the precision of the noise itself.
TOL = {
    torch.float64: dict(atol=1e-6, rtol=1e-5),
    torch.float32: dict(atol=2e-6, rtol=2e-5),
    torch.float16: dict(atol=1e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=8e-3, rtol=1.6e-2),
}


def fused(x, tau=1.0, hard=False, dim=-1, generator=None, rng_state=None, tau_rows=None):
    """(out, rng_state) from the fused op."""
    return torch.ops.gumbel_ext.gumbel_softmax_forward(x, tau, tau_rows, hard, dim, generator, rng_state)


def ref(x, rng_state, tau=1.0, hard=False, dim=-1):
    return reference.gumbel_softmax(x, tau, hard, dim, rng_state=rng_state)


def assert_close(actual, expected, dtype=None):
    tol = TOL[dtype or actual.dtype]
    torch.testing.assert_close(actual, expected, equal_nan=True, **tol)


def gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


ROOT = Path(__file__).resolve().parent.parent


def cuda_include() -> Optional[Path]:
    """The CUDA toolkit's include dir (for cuda_runtime.h), or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(os.path.realpath(nvcc)).parent.parent))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if home and (Path(home) / "include" / "cuda_runtime.h").is_file():
            return Path(home) / "include"
    return None


def emulation_library(harness: str, sources: Sequence[Path], name: str) -> ctypes.CDLL:
    """tests/emulation/<harness> compiled with the host compiler into a shared library,
    loaded with ctypes; cached under build/cuda-emulation by a digest of ``sources`` (every
    file it includes) and the torch version. Skips the calling test without the CUDA headers
    or a C++ compiler."""
    include = cuda_include()
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if include is None or cxx is None:
        pytest.skip("the emulation needs the CUDA headers (cuda_runtime.h) and a C++ compiler")
    from torch.utils.cpp_extension import include_paths, library_paths

    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources) + torch.__version__.encode()).hexdigest()[:16]
    out_dir = ROOT / "build" / "cuda-emulation"
    lib_path = out_dir / f"{name}-{digest}.so"
    if not lib_path.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        # The CUDA headers of c10 include this CMake-generated file, absent from CPU wheels.
        stand_in = out_dir / "include" / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#define C10_CUDA_BUILD_SHARED_LIBS\n")
        torch_lib = library_paths()[0]
        cmd = [cxx, "-std=c++17", "-O2", "-pthread", "-shared", "-fPIC", "-Wno-c++20-extensions",
               "-o", str(lib_path) + ".tmp", str(ROOT / "tests" / "emulation" / harness),
               f"-I{ROOT / 'csrc' / 'cuda'}", f"-I{ROOT / 'tests' / 'emulation'}", f"-I{out_dir / 'include'}",
               f"-I{include}"]
        cmd += [f"-I{d}" for d in include_paths()]
        cmd += [f"-L{torch_lib}", "-lc10", f"-Wl,-rpath,{torch_lib}"]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.returncode == 0, f"building the emulation harness {harness} failed:\n" + proc.stdout
        # Atomic: a parallel run never loads a half-written library.
        os.replace(str(lib_path) + ".tmp", lib_path)
    return ctypes.CDLL(str(lib_path))


def ptr(t: Optional[torch.Tensor]):
    """A tensor's data pointer for ctypes (None for None)."""
    return None if t is None else ctypes.c_void_p(t.data_ptr())
