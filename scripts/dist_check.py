"""Build and check the distribution, as `make dist-check` (part of `make test`) runs it:

1. `python -m build --sdist --wheel --no-isolation`: both from this checkout, so the wheel
   reuses the objects `make build` compiled (build/temp.*) and only links;
2. `twine check --strict` on both;
3. the sdist holds every tracked file a build or the tests need (csrc/ sources, headers,
   .cu/.cuh, the CMake build, tests/, ...), every quoted #include of csrc/ and tests/
   resolves inside it, and it holds no build output;
4. the wheel holds the compiled module, its build record (the torch it was built against),
   the license and this version's metadata;
5. the wheel, installed into a fresh venv that holds only torch (torch and its own
   dependencies, linked from this interpreter's site-packages instead of reinstalled: a
   reinstall of torch takes minutes here), imports from there with the AOT module, runs a
   smoke test and `python -m gumbel_ext`.
"""

import os
import re
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import zipfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "dist-check"
sys.path.insert(0, str(ROOT / "gumbel_ext"))
import _version  # noqa: E402

sys.path.pop(0)

# Tracked files the sdist must hold: everything under these folders, and these files.
SDIST_FOLDERS = ("csrc/", "tests/", "gumbel_ext/", "docs/", "scripts/", "examples/")
SDIST_FILES = ("CMakeLists.txt", "setup.py", "pyproject.toml", "MANIFEST.in", "LICENSE", "README.md",
               "CHANGELOG.md", "Makefile")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def step(name, t0):
    print(f"dist-check: {name} ({time.perf_counter() - t0:.1f} s)", flush=True)


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"dist-check: `{' '.join(map(str, cmd))}` failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def tracked_files():
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None  # not a git checkout (e.g. an unpacked sdist): nothing to compare with
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def check_sdist(sdist: Path):
    with tarfile.open(sdist) as tar:
        prefix = f"gumbel_ext-{_version.__version__}/"
        names = {m.name[len(prefix):] for m in tar.getmembers() if m.isfile() and m.name.startswith(prefix)}
        contents = {n: tar.extractfile(prefix + n).read() for n in names if n.endswith((".h", ".cuh", ".cpp", ".cu"))}
    problems = []
    tracked = tracked_files()
    if tracked is not None:
        wanted = [f for f in tracked if f.startswith(SDIST_FOLDERS) or f in SDIST_FILES]
        problems += [f"missing from the sdist: {f}" for f in wanted if f not in names]
    for name, text in sorted(contents.items()):
        for inc in INCLUDE.findall(text.decode()):
            here = str(Path(name).parent / inc)
            # The include paths the builds pass: the includer's folder, csrc/, and csrc/cuda/
            # (the CUDA emulator's harness, tests/test_cuda_emulated.py).
            candidates = [os.path.normpath(here), os.path.normpath("csrc/" + inc), os.path.normpath("csrc/cuda/" + inc)]
            if not any(c in names for c in candidates) and not inc.startswith(("torch/", "ATen/", "c10/")):
                problems.append(f"{name}: #include \"{inc}\" is not in the sdist")
    problems += [f"build output in the sdist: {n}" for n in names
                 if n.endswith((".so", ".o", ".pyc")) or n.endswith("_build_info.json")]
    for required in ("csrc/gumbel_noise.h", "csrc/cpu/isa/kernels_AVX512.cpp", "tests/golden/noise.csv"):
        if required not in names:
            problems.append(f"missing from the sdist: {required}")
    if not any(n.startswith("csrc/cuda/") and n.endswith(".cu") for n in names):
        problems.append("no csrc/cuda/*.cu in the sdist")
    return names, problems


