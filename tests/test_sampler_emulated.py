"""The fused CUDA sampler (csrc/cuda/sample_filtered_kernels.cuh) executed on the CPU by
the SIMT emulator (tests/emulation/sampler_harness.cpp), compared with the CPU op
gumbel_ext::sample_filtered for the same seeds: indices with torch.equal, log-probs
within 1e-5. The CPU op runs its AVX2 copy when the machine has one: the kernel's exp is
that copy's, bit for bit (Note [CUDA sampler exp]), so even a token at a min-p or top-p
boundary must go the same way. tests/test_sampler_cuda.py runs the real kernel on a GPU.
"""

from __future__ import annotations

import ctypes

import pytest
import torch

from gumbel_ext import _ops
from helpers import ROOT, emulation_library
from helpers import ptr as _p

SOURCES = [
    ROOT / "csrc" / "cuda" / "sample_filtered_kernels.cuh",
    ROOT / "csrc" / "cuda" / "common.cuh",
    ROOT / "csrc" / "cuda" / "kernels.h",
    ROOT / "csrc" / "gumbel_noise.h",
    ROOT / "tests" / "emulation" / "simt.h",
    ROOT / "tests" / "emulation" / "sampler_harness.cpp",
]
DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
ops = torch.ops.gumbel_ext

pytestmark = pytest.mark.skipif(not _ops.has_kernel(torch.device("cpu")), reason="the CPU extension is not built")


@pytest.fixture(scope="module", autouse=True)
def _cpu_avx_copy():
    """The CPU copy whose exp the kernel reproduces: AVX2 (AVX-512 computes the same bits)."""
    before = ops._cpu_capability()
    try:
        ops._set_cpu_capability("avx2")
    except RuntimeError:
        pytest.skip("the CPU has no AVX2 copy to compare the kernel's exp with")
    yield
    ops._set_cpu_capability(before)


@pytest.fixture(scope="module")
def emu():
    lib = emulation_library("sampler_harness.cpp", SOURCES, "sampler-harness")
    i64, f64, vp, i32 = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p, ctypes.c_int
    lib.emu_sample_filtered.argtypes = [i32, vp, i64, i64, i64, f64, vp, i64, vp, f64, vp, f64, vp, vp, vp, vp, vp,
                                        vp, i64]
    lib.emu_sample_filtered.restype = i32
    lib.emu_sampler_exp.argtypes = [vp, vp, i64]
    return lib


def _rows(t, dtype):
    return None if not isinstance(t, torch.Tensor) else t.to(dtype).reshape(-1).contiguous()


def emulated(lib, x, num_samples=1, *, temperature=1.0, top_k=None, top_p=None, min_p=None, seeds=None,
             offsets=None, rng_state=(0, 0), grid_cap=3):
    """The kernel on [rows, V] logits x with the op's arguments: (indices, logprobs)."""
    rows, V = x.shape
    x = x.contiguous()
    args = {}
    for name, value, off, dtype in (("temperature", temperature, 1.0, torch.float64),
                                    ("top_k", top_k, 0, torch.int64), ("top_p", top_p, 1.0, torch.float64),
                                    ("min_p", min_p, 0.0, torch.float64)):
        t = _rows(value, dtype)
        args[name] = (off if isinstance(value, torch.Tensor) or value is None else value, t)
    if seeds is not None and offsets is None:
        offsets = torch.zeros_like(seeds)
    seeds, offsets = _rows(seeds, torch.int64), _rows(offsets, torch.int64)
    state = torch.tensor(rng_state, dtype=torch.int64)
    idx = torch.full((rows, num_samples), -7, dtype=torch.int64)
    lp = torch.full((rows, num_samples), float("nan"), dtype=torch.float32)
    rc = lib.emu_sample_filtered(
        DTYPE_CODE[x.dtype], _p(x), rows, V, num_samples, float(args["temperature"][0]), _p(args["temperature"][1]),
        int(args["top_k"][0]), _p(args["top_k"][1]), float(args["top_p"][0]), _p(args["top_p"][1]),
        float(args["min_p"][0]), _p(args["min_p"][1]), _p(seeds), _p(offsets), _p(state), _p(idx), _p(lp), grid_cap)
    assert rc == 0, "a barrier was not reached by every thread" if rc == -2 else rc
    if num_samples == 1:
        idx, lp = idx.squeeze(-1), lp.squeeze(-1)
    return idx, lp


