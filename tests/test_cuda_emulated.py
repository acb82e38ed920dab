"""The CUDA kernels executed on the CPU by a SIMT emulator (tests/emulation), compared with
the CPU ops for the same (seed, offset).

This runs the very code of csrc/cuda/*_kernels.cuh -- every strategy, dtype and mode,
shared-memory variants, grid-stride loops, special values, the three rng sources --
on machines without a GPU. It checks the kernels' logic: indexing, reductions, tie and
NaN rules, and that a hard backward regenerates y_soft bit for bit. It cannot check GPU
timing, the memory model or the device expf (the host's is used). The noise uses no libm
(Note [Bit-identical noise] in csrc/gumbel_noise.h), so the noise and the one-hots must
equal the CPU kernels' exactly. tests/test_cuda.py runs the real thing on a GPU.
"""

from __future__ import annotations

import ctypes
import math

import pytest
import torch

from gumbel_ext import _ops, reference
from helpers import ROOT, emulation_library
from helpers import ptr as _p

SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cuh")) + [
    ROOT / "csrc" / "cuda" / "kernels.h",
    ROOT / "csrc" / "gumbel_noise.h",
    ROOT / "tests" / "emulation" / "simt.h",
    ROOT / "tests" / "emulation" / "harness.cpp",
]
DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
MODES = {"soft": 0, "hard": 1, "index": 2}
BIG_SMEM = 227 * 1024  # an H100's opt-in limit per block
TOL = {
    torch.float32: dict(rtol=2e-6, atol=1e-7),
    torch.float64: dict(rtol=1e-12, atol=1e-14),
    torch.float16: dict(rtol=1e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
}

pytestmark = pytest.mark.skipif(not _ops.has_kernel(torch.device("cpu")), reason="the CPU extension is not built")


@pytest.fixture(autouse=True)
def _cpu_default_copy():
    """The emulator runs the soft kernels with the host's libm expf, as the CPU kernels'
    DEFAULT copy does (the AVX copies use an inline exp within 2 ulp, see
    csrc/cpu/vec_math.h): compare against that copy so bitwise checks stay bitwise. The
    noise is bitwise the same in every copy (tests/test_noise.py)."""
    before = ops._cpu_capability()
    ops._set_cpu_capability("default")
    yield
    ops._set_cpu_capability(before)


@pytest.fixture(scope="module")
def emu():
    return Emulator(emulation_library("harness.cpp", SOURCES, "harness"))


def layout(shape, dim):
    if len(shape) == 0:
        return 1, 1, 1
    dim %= len(shape)
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])