def check_wheel(wheel: Path):
    import json

    import torch

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = f"gumbel_ext-{_version.__version__}.dist-info/"
        meta = zf.read(dist_info + "METADATA").decode()
        info = json.loads(zf.read("gumbel_ext/_build_info.json"))
    problems = []
    if not any(re.fullmatch(r"gumbel_ext/_C\..*\.so", n) for n in names):
        problems.append("no compiled module gumbel_ext/_C*.so in the wheel")
    if dist_info + "licenses/LICENSE" not in names:
        problems.append("no LICENSE in the wheel's dist-info")
    if f"\nVersion: {_version.__version__}\n" not in meta:
        problems.append(f"wheel metadata does not say Version: {_version.__version__}")
    if "\nLicense-Expression: BSD-3-Clause\n" not in meta:
        problems.append("wheel metadata does not say License-Expression: BSD-3-Clause")
    if info.get("torch") != torch.__version__ or info.get("version") != _version.__version__:
        problems.append(f"the wheel's build record {info} does not name torch {torch.__version__}")
    problems += [f"unexpected file in the wheel: {n}" for n in names
                 if not n.startswith(("gumbel_ext/", dist_info)) or n.endswith(".pyc")]
    return problems


def torch_closure():
    """The installed distributions torch needs to import: torch and its requirements
    (without extras), recursively."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, stack = {}, ["torch"]
    while stack:
        name = canonicalize_name(stack.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional platform dependency that is not installed here
        seen[name] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(req.name)
    return list(seen.values())


def torch_only_folder(folder: Path):
    """Links every top-level entry of torch's distributions into ``folder``."""
    folder.mkdir()
    for dist in torch_closure():
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src = Path(dist.locate_file(top))
            if src.exists() and not (folder / top).exists() and top != "__pycache__":
                (folder / top).symlink_to(src)


SMOKE = textwrap.dedent(
    """
    import sys, torch, gumbel_ext
    from gumbel_ext import _build
    assert gumbel_ext.__file__.startswith(sys.prefix), gumbel_ext.__file__
    assert _build.MODE == "aot", (_build.MODE, _build.MODE_DETAIL)
    x = torch.randn(64, 1000, requires_grad=True)
    y = gumbel_ext.gumbel_softmax(x, tau=0.5)
    torch.testing.assert_close(y.sum(-1), torch.ones(64))
    (y * torch.randn(1000)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    hard = gumbel_ext.gumbel_softmax(x.detach(), hard=True)
    assert torch.equal(hard.sum(-1), torch.ones(64))
    assert gumbel_ext.sample(x.detach(), num_samples=4).shape == (64, 4)
    print("smoke test passed:", gumbel_ext.__version__, "from", gumbel_ext.__file__)
    """
)


def check_venv(wheel: Path, tmp: Path):
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    torch_only_folder(tmp / "torch-only")
    (site / "torch_only.pth").write_text(str(tmp / "torch-only") + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
         str(wheel)])
    # In an empty folder, with a clean environment: nothing from the checkout can leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "GUMBEL_EXT_"))}
    cwd = tmp / "empty"
    cwd.mkdir()
    proc = run([str(python), "-c", SMOKE], cwd=cwd, env=env)
    print(proc.stdout.strip())
    diag = run([str(python), "-m", "gumbel_ext"], cwd=cwd, env=env)
    print(textwrap.indent(diag.stdout.strip(), "  "))
    if "AOT" not in diag.stdout:
        sys.exit("dist-check: `python -m gumbel_ext` in the venv does not report the AOT module")


def main() -> int:
    t0 = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("gumbel_ext-*"):
        old.unlink()
    run([sys.executable, "-m", "build", "--sdist", "--wheel", "--no-isolation", "--outdir", str(OUT), str(ROOT)],
        cwd=ROOT)
    (sdist,) = OUT.glob("gumbel_ext-*.tar.gz")
    (wheel,) = OUT.glob("gumbel_ext-*.whl")
    step(f"built {sdist.name} and {wheel.name}", t0)
    run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)])
    step("twine check --strict passed", t0)
    names, problems = check_sdist(sdist)
    problems += check_wheel(wheel)
    if problems:
        sys.exit("dist-check:\n  " + "\n  ".join(problems))
    step(f"the sdist holds every build and test file ({len(names)} files); the wheel is complete", t0)
    with tempfile.TemporaryDirectory(prefix="gumbel_ext-dist-") as tmp:
        check_venv(wheel, Path(tmp))
    step("the wheel works in a fresh venv holding only torch", t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
