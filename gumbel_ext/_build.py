"""Load the compiled ops: the AOT module if it was built, else JIT-compile the same
sources with torch.utils.cpp_extension. Returns False (and warns once) when neither
works, so the package falls back to the pure-PyTorch reference."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
CSRC = PACKAGE_DIR.parent / "csrc"
# Written next to gumbel_ext._C by setup.py: what the AOT module was built from and against.
BUILD_INFO = PACKAGE_DIR / "_build_info.json"

# How load() made the ops available: "aot", "jit" or "reference", and why (diagnostics).
MODE: str = "reference"
MODE_DETAIL: str = "not loaded yet"

# Compiler flags shared by every build (setup.py and CMake keep the same list). The C++
# standard is left to torch's own extension defaults (C++20 for recent torch).
# -fopenmp makes ATen's header-only at::parallel_for really run on all cores.
CXX_FLAGS = ["-O3", "-fopenmp"]
NVCC_FLAGS = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
LD_FLAGS = ["-fopenmp"]


def jit_extra_flags() -> List[str]:
    """Flags a JIT build adds to every compile and to the link: GUMBEL_EXT_JIT_FLAGS, which
    `make sanitize` (scripts/sanitize.py) sets to the sanitizers' flags."""
    return os.environ.get("GUMBEL_EXT_JIT_FLAGS", "").split()

# The per-ISA copies of the CPU kernels and the flags each is compiled with on top of
# CXX_FLAGS (Note [Per-ISA CPU kernels] in csrc/cpu/kernel_table.h; ATen's own flags).
# The DEFAULT copy is an ordinary source; the others are x86-64 only and must be linked
# after it, AVX2 before AVX512. CMakeLists.txt mirrors this table.
CPU_ISA_FLAGS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
}


def _isa_source(root: Path, isa: str) -> Path:
    return root / "cpu" / "isa" / f"kernels_{isa}.cpp"


def cpp_sources(root: Path = CSRC) -> List[str]:
    """C++ sources of the op library compiled with the common flags (no Python binding
    stub), the baseline copy of the CPU kernels last."""
    paths = sorted(root.glob("*.cpp")) + sorted((root / "cpu").glob("*.cpp"))
    return [str(p) for p in paths] + [str(_isa_source(root, "DEFAULT"))]


