"""What the suite measures: workloads named after their users, dtypes, modes, passes,
and the presets (--quick, default, --full) that pick combinations of them."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Tuple

import torch

TAU = 1.0


@dataclass(frozen=True)
class Workload:
    name: str
    shape: Tuple[int, ...]
    dim: int = -1
    user: str = ""
    # "channels_last" / "channels_last_3d": the input in that memory format, else contiguous.
    memory_format: str = ""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def categories(self) -> int:
        return self.shape[self.dim]

    @property
    def rows(self) -> int:
        return self.numel // self.categories

    @property
    def shape_label(self) -> str:
        text = "x".join(str(s) for s in self.shape)
        if self.dim not in (-1, len(self.shape) - 1):
            text += f" dim={self.dim}"
        return f"{text} {self.memory_format}" if self.memory_format else text


WORKLOADS: Tuple[Workload, ...] = (
    Workload("rl-head", (256, 10), user="RL policy / VAE categorical head, small batch"),
    Workload("rl-batch", (65536, 32), user="RL / VAE categorical latents, large batch"),
    Workload("classifier", (4096, 1000), user="ImageNet-size classifier head"),
    Workload("lm-32k", (1024, 32000), user="language model, 32k vocabulary (Llama 2)"),
    Workload("lm-128k", (64, 128256), user="language model, 128k vocabulary (Llama 3)"),
    Workload("channels", (64, 256, 32, 32), dim=1, user="discrete channel choice in a conv net"),
    # Issue 15: a taming/DALL-E-style quantizer in channels_last (dim 1 innermost in memory),
    # read in place; target within 1.2x of its contiguous twin.
    Workload("channels_last", (8, 512, 32, 32), dim=1, memory_format="channels_last",
             user="Gumbel quantizer (taming / DALL-E) in a channels_last conv net"),
    Workload("channels-512", (8, 512, 32, 32), dim=1, user="the contiguous twin of `channels_last`"),
)

# Issue 3's CUDA targets are stated at 8192x32000 (an LM training step): part of the CUDA
# default set only -- on a CPU each baseline call of it takes seconds.
GPU_WORKLOADS: Tuple[Workload, ...] = (
    Workload("lm-32k-batch", (8192, 32000), user="LM training step, 8k tokens x 32k vocabulary (CUDA targets)"),
)

# --quick: small stand-ins that still walk every code path (last dim and a strided dim).
QUICK_WORKLOADS: Tuple[Workload, ...] = (
    Workload("rl-head", (256, 10), user="RL policy / VAE categorical head, small batch"),
    Workload("channels-tiny", (4, 16, 8, 8), dim=1, user="smoke-test stand-in for `channels`"),
)

DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("soft", "hard", "sample")  # sample: category indices (gumbel_ext.sample)
PASSES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class Case:
    workload: Workload
    dtype: str
    mode: str
    pass_: str

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def key(self) -> str:
        return f"{self.workload.name}/{self.dtype}/{self.mode}/{self.pass_}"

    def bytes_moved(self) -> int:
        """The bytes an ideal kernel must move: the effective-bandwidth numerator, the same
        for every implementation so GB/s compare like for like.

        soft/hard forward: read the logits, write the output (2N elements).
        fwd+bwd adds the backward's read of grad and of the saved tensor, and its write (3N).
        sample: read the logits, write one int64 index per row."""
        n, size = self.workload.numel, torch.empty((), dtype=self.torch_dtype).element_size()
        if self.mode == "sample":
            return n * size + self.workload.rows * 8
        return (2 if self.pass_ == "fwd" else 5) * n * size


@dataclass(frozen=True)
class Preset:
    workloads: Tuple[Workload, ...]
    dtypes: Tuple[str, ...]
    modes: Tuple[str, ...]
    passes: Tuple[str, ...]
    min_run_time: float  # seconds of timing per measurement (at least `min_runs` calls)
    min_runs: int


PRESETS: Dict[str, Preset] = {
    # Seconds: every mode, pass and implementation once, on tiny tensors.
    "quick": Preset(QUICK_WORKLOADS, ("fp32",), MODES, PASSES, min_run_time=0.02, min_runs=3),
    # About two minutes on a 2-core CPU: fp32, every workload, every mode and pass. On a
    # GPU the same set takes seconds plus the torch.compile time.
    "default": Preset(
        WORKLOADS, ("fp32",), MODES, PASSES,
        min_run_time=0.1, min_runs=3,
    ),
    "full": Preset(WORKLOADS, tuple(DTYPES), MODES, PASSES, min_run_time=0.2, min_runs=5),
}


def preset_for(name: str, device_type: str) -> Preset:
    """PRESETS[name], with the GPU-only workloads added on CUDA (default and full)."""
    preset = PRESETS[name]
    if device_type == "cuda" and name != "quick":
        return Preset(preset.workloads + GPU_WORKLOADS, preset.dtypes, preset.modes, preset.passes,
                      preset.min_run_time, preset.min_runs)
    return preset


def make_cases(
    workloads: Iterable[Workload], dtypes: Iterable[str], modes: Iterable[str], passes: Iterable[str]
) -> List[Case]:
    """Every combination, workload-major; sample has no backward (indices are not differentiable)."""
    return [
        Case(w, d, m, p)
        for w, d, m, p in itertools.product(workloads, dtypes, modes, passes)
        if not (m == "sample" and p != "fwd")
    ]


def find_workloads(names: Iterable[str]) -> Tuple[Workload, ...]:
    known = {w.name: w for w in WORKLOADS + GPU_WORKLOADS + QUICK_WORKLOADS}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"unknown workload(s) {missing}; known: {sorted(known)}")
    return tuple(known[n] for n in names)


def make_input(case: Case, device: torch.device, seed: int) -> torch.Tensor:
    """Standard-normal logits, the same for every implementation of a case, in the
    workload's memory format."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(case.workload.shape, generator=gen, dtype=torch.float32)
    x = x.to(device=device, dtype=case.torch_dtype)
    if case.workload.memory_format:
        x = x.to(memory_format=getattr(torch, case.workload.memory_format))
    return x