class Emulator:
    def __init__(self, lib):
        self.lib = lib
        i64, f64, vp, i32 = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p, ctypes.c_int
        lib.emu_forward.argtypes = [i32, vp, vp, vp, i32, i64, i64, i64, vp, f64, i32, vp, ctypes.c_uint64, vp, i64, i64]
        lib.emu_backward.argtypes = [i32, vp, vp, vp, vp, vp, f64, i32, i64, i64, i64, vp, i64, i64]
        lib.emu_noise.argtypes = [vp, i64, i64, i64, vp, i64]
        lib.emu_keys.argtypes = [i32, vp, vp, vp, i64, i64, i64, i64, i64, vp, i64]
        lib.emu_gather.argtypes = [vp, vp, i64, i64, i64, i64]
        lib.emu_noise_at.argtypes = [ctypes.c_uint64, ctypes.c_uint64, vp, vp, i64, vp]
        lib.emu_neg_log.argtypes = [vp, vp, i64]
        lib.emu_vector_accesses.argtypes = [vp, vp, i64]
        lib.emu_vector_access_count.restype = i64
        lib.emu_spatial_launch.argtypes = [i32, i32, i64, i64, i64, i64, vp]
        lib.emu_last_warp_launch.argtypes = [vp]

    def forward(self, x, tau, mode, dim, state, tau_rows=None, rng_kind=0, intragraph=0,
                smem=BIG_SMEM, grid_cap=3, out=None):
        outer, length, inner = layout(tuple(x.shape), dim)
        result = None
        if mode == "index":
            result = torch.empty(outer * inner, dtype=torch.int64)
        elif out is None:
            out = torch.empty_like(x)
        rng = state.clone()
        record = torch.zeros(2, dtype=torch.int64)
        rc = self.lib.emu_forward(DTYPE_CODE[x.dtype], _p(x), _p(out), _p(result), MODES[mode], outer, length,
                                  inner, _p(tau_rows), 1.0 / tau, rng_kind, _p(rng), intragraph, _p(record),
                                  smem, grid_cap)
        assert rc == 0, "a barrier or shuffle was not reached by every thread" if rc == -2 else rc
        return (result if mode == "index" else out), record

    def backward(self, grad, saved, state, tau, hard, dim, tau_rows=None, need_grad_tau=False,
                 smem=BIG_SMEM, grid_cap=3, grad_logits=None):
        outer, length, inner = layout(tuple(saved.shape), dim)
        grad_logits = torch.empty_like(saved) if grad_logits is None else grad_logits
        grad_tau = torch.full_like(tau_rows, math.nan) if need_grad_tau else None
        rng = state.clone()  # (kept alive through the call: ctypes holds only the pointer)
        rc = self.lib.emu_backward(DTYPE_CODE[saved.dtype], _p(grad), _p(saved), _p(grad_logits), _p(grad_tau),
                                   _p(tau_rows), 1.0 / tau, int(hard), outer, length, inner, _p(rng),
                                   smem, grid_cap)
        assert rc == 0, rc
        return grad_logits, grad_tau

    def spatial_launch(self, dtype, needs_x_twice, shape, dim, smem=BIG_SMEM):
        """(blockDim.x, blockDim.y, keep_x, bytes) the spatial launchers pick."""
        out = torch.zeros(4, dtype=torch.int64)
        assert self.lib.emu_spatial_launch(DTYPE_CODE[dtype], int(needs_x_twice), *layout(shape, dim), smem, _p(out)) == 0
        return tuple(out.tolist())

    def last_warp_launch(self):
        """(aligned-rows copy, blocks per SM of its launch bound, rows per block) of the
        last warp-per-row launch (Note [Warp kernels' occupancy])."""
        out = torch.zeros(3, dtype=torch.int64)
        self.lib.emu_last_warp_launch(_p(out))
        return tuple(out.tolist())

    def vector_accesses(self):
        """(aligned, misaligned, addresses) of the kernels' 16-byte accesses since the
        last call; addresses is the set of the addresses accessed."""
        addresses = torch.zeros(self.lib.emu_vector_access_count() + 1, dtype=torch.int64)
        counts = torch.zeros(3, dtype=torch.int64)
        self.lib.emu_vector_accesses(_p(counts), _p(addresses), addresses.numel())
        aligned, misaligned, n = counts.tolist()
        return aligned, misaligned, set(addresses[:n].tolist())

    def noise(self, shape, dim, state, grid_cap=5):
        out = torch.full(shape, math.nan, dtype=torch.float32)
        rng = state.clone()
        assert self.lib.emu_noise(_p(out), *layout(tuple(shape), dim), _p(rng), grid_cap) == 0
        return out

    def noise_at(self, seed, offset, rows, cols):
        """gumbel_noise(seed, offset, row, col) of the device code for int64 tensors."""
        rows, cols = (t.contiguous() for t in torch.broadcast_tensors(rows, cols))
        out = torch.empty(rows.shape, dtype=torch.float32)
        self.lib.emu_noise_at(seed & (2**64 - 1), offset & (2**64 - 1), _p(rows), _p(cols), rows.numel(), _p(out))
        return out

    def neg_log(self, x):
        out = torch.empty_like(x)
        self.lib.emu_neg_log(_p(x), _p(out), x.numel())
        return out

    def topk(self, x, k, dim, state, batch=None):
        """The CUDA top-k pipeline: keys kernel per row batch, a stable sort, gather kernel."""
        outer, length, inner = layout(tuple(x.shape), dim)
        rows = outer * inner
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        result = torch.empty(rows, k, dtype=torch.int64)
        batch = batch or rows
        rng = state.clone()
        for r0 in range(0, rows, batch):
            n = min(batch, rows - r0)
            keys = torch.empty(n, length, dtype=acc)
            cols = torch.empty(n, length, dtype=torch.int32)
            rc = self.lib.emu_keys(DTYPE_CODE[x.dtype], _p(x), _p(keys), _p(cols), outer, length, inner, r0, n,
                                   _p(rng), 4)
            assert rc == 0
            assert torch.equal(cols, torch.arange(length, dtype=torch.int32).expand(n, length))
            order = torch.sort(keys, dim=1, descending=True, stable=True).indices
            sorted_cols = torch.gather(cols, 1, order).contiguous()
            assert self.lib.emu_gather(_p(sorted_cols), _p(result[r0:]), n, length, k, 3) == 0
        return result


ops = torch.ops.gumbel_ext


def state_of(seed, offset=0):
    return torch.tensor([seed, offset], dtype=torch.int64)


def logits(shape, dtype, seed=0):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3).to(dtype)


# Shapes by strategy: warp per row (1 .. 1024, several rows per warp below 32 columns),
# block per row (> 1024), parallel over inner (dim not last).
WARP = [((37, 1), -1), ((37, 3), -1), ((37, 7), -1), ((21, 32), -1), ((13, 33), -1), ((9, 100), -1),
        ((5, 1000), -1), ((3, 1024), -1), ((), 0)]
