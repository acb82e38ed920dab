"""AOT build: ``pip install --no-build-isolation .`` compiles gumbel_ext._C against the
installed torch (CUDA kernels too when torch has CUDA and nvcc is found;
TORCH_CUDA_ARCH_LIST is honoured). Isolation is off on purpose: an isolated build env
would download a second, multi-GB torch."""

import json
import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "gumbel_ext: building needs PyTorch, and builds against the torch already installed: "
        "`pip install --no-build-isolation .` (pip's default isolated build environment has no "
        "torch, and giving it one would download a second, multi-GB torch). With no torch "
        "installed, first `pip install torch==2.13.0` (or the torch you want)."
    )

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "gumbel_ext"))
import _build as build_config  # noqa: E402  (flags and source lists shared with the JIT build)
import _version  # noqa: E402  (the one version source; pyproject.toml reads it too)

sys.path.pop(0)


def rel(paths):
    return [os.path.relpath(p, ROOT) for p in paths]


with_cuda = (
    torch.version.cuda is not None
    and CUDA_HOME is not None
    and os.environ.get("GUMBEL_EXT_CPU_ONLY") != "1"
)
sources = rel(build_config.cpp_sources(ROOT / "csrc")) + ["csrc/python/module.cpp"]
extension = CppExtension
extra = {"cxx": build_config.CXX_FLAGS}
if with_cuda:
    sources += rel(build_config.cuda_sources(ROOT / "csrc"))
    extension = CUDAExtension
    extra["cxx"] = extra["cxx"] + ["-DGUMBEL_EXT_WITH_CUDA"]
    extra["nvcc"] = build_config.NVCC_FLAGS


class BuildExtensionPerISA(BuildExtension):
    """setuptools has no per-file flags: compile the wider-ISA copies of the CPU kernels
    here, each with its -m flags on top of the extension's, and link them after the
    other objects (see Note [Per-ISA CPU kernels] in csrc/cpu/kernel_table.h)."""

    def build_extension(self, ext):
        cxx_flags = ext.extra_compile_args
        cxx_flags = cxx_flags.get("cxx", []) if isinstance(cxx_flags, dict) else cxx_flags
        objects = []
        for source, isa_flags in build_config.isa_sources(ROOT / "csrc"):
            objects += self.compiler.compile(
                rel([source]),
                output_dir=self.build_temp,
                include_dirs=ext.include_dirs,
                extra_postargs=list(cxx_flags) + isa_flags,
                depends=ext.depends,
            )
        ext.extra_objects = [o for o in (ext.extra_objects or []) if o not in objects] + objects
        super().build_extension(ext)
        # Beside the module (in the wheel, or in place: see copy_extensions_to_source): the
        # torch it must run under, read before loading it (gumbel_ext/_build.py
        # torch_mismatch), and the facts the diagnostics (python -m gumbel_ext) print.
        info = build_config.make_build_info(with_cuda, _version.__version__, _version.NOISE_VERSION)
        self._build_info = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), build_config.BUILD_INFO.name)
        with open(self._build_info, "w") as f:
            json.dump(info, f, indent=1)
            f.write("\n")

    def copy_extensions_to_source(self):
        # setuptools builds an in-place module in build/lib and copies only the module.
        super().copy_extensions_to_source()
        if getattr(self, "_build_info", None):
            shutil.copyfile(self._build_info, build_config.BUILD_INFO)

setup(
    packages=find_packages(include=["gumbel_ext", "gumbel_ext.*"]),
    ext_modules=[
        extension(
            "gumbel_ext._C",
            sources,
            extra_compile_args=extra,
            extra_link_args=build_config.LD_FLAGS,
        )
    ],
    cmdclass={"build_ext": BuildExtensionPerISA},
)
