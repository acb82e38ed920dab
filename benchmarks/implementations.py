"""The contenders, side by side in one run. Each builds, for a case, a forward function
``f(x) -> Tensor``; run.py times ``f(x)`` (forward) or ``autograd.grad(f(x), x, g)``
(forward+backward) for all of them alike."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Tuple

import torch
import torch.nn.functional as F

import gumbel_ext

from .workloads import TAU, Case

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Impl:
    key: str
    label: str
    role: str  # "fused" (the subject), "baseline" (speedups against it), "floor"
    modes: Tuple[str, ...]
    compiled: bool = False

    def build(self, case: Case) -> Forward:
        return _BUILDERS[self.key](case)


IMPLS: Tuple[Impl, ...] = (
    Impl("gumbel_ext", "gumbel_ext", "fused", ("soft", "hard", "sample")),
    Impl("eager", "F.gumbel_softmax", "baseline", ("soft", "hard", "sample")),
    Impl("compiled", "torch.compile(F.gumbel_softmax)", "baseline", ("soft", "hard", "sample"), compiled=True),
    Impl("multinomial", "multinomial(softmax)", "baseline", ("sample",)),
    Impl("softmax", "torch.softmax (floor)", "floor", ("soft", "hard", "sample")),
)
IMPL_KEYS = tuple(i.key for i in IMPLS)


def impls_for(case: Case, keys=IMPL_KEYS) -> Tuple[Impl, ...]:
    return tuple(i for i in IMPLS if i.key in keys and case.mode in i.modes)


def _fused(case: Case) -> Forward:
    dim = case.workload.dim
    if case.mode == "sample":
        return functools.partial(gumbel_ext.sample, dim=dim)
    return functools.partial(gumbel_ext.gumbel_softmax, tau=TAU, hard=case.mode == "hard", dim=dim)


def _eager(case: Case) -> Forward:
    dim = case.workload.dim
    if case.mode == "sample":
        # What people write today to draw indices with the Gumbel trick.
        def gumbel_argmax(x: torch.Tensor) -> torch.Tensor:
            return F.gumbel_softmax(x, tau=TAU, hard=True, dim=dim).argmax(dim)

        return gumbel_argmax
    return functools.partial(F.gumbel_softmax, tau=TAU, hard=case.mode == "hard", dim=dim)


def _compiled(case: Case) -> Forward:
    # Static shapes (no mark_dynamic): each case compiles its own specialised kernel, the
    # best torch.compile can do; run.py resets dynamo per case and times the compile apart.
    return torch.compile(_eager(case), dynamic=False)


def _multinomial(case: Case) -> Forward:
    dim = case.workload.dim

    def multinomial(x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(x, dim).movedim(dim, -1)  # multinomial wants [rows, categories]
        drawn = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1)
        return drawn.view(probs.shape[:-1])

    return multinomial


def _softmax(case: Case) -> Forward:
    # The floor: the softmax alone on the same tensor; the noise should cost little above it.
    return functools.partial(torch.softmax, dim=case.workload.dim)


_BUILDERS = {
    "gumbel_ext": _fused,
    "eager": _eager,
    "compiled": _compiled,
    "multinomial": _multinomial,
    "softmax": _softmax,
}
