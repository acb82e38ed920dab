"""Install what `make test` / `make bench` need, and only what is missing.

With no torch, install torch==2.13.0 (the CPU wheel this project is developed against;
never an unpinned torch, which would pull gigabytes of CUDA packages). With torch
present (e.g. a GPU box without network), use it and install nothing that is already
there."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

TORCH = "torch==2.13.0"
# import name -> pip requirement
PACKAGES = {
    "pytest": "pytest",
    "hypothesis": "hypothesis",
    "numpy": "numpy",
    "scipy": "scipy",
    "tabulate": "tabulate",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    # make dist-check: python -m build --no-isolation, twine check
    "build": "build",
    "twine": "twine",
    "sklearn": "scikit-learn",
}


# build tools -> pip requirement (the PyPI wheels ship the binaries)
TOOLS = {"cmake": "cmake", "ninja": "ninja"}
# CUDA binary utilities for scripts/sass_budget.py, only where nvcc is (module -> wheel).
CUDA_TOOLS = {"cuobjdump": "nvidia-cuda-cuobjdump", "nvdisasm": "nvidia-cuda-nvdisasm"}


def missing_cuda_tools():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import check_cuda_compile
    import sass_budget

    if check_cuda_compile.find_nvcc() is None:
        return []
    need = []
    if sass_budget.find_cuobjdump() is None:
        need.append(CUDA_TOOLS["cuobjdump"])
    if shutil.which("nvdisasm") is None and sass_budget.find_tool("nvdisasm") is None:
        need.append(CUDA_TOOLS["nvdisasm"])
    return need


def missing(names):
    return [n for n in names if importlib.util.find_spec(n) is None]


def pip_install(reqs):
    print(f"ensure_deps: pip install {' '.join(reqs)}", flush=True)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *reqs])


def main() -> int:
    if importlib.util.find_spec("torch") is None:
        pip_install([TORCH])
    need = [PACKAGES[n] for n in missing(PACKAGES)]
    need += [req for tool, req in TOOLS.items() if shutil.which(tool) is None]
    need += missing_cuda_tools()
    if need:
        try:
            pip_install(need)
        except subprocess.CalledProcessError:
            print(f"ensure_deps: could not install {need}; install them by hand", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
