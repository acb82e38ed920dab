"""``python -m gumbel_ext``: what to paste into a bug report (in the spirit of
``python -m torch.utils.collect_env``): versions, how the ops were loaded, and which
kernels this machine runs."""

from __future__ import annotations

import os
import platform
import sys
from typing import List, Tuple


def collect() -> List[Tuple[str, str]]:
    import torch

    import gumbel_ext
    from gumbel_ext import _build, _ops

    info = _build.read_build_info() if _build.MODE == "aot" else None
    rows = [("gumbel_ext", f"{gumbel_ext.__version__} ({gumbel_ext.__file__})")]
    if info is not None:
        rows.append(("git revision (built)", info.get("git_revision") or "unknown (not built from a git checkout)"))
    checkout = _build.git_revision()
    if checkout is not None:
        rows.append(("git revision (checkout)", checkout))
    rows.append(("noise version", str(gumbel_ext.NOISE_VERSION)))
    rows.append(("torch (running)", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"))
    if info is not None:
        rows.append(("torch (built against)", f"{info.get('torch')} (CUDA {info.get('cuda') or 'none'})"))
    elif _build.MODE == "jit":
        rows.append(("torch (built against)", f"{torch.__version__} (the JIT build uses the running torch)"))
    mode = {"aot": "AOT module", "jit": "JIT build", "reference": "pure-PyTorch reference (slow)"}[_build.MODE]
    rows.append(("ops from", f"{mode}: {_build.MODE_DETAIL}"))

    kernels = sorted(_ops.KERNEL_DEVICE_TYPES)
    rows.append(("fused kernels (CPU)", "yes" if "cpu" in kernels else "no: the reference runs on the CPU"))
    if "cuda" not in kernels:
        why = ("no compiled ops" if not kernels else "this torch has no CUDA" if torch.version.cuda is None
               else "not compiled (no nvcc at build time, or GUMBEL_EXT_CPU_ONLY=1)")
        rows.append(("fused kernels (CUDA)", f"no: {why}"))
    else:
        archs = info.get("cuda_archs") if info is not None else None
        if not archs:
            try:
                archs = _build.cuda_archs()
            except Exception as err:  # noqa: BLE001 -- diagnostics must not fail
                archs = [f"unknown ({err})"]
        rows.append(("fused kernels (CUDA)", "yes, for " + ", ".join(archs)))
    if torch.cuda.is_available():
        devices = [f"{torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
                   for i in range(torch.cuda.device_count())]
        rows.append(("CUDA devices", "; ".join(devices)))
    else:
        rows.append(("CUDA devices", "none"))

    if "cpu" in kernels:
        ops = torch.ops.gumbel_ext
        forced = os.environ.get("GUMBEL_EXT_CPU_CAPABILITY")
        chosen = ops._cpu_capability() + (f" (GUMBEL_EXT_CPU_CAPABILITY={forced})" if forced else "")
        rows.append(("CPU kernel copy", chosen))
        rows.append(("CPU copies supported", ", ".join(ops._cpu_capabilities())))
    rows.append(("torch CPU capability", torch.backends.cpu.get_cpu_capability()))
    rows.append(("threads", str(torch.get_num_threads())))
    rows.append(("python", f"{platform.python_version()} ({sys.executable})"))
    rows.append(("platform", f"{platform.platform()} {platform.machine()}"))
    env = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("GUMBEL_EXT_")]
    rows.append(("GUMBEL_EXT_* settings", " ".join(env) if env else "none"))
    return rows


def main() -> int:
    rows = collect()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}} : {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
