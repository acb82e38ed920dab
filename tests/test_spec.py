"""The README's contract, tested on every per-ISA copy of the CPU kernels where a shared
mistake of the kernels and reference.py would pass every element-wise comparison:

* the noise formula, from an oracle written here in float64 numpy (a Philox4x32-10 checked
  against Random123's known-answer vectors), never from reference.py -- including the
  words whose uniform sits at the ends of (0, 1), where a wrong half-step gives infinite
  noise;
* ties go to the lowest index, with exact ties made certain (logits so large that the
  noise cannot change them), on every strategy: rows, short rows, split rows, dim not last;
* logits of +-200 (fp32, tau down to 1e-4), +-6e4 (fp16) and +-1e30 (bf16) stay finite
  and equal the reference on every copy and strategy.

tests/mutants/ holds the mutations this file was written to kill (`make mutants`)."""

import math

import numpy as np
import pytest
import torch

import gumbel_ext
from gumbel_ext import reference as R

pytestmark = pytest.mark.skipif(
    not gumbel_ext._EXTENSION_AVAILABLE, reason="the compiled extension is not available"
)

ops = torch.ops.gumbel_ext
ALL_CAPABILITIES = ["default", "avx2", "avx512"]


@pytest.fixture(params=ALL_CAPABILITIES)
def capability(request):
    if request.param not in ops._cpu_capabilities():
        pytest.skip(f"the {request.param} kernels are not compiled in or not supported by this CPU")
    before, threads = ops._cpu_capability(), torch.get_num_threads()
    torch.set_num_threads(max(2, threads))  # two threads at least: few long rows are split
    ops._set_cpu_capability(request.param)
    yield request.param
    ops._set_cpu_capability(before)
    torch.set_num_threads(threads)


def _state(seed, offset):
    seed &= (1 << 64) - 1
    return torch.tensor([seed - (1 << 64) if seed >= 1 << 63 else seed, offset], dtype=torch.int64)


# ------------------------------------------------------------------ the noise oracle
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_LOW32 = np.uint64(0xFFFFFFFF)


def _philox(counter, seed):
    """Philox4x32-10 (Random123) of four arrays of 32-bit words, key = the 64-bit seed."""
    x, y, z, w = (np.asarray(c, dtype=np.uint64) for c in counter)
    k0, k1 = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
    for _ in range(10):
        p0, p1 = _M0 * x, _M1 * z  # exact: both factors < 2^32
        x, y, z, w = (p1 >> np.uint64(32)) ^ y ^ np.uint64(k0), p1 & _LOW32, (p0 >> np.uint64(32)) ^ w ^ np.uint64(k1), p0 & _LOW32
        k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
    return x, y, z, w


def _words(seed, offset, rows, cols):
    """The Philox word of element (rows, cols): lane c % 4 of counter (offset/4 + c/4, r)."""
    rows, cols = np.broadcast_arrays(np.asarray(rows, dtype=np.uint64), np.asarray(cols, dtype=np.uint64))
    n = cols // np.uint64(4) + np.uint64(offset // 4)
    block = np.stack(_philox((n & _LOW32, n >> np.uint64(32), rows & _LOW32, rows >> np.uint64(32)), seed), -1)
    return np.take_along_axis(block, (cols % np.uint64(4)).astype(np.int64)[..., None], -1)[..., 0]


def _gumbel(words):
    """The README's transform in float64: u = ((bits >> 9) + 0.5) 2^-23, g = -log(-log u)."""
    u = ((np.asarray(words, dtype=np.uint64) >> np.uint64(9)).astype(np.float64) + 0.5) * 2.0**-23
    return -np.log(-np.log(u))


# The kernels compute g in float32 from an exact u: log(u) within 2 ulp, then one more log
# within 2 ulp, so |error| <= 2^-22 (from -log u's relative error) + 2 ulp of g (2^-18 for
# g in [16, 16.64]) ~ 4.05e-6; measured below 1e-6.
NOISE_ATOL = 5e-6