BLOCK = [((3, 1025), -1), ((2, 4096), -1), ((2, 5003), -1)]
SPATIAL = [((3, 7, 5), 1), ((2, 1000, 3), 1), ((1, 5, 300), 1), ((2, 3, 40), 1), ((1500, 2), 0), ((3, 1, 4), 1)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def cpu_forward(x, tau, hard, dim, state, tau_rows=None):
    return ops.gumbel_softmax_forward(x, tau, tau_rows, hard, dim, None, state)[0]


def cpu_tol(dtype, length):
    """Tolerance against the CPU kernel, which sums a row sequentially in float: its
    relative error grows like sqrt(C) * eps (the kernels' tree sums are more accurate)."""
    if dtype == torch.float32:
        return dict(rtol=2e-6 + 3e-7 * math.sqrt(length), atol=1e-7)
    return TOL[dtype]


def backward_tol(dtype, length, hard, tau=False):
    """dL/dlogit = y (g - dot) / tau cancels where g ~ dot: the error scales with |g| * eps
    and with the CPU's y and dot sums (see cpu_tol)."""
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-12)
    if dtype == torch.float32:
        r = cpu_tol(dtype, length)["rtol"]
        return dict(rtol=2 * r + 1e-5, atol=10 * r + 1e-5)
    if hard:  # y_soft rounded to the half dtype may differ by an ulp from the CPU's
        return dict(rtol=2e-2, atol=2e-3) if tau else dict(rtol=4 * TOL[dtype]["rtol"], atol=4e-3)
    return dict(rtol=1e-4, atol=1e-5) if tau else TOL[dtype]


