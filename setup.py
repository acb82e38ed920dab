"""AOT build: ``pip install --no-build-isolation .`` compiles gumbel_ext._C against the
installed torch (CUDA kernels too when torch has CUDA and nvcc is found;
TORCH_CUDA_ARCH_LIST is honoured). Isolation is off on purpose: an isolated build env
would download a second, multi-GB torch."""

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "gumbel_ext: building needs PyTorch installed first (e.g. `pip install torch==2.13.0`), "
        "then `pip install --no-build-isolation .`"
    )

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "gumbel_ext"))
import _build as build_config  # noqa: E402  (flags and source lists shared with the JIT build)

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