def isa_sources(root: Path = CSRC) -> List[Tuple[str, List[str]]]:
    """(source, extra flags) of the wider-ISA kernel copies for this machine's
    architecture, in link order; empty off x86-64 (the DEFAULT copy is then the only one)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    return [(str(_isa_source(root, isa)), CPU_ISA_FLAGS[isa]) for isa in ("AVX2", "AVX512")]


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


def _ninja_path(path: str) -> str:
    return path.replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def _jit_isa_objects(build_dir: Path, cflags: List[str]) -> List[str]:
    """Compile the wider-ISA kernel copies (cpp_extension.load has no per-file flags) with
    a small ninja file of our own; returns object paths named by their content hash, so
    that a changed object changes load()'s arguments and makes it relink."""
    from torch.utils import cpp_extension

    sources = isa_sources()
    if not sources:
        return []
    out_dir = build_dir / "isa"
    out_dir.mkdir(parents=True, exist_ok=True)
    common = (
        cflags
        + ["-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
        + [f"-isystem{p}" for p in cpp_extension.include_paths()]
    )
    lines = [
        "ninja_required_version = 1.3",
        f"cxx = {cpp_extension.get_cxx_compiler()}",
        "cflags = " + " ".join(_ninja_path(f) for f in common),
        "rule compile",
        "  command = $cxx -MMD -MF $out.d $cflags $isaflags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
    ]
    objects = []
    for source, flags in sources:
        obj = out_dir / (Path(source).stem + ".o")
        lines += [f"build {_ninja_path(str(obj))}: compile {_ninja_path(source)}", "  isaflags = " + " ".join(flags)]
        objects.append(obj)
    (out_dir / "build.ninja").write_text("\n".join(lines) + "\n")
    result = subprocess.run(["ninja", "-C", str(out_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"compiling the per-ISA CPU kernels failed:\n{result.stdout}")
    hashed = []
    for obj in objects:
        digest = hashlib.sha1(obj.read_bytes()).hexdigest()[:16]
        target = obj.with_name(f"{obj.stem}-{digest}.o")
        for old in out_dir.glob(f"{obj.stem}-*.o"):
            if old != target:
                old.unlink()
        if not target.exists():
            shutil.copyfile(obj, target)
        hashed.append(str(target))
    return hashed


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
    # The ISA objects go after the sources on the link line: see Note [Per-ISA CPU kernels].
    extra = jit_extra_flags()
    isa_objects = _jit_isa_objects(build_dir, CXX_FLAGS + extra)
    cpp_extension.load(
        name="gumbel_ext_jit",
        sources=sources,
        extra_cflags=CXX_FLAGS + extra + (["-DGUMBEL_EXT_WITH_CUDA"] if with_cuda else []),
        extra_cuda_cflags=NVCC_FLAGS,
        extra_ldflags=isa_objects + LD_FLAGS + extra,
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=os.environ.get("GUMBEL_EXT_VERBOSE") == "1",
    )


def git_revision(root: Path = PACKAGE_DIR.parent) -> Optional[str]:
    """The checkout's commit (with "-dirty" for uncommitted changes to tracked files),
    or None outside a git checkout."""
    if not (root / ".git").exists():
        return None
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def cuda_archs() -> List[str]:
    """The sm_XY / compute_XY targets a CUDA build of this torch compiles for
    (TORCH_CUDA_ARCH_LIST, else torch's choice for the visible GPUs)."""
    from torch.utils import cpp_extension

    archs = []
    for flag in cpp_extension._get_cuda_arch_flags():
        _, _, code = flag.partition("code=")
        archs += [a for a in code.strip("[]").split(",") if a and a not in archs]
    return archs


def make_build_info(with_cuda: bool, version: str, noise_version: int) -> Dict:
    """What setup.py records next to the AOT module (see BUILD_INFO)."""
    return {
        "version": version,
        "git_revision": git_revision(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if with_cuda else None,
        "cuda_archs": cuda_archs() if with_cuda else [],
        "noise_version": noise_version,
    }


def read_build_info() -> Optional[Dict]:
    try:
        return json.loads(BUILD_INFO.read_text())
    except (OSError, ValueError):
        return None


def _public_version(version: str) -> str:
    return version.split("+")[0]


def torch_mismatch(info: Optional[Dict]) -> Optional[str]:
    """The message for an AOT module built against another torch than the running one, or
    None. A C++ extension is tied to the exact torch release it was compiled with (C++ ABI,
    no stable symbols): loading it under another one dies with an undefined symbol. The
    local label (+cpu, +cu128) is not compared: it names the torch wheel's CUDA variant, and
    a variant without the kernels' CUDA fails the import as any broken module does."""
    built = (info or {}).get("torch")
    if not built or _public_version(built) == _public_version(torch.__version__):
        return None
    return (
        f"gumbel_ext: the compiled module gumbel_ext._C was built against torch {built}, but torch "
        f"{torch.__version__} is running, and a C++ extension only loads under the torch it was built "
        "with. Not loading it; rebuild with `pip install --no-build-isolation gumbel_ext` (or `make "
        "build` in a checkout) under this torch."
    )


def _set_mode(mode: str, detail: str) -> None:
    global MODE, MODE_DETAIL
    MODE, MODE_DETAIL = mode, detail


def load() -> bool:
    """Make the ``torch.ops.gumbel_ext`` ops available. True on success."""
    if os.environ.get("GUMBEL_EXT_FORCE_REFERENCE") == "1":
        _set_mode("reference", "GUMBEL_EXT_FORCE_REFERENCE=1")
        return False
    mismatch = None
    if os.environ.get("GUMBEL_EXT_FORCE_JIT") != "1" and importlib.util.find_spec("gumbel_ext._C") is not None:
        mismatch = torch_mismatch(read_build_info())
        if mismatch:
            warnings.warn(mismatch, RuntimeWarning, stacklevel=3)
        else:
            try:
                module = importlib.import_module("gumbel_ext._C")
                _set_mode("aot", f"gumbel_ext._C ({module.__file__})")
                return True
            except ImportError:
                pass
    if not CSRC.is_dir() or os.environ.get("GUMBEL_EXT_NO_JIT") == "1":
        unusable = "was built against another torch" if mismatch else "is not installed"
        _set_mode("reference", f"the compiled module {unusable} and there is no JIT build "
                               "(not a source checkout, or GUMBEL_EXT_NO_JIT=1)")
        warnings.warn(
            f"gumbel_ext: the compiled extension {unusable} and JIT compilation is "
            "unavailable; using the pure-PyTorch reference implementation (slow).",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    try:
        jit_compile()
        _set_mode("jit", f"JIT build cached in {_jit_build_dir()}")
        return True
    except Exception as err:  # noqa: BLE001 -- any build failure means: fall back
        log = _jit_build_dir() / "gumbel_ext_build_error.log"
        log.write_text(str(err))
        _set_mode("reference", f"the JIT build failed (compiler log: {log})")
        warnings.warn(
            f"gumbel_ext: JIT compilation of the C++ extension failed (compiler log: {log}); "
            "using the pure-PyTorch reference implementation (slow).",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