def cpu(x, num_samples=1, **kw):
    """The CPU op with the same arguments (the per-row tensors flattened as the wrapper does)."""
    rows, _ = x.shape

    def val(name, off, dtype):
        v = kw.get(name)
        if v is None:
            return off, None
        if isinstance(v, torch.Tensor):
            return off, v.to(dtype).reshape(-1).contiguous()
        return v, None

    t, t_rows = val("temperature", 1.0, torch.float64)
    k, k_rows = val("top_k", 0, torch.int64)
    p, p_rows = val("top_p", 1.0, torch.float64)
    m, m_rows = val("min_p", 0.0, torch.float64)
    seeds = kw.get("seeds")
    offsets = kw.get("offsets")
    if seeds is not None and offsets is None:
        offsets = torch.zeros_like(seeds)
    gen = None
    if seeds is None:
        # The CPU op keys every row with one random64() of the generator; the kernel takes
        # that key as its (seed, offset = 0).
        gen = torch.Generator().manual_seed(kw.get("gen_seed", 5))
    idx, lp = ops.sample_filtered(x, num_samples, -1, float(t), t_rows, int(k), k_rows, float(p), p_rows, float(m),
                                  m_rows, seeds, offsets, True, gen)
    return idx, lp


def gen_key(gen_seed):
    g = torch.Generator().manual_seed(gen_seed)
    return int(torch.empty((), dtype=torch.int64).random_(-(2**63), None, generator=g))


def check(emu, x, num_samples=1, **kw):
    c_idx, c_lp = cpu(x, num_samples, **kw)
    e_kw = {k: v for k, v in kw.items() if k != "gen_seed"}
    if kw.get("seeds") is None:
        e_kw["rng_state"] = (gen_key(kw.get("gen_seed", 5)), 0)
    e_idx, e_lp = emulated(emu, x, num_samples, **e_kw)
    assert torch.equal(e_idx, c_idx), (e_idx, c_idx)
    torch.testing.assert_close(e_lp, c_lp, atol=1e-5, rtol=0, equal_nan=True)
    return e_idx, e_lp


