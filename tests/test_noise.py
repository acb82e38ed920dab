"""One noise algorithm, bit-identical on every device (Note [Bit-identical noise] in
csrc/gumbel_noise.h).

Every compiled CPU copy (DEFAULT, AVX2, AVX512; each forced) and the CUDA device code
(compiled for the host by tests/emulation, the same source nvcc compiles) must give the
same float32 noise bits for the same (seed, offset, row, column), so hard outputs and
sample() indices agree exactly everywhere. tests/test_cuda.py asserts the same on a GPU.
"""

from __future__ import annotations

import pytest
import torch

import gumbel_ext
from gumbel_ext import reference as R

from test_cuda_emulated import emu, state_of  # noqa: F401  (the emulator fixture)

pytestmark = pytest.mark.skipif(
    not gumbel_ext._EXTENSION_AVAILABLE, reason="the compiled extension is not available"
)

ops = torch.ops.gumbel_ext
CAPABILITIES = ["default", "avx2", "avx512"]
MASK64 = 2**64 - 1


def _available():
    return list(ops._cpu_capabilities()) if gumbel_ext._EXTENSION_AVAILABLE else []


@pytest.fixture(params=CAPABILITIES)
def capability(request):
    if request.param not in _available():
        pytest.skip(f"the {request.param} kernels are not compiled in or not supported by this CPU")
    before = ops._cpu_capability()
    ops._set_cpu_capability(request.param)
    yield request.param
    ops._set_cpu_capability(before)


def _neg_log(x):
    """The active copy's noise log: _cpu_vec_math returns log(x) = -neg_log_positive(x)."""
    return -ops._cpu_vec_math(x, "log")


def _ulp(x):
    w = x.to(torch.float32).abs()
    return (torch.nextafter(w, torch.full_like(w, float("inf"))) - w).double()


# ------------------------------------------------- every uniform, every copy
@pytest.fixture(scope="module")
def all_uniforms():
    """The 2^23 uniforms the transform can see: u = (m + 1/2) 2^-23 (exact in float32)."""
    m = torch.arange(2**23, dtype=torch.float64)
    return ((m + 0.5) * 2.0**-23).to(torch.float32)


@pytest.fixture(scope="module")
def emulated_transform(emu, all_uniforms):  # noqa: F811
    return emu.neg_log(emu.neg_log(all_uniforms))


def test_transform_accuracy_over_all_uniforms(all_uniforms, emulated_transform):
    """g = -log(-log u) for every u against float64. Each log is within 2 ulp of its exact
    value; the composite's error is the outer log's (<= 2 ulp of g) plus the inner log's
    error carried through d(-log t)/dt = -1/t (<= 2 ulp(t) / t). Near g = 0 the second
    term dominates: there no float32 computation can be within 2 ulp of g, since t itself
    is rounded to float32 (correctly rounded logf twice is off by 1.4e7 ulp at g = 2.5e-8).
    Where |g| >= 1 the whole error is within 2 ulp of g."""
    u = all_uniforms.double()
    t = -torch.log(u)
    exact = -torch.log(t)
    g = emulated_transform.double()
    assert torch.isfinite(g).all()
    err = (g - exact).abs()
    bound = 2 * _ulp(exact) + 2 * _ulp(t) / t
    worst = int((err / bound).argmax())
    assert (err <= bound).all(), f"u = {u[worst].item()!r}: g = {g[worst].item()!r}, exact {exact[worst].item()!r}"
    far = exact.abs() >= 1
    assert (err[far] <= 2 * _ulp(exact[far])).all()


def test_inner_log_accuracy(emu, all_uniforms):  # noqa: F811
    """-log u within 2 ulp of the exact value for every uniform: the term the composite
    bound above charges to the inner log."""
    t = emu.neg_log(all_uniforms).double()
    exact = -torch.log(all_uniforms.double())
    assert ((t - exact).abs() <= 2 * _ulp(exact)).all()


def test_every_copy_transforms_every_uniform_like_cuda(capability, all_uniforms, emulated_transform):
    """All 2^23 uniforms: the forced CPU copy's two logs give the device code's bits."""
    got = _neg_log(_neg_log(all_uniforms))
    assert torch.equal(got.view(torch.int32), emulated_transform.view(torch.int32))


def test_log_bits_over_the_outer_domain(capability, emu):  # noqa: F811
    """The outer log's inputs -log u span [5.9e-8, 16.7]: every 61st float there."""
    lo = torch.tensor([5.9e-8], dtype=torch.float32).view(torch.int32).item()
    hi = torch.tensor([16.7], dtype=torch.float32).view(torch.int32).item()
    x = torch.arange(lo, hi, 61, dtype=torch.int32).view(torch.float32)
    assert torch.equal(_neg_log(x).view(torch.int32), emu.neg_log(x).view(torch.int32))


