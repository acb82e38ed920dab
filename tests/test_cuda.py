"""CUDA-only tests: the fused CUDA kernels against the CPU kernels and the reference with
the same (seed, offset), every launch strategy, CUDA graphs, generators, huge inputs.

Without a GPU (or without the CUDA kernels built) every test here skips.
"""

from __future__ import annotations

import math

import pytest
import torch

import gumbel_ext
from gumbel_ext import _ops, reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

ops = torch.ops.gumbel_ext

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Row lengths hitting every strategy: warp per row (several rows per warp below 32, one
# warp up to 1024), block per row with the row in shared memory, block per row with
# regenerated noise (too long for shared memory), aligned and unaligned lengths.
LENGTHS = [1, 7, 32, 1000, 1025, 4096, 32000, 128256, 2**20]
# Within one ulp of the output dtype after rounding (the CUDA and CPU exp/log may differ
# by an ulp in float32, and sums run in a different order).
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float64: dict(rtol=1e-5, atol=1e-6),  # the noise is float32 on every device
    torch.float16: dict(rtol=1e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
}


def cpu_tol(dtype, length):
    """Against the CPU kernel, which sums a row sequentially in float: its relative error
    grows like sqrt(C) * eps (about 1e-4 at C = 2^20), more than the CUDA tree sums'."""
    if dtype == torch.float32:
        return dict(rtol=1e-5 + 3e-7 * math.sqrt(length), atol=1e-6)
    return TOL[dtype]


def backward_tol(dtype, length, hard, tau=False):
    """dL/dlogit = y (g - dot) / tau cancels where g ~ dot: the error scales with |g| * eps
    and with the CPU's y and dot sums."""
    if dtype == torch.float64:
        return dict(rtol=1e-4, atol=1e-6)  # the float32 noise may differ in its last ulp
    if dtype == torch.float32:
        r = cpu_tol(dtype, length)["rtol"]
        return dict(rtol=2 * r + 1e-4, atol=10 * r + 1e-5)
    if hard:  # y_soft rounded to the half dtype may differ by an ulp from the CPU's
        return dict(rtol=2e-2, atol=2e-3) if tau else dict(rtol=4 * TOL[dtype]["rtol"], atol=4e-3)
    return dict(rtol=1e-4, atol=1e-5) if tau else TOL[dtype]


@pytest.fixture(autouse=True)
def _needs_cuda_kernels():
    if not _ops.has_kernel(torch.device("cuda")):
        pytest.skip("gumbel_ext was built without CUDA kernels")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rng_state(seed: int, offset: int = 0, device: str = "cuda") -> torch.Tensor:
    return torch.tensor([seed, offset], dtype=torch.int64, device=device)


def rows_for(length: int, budget: int = 2**22) -> int:
    """An odd row count (so the last warp / block is partial) keeping the test small."""
    return max(1, min(67, budget // length)) | 1


def make_logits(shape, dtype, device="cuda", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * 3).to(dtype).to(device)


def forward(x, tau, hard, dim, state, tau_rows=None):
    out, used = ops.gumbel_softmax_forward(x, tau, tau_rows, hard, dim, None, state)
    return out, used


def perturbed_cpu(x_cpu, dim, state_cpu):
    acc = acc_dtype(x_cpu.dtype)
    return x_cpu.to(acc) + ops.gumbel_noise(x_cpu, dim, state_cpu).to(acc)


def near_tie_rows(x, dim, k=1, rel=1e-4):
    """Rows (flattened, in row order) whose k + 1 largest perturbed logits are closer than
    `rel` (scaled by the magnitude): there the CUDA and CPU float math may pick differently."""
    rows = x.movedim(dim, -1).reshape(-1, x.shape[dim] if x.dim() else 1).double()
    length = rows.shape[-1]
    if length < 2:
        return torch.zeros(rows.shape[0], dtype=torch.bool)
    top = rows.topk(min(k + 1, length), dim=-1).values
    finite = torch.isfinite(top)
    gaps = (top[:, :-1] - top[:, 1:]).abs()
    gaps = torch.where(finite[:, :-1] & finite[:, 1:], gaps, torch.full_like(gaps, math.inf))
    scale = top[:, :1].abs().clamp_min(1.0)
    return (gaps < rel * scale).any(dim=-1)


def assert_hard_equal(out_cuda, out_cpu, x_cpu, dim):
    """Exact one-hots, equal to the CPU's except on near-tie rows."""
    a = out_cuda.cpu().movedim(dim, -1).reshape(-1, out_cuda.shape[dim])
    b = out_cpu.movedim(dim, -1).reshape(-1, out_cpu.shape[dim])
    assert torch.all((a == 0) | (a == 1)), "hard output is not 0/1"
    assert torch.all(a.sum(-1) == 1), "hard output is not one-hot"
    ties = near_tie_rows(x_cpu, dim)
    assert ties.float().mean() < 0.05, "too many near ties for a meaningful test"
    mismatch = (a != b).any(-1) & ~ties
    assert not mismatch.any(), f"{int(mismatch.sum())} rows differ from the CPU one-hot"


# ----------------------------------------------------------------------------- noise
@pytest.mark.parametrize("shape,dim", [((5, 1000), -1), ((3, 7, 9), 1), ((7,), 0), ((), 0), ((4, 1025), 0)])
@pytest.mark.parametrize("offset", [0, 8, 2**40 + 4])
def test_noise_equals_cpu_and_reference(shape, dim, offset):
    x = torch.zeros(shape, device="cuda")
    state = rng_state(0x1234_5678_9ABC, offset)
    g = ops.gumbel_noise(x, dim, state)
    g_cpu = ops.gumbel_noise(x.cpu(), dim, state.cpu())
    g_ref = reference.gumbel_noise(x, dim, state)
    assert g.dtype == torch.float32 and g.shape == x.shape
    # One algorithm on every device (Note [Bit-identical noise]): the CPU's bits exactly;
    # the reference uses torch.log, a few ulp away.
    assert torch.equal(g.cpu().view(torch.int32), g_cpu.view(torch.int32))
    torch.testing.assert_close(g, g_ref, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("col_start,length", [(0, 1000), (3, 4097), (2**33 + 1, 50), (5, 1)])
def test_keyed_noise_equals_cpu_bits(col_start, length):
    """keyed_noise (the vocabulary-parallel ranks' and seeded gumbel_softmax's noise) draws
    the CPU's bits exactly, at any column start, 64-bit keys, offsets and row counters."""
    gen = torch.Generator().manual_seed(7)
    rows = 6
    keys = torch.randint(-2**63, 2**63 - 1, (rows,), generator=gen, dtype=torch.int64)
    offsets = torch.randint(0, 2**40, (rows,), generator=gen, dtype=torch.int64) * 4
    row_ctr = torch.tensor([0, 1, 5, 2**31, 2**32 + 3, 2**40], dtype=torch.int64)
    g = ops.keyed_noise(keys.cuda(), offsets.cuda(), row_ctr.cuda(), col_start, length)
    g_cpu = ops.keyed_noise(keys, offsets, row_ctr, col_start, length)
    assert g.dtype == torch.float32 and g.shape == (rows, length)
    assert torch.equal(g.cpu().view(torch.int32), g_cpu.view(torch.int32))


# ------------------------------------------------------------------ forward, dim last
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("length", LENGTHS)
def test_soft_forward_equals_cpu_and_reference(length, dtype):
    rows = rows_for(length)
    x = make_logits((rows, length), dtype)
    state = rng_state(2024, 4 * length)
    out, used = forward(x, 0.7, False, -1, state)
    out_cpu, _ = forward(x.cpu(), 0.7, False, -1, state.cpu())
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(used.cpu(), state.cpu())
    torch.testing.assert_close(out.cpu(), out_cpu, **cpu_tol(dtype, length))
    ref = reference.gumbel_softmax(x, 0.7, False, -1, rng_state=state)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    sums = out.double().sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("length", LENGTHS)
def test_hard_forward_equals_cpu(length, dtype):
    rows = rows_for(length)
    x = make_logits((rows, length), dtype, seed=1)
    state = rng_state(77, 0)
    out, _ = forward(x, 1.0, True, -1, state)
    out_cpu, _ = forward(x.cpu(), 1.0, True, -1, state.cpu())
    assert torch.equal(out.cpu(), out_cpu)  # bitwise noise: near ties decide alike too
    ref = reference.gumbel_softmax(x, 1.0, True, -1, rng_state=state)
    assert_hard_equal(out, ref.cpu(), perturbed_cpu(x.cpu(), -1, state.cpu()), -1)


@pytest.mark.parametrize("length", [7, 1000, 4096, 32000])
def test_sample_argmax_equals_hard_forward(length):
    """Gumbel-max index == argmax of the one-hot for the same noise: exactly, same device."""
    x = make_logits((rows_for(length), length), torch.float32, seed=2)
    state = rng_state(5, 12)
    out, _ = forward(x, 1.0, True, -1, state)
    idx = ops.sample(x, 1, -1, None, state)
    assert torch.equal(idx, out.argmax(-1))


@pytest.mark.parametrize("shape", [(1024, 128256), (4096, 1000), (64, 50257)])
def test_hard_and_sample_identical_to_cpu(shape):
    """The issue's promise: the same (seed, offset) gives the same one-hots and sample()
    indices on CUDA as on the CPU, bit for bit, near ties included (bf16-step logits tie
    often)."""
    x = make_logits(shape, torch.float32, seed=9).bfloat16().float()
    state = rng_state(0x5EED, 1 << 20)
    out, _ = forward(x, 0.5, True, -1, state)
    out_cpu, _ = forward(x.cpu(), 0.5, True, -1, state.cpu())
    assert torch.equal(out.cpu(), out_cpu)
    assert torch.equal(ops.sample(x, 1, -1, None, state).cpu(), ops.sample(x.cpu(), 1, -1, None, state.cpu()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("length", [5, 1000, 1025, 32000])
def test_unaligned_input(length, dtype):
    """A contiguous view whose data pointer is not 16-byte aligned takes the scalar path."""
    rows = rows_for(length, 2**20)
    base = make_logits((rows * length + 1,), dtype, seed=3)
    x = base[1:].view(rows, length)
    assert x.is_contiguous() and x.data_ptr() % 16 != 0
    state = rng_state(99)
    for hard in (False, True):
        out, _ = forward(x, 0.5, hard, -1, state)
        out_aligned, _ = forward(x.clone(), 0.5, hard, -1, state)
        torch.testing.assert_close(out, out_aligned, rtol=0, atol=0)


@pytest.mark.parametrize("length", [1000, 32000])
def test_special_values(length):
    """-inf logits get exactly 0; rows with NaN, +inf or only -inf are NaN, as on the CPU."""
    x = make_logits((6, length), torch.float32, seed=4)
    x[0, 1::2] = -math.inf
    x[1, 3] = math.nan
    x[2, 5] = math.inf
    x[3] = -math.inf
    x[4, : length - 1] = -math.inf
    state = rng_state(3)
    for hard in (False, True):
        out, _ = forward(x, 0.5, hard, -1, state)
        out_cpu, _ = forward(x.cpu(), 0.5, hard, -1, state.cpu())
        assert torch.equal(torch.isnan(out.cpu()), torch.isnan(out_cpu))
        assert torch.all(out[0, 1::2] == 0)
        assert torch.isnan(out[1:4]).all()
        assert out[4, -1] == 1 and torch.all(out[4, :-1] == 0)
        torch.testing.assert_close(out[5].cpu(), out_cpu[5], **cpu_tol(torch.float32, length))


@pytest.mark.parametrize("tau", [1e-3, 0.1, 10.0])
def test_temperature_extremes(tau):
    x = make_logits((33, 1000), torch.float32, seed=5) * 100
    state = rng_state(8)
    out, _ = forward(x, tau, False, -1, state)
    out_cpu, _ = forward(x.cpu(), tau, False, -1, state.cpu())
    assert torch.isfinite(out).all()
    # A tiny tau multiplies the last-ulp noise differences by 1/tau: compare loosely.
    torch.testing.assert_close(out.cpu(), out_cpu, rtol=1e-5 / min(tau, 1.0), atol=1e-5 / min(tau, 1.0))


# ------------------------------------------------------------- forward, dim not last
SPATIAL = [((4, 7, 3), 1), ((2, 1000, 33), 1), ((5000, 6), 0), ((3, 4, 1025, 2), 2), ((1, 9, 70000), 1), ((3, 1, 40), 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", SPATIAL)
@pytest.mark.parametrize("hard", [False, True])
def test_dim_not_last_equals_cpu(shape, dim, hard, dtype):
    x = make_logits(shape, dtype, seed=6)
    state = rng_state(11, 4)
    out, _ = forward(x, 0.8, hard, dim, state)
    out_cpu, _ = forward(x.cpu(), 0.8, hard, dim, state.cpu())
    if hard:
        assert torch.equal(out.cpu(), out_cpu)  # bitwise noise (Note [Bit-identical noise])
    else:
        torch.testing.assert_close(out.cpu(), out_cpu, **cpu_tol(dtype, shape[dim]))
        ref = reference.gumbel_softmax(x, 0.8, False, dim, rng_state=state)
        torch.testing.assert_close(out, ref, **TOL[dtype])


def test_non_contiguous_input():
    x = make_logits((40, 300), torch.float32, seed=7).t()  # [300, 40], dim=0 strided
    state = rng_state(21)
    out, _ = forward(x, 0.6, False, 1, state)
    out_cpu, _ = forward(x.cpu(), 0.6, False, 1, state.cpu())
    assert out.is_contiguous()
    torch.testing.assert_close(out.cpu(), out_cpu, **cpu_tol(torch.float32, 40))


# ----------------------------------------------------------------------- tau per row
@pytest.mark.parametrize("shape,dim", [((37, 20), -1), ((9, 3000), -1), ((4, 50, 6), 1)])
def test_tau_rows_forward_equals_cpu(shape, dim):
    x = make_logits(shape, torch.float32, seed=8)
    keep = list(shape)
    keep[dim] = 1
    tau_rows = torch.rand(keep, generator=torch.Generator().manual_seed(1)) + 0.2
    state = rng_state(13)
    out, _ = forward(x, 1.0, False, dim, state, tau_rows.cuda())
    out_cpu, _ = forward(x.cpu(), 1.0, False, dim, state.cpu(), tau_rows)
    torch.testing.assert_close(out.cpu(), out_cpu, **cpu_tol(torch.float32, shape[dim]))


# --------------------------------------------------------------------------- backward
BACKWARD_CASES = [((33, 7), -1), ((17, 1000), -1), ((5, 4096), -1), ((3, 32000), -1), ((2, 70000), -1),
                  ((3, 50, 5), 1), ((2, 3000, 3), 1)]


def _backward_inputs(shape, dim, dtype, seed):
    x = make_logits(shape, dtype, seed=seed)
    grad = make_logits(shape, dtype, seed=seed + 100)
    keep = list(shape)
    keep[dim] = 1
    tau_rows = (torch.rand(keep, generator=torch.Generator().manual_seed(seed)) + 0.3).to(acc_dtype(dtype))
    return x, grad, tau_rows


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", BACKWARD_CASES)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("per_row_tau", [False, True])
def test_backward_equals_cpu(shape, dim, hard, per_row_tau, dtype):
    x, grad, tau_rows = _backward_inputs(shape, dim, dtype, seed=9)
    state = rng_state(17, 8)
    taus = tau_rows if per_row_tau else None
    y_cpu, _ = forward(x.cpu(), 0.9, False, dim, state.cpu(), taus)
    saved_cpu = x.cpu() if hard else y_cpu
    gl_cpu, gt_cpu = ops.gumbel_softmax_backward(grad.cpu(), saved_cpu, state.cpu(), 0.9, taus, hard, dim, per_row_tau)
    gl, gt = ops.gumbel_softmax_backward(
        grad, saved_cpu.cuda(), state, 0.9, taus.cuda() if per_row_tau else None, hard, dim, per_row_tau
    )
    torch.testing.assert_close(gl.cpu(), gl_cpu, **backward_tol(dtype, shape[dim], hard))
    assert gl.dtype == dtype and gl.shape == x.shape
    if per_row_tau:
        assert gt.shape == tau_rows.shape and gt.dtype == tau_rows.dtype
        torch.testing.assert_close(gt.cpu(), gt_cpu, **backward_tol(dtype, shape[dim], hard, tau=True))
    else:
        assert gt.numel() == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", BACKWARD_CASES + [((3, 128256), -1), ((2, 2**20), -1)])
def test_straight_through_equals_soft_bitwise(shape, dim, dtype):
    """Hard backward regenerates y_soft exactly as the CUDA soft forward wrote it."""
    x, grad, tau_rows = _backward_inputs(shape, dim, dtype, seed=10)
    state = rng_state(19, 4)
    for taus in (None, tau_rows.cuda()):
        need = taus is not None
        y, _ = forward(x, 0.6, False, dim, state, taus)
        soft = ops.gumbel_softmax_backward(grad, y, state, 0.6, taus, False, dim, need)
        hard = ops.gumbel_softmax_backward(grad, x, state, 0.6, taus, True, dim, need)
        assert torch.equal(soft[0], hard[0])
        if need:
            assert torch.equal(soft[1], hard[1])


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("shape,dim", [((16, 300), -1), ((4, 2000), -1), ((3, 40, 5), 1)])
def test_autograd_equals_reference(shape, dim, hard):
    """gumbel_ext.gumbel_softmax with a user generator: values and gradients (logits and a
    per-row tau tensor) equal the reference's for the (seed, offset) the generator gave."""
    gen = torch.Generator("cuda").manual_seed(1234)
    offset = gen.get_offset()
    x = make_logits(shape, torch.float64, seed=11).requires_grad_()
    keep = list(shape)
    keep[dim] = 1
    tau = (torch.rand(keep, dtype=torch.float64, device="cuda") + 0.5).requires_grad_()
    y = gumbel_ext.gumbel_softmax(x, tau=tau, hard=hard, dim=dim, generator=gen)
    assert gen.get_offset() == offset + 4 * math.ceil(shape[dim] / 4)
    w = torch.randn_like(y)
    gx, gt = torch.autograd.grad((y * w).sum(), (x, tau))

    x_ref = x.detach().clone().requires_grad_()
    tau_ref = tau.detach().clone().requires_grad_()
    y_ref = reference.gumbel_softmax(x_ref, tau_ref, hard, dim, rng_state=rng_state(1234, offset))
    gx_ref, gt_ref = torch.autograd.grad((y_ref * w).sum(), (x_ref, tau_ref))
    if hard:
        state = rng_state(1234, offset)
        assert_hard_equal(y.detach(), y_ref.detach().cpu(), perturbed_cpu(x.detach().cpu(), dim, state.cpu()), dim)
    else:
        torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gt, gt_ref, rtol=1e-5, atol=1e-7)


def test_gradcheck_fp64():
    x = make_logits((3, 9), torch.float64, seed=12).requires_grad_()
    gen = torch.Generator("cuda")

    def fn(logits):
        gen.manual_seed(3)  # the same noise on every evaluation
        return gumbel_ext.gumbel_softmax(logits, tau=0.7, generator=gen)

    assert torch.autograd.gradcheck(fn, (x,))


# ------------------------------------------------------------------------ generators
def test_user_generator_reproducible_and_separate():
    x = make_logits((64, 500), torch.float32, seed=13)
    default = torch.cuda.default_generators[x.device.index or 0]
    before = default.get_offset()
    a = gumbel_ext.gumbel_softmax(x, generator=torch.Generator("cuda").manual_seed(42))
    b = gumbel_ext.gumbel_softmax(x, generator=torch.Generator("cuda").manual_seed(42))
    c = gumbel_ext.gumbel_softmax(x, generator=torch.Generator("cuda").manual_seed(43))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert default.get_offset() == before


def test_default_generator_seed_and_offsets():
    x = make_logits((8, 10), torch.float32, seed=14)
    torch.cuda.manual_seed(5)
    _, s1 = ops.gumbel_softmax_forward(x, 1.0, None, False, -1, None, None)
    _, s2 = ops.gumbel_softmax_forward(x, 1.0, None, False, -1, None, None)
    seed = torch.cuda.initial_seed()
    assert s1.tolist() == [seed, 0]
    assert s2.tolist() == [seed, 12]  # philox_increment(10) = 4 * ceil(10 / 4)
    torch.cuda.manual_seed(5)
    a = gumbel_ext.gumbel_softmax(x)
    torch.cuda.manual_seed(5)
    b = gumbel_ext.gumbel_softmax(x)
    assert torch.equal(a, b)


# ------------------------------------------------------- rows split across blocks
# Note [Split rows] (csrc/cuda/split_rows.cuh): 64 x 128256 runs as 64 x 8 blocks (a
# cluster per row on sm_90, a cooperative grid with a global exchange on sm_80), x on chip.
def _assert_launches(fn, kernel):
    """fn launches a kernel whose name contains `kernel` (when the profiler sees CUDA
    kernels at all)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if "gumbel_ext" in e.name]
    if names:
        assert any(kernel in n for n in names), names


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_split_rows_equal_cpu(dtype):
    x = make_logits((64, 128256), dtype, seed=21)
    state = rng_state(0xC0FFEE, 64)
    _assert_launches(lambda: forward(x, 0.8, False, -1, state), "split_forward_kernel")
    soft, _ = forward(x, 0.8, False, -1, state)
    torch.testing.assert_close(soft.cpu(), forward(x.cpu(), 0.8, False, -1, state.cpu())[0], **cpu_tol(dtype, 128256))
    hard, _ = forward(x, 0.8, True, -1, state)
    assert torch.equal(hard.cpu(), forward(x.cpu(), 0.8, True, -1, state.cpu())[0])
    assert torch.equal(ops.sample(x, 1, -1, None, state).cpu(), ops.sample(x.cpu(), 1, -1, None, state.cpu()))
    again, _ = forward(x, 0.8, False, -1, state)
    assert torch.equal(again, soft), "the split's fixed fold order is deterministic"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_split_rows_straight_through_equals_soft_bitwise(dtype):
    x = make_logits((64, 128256), dtype, seed=22)
    grad = make_logits((64, 128256), dtype, seed=23)
    tau_rows = (torch.rand(64, 1, generator=torch.Generator().manual_seed(3)) + 0.3).to(acc_dtype(dtype)).cuda()
    state = rng_state(31, 8)
    for taus in (None, tau_rows):
        need = taus is not None
        y, _ = forward(x, 0.6, False, -1, state, taus)
        _assert_launches(lambda: ops.gumbel_softmax_backward(grad, x, state, 0.6, taus, True, -1, need),
                         "split_backward_kernel")
        soft = ops.gumbel_softmax_backward(grad, y, state, 0.6, taus, False, -1, need)
        hard = ops.gumbel_softmax_backward(grad, x, state, 0.6, taus, True, -1, need)
        assert torch.equal(soft[0], hard[0])
        if need:
            assert torch.equal(soft[1], hard[1])
        gl_cpu, _ = ops.gumbel_softmax_backward(grad.cpu(), y.cpu(), state.cpu(), 0.6, None if taus is None else taus.cpu(),
                                                False, -1, need)
        torch.testing.assert_close(soft[0].cpu(), gl_cpu, **backward_tol(dtype, 128256, False))


# The outputs of every op at (rows, cols, dtype) = argv[2:5], saved to argv[1].
_ENV_OUTPUTS = """
import sys, torch
import gumbel_ext  # noqa: F401 (registers the ops)
ops = torch.ops.gumbel_ext
rows, cols, dtype = int(sys.argv[2]), int(sys.argv[3]), getattr(torch, sys.argv[4])
gen = torch.Generator().manual_seed(24)
x = (torch.randn(rows, cols, generator=gen) * 3).to(dtype).cuda()
grad = torch.randn(rows, cols, generator=gen).to(dtype).cuda()
state = torch.tensor([41, 16], dtype=torch.int64, device="cuda")
soft, _ = ops.gumbel_softmax_forward(x, 0.7, None, False, -1, None, state)
hard, _ = ops.gumbel_softmax_forward(x, 0.7, None, True, -1, None, state)
index = ops.sample(x, 1, -1, None, state)
soft_bwd = ops.gumbel_softmax_backward(grad, soft, state, 0.7, None, False, -1, False)[0]
hard_bwd = ops.gumbel_softmax_backward(grad, x, state, 0.7, None, True, -1, False)[0]
torch.save({k: v.cpu() for k, v in dict(soft=soft, hard=hard, index=index, soft_bwd=soft_bwd,
                                        hard_bwd=hard_bwd).items()}, sys.argv[1])
"""


def _env_outputs(tmp_path, variable, setting, rows, cols, dtype="float32"):
    """The outputs of _ENV_OUTPUTS in a fresh process with variable=setting (the launch
    settings are read once per process)."""
    import os
    import subprocess
    import sys

    out = tmp_path / f"{variable}-{setting}-{rows}x{cols}-{dtype}.pt"
    env = dict(os.environ, **{variable: setting})
    subprocess.run([sys.executable, "-c", _ENV_OUTPUTS, str(out), str(rows), str(cols), dtype], env=env, check=True,
                   timeout=300)
    return torch.load(out)


def _split_outputs(tmp_path, setting):
    return _env_outputs(tmp_path, "GUMBEL_EXT_SPLIT", setting, 64, 128256)


def test_split_exchanges_agree_bitwise_and_match_one_block_per_row(tmp_path):
    """GUMBEL_EXT_SPLIT=workspace runs the sm_80 exchange (global workspace, cooperative
    launch, release/acquire counters) on this GPU: the same bits as the default exchange
    (the fold order is the same). GUMBEL_EXT_SPLIT=off runs one block per row: the same
    one-hots and indices, soft values within rounding."""
    auto, workspace, off = (_split_outputs(tmp_path, s) for s in ("auto", "workspace", "off"))
    for key in auto:
        assert torch.equal(auto[key], workspace[key]), key
    assert torch.equal(auto["hard"], off["hard"]) and torch.equal(auto["index"], off["index"])
    assert torch.equal(auto["soft_bwd"], auto["hard_bwd"])  # Note [Regenerated y_soft]
    torch.testing.assert_close(auto["soft"], off["soft"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(auto["soft_bwd"], off["soft_bwd"], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------- the warp kernels' two copies
# Note [Warp kernels' occupancy] (csrc/cuda/rows.cuh): aligned rows of 1000 columns run
# the aligned-rows copy at 8 blocks per SM (one wave at 4096 x 1000), index mode and
# misaligned rows the general one; GUMBEL_EXT_ALIGNED_ROWS=off forces the general one.
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_warp_aligned_rows_copy_runs_and_matches_the_general_copy(tmp_path, dtype):
    x = make_logits((4096, 1000), getattr(torch, dtype), seed=22)
    state = rng_state(0xBEEF, 8)
    chunks = 8 if dtype == "float32" else 7  # log2 of the padded chunks per row
    _assert_launches(lambda: forward(x, 0.8, False, -1, state), f"warp_forward_kernel<{dtype_name(dtype)}, {chunks}, true>")
    _assert_launches(lambda: ops.sample(x, 1, -1, None, state), f"warp_forward_kernel<{dtype_name(dtype)}, {chunks}, false>")
    auto, off = (_env_outputs(tmp_path, "GUMBEL_EXT_ALIGNED_ROWS", s, 4096, 1000, dtype) for s in ("auto", "off"))
    for key in auto:
        assert torch.equal(auto[key], off[key]), key
    assert torch.equal(auto["soft_bwd"], auto["hard_bwd"])  # Note [Regenerated y_soft]


def dtype_name(dtype):
    """The C++ type of a dtype in a demangled kernel name."""
    return {"float32": "float", "bfloat16": "c10::BFloat16"}[dtype]


# ------------------------------------------------------------------------ CUDA graphs
def _warm_up(fn):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


@pytest.mark.parametrize("hard", [False, True])
# (64, 128256): rows split across blocks (cluster or cooperative launch, a workspace memset)
@pytest.mark.parametrize("shape,dim", [((32, 100), -1), ((4, 5000), -1), ((4, 30, 6), 1), ((64, 128256), -1)])
def test_graph_replay_fresh_noise_and_equal_to_eager(shape, dim, hard):
    x = make_logits(shape, torch.float32, seed=15)
    grad = make_logits(shape, torch.float32, seed=16)

    def step():
        out, state = ops.gumbel_softmax_forward(x, 0.5, None, hard, dim, None, None)
        gl, _ = ops.gumbel_softmax_backward(grad, x if hard else out, state, 0.5, None, hard, dim, False)
        return out, state, gl

    _warm_up(step)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, state, gl = step()

    torch.cuda.manual_seed(7)
    graph.replay()
    out1, state1, gl1 = out.clone(), state.clone(), gl.clone()
    graph.replay()
    out2, state2 = out.clone(), state.clone()
    torch.cuda.synchronize()
    assert not torch.equal(out1, out2), "a replay reused the previous noise"
    assert state1.tolist() == [torch.cuda.initial_seed(), 0]
    assert state2[1].item() == 4 * math.ceil(shape[dim] / 4)

    # The same seed eagerly: the same bits; and backward consistent with the recorded state.
    torch.cuda.manual_seed(7)
    out_e, state_e, gl_e = step()
    assert torch.equal(state_e, state1)
    assert torch.equal(out_e, out1)
    assert torch.equal(gl_e, gl1)
    out_r, _ = forward(x, 0.5, hard, dim, state2)
    assert torch.equal(out_r, out2)


def test_graph_autograd_whole_step():
    """forward + backward of the autograd function captured together; each replay's
    gradient matches the reference for that replay's recorded noise."""
    x = make_logits((16, 700), torch.float32, seed=17).requires_grad_()
    w = make_logits((16, 700), torch.float32, seed=18)

    def step():
        x.grad = None
        y = gumbel_ext.gumbel_softmax(x, tau=0.5, hard=True)
        (y * w).sum().backward()
        return y

    _warm_up(step)
    x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = step()
    for seed in (1, 2):
        torch.cuda.manual_seed(seed)
        graph.replay()
        torch.cuda.synchronize()
        state = rng_state(torch.cuda.initial_seed(), 0)
        x_ref = x.detach().clone().requires_grad_()
        y_ref = reference.gumbel_softmax(x_ref, 0.5, True, -1, rng_state=state)
        (y_ref * w).sum().backward()
        assert_hard_equal(y, y_ref.detach().cpu(), perturbed_cpu(x.detach().cpu(), -1, state.cpu()), -1)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-6)


def test_graph_sample():
    x = make_logits((64, 3000), torch.float32, seed=19)
    _warm_up(lambda: (gumbel_ext.sample(x), gumbel_ext.sample(x, 3)))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        one = gumbel_ext.sample(x)
        three = gumbel_ext.sample(x, num_samples=3)
    torch.cuda.manual_seed(4)
    graph.replay()
    first = (one.clone(), three.clone())
    graph.replay()
    assert not torch.equal(first[0], one)
    torch.cuda.manual_seed(4)
    assert torch.equal(gumbel_ext.sample(x), first[0])
    assert torch.equal(gumbel_ext.sample(x, num_samples=3), first[1])


# ----------------------------------------------------------------------------- sample
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", [((67, 1), -1), ((67, 7), -1), ((33, 1000), -1), ((9, 5000), -1),
                                       ((3, 128256), -1), ((4, 300, 5), 1)])
def test_sample_k1_equals_cpu(shape, dim, dtype):
    x = make_logits(shape, dtype, seed=20)
    state = rng_state(23, 4)
    idx = ops.sample(x, 1, dim, None, state)
    idx_cpu = ops.sample(x.cpu(), 1, dim, None, state.cpu())
    assert idx.dtype == torch.int64 and idx.shape == idx_cpu.shape
    assert torch.equal(idx.cpu(), idx_cpu)  # bitwise noise: ties included


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [2, 5])
@pytest.mark.parametrize("shape,dim", [((67, 7), -1), ((33, 1000), -1), ((5, 40000), -1), ((4, 300, 5), 1)])
def test_sample_topk_equals_cpu(shape, dim, k, dtype):
    x = make_logits(shape, dtype, seed=21)
    state = rng_state(29, 0)
    idx = ops.sample(x, k, dim, None, state)
    idx_cpu = ops.sample(x.cpu(), k, dim, None, state.cpu())
    assert idx.shape == idx_cpu.shape
    rows = idx.cpu().movedim(dim, -1).reshape(-1, k)
    rows_cpu = idx_cpu.movedim(dim, -1).reshape(-1, k)
    assert torch.equal(rows, rows_cpu)  # bitwise noise: ties included
    assert all(len(set(r.tolist())) == k for r in rows), "indices within a row must be distinct"


def test_sample_invalid_rows_do_not_fault():
    """See Note [CUDA sample errors]: no exception, no device assert; the reference's answer."""
    x = make_logits((4, 6), torch.float32, seed=22)
    x[0, 2] = math.nan
    x[1] = -math.inf
    x[2, 4] = math.inf
    x[3, 1:] = -math.inf
    state = rng_state(31)
    assert ops.sample(x, 1, -1, None, state).tolist()[:3] == [2, 0, 4]
    top3 = ops.sample(x, 3, -1, None, state)
    assert top3[0, 0] == 2 and top3[1].tolist() == [0, 1, 2] and top3[3].tolist() == [0, 1, 2]
    assert torch.equal(top3, reference.sample(x, 3, -1, rng_state=state))
    torch.cuda.synchronize()  # the context is alive


def test_sample_statistics():
    """Gumbel-max frequencies follow softmax(logits) (a broken sampler fails this)."""
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0, 0.5], device="cuda")
    draws = gumbel_ext.sample(logits.expand(200_000, 5).contiguous(), generator=torch.Generator("cuda").manual_seed(0))
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    torch.testing.assert_close(freq, torch.softmax(logits.double(), 0), rtol=0, atol=5e-3)


# ------------------------------------------------------------------------- op checks
def test_opcheck_cuda():
    x = make_logits((8, 40), torch.float32, seed=23)
    state = rng_state(1)
    torch.library.opcheck(ops.gumbel_softmax_forward, (x, 0.5, None, True, -1, None, state))
    y, _ = forward(x, 0.5, False, -1, state)
    torch.library.opcheck(ops.gumbel_softmax_backward, (torch.ones_like(y), y, state, 0.5, None, False, -1, False))
    torch.library.opcheck(ops.gumbel_noise, (x, 0, state))
    torch.library.opcheck(ops.sample, (x, 3, -1, None, state))


def test_empty_and_scalar():
    for shape in [(0, 5), (5, 0), ()]:
        x = torch.zeros(shape, device="cuda")
        out, state = forward(x, 1.0, True, -1 if x.dim() else 0, None)
        assert out.shape == x.shape and state.shape == (2,) and state.device.type == "cuda"
    y = gumbel_ext.gumbel_softmax(torch.tensor(3.0, device="cuda"))
    assert y.item() == 1.0


# ------------------------------------------------------------------ 64-bit indexing
def _free_bytes() -> int:
    free, _ = torch.cuda.mem_get_info()
    return free


def _noise_for_rows(row_ids, length, seed, offset):
    """Reference noise of selected rows only (the full tensor would not fit on the CPU)."""
    blocks = (length + 3) // 4
    n = torch.arange(blocks, dtype=torch.int64) + offset // 4
    r = torch.as_tensor(row_ids, dtype=torch.int64)
    n, r = torch.broadcast_tensors(n.view(1, -1), r.view(-1, 1))
    mask = 0xFFFFFFFF
    words = reference.philox4x32_10((n & mask, (n >> 32) & mask, r & mask, (r >> 32) & mask), seed)
    bits = torch.stack(words, dim=-1).reshape(len(row_ids), 4 * blocks)[:, :length]
    u = ((bits >> 9).to(torch.float32) + 0.5) * 2.0**-23
    return -torch.log(-torch.log(u))


@pytest.mark.slow
@pytest.mark.parametrize("length", [1024, 4096])
def test_more_than_2_pow_31_elements(length):
    rows = (2**31) // length + 3
    numel = rows * length
    assert numel > 2**31
    if _free_bytes() < 4 * numel * 2 + (1 << 30):  # fp16 input, output, grad, grad_logits
        pytest.skip("not enough free GPU memory for a > 2^31-element test")
    x = torch.empty(rows, length, dtype=torch.float16, device="cuda").normal_(0, 2)
    state = rng_state(41, 8)
    last = [0, rows // 2, rows - 1]
    expected_noise = _noise_for_rows(last, length, 41, 8)
    x_last = x[last].float().cpu()
    tol = TOL[torch.float16]

    y, _ = forward(x, 0.8, False, -1, state)
    y_ref = torch.softmax((x_last + expected_noise) / 0.8, -1)
    torch.testing.assert_close(y[last].float().cpu(), y_ref, rtol=tol["rtol"], atol=1e-4)
    del y
    y, _ = forward(x, 0.8, True, -1, state)
    assert torch.equal(y[last].argmax(-1).cpu(), (x_last + expected_noise).argmax(-1))
    assert torch.equal(ops.sample(x, 1, -1, None, state)[last].cpu(), (x_last + expected_noise).argmax(-1))
    del y
    grad = torch.empty_like(x).normal_()
    gl, _ = ops.gumbel_softmax_backward(grad, x, state, 0.8, None, True, -1, False)
    y_soft = y_ref.half().float()  # y_soft as the fp16 forward stores it
    g_last = grad[last].float().cpu()
    expected = y_soft * (g_last - (g_last * y_soft).sum(-1, keepdim=True)) / 0.8
    torch.testing.assert_close(gl[last].float().cpu(), expected, rtol=2e-2, atol=2e-3)
    del gl, grad

    # The reduced dim not last (inner = 2): the spatial kernel with 64-bit offsets.
    xs = x.view(rows, length // 2, 2)
    out, _ = forward(xs, 1.0, True, 1, state)
    assert torch.all(out.sum(1, dtype=torch.float32) == 1)
    assert torch.all(out[-1].float().sum(0).cpu() == 1)
