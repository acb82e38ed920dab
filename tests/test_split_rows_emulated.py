"""Rows split across several blocks (Note [Split rows] in csrc/cuda/split_rows.cuh), run
on the CPU by the SIMT emulator: the P blocks of a row run concurrently, as a
thread-block cluster (sm_90: distributed shared memory) or as a cooperative grid that
exchanges through a global workspace (sm_80), each block with its own shared memory.

Compared with the CPU ops on the same noise: hard one-hots and sample indices exactly,
soft outputs and gradients within the tolerances of tests/test_cuda_emulated.py; the two
exchanges must agree bit for bit (the fold order is fixed), and a hard backward must
equal the soft backward bit for bit (Note [Regenerated y_soft]). Sizes stay small: every
CUDA thread is a std::thread.
"""

from __future__ import annotations

import ctypes
import math

import pytest
import torch

from test_cuda_emulated import DTYPE_CODE, MODES, _p, backward_tol, cpu_forward, cpu_tol, emu, exact_soft, logits, ops, state_of  # noqa: F401

# (rows, length): lengths not a multiple of 4 or 8 (a ragged last slice, a partial last
# chunk), rows not a multiple of anything.
SHAPES = [(3, 8203), (2, 9001), (3, 8192)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
THREADS = 64  # per block: small, so that a slice takes several rounds of chunks


def matrix(cases, fast):
    """pytest params for every case; those not in `fast` are marked slow (the full matrix
    runs under `make test-slow`: every std::thread launch costs)."""
    return [pytest.param(*c, marks=() if c in fast else pytest.mark.slow,
                         id=f"{str(c[0]).split('.')[-1]}-{c[1][0]}x{c[1][1]}-P{c[2]}") for c in cases]


FORWARD = [(d, s, p) for d in DTYPES for s in SHAPES for p in (2, 4, 8)]
FORWARD_FAST = {(torch.float32, SHAPES[0], p) for p in (2, 4, 8)} | {
    (torch.float32, SHAPES[1], 4), (torch.float32, SHAPES[2], 8), (torch.float64, SHAPES[0], 4),
    (torch.float16, SHAPES[1], 8), (torch.bfloat16, SHAPES[0], 2)}
BACKWARD = [(d, s, p) for d in DTYPES for s in [(3, 8203), (2, 8200)] for p in (2, 8)]
BACKWARD_FAST = {(torch.float32, (3, 8203), 8), (torch.float64, (3, 8203), 2), (torch.float16, (2, 8200), 8),
                 (torch.bfloat16, (2, 8200), 2)}


@pytest.fixture(scope="module")
def split(emu):
    lib = emu.lib
    i64, f64, vp, i32 = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p, ctypes.c_int
    lib.emu_split_forward.argtypes = [i32, vp, vp, vp, i32, i64, i64, vp, f64, vp, i32, i32, i32, i64]
    lib.emu_split_backward.argtypes = [i32, vp, vp, vp, vp, vp, f64, i32, i64, i64, vp, i32, i32, i32, i64]
    lib.emu_choose_split.argtypes = [i32, i64, i64, i32, i64, i32, vp]
    return Split(lib)


class Split:
    def __init__(self, lib):
        self.lib = lib

    def forward(self, x, tau, mode, state, parts, cluster, groups=2, tau_rows=None, threads=THREADS):
        rows, length = x.shape
        out = torch.empty(rows, dtype=torch.int64) if mode == "index" else torch.full_like(x, math.nan)
        rng = state.clone()
        rc = self.lib.emu_split_forward(DTYPE_CODE[x.dtype], _p(x), None if mode == "index" else _p(out),
                                        _p(out) if mode == "index" else None, MODES[mode], rows, length,
                                        _p(tau_rows), 1.0 / tau, _p(rng), parts, threads, int(cluster), groups)
        assert rc == 0, "a barrier was not reached by every thread" if rc == -2 else rc
        return out

    def backward(self, grad, saved, state, tau, hard, parts, cluster, groups=2, tau_rows=None, need_grad_tau=False,
                 threads=THREADS):
        rows, length = saved.shape
        grad_logits = torch.full_like(saved, math.nan)
        grad_tau = torch.full((rows,), math.nan, dtype=tau_rows.dtype) if need_grad_tau else None
        rng = state.clone()
        rc = self.lib.emu_split_backward(DTYPE_CODE[saved.dtype], _p(grad), _p(saved), _p(grad_logits),
                                         _p(grad_tau), _p(tau_rows), 1.0 / tau, int(hard), rows, length, _p(rng),
                                         parts, threads, int(cluster), groups)
        assert rc == 0, rc
        return grad_logits, grad_tau

    def choose(self, dtype, rows, length, sms=132, smem=227 * 1024, max_parts=8):
        out = torch.zeros(4, dtype=torch.int64)
        assert self.lib.emu_choose_split(DTYPE_CODE[dtype], rows, length, sms, smem, max_parts, _p(out)) == 0
        return dict(zip(("parts", "threads", "slice_chunks", "smem"), out.tolist()))


def sample_cpu(x, state):
    return ops.sample(x, 1, -1, None, state).reshape(-1)


# ---------------------------------------------------------------------------- forward
@pytest.mark.parametrize("dtype,shape,parts", matrix(FORWARD, FORWARD_FAST))
def test_split_forward_equals_cpu(split, dtype, shape, parts):
    rows, length = shape
    x = logits((rows, length), dtype, seed=parts)
    state = state_of(2024 + parts, 8)
    soft = {c: split.forward(x, 0.7, "soft", state, parts, cluster=c) for c in (True, False)}
    assert torch.equal(soft[True], soft[False]), "the two exchanges fold in the same order"
    torch.testing.assert_close(soft[True], cpu_forward(x, 0.7, False, -1, state), **cpu_tol(dtype, length))
    if dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(soft[True].double(), exact_soft(x, -1, state, 0.7), rtol=1e-5, atol=1e-9)
    hard_cpu = cpu_forward(x, 0.7, True, -1, state)
    for cluster in (True, False):
        assert torch.equal(split.forward(x, 0.7, "hard", state, parts, cluster), hard_cpu)
        assert torch.equal(split.forward(x, 0.7, "index", state, parts, cluster), sample_cpu(x, state))


@pytest.mark.parametrize("cluster", [True, False], ids=["cluster", "workspace"])
def test_split_grid_stride_and_rows(split, cluster):
    """One row group for five rows (each group loops over rows), and a grid of 5 groups:
    the same bits; soft output sums to one per row."""
    x = logits((5, 8200), torch.float32, seed=3)
    state = state_of(77)
    one = split.forward(x, 0.5, "soft", state, 4, cluster, groups=1)
    many = split.forward(x, 0.5, "soft", state, 4, cluster, groups=5)
    assert torch.equal(one, many)
    torch.testing.assert_close(one.double().sum(-1), torch.ones(5, dtype=torch.float64), rtol=1e-5, atol=0)
    assert torch.equal(split.forward(x, 0.5, "index", state, 4, cluster, groups=1), sample_cpu(x, state))


def test_split_per_row_tau(split):
    x = logits((3, 8203), torch.float32, seed=4)
    tau_rows = torch.tensor([[0.3], [1.7], [0.9]])
    state = state_of(5)
    for cluster in (True, False):
        soft = split.forward(x, 1.0, "soft", state, 4, cluster, tau_rows=tau_rows)
        torch.testing.assert_close(soft, cpu_forward(x, 1.0, False, -1, state, tau_rows), **cpu_tol(torch.float32, 8203))
        torch.testing.assert_close(soft.double(), exact_soft(x, -1, state, 1.0, tau_rows), rtol=1e-5, atol=1e-9)


def test_split_special_values(split):
    """NaN, +inf, all -inf and one-finite rows, with the special value in a later slice
    than the row's max, so that the exchange has to carry it."""
    rows, length = 6, 8203
    x = logits((rows, length), torch.float32, seed=6)
    x[0, 1::2] = -math.inf
    x[1, 7000] = math.nan
    x[2, 5000] = math.inf
    x[3] = -math.inf
    x[4, :-1] = -math.inf
    x[5, 100] = 1e30  # the max in slice 0, NaN-free
    state = state_of(3)
    for parts, cluster in ((2, True), (8, False)):
        for mode in ("soft", "hard"):
            out = split.forward(x, 0.5, mode, state, parts, cluster)
            want = cpu_forward(x, 0.5, mode == "hard", -1, state)
            torch.testing.assert_close(out, want, equal_nan=True, **cpu_tol(torch.float32, length))
        index = split.forward(x, 0.5, "index", state, parts, cluster)
        assert torch.equal(index, (x + ops.gumbel_noise(x, -1, state)).argmax(-1))


# --------------------------------------------------------------------------- backward
@pytest.mark.parametrize("dtype,shape,parts", matrix(BACKWARD, BACKWARD_FAST))
def test_split_backward_equals_cpu_and_straight_through_is_soft(split, dtype, shape, parts):
    rows, length = shape
    x = logits((rows, length), dtype, seed=7)
    grad = logits((rows, length), dtype, seed=8)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    tau_rows = (torch.rand(rows, 1, generator=torch.Generator().manual_seed(9)) + 0.3).to(acc)
    state = state_of(17, 8)
    for taus in (None, tau_rows):
        need = taus is not None
        y = split.forward(x, 0.9, "soft", state, parts, cluster=True, tau_rows=taus)
        results = []
        for cluster in (True, False):
            soft = split.backward(grad, y, state, 0.9, False, parts, cluster, tau_rows=taus, need_grad_tau=need)
            st = split.backward(grad, x, state, 0.9, True, parts, cluster, tau_rows=taus, need_grad_tau=need)
            # Note [Regenerated y_soft]: straight-through == soft, bit for bit.
            assert torch.equal(soft[0], st[0])
            if need:
                assert torch.equal(soft[1], st[1])
            results.append(soft)
        assert torch.equal(results[0][0], results[1][0]), "the two exchanges fold in the same order"
        gl, gt = results[0]
        for hard in (False, True):
            gl_cpu, gt_cpu = ops.gumbel_softmax_backward(grad, x if hard else y, state, 0.9, taus, hard, -1, need)
            torch.testing.assert_close(gl, gl_cpu, **backward_tol(dtype, length, hard))
            if need:
                torch.testing.assert_close(gt.view_as(gt_cpu), gt_cpu, **backward_tol(dtype, length, hard, tau=True))


# ------------------------------------------------------------------------ choice of P
@pytest.mark.parametrize(
    "dtype,rows,length,want",
    [
        (torch.float32, 64, 128256, 8),  # 513 KB rows: 64 KiB slices, 512 blocks on 132 SMs
        (torch.bfloat16, 64, 128256, 8),  # x is kept as float: the same slices
        (torch.float32, 64, 8192, 8),  # fits one block, but 64 blocks do not fill the GPU
        (torch.float32, 1000, 8192, 0),  # fits, and fills: one block per row
        (torch.float32, 8192, 32000, 2),  # 128 KB rows: two 64 KiB slices, 3 blocks per SM
        (torch.float32, 64, 8191, 0),  # short rows stay on one block
        (torch.float32, 4, 10_000_000, 0),  # too long even for P = 8: one block, noise regenerated
        (torch.float64, 1, 65536, 8),
    ],
)
def test_split_choice(split, dtype, rows, length, want):
    got = split.choose(dtype, rows, length)
    assert got["parts"] == want, got
    if want:
        assert got["smem"] <= 227 * 1024 and got["threads"] in (128, 256)
        assert got["parts"] * got["slice_chunks"] * (8 if dtype.itemsize == 2 else 4) >= length


def test_split_choice_workspace_allows_16(split):
    got = split.choose(torch.float32, 2, 800_000, max_parts=16)  # 200 KB slices
    assert got["parts"] == 16 and got["smem"] <= 227 * 1024
