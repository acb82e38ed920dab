"""Timing with torch.utils.benchmark: it synchronizes CUDA around each block, so no
``time.time()`` ever brackets asynchronous work. Medians and interquartile ranges."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List

import torch
from torch.utils.benchmark import Timer


@dataclass
class Timing:
    median: float  # seconds per call
    iqr: float
    runs: int  # measured blocks
    number_per_run: int  # calls per block
    times: List[float]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def first_call_seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one synchronized call: the compile time of torch.compile (plus one
    run), and a size estimate for `measure`; never a reported timing."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure(fn: Callable[[], object], *, estimate: float, min_run_time: float, min_runs: int) -> Timing:
    """Median time of ``fn()`` (already warm) by ``Timer.blocked_autorange``.

    ``estimate``: seconds of one earlier call. It stretches the run so that slow calls
    still get about ``min_runs`` blocks (blocked_autorange alone stops after one block once
    that block exceeds min_run_time); a stall on a busy machine can still cut it short,
    so the JSON records the number of blocks. Timer's default of one thread would
    understate multi-threaded CPU kernels: it uses the threads torch is set to use."""
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=max(min_run_time, min_runs * estimate * 1.1))
    return Timing(m.median, m.iqr, len(m.times), m.number_per_run, list(m.times))