def exact_soft(x, dim, state, tau, tau_rows=None):
    """y from the same x = logit + noise (rounded in the accumulation dtype as the
    kernels round it), then the softmax in float64."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xx = (x.to(acc) + ops.gumbel_noise(x, dim, state).to(acc)).double()
    t = tau_rows.double() if tau_rows is not None else tau
    return torch.softmax((xx - xx.amax(dim, keepdim=True)) / t, dim)


# ------------------------------------------------------------------------------ noise
@pytest.mark.parametrize("shape,dim", [((5, 1000), -1), ((3, 7, 9), 1), ((4, 1025), 0), ((7,), 0), ((), 0)])
@pytest.mark.parametrize("offset", [0, 8, 2**40 + 4])
def test_noise_bitwise(emu, shape, dim, offset):
    state = state_of(0x1234_5678_9ABC, offset)
    assert torch.equal(emu.noise(shape, dim, state), ops.gumbel_noise(torch.zeros(shape), dim, state))


# ---------------------------------------------------------------------------- forward
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", WARP + BLOCK + SPATIAL)
def test_forward_equals_cpu(emu, shape, dim, dtype):
    x = logits(shape, dtype, seed=1)
    state = state_of(2024, 12)
    for smem in (BIG_SMEM, 0):  # block kernels: x kept in shared memory, or regenerated
        soft, record = emu.forward(x, 0.7, "soft", dim, state, smem=smem)
        assert torch.equal(record, state)
        length = shape[dim] if shape else 1
        torch.testing.assert_close(soft, cpu_forward(x, 0.7, False, dim, state), **cpu_tol(dtype, length))
        if dtype in (torch.float32, torch.float64):
            torch.testing.assert_close(soft.double(), exact_soft(x, dim, state, 0.7), rtol=1e-5, atol=1e-9)
        if smem == BIG_SMEM:
            soft_big = soft
        else:
            assert torch.equal(soft, soft_big), "keeping x on chip must not change a bit"
    # x = logit + noise is bitwise the CPU's here, so the argmax is exactly the CPU's.
    hard, _ = emu.forward(x, 0.7, "hard", dim, state)
    assert torch.equal(hard, cpu_forward(x, 0.7, True, dim, state))
    index, _ = emu.forward(x, 0.7, "index", dim, state)
    assert torch.equal(index.view(ops.sample(x, 1, dim, None, state).shape), ops.sample(x, 1, dim, None, state))


@pytest.mark.parametrize("shape,dim", [((37, 7), -1), ((5, 1000), -1), ((2, 5003), -1), ((2, 1000, 3), 1)])
def test_forward_matches_reference(emu, shape, dim):
    x = logits(shape, torch.float64, seed=2)
    state = state_of(99, 4)
    soft, _ = emu.forward(x, 0.3, "soft", dim, state)
    # The reference's torch.log may differ from logf in the last ulp of the float32 noise.
    torch.testing.assert_close(soft, reference.gumbel_softmax(x, 0.3, False, dim, rng_state=state), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("shape,dim", [((7, 40), -1), ((3, 4096), -1), ((2, 50, 3), 1)])
def test_tau_rows(emu, shape, dim):
    x = logits(shape, torch.float32, seed=3)
    keep = list(shape)
    keep[dim] = 1
    tau_rows = torch.rand(keep, generator=torch.Generator().manual_seed(3)) + 0.2
    state = state_of(5)
    soft, _ = emu.forward(x, 1.0, "soft", dim, state, tau_rows=tau_rows)
    torch.testing.assert_close(soft, cpu_forward(x, 1.0, False, dim, state, tau_rows), **cpu_tol(torch.float32, shape[dim]))
    torch.testing.assert_close(soft.double(), exact_soft(x, dim, state, 1.0, tau_rows), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("shape,dim", [((6, 40), -1), ((6, 3000), -1), ((6, 30, 3), 1)])
def test_invalid_tau_rows_give_nan_rows(emu, shape, dim):
    """Note [tau_rows values]: the CUDA ops never read tau_rows on the host; a row whose
    tau is not finite and > 0 is NaN in the soft output and the gradients, every other row
    is untouched, and the hard one-hot does not depend on tau."""
    x = logits(shape, torch.float32, seed=5)
    keep = list(shape)
    keep[dim] = 1
    tau_rows = torch.full(keep, 0.7)
    tau_rows.movedim(dim, -1).reshape(-1)[:4] = torch.tensor([-0.5, 0.0, math.inf, math.nan])
    rows_bad = torch.zeros(tau_rows.numel(), dtype=torch.bool)
    rows_bad[:4] = True
    state = state_of(11)
    good_tau = tau_rows.clone()
    good_tau.movedim(dim, -1).reshape(-1)[:4] = 1.0  # (dim has size 1: reshape is a view)
    for smem in (BIG_SMEM, 0):
        soft, _ = emu.forward(x, 1.0, "soft", dim, state, tau_rows=tau_rows, smem=smem)
        rows = soft.movedim(dim, -1).reshape(-1, shape[dim])
        assert rows[rows_bad].isnan().all() and not rows[~rows_bad].isnan().any()
        want = cpu_forward(x, 1.0, False, dim, state, good_tau).movedim(dim, -1).reshape(-1, shape[dim])
        torch.testing.assert_close(rows[~rows_bad], want[~rows_bad], **cpu_tol(torch.float32, shape[dim]))
        hard, _ = emu.forward(x, 1.0, "hard", dim, state, tau_rows=tau_rows, smem=smem)
        assert torch.equal(hard, cpu_forward(x, 1.0, True, dim, state))
        grad = torch.ones_like(x)
        for saved, is_hard in ((soft, False), (x, True)):
            gl, gt = emu.backward(grad, saved, state, 1.0, is_hard, dim, tau_rows, True, smem=smem)
            grows = gl.movedim(dim, -1).reshape(-1, shape[dim])
            assert grows[rows_bad].isnan().all() and not grows[~rows_bad].isnan().any()
            gt_rows = gt.movedim(dim, -1).reshape(-1)
            assert gt_rows[rows_bad].isnan().all() and not gt_rows[~rows_bad].isnan().any()


# ----------------------------------------------------------- spatial: noise drawn once
SECTOR_COLUMNS = {torch.float32: 8, torch.float64: 4, torch.float16: 16, torch.bfloat16: 16}
KEEP_48K = 4096 + 48 * 1024  # the four-blocks-per-SM budget plus the reduction scratch


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("length", [1, 7, 40, 300, 1536, 3000, 3568, 7136, 7137, 20000])
@pytest.mark.parametrize("inner", [2, 3, 40, 1000])
def test_spatial_launch(emu, dtype, length, inner):
    """Note [Spatial launch]: blockDim.y (the summation order) depends on neither the mode
    nor the shared memory; the soft forward and hard backward keep x on chip whenever it
    fits at the sector floor, and only then."""
    shape, acc_bytes = (2, length, inner), 8 if dtype == torch.float64 else 4
    launches = {(twice, smem): emu.spatial_launch(dtype, twice, shape, 1, smem)
                for twice in (False, True) for smem in (BIG_SMEM, KEEP_48K, 0)}
    assert len({by for _, by, _, _ in launches.values()}) == 1
    quads = -(-length // 4)
    floor = min(SECTOR_COLUMNS[dtype], 1 << (inner - 1).bit_length())
    for (twice, smem), (bx, by, keep, nbytes) in launches.items():
        assert bx * by <= 256 and bx >= floor and by & (by - 1) == 0
        assert nbytes == (quads * bx * 4 * acc_bytes if keep else 0)
        fits = quads * floor * 4 * acc_bytes + 4096 <= smem
        assert keep == (twice and fits), (twice, smem, bx, by, keep)
        if keep and smem == BIG_SMEM and quads * floor * 4 * acc_bytes <= 48 * 1024:
            assert nbytes <= 48 * 1024  # four blocks per SM where the floor allows it
    if dtype in (torch.float32, torch.float64) and inner >= 8:  # the numbers of the Note
        assert launches[(True, BIG_SMEM)][2] == (length <= 7136)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,dim", [((1, 3000, 5), 1), ((2, 700, 40), 1), ((2, 2001, 3), 1)])
def test_spatial_long_rows_agree_on_every_path(emu, shape, dim, dtype):
    """Rows whose x needs more than 48 KiB at the sector floor: kept in a larger shared
    copy (BIG_SMEM), in a narrower block's 48 KiB copy or drawn twice (smaller budgets).
    Every path gives the same bits -- the row's summation order is the same -- equal to the
    CPU's within tolerance; the hard backward regenerates exactly the soft forward's y."""
    x = logits(shape, dtype, seed=21)
    grad = logits(shape, dtype, seed=22)
    state = state_of(5, 12)
    budgets = (BIG_SMEM, KEEP_48K, 4096 + 8000, 0)
    keeps = [emu.spatial_launch(dtype, True, shape, dim, smem)[2] for smem in budgets]
    assert keeps[0] and not keeps[-1]
    outs = [emu.forward(x, 0.7, "soft", dim, state, smem=smem)[0] for smem in budgets]
    for out in outs[1:]:
        assert torch.equal(out, outs[0])
    torch.testing.assert_close(outs[0], cpu_forward(x, 0.7, False, dim, state), **cpu_tol(dtype, shape[dim]))
    if dtype == torch.float32:
        torch.testing.assert_close(outs[0].double(), exact_soft(x, dim, state, 0.7), rtol=1e-5, atol=1e-9)
    soft = emu.backward(grad, outs[0], state, 0.7, False, dim)[0]
    for smem in budgets:
        assert torch.equal(emu.backward(grad, x, state, 0.7, True, dim, smem=smem)[0], soft)
    assert torch.equal(emu.forward(x, 0.7, "hard", dim, state)[0], cpu_forward(x, 0.7, True, dim, state))


@pytest.mark.parametrize("shape,dim", [((6, 40), -1), ((6, 1000), -1), ((6, 3000), -1), ((6, 30, 3), 1)])
def test_special_values(emu, shape, dim):
    x = logits(shape, torch.float32, seed=4).movedim(dim, -1).contiguous()
    x[0, ..., 1::2] = -math.inf
    x[1, ..., 3] = math.nan
    x[2, ..., 5] = math.inf
    x[3] = -math.inf
    x[4, ..., :-1] = -math.inf
    x = x.movedim(-1, dim).contiguous()
    state = state_of(3)
    for smem in (BIG_SMEM, 0):
        for mode in ("soft", "hard"):
            out, _ = emu.forward(x, 0.5, mode, dim, state, smem=smem)
            expected = cpu_forward(x, 0.5, mode == "hard", dim, state)
            torch.testing.assert_close(out, expected, equal_nan=True, **cpu_tol(torch.float32, shape[dim]))
    index, _ = emu.forward(x, 0.5, "index", dim, state)
    # NaN / +inf / all -inf rows: torch.argmax of x = logits + noise, NaN first, ties
    # to the lowest index (the CPU op raises instead; see Note [CUDA sample errors]).
    expected = (x + ops.gumbel_noise(x, dim, state)).argmax(dim).reshape(-1)
    assert torch.equal(index, expected)


def test_rng_sources(emu):
    """replay, eager philox and captured philox (offset = *ptr + intragraph) agree, and
    the kernel records the pair it used."""
    x = logits((9, 100), torch.float32, seed=5)
    seed, offset = 0x7FFF_0000_1234, 64
    replay, rec0 = emu.forward(x, 1.0, "soft", -1, state_of(seed, offset + 40))
    eager, rec1 = emu.forward(x, 1.0, "soft", -1, state_of(seed, offset + 40), rng_kind=1)
    captured, rec2 = emu.forward(x, 1.0, "soft", -1, state_of(seed, offset), rng_kind=2, intragraph=40)
    for out, rec in ((eager, rec1), (captured, rec2)):
        assert torch.equal(out, replay)
        assert rec.tolist() == [seed, offset + 40] == rec0.tolist()


def test_unaligned_pointers(emu):
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        for length in (1000, 4096):
            base = logits((3 * length + 1,), dtype, seed=6)
            x = base[1:].view(3, length)
            out_base = torch.empty(3 * length + 1, dtype=dtype)
            state = state_of(7)
            for mode in ("soft", "hard"):
                a, _ = emu.forward(x, 0.5, mode, -1, state, out=out_base[1:].view(3, length))
                b, _ = emu.forward(x.clone(), 0.5, mode, -1, state)
                assert torch.equal(a, b)



# ------------------------------------------------------------- per-row vector loads
# Note [Per-row vector loads] and Note [Misaligned rows]: every row uses 16-byte accesses,
# whether it starts on a 16-byte boundary or m elements past one (a length C % 4 != 0
# makes row r start r * C elements in, so the shift changes from row to row; a storage
# offset shifts the base). Aligned rows load and store whole chunks; misaligned ones load
# the aligned vectors around a chunk and funnel it out, and store the aligned vector that
# starts inside it with the next chunk's words from a shuffle. The result may not depend
# on the path: the same bits as the same values in fresh tensors, and the CPU op's on the
# same noise.
# warp (rows share a warp), warp (aligned: the aligned-rows copy, Note [Warp kernels'
# occupancy]; at an offset the general copy), warp, block
PER_ROW = [((9, 50), -1), ((9, 1000), -1), ((9, 1001), -1), ((4, 1029), -1)]
# (input, output) storage offsets in elements: misaligned by 1..3, the output aligned or
# shifted as the input (fp64 at offset 2 is 16-byte aligned again).
OFFSETS = [(1, 0), (1, 1), (2, 2), (3, 3)]


def at_offset(t, offset):
    """A contiguous copy of t whose storage starts `offset` elements into its buffer."""
    view = torch.empty(t.numel() + offset, dtype=t.dtype)[offset:].view(t.shape)
    return view.copy_(t)


def vector_coverage(addresses, t, margin):
    """The share of the 16-byte vectors lying wholly inside columns [margin, C - margin)
    of the rows of t (2-D, contiguous) that went through a 16-byte access."""
    rows, length = t.shape
    size, base = t.element_size(), t.data_ptr()
    want = set()
    for r in range(rows):
        lo, hi = base + (r * length + margin) * size, base + ((r + 1) * length - margin) * size
        want.update(range((lo + 15) // 16 * 16, hi - 15, 16))
    return len(want & addresses) / len(want) if want else 1.0


def shifted(t):
    """Whether some row of t starts off a 16-byte boundary."""
    return t.data_ptr() % 16 != 0 or t.shape[1] * t.element_size() % 16 != 0


def block_forward_scalar(x, out, mode):
    """What the block forward kernels move column by column when a row is misaligned
    (Note [Misaligned rows]): the soft output's stores, and the fp32 copy's loads."""
    if x.shape[-1] <= 1024:
        return ()
    return ((x,) if x.dtype == torch.float32 else ()) + ((out,) if mode == "soft" else ())


def block_backward_scalar(*tensors):
    """The block backward kernels move a misaligned row column by column (Note
    [Misaligned rows]: realigned, it cost more instructions than the scalar accesses)."""
    return tensors if tensors[0].shape[-1] > 1024 else ()


def check_vector_accesses(emu, *tensors, scalar=()):
    """Since the last check: no 16-byte access at a misaligned address, and the interior
    of every row of every tensor through 16-byte accesses, aligned or not -- but fp64
    rows 8 bytes off a boundary take 8 + 16 + 8 bytes per chunk (half of the row's
    vectors), and the tensors in `scalar` go column by column when misaligned (Note
    [Misaligned rows]; block_forward_scalar): there only the aligned case is checked."""
    aligned, misaligned, addresses = emu.vector_accesses()
    assert misaligned == 0
    for t in tensors:
        margin = 24 if t.element_size() == 2 else 12  # three chunks each side
        floor = 0.45 if t.dtype == torch.float64 and shifted(t) else 0.95
        if any(t is u for u in scalar) and shifted(t):
            floor = 0.0
        coverage = vector_coverage(addresses, t, margin)
        assert coverage >= floor, (coverage, t.dtype, t.shape, t.data_ptr() % 16)


def test_vector_coverage_fails_without_vectors():
    """The check above can fail: no 16-byte accesses cover nothing."""
    t = torch.zeros(4, 1001)
    assert vector_coverage(set(), t, 12) == 0.0
    assert vector_coverage({t.data_ptr() + 16 * i for i in range(4 * 1001 // 4)}, t, 12) > 0.95


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", PER_ROW)
def test_per_row_alignment_forward(emu, shape, dim, dtype):
    x0 = logits(shape, dtype, seed=11)
    state = state_of(31, 8)
    emu.vector_accesses()
    fresh = {mode: emu.forward(x0, 0.6, mode, dim, state)[0] for mode in MODES}
    torch.testing.assert_close(fresh["soft"], cpu_forward(x0, 0.6, False, dim, state), **cpu_tol(dtype, shape[dim]))
    assert torch.equal(fresh["hard"], cpu_forward(x0, 0.6, True, dim, state))
    sample = ops.sample(x0, 1, dim, None, state)
    assert torch.equal(fresh["index"].view(sample.shape), sample)
    for offset, out_offset in [(0, 0)] + OFFSETS:
        x = at_offset(x0, offset)
        emu.vector_accesses()
        for mode in ("soft", "hard"):
            out = at_offset(torch.zeros_like(x0), out_offset)
            got, _ = emu.forward(x, 0.6, mode, dim, state, out=out)
            assert torch.equal(got, fresh[mode]), (mode, offset, out_offset)
            check_vector_accesses(emu, x, out, scalar=block_forward_scalar(x, out, mode))
        index, _ = emu.forward(x, 0.6, "index", dim, state)
        assert torch.equal(index, fresh["index"])
        check_vector_accesses(emu, x, scalar=block_forward_scalar(x, None, "index"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", PER_ROW)
def test_per_row_alignment_backward(emu, shape, dim, dtype):
    x0, g0 = logits(shape, dtype, seed=12), logits(shape, dtype, seed=13)
    state = state_of(37, 4)
    y0, _ = emu.forward(x0, 0.8, "soft", dim, state)
    soft0, _ = emu.backward(g0, y0, state, 0.8, False, dim)
    hard0, _ = emu.backward(g0, x0, state, 0.8, True, dim)
    assert torch.equal(soft0, hard0)  # Note [Regenerated y_soft]
    for hard in (False, True):
        expected, _ = ops.gumbel_softmax_backward(g0, x0 if hard else y0, state, 0.8, None, hard, dim, False)
        torch.testing.assert_close(soft0, expected, **backward_tol(dtype, shape[dim], hard))
    for offset, out_offset in [(0, 0)] + OFFSETS:
        for hard, saved in ((False, y0), (True, x0)):
            g, s = at_offset(g0, offset), at_offset(saved, offset)
            out = at_offset(torch.zeros_like(x0), out_offset)
            emu.vector_accesses()
            got, _ = emu.backward(g, s, state, 0.8, hard, dim, grad_logits=out)
            assert torch.equal(got, soft0), (hard, offset, out_offset)
            check_vector_accesses(emu, g, s, out, scalar=block_backward_scalar(g, s, out))


# Note [Warp kernels' occupancy]: which copy of a warp kernel runs, and its launch bound.
H200_SMS = 132


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_warp_kernel_copies(emu, dtype):
    """Aligned rows of 1000 columns run the aligned-rows copy: the forward (soft, hard) at
    8 blocks of 128 threads per SM where the row takes 32 registers (fp32, fp16, bf16) --
    one wave at 4096 x 1000 on an H200 -- and the backward at 4 (fp32: 3). Index mode, misaligned
    rows (a storage offset, a length off the 16-byte grid) and rows the general copy
    already serves alike run the general copy."""
    state = state_of(5, 0)
    x = logits((8, 1000), dtype, seed=3)
    one_row_regs = dtype != torch.float64  # fp64: 64 registers of x
    for mode in ("soft", "hard"):
        emu.forward(x, 1.0, mode, -1, state)
        copy, blocks, per_block = emu.last_warp_launch()
        assert (copy, blocks) == ((1, 8) if one_row_regs else (0, 4)), mode
        if one_row_regs:
            assert math.ceil(4096 / per_block) <= H200_SMS * blocks, "one wave at 4096 x 1000"
    emu.forward(x, 1.0, "index", -1, state)
    assert emu.last_warp_launch()[:2] == (0, 4)
    emu.forward(at_offset(x, 1), 1.0, "soft", -1, state)
    assert emu.last_warp_launch()[:2] == (0, 4)
    emu.forward(logits((8, 1001), dtype, seed=3), 1.0, "soft", -1, state)
    assert emu.last_warp_launch()[:2] == (0, 4)
    emu.forward(logits((8, 200), dtype, seed=3), 1.0, "soft", -1, state)
    assert emu.last_warp_launch()[:2] == (0, 8)
    y, _ = emu.forward(x, 1.0, "soft", -1, state)
    g = logits((8, 1000), dtype, seed=4)
    for hard, saved in ((False, y), (True, x)):
        emu.backward(g, saved, state, 1.0, hard, -1)
        want = {torch.float32: (1, 3), torch.float64: (0, 0)}.get(dtype, (1, 4))  # fp32 spilled at 4
        assert emu.last_warp_launch()[:2] == want, hard
        emu.backward(g, at_offset(saved, 1), state, 1.0, hard, -1)
        assert emu.last_warp_launch()[:2] == (0, 0)


# A 50257-token vocabulary (3 fp32 rows in 4 misaligned, 7 in 8 of the half types) on the
# block kernels and 1001 columns on the warp kernels, at every storage offset 1..7 of
# the input and the output: soft, hard and sample equal to the CPU ops, the backward
# equal to the aligned run bit for bit, and the rows' interiors through 16-byte accesses.
VOCAB = [((3, 50257), -1), ((5, 1001), -1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", VOCAB)
def test_misaligned_rows_forward(emu, shape, dim, dtype):
    x0 = logits(shape, dtype, seed=21)
    state = state_of(41, 12)
    soft_cpu = cpu_forward(x0, 0.9, False, dim, state)
    hard_cpu = cpu_forward(x0, 0.9, True, dim, state)
    sample = ops.sample(x0, 1, dim, None, state).view(-1)
    soft0 = None
    for offset in range(8):
        x = at_offset(x0, offset)
        out_offset = (offset * 5) % 8  # input and output shifted differently
        emu.vector_accesses()
        soft, _ = emu.forward(x, 0.9, "soft", dim, state, out=at_offset(torch.zeros_like(x0), out_offset))
        check_vector_accesses(emu, x, soft, scalar=block_forward_scalar(x, soft, "soft"))
        torch.testing.assert_close(soft, soft_cpu, **cpu_tol(dtype, shape[dim]))
        soft0 = soft.clone() if soft0 is None else soft0
        assert torch.equal(soft, soft0), offset
        hard, _ = emu.forward(x, 0.9, "hard", dim, state, out=at_offset(torch.zeros_like(x0), offset))
        check_vector_accesses(emu, x, hard, scalar=block_forward_scalar(x, hard, "hard"))
        assert torch.equal(hard, hard_cpu), offset
        index, _ = emu.forward(x, 0.9, "index", dim, state)
        check_vector_accesses(emu, x, scalar=block_forward_scalar(x, None, "index"))
        assert torch.equal(index, sample), offset


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", VOCAB)
def test_misaligned_rows_backward(emu, shape, dim, dtype):
    x0, g0 = logits(shape, dtype, seed=22), logits(shape, dtype, seed=23)
    state = state_of(43, 4)
    y0, _ = emu.forward(x0, 0.7, "soft", dim, state)
    soft0, _ = emu.backward(g0, y0, state, 0.7, False, dim)
    expected, _ = ops.gumbel_softmax_backward(g0, y0, state, 0.7, None, False, dim, False)
    torch.testing.assert_close(soft0, expected, **backward_tol(dtype, shape[dim], False))
    for offset in range(1, 8):
        for hard, saved in ((False, y0), (True, x0)):
            g, s = at_offset(g0, offset), at_offset(saved, (offset * 3) % 8)
            out = at_offset(torch.zeros_like(x0), (offset * 5) % 8)
            emu.vector_accesses()
            got, _ = emu.backward(g, s, state, 0.7, hard, dim, grad_logits=out)
            check_vector_accesses(emu, g, s, out, scalar=block_backward_scalar(g, s, out))
            assert torch.equal(got, soft0), (hard, offset)  # Note [Regenerated y_soft] too


# --------------------------------------------------------------------------- backward
BACKWARD = [((37, 7), -1), ((9, 100), -1), ((5, 1000), -1), ((3, 1025), -1), ((2, 5003), -1),
            ((3, 7, 5), 1), ((2, 300, 3), 1), ((400, 2), 0)]
# Block kernels' shared memory: y and g on chip, y only (for some lengths and dtypes), nothing.
BUDGETS = [BIG_SMEM, 4096 + 30000, 4096 + 8000, 0]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", BACKWARD)
def test_backward_equals_cpu_and_straight_through_is_soft(emu, shape, dim, dtype):
    x = logits(shape, dtype, seed=7)
    grad = logits(shape, dtype, seed=8)
    keep = list(shape)
    keep[dim] = 1
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    tau_rows = (torch.rand(keep, generator=torch.Generator().manual_seed(9)) + 0.3).to(acc)
    state = state_of(17, 8)
    block_kernel = dim in (-1, len(shape) - 1) and shape[dim] > 1024
    # the spatial kernels keep x on chip (hard) or draw it again (smem 0): both must agree
    spatial_kernel = dim not in (-1, len(shape) - 1) and math.prod(shape[dim + 1:]) > 1
    for taus in (None, tau_rows):
        need = taus is not None
        y, _ = emu.forward(x, 0.9, "soft", dim, state, tau_rows=taus)
        results = []
        for smem in BUDGETS if block_kernel or spatial_kernel else BUDGETS[:1]:
            soft = emu.backward(grad, y, state, 0.9, False, dim, taus, need, smem=smem)
            st = emu.backward(grad, x, state, 0.9, True, dim, taus, need, smem=smem)
            # Note [Regenerated y_soft]: straight-through == soft, bit for bit.
            assert torch.equal(soft[0], st[0])
            if need:
                assert torch.equal(soft[1], st[1])
            results.append(soft)
        for other in results[1:]:
            assert torch.equal(other[0], results[0][0]), "shared-memory variants must agree bitwise"
        gl, gt = results[0]
        for hard in (False, True):
            gl_cpu, gt_cpu = ops.gumbel_softmax_backward(grad, x if hard else y, state, 0.9, taus, hard, dim, need)
            torch.testing.assert_close(gl, gl_cpu, **backward_tol(dtype, shape[dim], hard))
            if need:
                torch.testing.assert_close(gt, gt_cpu, **backward_tol(dtype, shape[dim], hard, tau=True))


# ----------------------------------------------------------------------------- sample
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape,dim,k", [((37, 7), -1, 3), ((5, 1000), -1, 4), ((2, 3000), -1, 2), ((3, 9, 5), 1, 9)])
def test_topk_pipeline_equals_cpu(emu, shape, dim, k, dtype):
    x = logits(shape, dtype, seed=10)
    state = state_of(29, 4)
    expected = ops.sample(x, k, dim, None, state).movedim(dim, -1).reshape(-1, k)
    assert torch.equal(emu.topk(x, k, dim, state), expected)
    assert torch.equal(emu.topk(x, k, dim, state, batch=2), expected)


def test_topk_keys_canonical(emu):
    """NaN keys sort first (one canonical NaN), -inf last in column order."""
    x = torch.tensor([[0.0, math.nan, -math.inf, 1.0, -math.inf]])
    got = emu.topk(x, 5, -1, state_of(1))
    assert got[0, 0] == 1 and got[0, 3:].tolist() == [2, 4]