def test_philox_oracle_known_answers():
    """The oracle is Philox4x32-10: Random123's kat_vectors."""
    cases = [
        ((0, 0, 0, 0), 0, (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, 0xFFFFFFFF_FFFFFFFF, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), 0x299F31D0_A4093822,
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for counter, seed, want in cases:
        assert tuple(int(v) for v in _philox(counter, seed)) == want


def test_uniform_transform_known_answers():
    """g for chosen words, against closed forms: the ends of u's range are 2^-24 and
    1 - 2^-24, never 0 or 1, so g is finite for every word."""
    g = _gumbel([0, 511, 512, 0xFFFFFFFF])
    assert g[0] == g[1] == pytest.approx(-math.log(24 * math.log(2)), rel=1e-15)  # -2.8115...
    assert g[2] == pytest.approx(-math.log(-math.log(1.5 * 2.0**-23)), rel=1e-15)  # -2.7432...
    assert g[3] == pytest.approx(-math.log(-math.log1p(-(2.0**-24))), rel=1e-12)  # 16.6355...
    assert g[0] == pytest.approx(-2.81154, abs=1e-5) and g[3] == pytest.approx(16.63553, abs=1e-5)
    assert np.isfinite(g).all()


# Found offline by scanning counters (n, 0, 5, 0) of this seed with _philox: row 5 of a
# call with offset 4 (n - c // 4) draws, at column c = lane mod 4, a word whose
# bits >> 9 is 0 (u = 2^-24, the lowest), 1, or 2^23 - 1 (u = 1 - 2^-24, the highest).
SEED = 0x9E3779B97F4A7C15
ROW = 5
EDGE_WORDS = {  # name: (n, lane, word)
    "lowest": (1446312, 1, 0x1EB),
    "second": (774809, 0, 0x29F),
    "highest": (5359985, 0, 0xFFFFFF73),
}
# (shape, dim, column) per strategy; row 5 of the flattened other dims holds the word at
# `column`: short rows (transposed tiles), rows in chunks, a split row, dim not last.
EDGE_LAYOUTS = {
    "short-row": ((6, 10), -1, 4),
    "row": ((6, 100), -1, 68),
    "split": ((6, 9000), -1, 8000),
    "dim-not-last": ((1, 40, 20), 1, 28),
}


def _edge_case(name, layout):
    n, lane, word = EDGE_WORDS[name]
    shape, dim, column = EDGE_LAYOUTS[layout]
    column += lane
    offset = 4 * (n - column // 4)
    assert int(_words(SEED, offset, ROW, column)) == word  # the hard-coded search result
    index = [ROW, column] if dim == -1 else [0, column, ROW]
    return shape, dim, _state(SEED, offset), tuple(index), float(_gumbel(word))


@pytest.mark.parametrize("layout", list(EDGE_LAYOUTS))
@pytest.mark.parametrize("name", list(EDGE_WORDS))
def test_noise_at_the_ends_of_the_uniform(capability, name, layout):
    shape, dim, state, index, want = _edge_case(name, layout)
    got = ops.gumbel_noise(torch.zeros(shape), dim, state)[index].item()
    assert math.isfinite(got)
    assert got == pytest.approx(want, abs=NOISE_ATOL)


@pytest.mark.parametrize("name", list(EDGE_WORDS))
def test_reference_noise_at_the_ends_of_the_uniform(name):
    shape, dim, state, index, want = _edge_case(name, "row")
    got = R.gumbel_noise(torch.zeros(shape), dim, state)[index].item()
    assert math.isfinite(got)
    assert got == pytest.approx(want, abs=NOISE_ATOL)


@pytest.mark.parametrize(
    "shape,dim", [((5, 10), -1), ((3, 130), -1), ((2, 9000), -1), ((2, 37, 20), 1)], ids=list(EDGE_LAYOUTS)
)
def test_noise_is_the_formula(capability, shape, dim):
    """Every element's noise is the README's formula of its (seed, offset, row, column)."""
    seed, offset = 0xDEADBEEF_01234567, 4 * 0xFFFF_FFF0  # the counter's low word wraps
    state = _state(seed, offset)
    got = ops.gumbel_noise(torch.zeros(shape), dim, state).movedim(dim, -1)
    rows, length = got.numel() // got.shape[-1], got.shape[-1]
    r = np.arange(rows, dtype=np.uint64)[:, None]
    c = np.arange(length, dtype=np.uint64)[None, :]
    want = torch.from_numpy(_gumbel(_words(seed, offset, r, c))).reshape(got.shape)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=NOISE_ATOL)


# ------------------------------------------------------------------------- exact ties
# A logit so large that logit + g rounds back to it for every g in [-2.82, 16.64]: its
# dtype's spacing (in the accumulation type) exceeds 2 * 16.64.
TIE_VALUES = {torch.float32: 1e9, torch.bfloat16: 1e30, torch.float64: 1e18}
STRATEGIES = {
    "row": ((6, 100), -1),
    "short-row": ((37, 10), -1),
    "split": ((2, 8300), -1),  # >= 8192 columns, fewer rows than 4 per thread
    "dim-not-last": ((3, 40, 20), 1),
}


def _tie_positions(r, length, g):
    """Columns of row r's equal maxima: the two ends of the row (other threads when it is
    split), the same SIMD lane in consecutive chunks, neighbours in one chunk, or random."""
    kind = r % 4
    if kind == 0:
        return [length - 1, 0] if r % 8 == 0 else [length - 1, length // 2 - 1, length // 2]
    if kind == 1 and length > 128:
        p = int(torch.randint(0, length - 128, (), generator=g))
        return [p + 128, p + 64, p + 32, p]
    if kind == 2 and length > 2:
        p = int(torch.randint(0, length - 2, (), generator=g))
        return [p + 2, p + 1]
    count = int(torch.randint(2, min(6, length) + 1, (), generator=g))
    return torch.randperm(length, generator=g)[:count].tolist()


def _tied_logits(shape, dim, dtype):
    """Small logits with 2+ equal maxima per row; returns (logits, sorted tie columns per row)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    rows = x.movedim(dim, -1)  # a view: writes go to x
    flat_index = torch.arange(rows.numel() // rows.shape[-1]).reshape(rows.shape[:-1])
    ties = {}
    for idx in np.ndindex(*rows.shape[:-1]):
        cols = sorted(_tie_positions(int(flat_index[idx]), rows.shape[-1], g))
        rows[idx][cols] = TIE_VALUES[dtype]
        ties[idx] = cols
    return x.to(dtype), ties


@pytest.mark.parametrize("dtype", list(TIE_VALUES))
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_exact_ties_go_to_the_lowest_index(capability, strategy, dtype):
    shape, dim = STRATEGIES[strategy]
    x, ties = _tied_logits(shape, dim, dtype)
    state = _state(0x5EED, 0)
    lowest = torch.zeros(x.movedim(dim, -1).shape[:-1], dtype=torch.int64)
    for idx, cols in ties.items():
        lowest[idx] = cols[0]
    one_hot = torch.zeros_like(x).movedim(dim, -1)
    one_hot.scatter_(-1, lowest.unsqueeze(-1), 1.0)
    one_hot = one_hot.movedim(-1, dim)

    hard, _ = ops.gumbel_softmax_forward(x, 1.0, None, True, dim, None, state)
    assert torch.equal(hard, one_hot)
    assert torch.equal(ops.sample(x, 1, dim, None, state), lowest)
    assert torch.equal(R.gumbel_softmax(x, 1.0, True, dim, rng_state=state), one_hot)
    assert torch.equal(R.sample(x, 1, dim, rng_state=state), lowest)

    # Gumbel-top-k ranks the tied maxima first, in increasing index.
    k = min(len(c) for c in ties.values())
    first_k = torch.zeros(lowest.shape + (k,), dtype=torch.int64)
    for idx, cols in ties.items():
        first_k[idx] = torch.tensor(cols[:k])
    first_k = first_k.movedim(-1, dim)
    assert torch.equal(ops.sample(x, k, dim, None, state), first_k)
    assert torch.equal(R.sample(x, k, dim, rng_state=state), first_k)

    # The soft sample splits the mass evenly over the tied maxima.
    soft, _ = ops.gumbel_softmax_forward(x, 1.0, None, False, dim, None, state)
    share = torch.zeros_like(x, dtype=torch.float64).movedim(dim, -1)
    for idx, cols in ties.items():
        share[idx][cols] = 1.0 / len(cols)
    torch.testing.assert_close(soft.double(), share.movedim(-1, dim).to(dtype).double(), rtol=0, atol=0)


# --------------------------------------------------------------------- extreme values
# (rtol, atol) as in tests/test_cpu_isa.py: the noise differs by a few float32 ulps
# between the kernels' log and torch's.
TOL = {torch.float32: (3e-5, 1e-6), torch.bfloat16: (1.6e-2, 1e-3), torch.float16: (2e-3, 2e-4)}
EXTREMES = [
    (torch.float32, 200.0, 1e-4),
    (torch.float32, 200.0, 1.0),
    (torch.float16, 6e4, 1e-4),
    (torch.bfloat16, 1e30, 1e-4),
]


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("dtype,value,tau", EXTREMES)
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_extreme_values(capability, strategy, dtype, value, tau, hard):
    shape, dim = STRATEGIES[strategy]
    g = torch.Generator().manual_seed(11)
    x = (torch.randint(0, 2, shape, generator=g) * 2 - 1).to(torch.float64) * value
    x.movedim(dim, -1)[..., 3] = 0
    x = x.to(dtype)
    state = _state(0xC0FFEE, 4)
    y, _ = ops.gumbel_softmax_forward(x, tau, None, hard, dim, None, state)
    assert torch.isfinite(y).all()
    want = R.gumbel_softmax(x, tau, hard, dim, rng_state=state)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y, want, rtol=rtol, atol=atol)
    torch.testing.assert_close(y.double().sum(dim), torch.ones_like(y.double().sum(dim)), rtol=0, atol=atol * 40)
