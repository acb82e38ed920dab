"""What a release promises beyond the kernels: one version everywhere, the license, the
CMake build in step with the Python builds, the diagnostics command, a clear way out when
the compiled module was built against another torch, and a clear failure of an isolated
`pip install .`. (The built sdist and wheel are checked by `make dist-check`.)"""

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import gumbel_ext
from gumbel_ext import _build, _version

ROOT = Path(__file__).resolve().parents[1]
CMAKE = (ROOT / "CMakeLists.txt").read_text()


def _python(code_or_args, env_extra=None, cwd=ROOT, timeout=300):
    env = dict(os.environ, **(env_extra or {}))
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# ---- one version ----------------------------------------------------------------------


def test_version_has_one_source():
    assert gumbel_ext.__version__ == _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", _version.__version__)
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "gumbel_ext._version.__version__"}


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_project_version_reads_the_version_file(tmp_path):
    """Runs CMakeLists.txt's own version lines in CMake's script mode, against the real file
    and against a file with another version."""
    lines = CMAKE[CMAKE.index("file(STRINGS"):CMAKE.index("project(gumbel_ext")]
    script = tmp_path / "version.cmake"
    script.write_text(lines + 'message(STATUS "version=${_gumbel_ext_version}")\n')

    def cmake_version(root):
        proc = subprocess.run(["cmake", "-P", str(script)], cwd=root, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return re.search(r"version=(\S+)", proc.stdout).group(1)

    assert "project(gumbel_ext VERSION ${_gumbel_ext_version}" in CMAKE
    assert cmake_version(ROOT) == _version.__version__
    (tmp_path / "gumbel_ext").mkdir()
    (tmp_path / "gumbel_ext" / "_version.py").write_text('__version__ = "7.8.9"\nNOISE_VERSION = 1\n')
    assert cmake_version(tmp_path) == "7.8.9"


def test_changelog_states_this_release_and_its_noise_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    first = re.search(r"^## (\S+)(.*)$", text, re.M)
    assert first and first.group(1) == _version.__version__, "CHANGELOG.md's first release is not __version__"
    section = text[first.end():].split("\n## ")[0]
    noise = re.search(r"Noise version:?\s*(\d+)", section, re.I)
    assert noise and int(noise.group(1)) == gumbel_ext.NOISE_VERSION, (
        "CHANGELOG.md's latest release must say which noise version it has (gumbel_ext.NOISE_VERSION)"
    )
    semantics = (ROOT / "docs" / "semantics.md").read_text()
    assert f"`gumbel_ext.NOISE_VERSION` (today {gumbel_ext.NOISE_VERSION})" in semantics


def test_license_and_metadata():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License") and "the gumbel_ext authors" in text
    assert "Neither the name of the copyright holder" in text
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "BSD-3-Clause" and project["license-files"] == ["LICENSE"]


# ---- CMake flags mirror gumbel_ext/_build.py -------------------------------------------


def test_cmake_isa_flags_match_build_py():
    cmake = dict(re.findall(r'kernels_(\w+)\.cpp"\s+PROPERTIES\s+COMPILE_OPTIONS\s+"([^"]*)"', CMAKE))
    want = {isa: flags for isa, flags in _build.CPU_ISA_FLAGS.items() if flags}
    assert {isa: flags.split(";") for isa, flags in cmake.items()} == want
    assert re.search(r'_isa_dir\}/kernels_DEFAULT\.cpp"\)', CMAKE)  # the flag-less copy, always


def test_cmake_compiler_flags_match_build_py():
    cxx = re.findall(r"\$<\$<COMPILE_LANGUAGE:CXX>:(-[^>$]+)>", CMAKE)
    # CMake spells -fopenmp as OpenMP's flags (compile and link), the rest literally.
    assert "OpenMP_CXX_FLAGS" in CMAKE and "target_link_options(gumbel_ext PRIVATE ${_omp_flags})" in CMAKE
    assert sorted(cxx + ["-fopenmp"]) == sorted(_build.CXX_FLAGS)
    assert _build.LD_FLAGS == ["-fopenmp"]
    cuda = CMAKE[CMAKE.index("$<$<COMPILE_LANGUAGE:CUDA>:"):]
    cuda = cuda[len("$<$<COMPILE_LANGUAGE:CUDA>:"):cuda.index(">)")].split()
    ours = [f for f in cuda if not f.startswith("-D__CUDA_NO_")]
    assert ours == _build.NVCC_FLAGS
    # The rest are the defines torch.utils.cpp_extension compiles every .cu with.
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    assert set(cuda) - set(ours) <= set(COMMON_NVCC_FLAGS)


# ---- python -m gumbel_ext --------------------------------------------------------------


def _diagnostics(env_extra=None):
    proc = _python(["-m", "gumbel_ext"], env_extra)
    assert proc.returncode == 0, proc.stderr
    rows = dict(line.split(" : ", 1) for line in proc.stdout.splitlines())
    return {k.strip(): v for k, v in rows.items()}


def test_diagnostics_report_versions_backends_and_cpu_copy():
    rows = _diagnostics()
    assert rows["gumbel_ext"].startswith(_version.__version__ + " (")
    assert rows["noise version"] == str(gumbel_ext.NOISE_VERSION)
    assert rows["torch (running)"].startswith(torch.__version__)
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", rows["git revision (checkout)"])
    if _build.MODE == "aot":
        assert rows["ops from"].startswith("AOT module: gumbel_ext._C")
        assert rows["torch (built against)"].startswith(torch.__version__)
    if gumbel_ext._EXTENSION_AVAILABLE:
        ops = torch.ops.gumbel_ext
        assert rows["fused kernels (CPU)"] == "yes"
        assert rows["CPU kernel copy"] == ops._cpu_capability()
        assert rows["CPU copies supported"] == ", ".join(ops._cpu_capabilities())
        assert rows["fused kernels (CUDA)"].startswith("yes, for sm_" if "cuda" in gumbel_ext._ops.KERNEL_DEVICE_TYPES
                                                       else "no: ")


@pytest.mark.skipif(not gumbel_ext._EXTENSION_AVAILABLE, reason="the compiled extension is not available")
def test_diagnostics_name_a_forced_cpu_copy(monkeypatch):
    from gumbel_ext.__main__ import collect

    ops = torch.ops.gumbel_ext
    previous = ops._cpu_capability()
    monkeypatch.setenv("GUMBEL_EXT_CPU_CAPABILITY", "default")
    ops._set_cpu_capability("default")
    try:
        rows = dict(collect())
    finally:
        ops._set_cpu_capability(previous)
    assert rows["CPU kernel copy"] == "default (GUMBEL_EXT_CPU_CAPABILITY=default)"
    assert rows["GUMBEL_EXT_* settings"] == "GUMBEL_EXT_CPU_CAPABILITY=default"


def test_diagnostics_report_the_reference():
    rows = _diagnostics({"GUMBEL_EXT_FORCE_REFERENCE": "1"})
    assert rows["ops from"] == "pure-PyTorch reference (slow): GUMBEL_EXT_FORCE_REFERENCE=1"
    assert rows["fused kernels (CPU)"].startswith("no")
    assert rows["GUMBEL_EXT_* settings"] == "GUMBEL_EXT_FORCE_REFERENCE=1"


# ---- a compiled module built against another torch --------------------------------------


@pytest.mark.parametrize("built, mismatch", [("2.12.0", True), ("2.12.0+cu128", True),
                                              (torch.__version__.split("+")[0] + "+cu999", False),
                                              (torch.__version__, False)])
def test_torch_mismatch_compares_releases(built, mismatch):
    message = _build.torch_mismatch({"torch": built})
    assert (message is not None) == mismatch
    if mismatch:
        assert f"built against torch {built}" in message and f"torch {torch.__version__} is running" in message
    assert _build.torch_mismatch(None) is None and _build.torch_mismatch({}) is None


def test_mismatch_falls_back_to_jit_without_loading_the_module(monkeypatch):
    monkeypatch.delenv("GUMBEL_EXT_FORCE_JIT", raising=False)
    monkeypatch.delenv("GUMBEL_EXT_FORCE_REFERENCE", raising=False)
    monkeypatch.delenv("GUMBEL_EXT_NO_JIT", raising=False)
    monkeypatch.setattr(_build, "MODE", _build.MODE)
    monkeypatch.setattr(_build, "MODE_DETAIL", _build.MODE_DETAIL)
    monkeypatch.setattr(_build.importlib.util, "find_spec", lambda name: object())  # a module is there
    monkeypatch.setattr(_build, "read_build_info", lambda: {"torch": "2.12.0"})
    monkeypatch.setattr(_build, "CSRC", ROOT / "csrc")
    imported, compiled = [], []
    monkeypatch.setattr(_build.importlib, "import_module", lambda name: imported.append(name))
    monkeypatch.setattr(_build, "jit_compile", lambda: compiled.append(True))
    monkeypatch.setattr(_build, "_jit_build_dir", lambda: Path("/nonexistent-jit-dir"))
    with pytest.warns(RuntimeWarning, match=r"built against torch 2\.12\.0, but torch .* is running"):
        assert _build.load() is True
    assert imported == [] and compiled == [True] and _build.MODE == "jit"


def test_installed_module_built_against_another_torch_uses_the_reference(tmp_path):
    """An installed copy (no csrc/ beside it, so no JIT) whose record names another torch:
    one message naming both versions, the reference with its warning, and the module is
    never loaded (it would die with an undefined symbol under a really different torch)."""
    if _build.MODE != "aot":
        pytest.skip("needs the AOT module")
    pkg = tmp_path / "site" / "gumbel_ext"
    shutil.copytree(ROOT / "gumbel_ext", pkg, ignore=shutil.ignore_patterns("__pycache__", "_build_info.json"))
    (pkg / "_build_info.json").write_text('{"torch": "2.12.0", "version": "%s"}\n' % _version.__version__)
    code = textwrap.dedent(
        """
        import sys, warnings, torch
        warnings.simplefilter("always")
        import gumbel_ext
        from gumbel_ext import _build
        y = gumbel_ext.gumbel_softmax(torch.randn(4, 10), hard=True)
        assert torch.equal(y.sum(-1), torch.ones(4))
        print(_build.MODE, "gumbel_ext._C" in sys.modules, gumbel_ext.__file__)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUMBEL_EXT_")}
    env["PYTHONPATH"] = str(tmp_path / "site")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["reference", "False"] and str(pkg) in proc.stdout
    assert proc.stderr.count(f"built against torch 2.12.0, but torch {torch.__version__} is running") == 1
    assert "pure-PyTorch reference" in proc.stderr and "undefined symbol" not in proc.stderr


# ---- pip install . with build isolation ------------------------------------------------


def test_isolated_pip_install_fails_fast_explaining_no_build_isolation(tmp_path):
    """pip's isolated build environment has no torch: setup.py must stop at once with the
    way out, not start downloading a second torch. Needs setuptools for the isolated
    environment from the package index (skipped where there is none)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir", "--dry-run", "--target",
         str(tmp_path / "target"), str(ROOT)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    elapsed = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    if "--no-build-isolation" not in out and re.search(r"satisfies the requirement setuptools|NewConnectionError|"
                                                        r"Network is unreachable|Temporary failure", out):
        pytest.skip("no package index to install setuptools into pip's isolated build environment")
    assert proc.returncode != 0
    assert "pip install --no-build-isolation ." in out and "isolated build environment has no torch" in out
    assert elapsed < 180, f"took {elapsed:.0f} s"


# ---- the sdist check of make dist-check can fail -----------------------------------------


def test_sdist_check_names_a_missing_header_and_a_build_output(tmp_path):
    import tarfile

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import dist_check
    finally:
        sys.path.pop(0)
    tracked = dist_check.tracked_files()
    if tracked is None:
        pytest.skip("not a git checkout")
    prefix = f"gumbel_ext-{_version.__version__}/"
    sdist = tmp_path / "gumbel_ext.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for f in tracked:
            if f != "csrc/cpu/vec_math.h" and f.startswith(dist_check.SDIST_FOLDERS + dist_check.SDIST_FILES):
                tar.add(ROOT / f, prefix + f)
        tar.add(ROOT / "README.md", prefix + "gumbel_ext/_C.so")
    _, problems = dist_check.check_sdist(sdist)
    assert "missing from the sdist: csrc/cpu/vec_math.h" in problems
    assert any('#include "vec_math.h" is not in the sdist' in p for p in problems)
    assert "build output in the sdist: gumbel_ext/_C.so" in problems
