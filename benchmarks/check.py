"""Correctness before timing: the fused ops against gumbel_ext/reference.py on the same
noise (the rng_state the fused forward returns), element by element.

The fused call runs on the whole benchmark tensor; the reference, which is slow, on its
leading slice along dim 0 (whole rows, at most ``REF_ELEMENTS`` elements). Rows are
independent and a row's noise depends only on (seed, offset, row index), and slicing
dim 0 keeps the row indices of the rows it keeps (row r = o * inner + i), so the slice
is compared exactly as the full tensor would be."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

import gumbel_ext
from gumbel_ext import _ops, reference

from .workloads import TAU, Case

REF_ELEMENTS = 1 << 18

# Relative tolerance of one rounding to the output dtype (float32: exp/log differences).
DTYPE_RTOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
DTYPE_ATOL = {torch.float32: 1e-6, torch.bfloat16: 1e-5, torch.float16: 1e-5}
FP32_UNIT_ROUNDOFF = 2.0**-24


def sum_rtol(dtype: torch.dtype, categories: int) -> float:
    """The row sum S (and the backward's dot product) may be accumulated in any order:
    allow the worst case of recursive float32 summation, C * u, besides the output
    rounding. Wrong noise or a wrong index is off by O(1) and still fails."""
    return max(DTYPE_RTOL[dtype], categories * FP32_UNIT_ROUNDOFF)


@dataclass
class CheckResult:
    status: str  # "ok", "FAIL", or "skipped"
    detail: str = ""
    checked_rows: int = 0
    max_abs_err: float = 0.0  # forward, soft mode: the drift behind the tolerance, reported


def _leading_rows(case: Case) -> int:
    per_outer = case.workload.numel // case.workload.shape[0]
    return max(1, min(case.workload.shape[0], REF_ELEMENTS // per_outer))


def _compare(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> Optional[str]:
    try:
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True)
    except AssertionError as err:
        return f"{name}: " + " ".join(str(err).split())[:400]
    return None


def _diagnose(case: Case, x: torch.Tensor, out: torch.Tensor, want: torch.Tensor, rng_state: torch.Tensor) -> str:
    """What a failed forward check adds to its message: whether replaying the fused op on
    the same (seed, offset) reproduces the mismatch (a deterministic bug for these inputs)
    or matches the reference (the first call went wrong: a transient fault), and a file
    with everything needed to replay it."""
    k, w = want.shape[0], case.workload
    again, _ = torch.ops.gumbel_ext.gumbel_softmax_forward(x, TAU, None, case.mode == "hard", w.dim, None, rng_state)
    same = torch.equal(again[:k].nan_to_num(), out[:k].nan_to_num())
    matches = _compare("replay", again[:k], want, sum_rtol(x.dtype, w.categories), DTYPE_ATOL[x.dtype]) is None
    bad_rows = ((out[:k].float() - want.float()).abs().nan_to_num(0.0) > 1e-6).movedim(w.dim, -1)
    bad_rows = bad_rows.reshape(-1, w.categories).any(-1).nonzero().flatten().tolist()
    dump = Path(tempfile.gettempdir()) / f"gumbel_ext-check-{case.key.replace('/', '-')}.pt"
    torch.save({"case": case.key, "x": x.cpu(), "rng_state": rng_state.cpu(), "out": out[:k].cpu(),
                "want": want.cpu(), "replay": again[:k].cpu(), "bad_rows": bad_rows}, dump)
    verdict = ("replay reproduces it" if same else
               "replay matches the reference (transient)" if matches else "replay differs from both")
    # And the other side: is the reference itself reproducible?
    want_again = reference.gumbel_softmax(x[:k], TAU, case.mode == "hard", w.dim, rng_state=rng_state)
    verdict += "; the reference recomputes " + ("the same" if torch.equal(want_again.nan_to_num(), want.nan_to_num()) else "differently")
    return f" [rng_state {rng_state.tolist()}; {verdict}; rows {bad_rows[:12]}; inputs saved to {dump}]"


def reference_grad(x, grad, rng_state, hard: bool, dim: int) -> torch.Tensor:
    """The gradient the fused backward is specified to return, in reference ops: the
    softmax backward on y_soft rounded to the logits' dtype (as F.gumbel_softmax's
    softmax backward sees its own output), accumulated in float32."""
    noise = reference.gumbel_noise(x, dim, rng_state)
    y = reference.soft_from_noise(x, noise, TAU, dim).to(x.dtype).float()
    g = grad.float()
    return (y * (g - (g * y).sum(dim, keepdim=True)) / TAU).to(x.dtype)


def check_case(case: Case, x: torch.Tensor, grad: Optional[torch.Tensor]) -> CheckResult:
    """Check the fused op that ``case`` times. ``grad`` is the upstream gradient for
    forward+backward cases."""
    if not _ops.has_kernel(x.device):
        return CheckResult("skipped", f"no fused kernel on {x.device.type}: gumbel_ext runs reference.py")
    w = case.workload
    assert w.dim % x.dim() != 0, "slicing dim 0 must keep whole rows"
    k = _leading_rows(case)
    x = x.detach()
    x_ref = x[:k]
    rows = x_ref.numel() // w.categories
    rtol, atol = sum_rtol(x.dtype, w.categories), DTYPE_ATOL[x.dtype]

    if case.mode == "sample":
        rng_state = reference.draw_rng_state(x.device)
        got = torch.ops.gumbel_ext.sample(x, 1, w.dim, None, rng_state)
        want = reference.sample(x_ref, 1, w.dim, rng_state=rng_state)
        problem = _compare("sample indices", got[:k], want, 0, 0)
        return CheckResult("FAIL" if problem else "ok", problem or "", rows)

    hard = case.mode == "hard"
    out, rng_state = torch.ops.gumbel_ext.gumbel_softmax_forward(x, TAU, None, hard, w.dim, None, None)
    want = reference.gumbel_softmax(x_ref, TAU, hard, w.dim, rng_state=rng_state)
    err = (out[:k].float() - want.float()).abs().nan_to_num(0.0).max().item()
    # hard: the exact one-hot, compared exactly.
    problem = _compare("forward", out[:k], want, 0 if hard else rtol, 0 if hard else atol)
    if problem is not None:
        problem += _diagnose(case, x, out, want, rng_state)
    if problem is None and grad is not None:
        saved = x if hard else out
        got_grad, _ = torch.ops.gumbel_ext.gumbel_softmax_backward(
            grad, saved, rng_state, TAU, None, hard, w.dim, False
        )
        want_grad = reference_grad(x_ref, grad[:k], rng_state, hard, w.dim)
        # Cancellation in g - <g, y> leaves absolute, not relative, error near zero.
        grad_atol = max(atol, rtol * want_grad.float().abs().max().item())
        problem = _compare("backward", got_grad[:k], want_grad, rtol, grad_atol)
    if problem is None:
        # The public entry point (what is timed) must agree in kind: shape, dtype, row sums.
        y = gumbel_ext.gumbel_softmax(x, tau=TAU, hard=hard, dim=w.dim)
        sums = y.float().sum(w.dim)
        if y.shape != x.shape or y.dtype != x.dtype or not torch.allclose(sums, torch.ones_like(sums), atol=1e-2):
            problem = "gumbel_ext.gumbel_softmax: wrong shape/dtype or rows not summing to 1"
    return CheckResult("FAIL" if problem else "ok", problem or "", rows, err)
