"""The libtorch (CMake) build and its C++ test, as `make ctest` runs it.

Configures CMakeLists.txt into build-cmake/ against the torch of this Python (its
torch.utils.cmake_prefix_path), builds with every core (Ninja when available), and runs
ctest. An existing build-cmake/ is reused (incremental) unless it was configured for
another torch. Exits non-zero on any failure. Extra arguments go to the configure step,
e.g. `python3 scripts/cmake_build.py -DGUMBEL_EXT_WITH_CUDA=OFF`."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build-cmake"


def run(cmd, cwd=ROOT):
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=cwd, check=True)


def cached(name):
    """A CMakeCache.txt entry of build-cmake/, or None."""
    cache = BUILD / "CMakeCache.txt"
    if not cache.is_file():
        return None
    match = re.search(rf"^{name}:[A-Z]+=(.*)$", cache.read_text(), re.MULTILINE)
    return match.group(1) if match else None


def main(extra_args):
    cmake = shutil.which("cmake")
    if cmake is None:
        print("cmake_build: cmake not found; install it (e.g. `pip install cmake ninja`)",
              file=sys.stderr)
        return 1
    try:
        import torch
    except ImportError:
        print("cmake_build: torch is not installed for this Python", file=sys.stderr)
        return 1
    prefix = Path(torch.utils.cmake_prefix_path).resolve()

    # A build dir configured for another torch would keep linking that one, and one made
    # for another checkout is refused by cmake: start over.
    torch_dir, home = cached("Torch_DIR"), cached("CMAKE_HOME_DIRECTORY")
    stale = (torch_dir is not None and not Path(torch_dir).resolve().is_relative_to(prefix)) or (
        home is not None and Path(home).resolve() != ROOT
    )
    if stale:
        print(f"cmake_build: build-cmake/ was configured for {torch_dir} / {home}; starting over",
              flush=True)
        shutil.rmtree(BUILD)

    start = time.perf_counter()
    configure = [cmake, "-S", ROOT, "-B", BUILD, f"-DCMAKE_PREFIX_PATH={prefix}"]
    if cached("CMAKE_GENERATOR") is None and shutil.which("ninja"):
        configure += ["-G", "Ninja"]  # only on a fresh dir: the generator cannot change
    if not any(a.startswith("-DCMAKE_CXX_STANDARD") for a in extra_args) and _torch_accepts_cxx17(torch):
        # The Python build compiles the sources as C++20 (this torch's choice); this one
        # checks that they stay C++17, what torch < 2.12 builds extensions with (the GPU
        # machines' torch 2.11 among them). torch >= 2.14 refuses C++17 outright.
        configure += ["-DCMAKE_CXX_STANDARD=17"]
    jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
    try:
        run(configure + list(extra_args))
        run([cmake, "--build", BUILD, "--parallel", jobs])
        # (ctest run in the build dir: --test-dir needs CMake >= 3.20)
        run([Path(cmake).with_name("ctest"), "--output-on-failure"], cwd=BUILD)
    except subprocess.CalledProcessError as err:
        print(f"cmake_build: FAILED ({err.cmd[0]} exited with {err.returncode})", file=sys.stderr)
        return 1
    print(f"cmake_build: OK in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


def _torch_accepts_cxx17(torch) -> bool:
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    return (major, minor) < (2, 14)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