# ----------------------------------------------------- (seed, offset, row, column)
def _states(n, seed=0):
    """Random (seed, offset) pairs, offsets a multiple of 4 (what a call reserves) and
    spread over the whole 64-bit range, including ones whose column counter wraps."""
    g = torch.Generator().manual_seed(seed)
    seeds = torch.randint(-(2**63), 2**63 - 1, (n,), generator=g, dtype=torch.int64).tolist()
    offsets = [4 * int(v) for v in torch.randint(0, 2**61, (n,), generator=g, dtype=torch.int64)]
    offsets[:4] = [0, 2**34 + 4, 2**64 - 8, 2**32 * 4 - 4]  # high word set; wraps; low-word carry
    return [state_of(s, o - 2**64 if o >= 2**63 else o) for s, o in zip(seeds, offsets)]


@pytest.mark.parametrize("shape,dim", [((7, 1000), -1), ((3, 67), -1), ((5, 9, 11), 1), ((1030, 3), 0)])
def test_noise_bits_equal_emulated_cuda(capability, emu, shape, dim):  # noqa: F811
    """Row-major (row_block) and strided (rows_block) noise of the forced copy against the
    CUDA noise kernel, for random 64-bit (seed, offset)."""
    for state in _states(6):
        got = ops.gumbel_noise(torch.zeros(shape), dim, state)
        assert torch.equal(got.view(torch.int32), emu.noise(shape, dim, state).view(torch.int32)), state


def test_scalar_draw_at_64bit_counters(emu):  # noqa: F811
    """gumbel_noise(seed, offset, row, col) of the device code at rows and columns whose
    counters need both 32-bit words, against Philox from reference.py (integer, exact)
    followed by the CPU's log (bitwise the device's, tested above)."""
    g = torch.Generator().manual_seed(3)
    rows = torch.cat([torch.randint(0, 2**62, (500,), generator=g), torch.tensor([0, 2**32 - 1, 2**32, 2**63 - 1])])
    cols = torch.cat([torch.randint(0, 2**62, (500,), generator=g), torch.tensor([2**32 + 3, 5, 2**62, 7])])
    for seed, offset in [(0, 0), (0xDEADBEEF_12345678, 2**64 - 4), (2**63 + 5, 2**40 + 8)]:
        n = cols // 4 + offset // 4  # int64 wraps like the 64-bit counter (mod 2^64)
        words = R.philox4x32_10((n & R._MASK32, (n >> 32) & R._MASK32, rows & R._MASK32, (rows >> 32) & R._MASK32),
                                seed)
        bits = torch.stack(words, -1).gather(-1, (cols % 4).unsqueeze(-1)).squeeze(-1)
        u = ((bits >> 9).double() + 0.5).mul(2.0**-23).float()
        want = emu.neg_log(emu.neg_log(u))
        got = emu.noise_at(seed, offset, rows, cols)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))
        torch.testing.assert_close(got, R.noise_at(seed, offset, rows, cols), rtol=0, atol=1e-5)


# ------------------------------------------------------ decisions at vocabulary size
def _vocab_logits(rows):
    """rows x 128256 logits in bf16 steps, so perturbed values nearly tie often."""
    g = torch.Generator().manual_seed(11)
    return (torch.randn(rows, 128256, generator=g) * 2).bfloat16().float()


@pytest.mark.parametrize("rows", [64, pytest.param(1024, marks=pytest.mark.slow)])
def test_hard_and_sample_identical_across_copies(rows):
    """Hard one-hots and sample() indices at rows x 128256 (the issue's 1024 rows run
    with the slow tests, about a minute on two cores) are identical in every copy."""
    vocab_logits = _vocab_logits(rows)
    available = _available()
    if len(available) < 2:
        pytest.skip("one CPU copy only")
    state = state_of(0x5EED, 1 << 20)
    before = ops._cpu_capability()
    results = {}
    try:
        for cap in available:
            ops._set_cpu_capability(cap)
            hard = ops.gumbel_softmax_forward(vocab_logits, 0.5, None, True, -1, None, state)[0]
            index = ops.sample(vocab_logits, 1, -1, None, state)
            results[cap] = (hard.argmax(-1), hard.sum(-1), index)
    finally:
        ops._set_cpu_capability(before)
    first = results[available[0]]
    assert torch.equal(first[1], torch.ones(rows)) and torch.equal(first[0], first[2].view(-1))
    for cap in available[1:]:
        for a, b in zip(first, results[cap]):
            assert torch.equal(a, b), cap


def test_hard_and_sample_equal_emulated_cuda_at_vocab_size(emu):  # noqa: F811
    """The CUDA block-per-row kernels (emulated) on a few rows of the same size."""
    x = _vocab_logits(3)
    state = state_of(0x5EED, 1 << 20)
    hard, _ = emu.forward(x, 0.5, "hard", -1, state)
    index, _ = emu.forward(x, 0.5, "index", -1, state)
    assert torch.equal(hard, ops.gumbel_softmax_forward(x, 0.5, None, True, -1, None, state)[0])
    assert torch.equal(index, ops.sample(x, 1, -1, None, state))
