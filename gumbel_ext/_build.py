"""Load the compiled ops: the AOT module if it was built, else JIT-compile the same
sources with torch.utils.cpp_extension. Returns False (and warns once) when neither
works, so the package falls back to the pure-PyTorch reference."""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import List

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
CSRC = PACKAGE_DIR.parent / "csrc"

# Compiler flags shared by every build (setup.py and CMake keep the same list). The C++
# standard is left to torch's own extension defaults (C++20 for recent torch).
# -fopenmp makes ATen's header-only at::parallel_for really run on all cores.
CXX_FLAGS = ["-O3", "-fopenmp"]
NVCC_FLAGS = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
LD_FLAGS = ["-fopenmp"]


def cpp_sources(root: Path = CSRC) -> List[str]:
    """C++ sources of the op library (no Python binding stub)."""
    return [str(p) for p in sorted(root.glob("*.cpp")) + sorted((root / "cpu").glob("*.cpp"))]


def cuda_sources(root: Path = CSRC) -> List[str]:
    return [str(p) for p in sorted((root / "cuda").glob("*.cu"))]


def jit_with_cuda() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return (
        torch.version.cuda is not None
        and CUDA_HOME is not None
        and bool(cuda_sources())
        and os.environ.get("GUMBEL_EXT_CPU_ONLY") != "1"
    )


def _jit_build_dir() -> Path:
    base = os.environ.get("GUMBEL_EXT_BUILD_DIR")
    if base:
        path = Path(base)
    else:
        from torch.utils.cpp_extension import _get_build_directory

        path = Path(_get_build_directory("gumbel_ext_jit", verbose=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def jit_compile() -> None:
    from torch.utils import cpp_extension

    with_cuda = jit_with_cuda()
    build_dir = _jit_build_dir()
    sources = cpp_sources() + (cuda_sources() if with_cuda else [])
    print(
        f"gumbel_ext: compiling the C++{'/CUDA' if with_cuda else ''} extension "
        f"(first import only, cached in {build_dir}) ...",
        file=sys.stderr,
        flush=True,
    )
    cpp_extension.load(
        name="gumbel_ext_jit",
        sources=sources,
        extra_cflags=CXX_FLAGS + (["-DGUMBEL_EXT_WITH_CUDA"] if with_cuda else []),
        extra_cuda_cflags=NVCC_FLAGS,
        extra_ldflags=LD_FLAGS,
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=os.environ.get("GUMBEL_EXT_VERBOSE") == "1",
    )


def load() -> bool:
    """Make the ``torch.ops.gumbel_ext`` ops available. True on success."""
    if os.environ.get("GUMBEL_EXT_FORCE_REFERENCE") == "1":
        return False
    if os.environ.get("GUMBEL_EXT_FORCE_JIT") != "1":
        try:
            importlib.import_module("gumbel_ext._C")
            return True
        except ImportError:
            pass
    if not CSRC.is_dir() or os.environ.get("GUMBEL_EXT_NO_JIT") == "1":
        warnings.warn(
            "gumbel_ext: the compiled extension is not installed and JIT compilation is "
            "unavailable; using the pure-PyTorch reference implementation (slow).",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    try:
        jit_compile()
        return True
    except Exception as err:  # noqa: BLE001 -- any build failure means: fall back
        log = _jit_build_dir() / "gumbel_ext_build_error.log"
        log.write_text(str(err))
        warnings.warn(
            f"gumbel_ext: JIT compilation of the C++ extension failed (compiler log: {log}); "
            "using the pure-PyTorch reference implementation (slow).",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