def logits(rows, V, dtype=torch.float32, seed=0, scale=3.0):
    return (torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


def seeds_for(n, base=0):
    return torch.arange(base, base + n, dtype=torch.int64) * 7919 + 13


FILTERS = [
    dict(),
    dict(temperature=0.7),
    dict(top_k=5),
    dict(top_k=40),
    dict(top_p=0.9),
    dict(top_p=0.3, temperature=0.5),
    dict(min_p=0.05),
    dict(temperature=0.8, top_k=50, top_p=0.9),
    dict(temperature=1.3, top_k=30, top_p=0.8, min_p=0.02),
    dict(temperature=2.0, top_p=0.95, min_p=0.1),
]


def _id(f):
    return ",".join(f"{k}={v}" for k, v in f.items()) or "plain"


def test_exp_bits_equal_cpu_avx(emu):
    """sampler_exp gives the CPU AVX copy's e bit for bit. Probe: rows [0, x] with min_p set
    to the kernel's e = exp(x) keep token 1 on the CPU iff the CPU's e >= it, and with min_p
    one ulp above it iff the CPU's e > it: kept, then not kept, means equal bits. Kept shows
    in the log-probs (a lone survivor has log-prob 0)."""
    # Down to e ~ 3e-7: below, the CPU's float sum 1 + e rounds to 1 and the log-prob no
    # longer shows the token (the bounds below cover the rest).
    x = -torch.rand(100_000, generator=torch.Generator().manual_seed(1)) * 15
    x = torch.cat([x, torch.tensor([-1e-30, -1e-8, -0.5, -0.34657359, -14.9])])
    e = torch.empty_like(x)
    emu.emu_sampler_exp(_p(x), _p(e), x.numel())
    ref = torch.exp(x.double())
    assert ((e.double() - ref).abs() <= 2.5 * torch.finfo(torch.float32).eps * ref).all()
    tiny = -torch.rand(10_000, generator=torch.Generator().manual_seed(2)) * 75 - 15
    e_tiny = torch.empty_like(tiny)
    emu.emu_sampler_exp(_p(tiny), _p(e_tiny), tiny.numel())
    ref = torch.where(tiny < -87.33654, 0.0, torch.exp(tiny.double()))
    assert ((e_tiny.double() - ref).abs() <= 2.5 * torch.finfo(torch.float32).eps * ref + 2.0**-149).all()
    x, e = x[e < 1], e[e < 1]  # (min_p one ulp above 1 is out of range)
    rows = torch.stack([torch.zeros_like(x), x], dim=1)
    s = seeds_for(x.numel())
    for m, kept in ((e, True), (torch.nextafter(e, torch.tensor(2.0)), False)):
        _, lp = ops.sample_filtered(rows, 1, -1, 1.0, None, 0, None, 1.0, None, 0.0, m.double(), s,
                                    torch.zeros_like(s), True, None)
        assert bool(((lp != 0) == kept).all()), (x[(lp != 0) != kept][:5], e[(lp != 0) != kept][:5])


@pytest.mark.parametrize("filters", FILTERS, ids=_id)
@pytest.mark.parametrize("V", [37, 1000])
def test_each_filter_matches_cpu(emu, filters, V):
    x = logits(6, V, seed=V)
    check(emu, x, seeds=seeds_for(6), offsets=torch.arange(6) * 1024, **filters)


@pytest.mark.parametrize("filters", [dict(), dict(top_k=20, top_p=0.9), dict(top_p=0.5, min_p=0.05)], ids=_id)
def test_generator_key_matches_cpu(emu, filters):
    # seeds=None: one key for the batch, counter row r (the noise of today's sample()).
    check(emu, logits(5, 300, seed=3), gen_seed=11, **filters)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("filters", [dict(), dict(temperature=0.8, top_k=30, top_p=0.85, min_p=0.01),
                                     dict(temperature=0.0), dict(top_k=7)], ids=_id)
def test_dtypes_match_cpu(emu, dtype, filters):
    # Rows of positive and of negative logits: the radix select skips the half types'
    # zero mantissa bits, which order keys flip for negative values. Ties galore in half.
    x = logits(4, 700, dtype=dtype, seed=7, scale=1.0)
    x[2:] = x[2:].abs().neg() - 5
    for ns in (1, 3):
        check(emu, x, ns, seeds=seeds_for(4), **filters)


@pytest.mark.parametrize("filters", [dict(), dict(top_k=25), dict(temperature=0.9, top_k=40, top_p=0.8),
                                     dict(top_p=0.9, min_p=0.05)], ids=_id)
@pytest.mark.parametrize("num_samples", [2, 7])
def test_gumbel_top_k_matches_cpu(emu, filters, num_samples):
    # Logits of scale 1: every row keeps more than num_samples tokens (the CPU raises otherwise).
    check(emu, logits(4, 500, seed=num_samples, scale=1.0), num_samples, seeds=seeds_for(4), **filters)


def test_per_row_values_and_greedy_rows(emu):
    rows = 8
    x = logits(rows, 400, seed=2)
    T = torch.tensor([0.0, 0.5, 1.0, 0.0, 1.7, 0.8, 0.0, 1.1], dtype=torch.float64)
    k = torch.tensor([0, 5, 50, 10, 0, 400, 1, 3])
    p = torch.tensor([1.0, 0.9, 0.5, 0.2, 0.95, 0.7, 1.0, 1.0], dtype=torch.float64)
    m = torch.tensor([0.0, 0.0, 0.1, 0.0, 0.02, 0.0, 0.5, 0.3], dtype=torch.float64)
    idx, lp = check(emu, x, seeds=seeds_for(rows), temperature=T, top_k=k, top_p=p, min_p=m)
    greedy = T == 0
    assert torch.equal(idx[greedy], x.argmax(-1)[greedy])
    torch.testing.assert_close(lp[greedy], torch.log_softmax(x.double(), -1).gather(-1, idx[:, None])[:, 0][greedy]
                               .float(), atol=1e-5, rtol=0)
    check(emu, x, 3, seeds=seeds_for(rows), temperature=T, top_k=k.clamp(min=3) * (k != 0), min_p=m / 10)


def test_ties_at_the_boundaries(emu):
    # Integer logits: many exact ties at the top-k boundary, equal e at the top-p and min-p
    # boundaries, and ties among the greedy maxima.
    x = torch.randint(-3, 4, (6, 257), generator=torch.Generator().manual_seed(4)).float()
    for f in (dict(top_k=10), dict(top_p=0.5), dict(min_p=0.3), dict(top_k=3, top_p=0.6, min_p=0.2),
              dict(temperature=0.0), dict(temperature=0.5, top_k=1)):
        for ns in (1, 4):
            check(emu, x, ns, seeds=seeds_for(6), **f)


def test_minus_inf_masks_and_single_survivor(emu):
    x = logits(5, 300, seed=6)
    x[0, :290] = -float("inf")                  # ten finite tokens
    x[1, ::2] = -float("inf")
    x[2, :] = -float("inf")
    x[2, 123] = 0.5                             # one survivor
    x[3, 5:] = -float("inf")                    # top_k beyond the finite count keeps the -inf ties
    for f in (dict(), dict(top_k=8), dict(top_p=0.7), dict(min_p=0.1), dict(top_k=20, top_p=0.9, min_p=0.01)):
        idx, lp = check(emu, x[:4], seeds=seeds_for(4), **f)
        assert idx[2] == 123 and lp[2] == 0
    check(emu, x[[0, 1, 3]], 3, seeds=seeds_for(3), top_k=4)


def test_edge_values(emu):
    x = logits(4, 200, seed=8)
    for f in (dict(top_k=200), dict(top_k=10_000), dict(top_p=1.0), dict(min_p=0.0), dict(min_p=1.0),
              dict(top_k=1), dict(top_p=1e-9), dict(temperature=1e-3), dict(temperature=50.0, top_p=0.5)):
        check(emu, x, seeds=seeds_for(4), **f)


def test_offsets_and_large_keys(emu):
    x = logits(3, 90, seed=9)
    seeds = torch.tensor([-1, 2**62 + 5, -(2**63)], dtype=torch.int64)
    offsets = torch.tensor([0, 4 * 10**12, 2**40 + 8], dtype=torch.int64)
    check(emu, x, seeds=seeds, offsets=offsets, top_p=0.8)
    check(emu, x, 4, seeds=seeds, offsets=offsets, top_k=9)


def test_batch_invariance(emu):
    x = logits(7, 333, seed=10)
    s = seeds_for(7)
    kw = dict(temperature=0.8, top_k=20, top_p=0.9, seeds=s)
    idx, _ = emulated(emu, x, **kw)
    perm = torch.tensor([3, 6, 0, 1, 5, 2, 4])
    assert torch.equal(emulated(emu, x[perm], temperature=0.8, top_k=20, top_p=0.9, seeds=s[perm])[0], idx[perm])
    for r in (0, 4):
        assert emulated(emu, x[r:r + 1], temperature=0.8, top_k=20, top_p=0.9, seeds=s[r:r + 1])[0][0] == idx[r]


def test_bad_rows_are_defined(emu):
    """Note [CUDA sampler bad rows]: NaN / +inf / all -inf rows are drawn greedily with NaN
    first, log-probs NaN; out-of-range per-row values are clamped. Every index is valid."""
    x = logits(4, 64, seed=12)
    x[0, 9] = float("nan")
    x[1, 17] = float("inf")
    x[2, :] = -float("inf")
    idx, lp = emulated(emu, x, seeds=seeds_for(4), top_k=5, top_p=0.9)
    assert idx[:3].tolist() == [9, 17, 0] and lp[:3].isnan().all() and not lp[3].isnan()
    idx, _ = emulated(emu, x, 3, seeds=seeds_for(4))
    assert idx[2].tolist() == [0, 1, 2] and idx[0, 0] == 9 and idx[1, 0] == 17
    y = logits(3, 64, seed=13)
    y[2, :10] = -float("inf")
    idx, _ = emulated(emu, y, seeds=seeds_for(3), temperature=torch.tensor([-1.0, float("nan"), float("inf")]),
                      top_p=torch.tensor([0.0, 2.0, float("nan")]), min_p=torch.tensor([-1.0, 5.0, float("nan")]),
                      top_k=torch.tensor([-3, 0, 70]))
    assert idx.tolist() == y.argmax(-1).tolist()
    idx, _ = emulated(emu, y, seeds=seeds_for(3), top_p=torch.tensor([0.0, 2.0, float("nan")]),
                      min_p=torch.tensor([-1.0, 5.0, float("nan")]), top_k=torch.tensor([-3, 0, 70]))
    assert 0 <= idx.min() and idx.max() < 64 and idx[0] == y[0].argmax()  # top_p <= 0 keeps the top token


def test_grid_stride_rows(emu):
    check(emu, logits(9, 150, seed=14), seeds=seeds_for(9), top_k=7, top_p=0.9)
    e1 = emulated(emu, logits(9, 150, seed=14), seeds=seeds_for(9), top_k=7, grid_cap=1)
    e9 = emulated(emu, logits(9, 150, seed=14), seeds=seeds_for(9), top_k=7, grid_cap=9)
    assert torch.equal(e1[0], e9[0])
