"""The token sampler: sample(..., temperature, top_k, top_p, min_p, seeds, offsets,
return_logprobs). The oracle is a plain sort-based sampler written here, in float64; the
fused CPU op is also compared element-wise with gumbel_ext.reference."""

import pytest
import torch
from scipy import stats

import gumbel_ext
from gumbel_ext import reference, sampling

P_MIN = 1e-4
LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, 1.5, 0.2, -4.0, 1.2, 0.7])


# ------------------------------------------------------------------------- the oracle
def oracle_keep(x, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """The kept mask and e = exp((x - max) / T) of one row, by sorting, in float64:
    temperature, then top-k (ties kept), then top-p over the top-k survivors (the boundary
    token's ties kept), then min-p."""
    x = x.double()
    V = x.numel()
    e = torch.exp((x - x.max()) / temperature)
    keep = torch.ones(V, dtype=torch.bool)
    if 0 < top_k < V:
        keep &= x >= torch.sort(x, descending=True).values[top_k - 1]
    if top_p < 1:
        ek = torch.where(keep, e, torch.zeros_like(e))
        s = torch.sort(ek, descending=True).values
        n = int((s.cumsum(0) < top_p * ek.sum()).sum().clamp(max=V - 1))
        keep &= ek >= s[n]
    keep &= e >= min_p
    return keep, e


def oracle_probs(x, **filters):
    keep, e = oracle_keep(x, **filters)
    p = torch.where(keep, e, torch.zeros_like(e))
    return p / p.sum()


def peer_sample(x, temperature, top_k, top_p, generator=None):
    """The sort-based sampler as serving code writes it (temperature, top-k, top-p, then
    multinomial); the oracle of the filters' semantics for distinct logits."""
    x = x.float() / temperature
    if top_k:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        cum = sorted_x.softmax(-1).cumsum(-1)
        drop = cum - sorted_x.softmax(-1) >= top_p  # tokens after the mass reached p
        x = x.scatter(-1, order, sorted_x.masked_fill(drop, float("-inf")))
    return torch.multinomial(x.softmax(-1), 1, generator=generator).squeeze(-1)


def seeds_for(n, base=0):
    return torch.arange(base, base + n, dtype=torch.int64) * 7919 + 13


def counts_of(idx, V):
    return torch.bincount(idx.flatten(), minlength=V).double()


def chi2_p(counts, probs):
    support = probs > 0
    assert counts[~support].sum() == 0, "drew a token the filters remove"
    f_exp = probs[support] * counts.sum()
    return stats.chisquare(counts[support].numpy(), f_exp.numpy()).pvalue


FILTERS = [
    dict(temperature=0.7),
    dict(top_k=4),
    dict(top_p=0.8),
    dict(min_p=0.2),
    dict(temperature=1.5, top_k=6, top_p=0.9),
    dict(temperature=0.8, top_k=8, top_p=0.7, min_p=0.1),
    dict(temperature=2.0, top_p=0.95, min_p=0.05),
]


# ------------------------------------------------------------------- distribution
@pytest.fixture(params=["fused", "reference"])
def path(request, monkeypatch):
    """The fused CPU op, or the reference (what devices without the op run)."""
    if request.param == "reference":
        monkeypatch.setattr(sampling, "FUSED_DEVICE_TYPES", frozenset())
    return request.param


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_frequencies_match_filtered_distribution(filters, path):
    if path == "reference" and filters is not FILTERS[5]:
        pytest.skip("the reference's Philox in torch ops is slow: the combined case only")
    n = 100_000
    x = LOGITS.expand(n, -1)
    idx = gumbel_ext.sample(x, seeds=seeds_for(n), **filters)
    counts = counts_of(idx, LOGITS.numel())
    assert chi2_p(counts, oracle_probs(LOGITS, **filters)) > P_MIN
    # Power: softmax(logits), what an ignored argument would draw, is rejected; and so is
    # the right filters at a temperature 5% off (a subtler error).
    plain = torch.softmax(LOGITS.double(), -1)
    assert stats.chisquare(counts.numpy(), (plain * n).numpy()).pvalue < P_MIN
    off = dict(filters, temperature=filters.get("temperature", 1.0) * 1.05)
    assert chi2_p(counts, oracle_probs(LOGITS, **off)) < P_MIN


def test_top_p_is_taken_after_top_k(path):
    # top-p over the top-k survivors keeps fewer tokens than top-p over the whole row.
    n = 40_000
    f = dict(top_k=5, top_p=0.75)
    idx = gumbel_ext.sample(LOGITS.expand(n, -1), seeds=seeds_for(n), **f)
    counts = counts_of(idx, LOGITS.numel())
    assert chi2_p(counts, oracle_probs(LOGITS, **f)) > P_MIN
    keep_p_first, e = oracle_keep(LOGITS, top_p=0.75)
    keep_p_first &= oracle_keep(LOGITS, top_k=5)[0]
    other = torch.where(keep_p_first, e, torch.zeros_like(e))
    assert not torch.equal(other > 0, oracle_probs(LOGITS, **f) > 0)
    assert stats.chisquare(counts[other > 0].numpy(), (other[other > 0] / other.sum() * n).numpy()).pvalue < P_MIN


def test_generator_mode_frequencies():
    n = 100_000
    f = dict(temperature=0.9, top_k=6, top_p=0.85)
    idx = gumbel_ext.sample(LOGITS.expand(n, -1), generator=torch.Generator().manual_seed(3), **f)
    assert chi2_p(counts_of(idx, LOGITS.numel()), oracle_probs(LOGITS, **f)) > P_MIN


def test_peer_oracle_agrees_with_our_oracle():
    # The serving-style sampler and the oracle describe the same distribution.
    n = 100_000
    g = torch.Generator().manual_seed(5)
    idx = peer_sample(LOGITS.expand(n, -1), 0.8, 6, 0.85, generator=g)
    assert chi2_p(counts_of(idx, LOGITS.numel()), oracle_probs(LOGITS, temperature=0.8, top_k=6, top_p=0.85)) > P_MIN


def test_num_samples_without_replacement_from_filtered_set():
    n = 20_000
    f = dict(top_k=5)
    idx = gumbel_ext.sample(LOGITS.expand(n, -1), num_samples=3, seeds=seeds_for(n), **f)
    assert idx.shape == (n, 3)
    assert (idx.sort(-1).values.diff(dim=-1) > 0).all()
    keep, _ = oracle_keep(LOGITS, **f)
    assert keep[idx].all()
    # The first draw is a plain sample of the filtered distribution.
    assert chi2_p(counts_of(idx[:, 0], LOGITS.numel()), oracle_probs(LOGITS, **f)) > P_MIN


# ------------------------------------------------------------------- fused vs reference
def ref_sample(x, ns=1, dim=-1, **kw):
    args = _op_args(x, ns, dim, **kw)
    return reference.sample_filtered(*args)


def _op_args(x, ns, dim, temperature=1.0, top_k=None, top_p=None, min_p=None, seeds=None, offsets=None,
             return_logprobs=True):
    dim = dim % x.dim()
    t, tr = sampling._scalar_or_rows("temperature", temperature, 1.0, x, dim, False, lambda t: t >= 0, "")
    k, kr = sampling._scalar_or_rows("top_k", top_k, 0, x, dim, True, lambda t: t >= 0, "")
    p, pr = sampling._scalar_or_rows("top_p", top_p, 1.0, x, dim, False, lambda t: t > 0, "")
    m, mr = sampling._scalar_or_rows("min_p", min_p, 0.0, x, dim, False, lambda t: t >= 0, "")
    s = sampling._rows_tensor("seeds", seeds, x, dim, torch.int64, True)
    o = torch.zeros_like(s) if offsets is None else sampling._rows_tensor("offsets", offsets, x, dim, torch.int64, True)
    return (x, ns, dim, t, tr, k, kr, p, pr, m, mr, s, o, return_logprobs)


CASES = [
    dict(),
    dict(temperature=0.5),
    dict(top_k=50),
    dict(top_p=0.9),
    dict(min_p=0.05),
    dict(top_k=50, top_p=0.9),
    dict(temperature=0.7, top_k=40, top_p=0.8, min_p=0.02),
    dict(temperature=1.3, top_p=0.5, min_p=0.01),
]


@pytest.mark.parametrize("case", CASES, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()) or "plain")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_fused_equals_reference(case, dtype):
    if dtype != torch.float32 and case not in (CASES[0], CASES[6], CASES[7]):
        pytest.skip("every case in float32; the other dtypes on the plain and combined ones")
    x = (torch.randn(17, 2001) * 3).to(dtype)
    seeds, offsets = seeds_for(17), torch.arange(17) * 4096
    idx, lp = gumbel_ext.sample(x, seeds=seeds, offsets=offsets, return_logprobs=True, **case)
    r_idx, r_lp = ref_sample(x, seeds=seeds, offsets=offsets, **case)
    assert torch.equal(idx, r_idx)
    torch.testing.assert_close(lp, r_lp, atol=1e-5, rtol=0)


def test_fused_equals_reference_num_samples_and_dim():
    x = torch.randn(3, 500, 4)
    seeds = seeds_for(12).view(3, 4)
    kw = dict(temperature=0.9, top_k=30, top_p=0.9, seeds=seeds)
    idx, lp = gumbel_ext.sample(x, 5, dim=1, return_logprobs=True, **kw)
    r_idx, r_lp = ref_sample(x, 5, 1, **kw)
    assert idx.shape == (3, 5, 4) and torch.equal(idx, r_idx)
    torch.testing.assert_close(lp, r_lp, atol=1e-5, rtol=0)
    # And without top-k (the whole-row path) for num_samples > 1.
    kw = dict(temperature=1.1, top_p=0.95, min_p=0.01, seeds=seeds)
    idx, lp = gumbel_ext.sample(x, 4, dim=1, return_logprobs=True, **kw)
    r_idx, r_lp = ref_sample(x, 4, 1, **kw)
    assert torch.equal(idx, r_idx)
    torch.testing.assert_close(lp, r_lp, atol=1e-5, rtol=0)


# ------------------------------------------------------------------- batch invariance
def test_permuted_rows_permute_the_draws():
    x = torch.randn(64, 2000)
    s, o = seeds_for(64), torch.randint(0, 1 << 20, (64,)) * 4
    kw = dict(temperature=0.8, top_k=20, top_p=0.9, return_logprobs=True)
    idx, lp = gumbel_ext.sample(x, seeds=s, offsets=o, **kw)
    perm = torch.randperm(64)
    p_idx, p_lp = gumbel_ext.sample(x[perm], seeds=s[perm], offsets=o[perm], **kw)
    assert torch.equal(p_idx, idx[perm]) and torch.equal(p_lp, lp[perm])


@pytest.mark.parametrize("filters", [dict(), dict(top_k=10), dict(top_p=0.9), dict(min_p=0.1, temperature=0.5)])
def test_row_alone_equals_row_in_any_batch(filters):
    row = torch.randn(1, 1500)
    seed, offset = torch.tensor([123456789]), torch.tensor([8192])
    alone = gumbel_ext.sample(row, seeds=seed, offsets=offset, **filters)
    for batch in (1, 7, 64):
        x = torch.randn(batch, 1500)
        s, o = seeds_for(batch), torch.zeros(batch, dtype=torch.int64)
        at = batch // 2
        x[at], s[at], o[at] = row[0], seed[0], offset[0]
        assert gumbel_ext.sample(x, seeds=s, offsets=o, **filters)[at] == alone[0]


@pytest.mark.parametrize("filters", [dict(), dict(temperature=0.7), dict(top_k=50), dict(top_p=0.9),
                                     dict(min_p=0.05), dict(top_k=50, top_p=0.9, temperature=0.8),
                                     dict(top_p=0.6, min_p=0.01, temperature=1.3)], ids=str)
@pytest.mark.parametrize("num_samples", [1, 3])
def test_rows_split_across_threads_draw_the_same(filters, num_samples):
    """Fewer rows than threads: a row is cut across the threads (Note [One row across
    threads] in csrc/cpu/sample_kernels.h). Indices and log-probs equal the one-thread
    ones bit for bit, for 1 and 3 rows (decode shapes) and ties (integer logits)."""
    g = torch.Generator().manual_seed(1)
    cases = [torch.randn(1, 128256, generator=g) * 3, torch.randn(3, 40000, generator=g) * 2,
             torch.randint(-4, 4, (2, 70000), generator=g).float(),
             (torch.randn(1, 50000, generator=g) * 2).to(torch.bfloat16)]
    before = torch.get_num_threads()
    try:
        for x in cases:
            kw = dict(seeds=seeds_for(x.shape[0]), return_logprobs=True, num_samples=num_samples, **filters)
            torch.set_num_threads(1)
            one = gumbel_ext.sample(x, **kw)
            for threads in (3, 8):
                torch.set_num_threads(threads)
                many = gumbel_ext.sample(x, **kw)
                assert torch.equal(many[0], one[0]) and torch.equal(many[1], one[1]), (threads, x.shape)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("filters", [dict(top_p=0.9), dict(min_p=0.01), dict(top_p=0.8, min_p=0.001)], ids=str)
def test_split_rows_equal_the_reference(filters):
    """A split row (fewer rows than threads) against the reference; 21480 columns end on
    the last chunk of a 16-chunk block, where the float partial sums are flushed (a bug
    once dropped that block from the top-p total)."""
    x = torch.randn(2, 21480, generator=torch.Generator().manual_seed(2)) * 2
    kw = dict(temperature=0.9, seeds=seeds_for(2), **filters)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        idx, lp = gumbel_ext.sample(x, return_logprobs=True, **kw)
    finally:
        torch.set_num_threads(before)
    r_idx, r_lp = ref_sample(x, **kw)
    assert torch.equal(idx, r_idx)
    torch.testing.assert_close(lp, r_lp, atol=1e-5, rtol=0)


def test_seeds_differ_per_row():
    # The FlashInfer bug: only seeds[0] was read. Distinct seeds give distinct draws.
    x = torch.zeros(64, 1000)
    idx = gumbel_ext.sample(x, seeds=seeds_for(64), top_p=0.99)
    assert idx.unique().numel() > 50
    same = gumbel_ext.sample(x, seeds=torch.full((64,), 5), top_p=0.99)
    assert same.unique().numel() == 1


def test_offsets_advance_the_noise():
    x = torch.zeros(1, 1000)
    s = torch.tensor([42])
    draws = {int(gumbel_ext.sample(x, seeds=s, offsets=torch.tensor([step * 1000]), temperature=1.0, top_k=0,
                                   top_p=0.999)) for step in range(50)}
    assert len(draws) > 40


def test_generator_mode_uses_todays_noise():
    # seeds=None: row r keyed by one generator seed with counter row r -- the noise of
    # gumbel_softmax(hard=True) / sample() -- so with no filters at T=1 the draws agree
    # with today's sample for the same generator state.
    x = torch.randn(50, 700)
    old = gumbel_ext.sample(x, generator=torch.Generator().manual_seed(9))
    new = gumbel_ext.sample(x, generator=torch.Generator().manual_seed(9), top_k=0, top_p=1.0)
    assert torch.equal(old, new)


# ------------------------------------------------------------------- greedy, logprobs
def test_greedy_is_argmax_exactly_and_rows_mix():
    x = torch.randn(32, 999)
    x[3, 10] = x[3, 500] = x[3].max() + 1  # a tie: lowest index
    idx, lp = gumbel_ext.sample(x, temperature=0.0, top_k=5, top_p=0.5, seeds=seeds_for(32), return_logprobs=True)
    assert torch.equal(idx, x.argmax(-1)) and idx[3] == 10
    torch.testing.assert_close(lp, torch.log_softmax(x.double(), -1).gather(-1, idx[:, None]).squeeze(-1).float(),
                               atol=1e-5, rtol=0)
    T = torch.where(torch.arange(32) % 2 == 0, 0.0, 1.0)
    mixed = gumbel_ext.sample(x, temperature=T, seeds=seeds_for(32))
    assert torch.equal(mixed[::2], x.argmax(-1)[::2])
    assert not torch.equal(mixed[1::2], x.argmax(-1)[1::2])
    top3 = gumbel_ext.sample(x, 3, temperature=0.0)
    assert torch.equal(top3[:, 0], x.argmax(-1)) and torch.equal(top3, torch.topk(x, 3).indices) or top3[3, 1] == 500


@pytest.mark.parametrize("filters", FILTERS[1:] + [dict(temperature=0.3)],
                         ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_logprobs_equal_log_softmax_of_processed_logits(filters):
    x = torch.randn(16, 4000) * 2
    idx, lp = gumbel_ext.sample(x, seeds=seeds_for(16), return_logprobs=True, **filters)
    T = filters.get("temperature", 1.0)
    for r in range(16):
        keep, _ = oracle_keep(x[r], **filters)
        z = torch.where(keep, x[r].double() / T, torch.tensor(float("-inf"), dtype=torch.float64))
        assert keep[idx[r]]
        assert abs(float(lp[r]) - float(torch.log_softmax(z, 0)[idx[r]])) <= 1e-5


# ------------------------------------------------------------------- edge cases
def test_filters_that_keep_everything_change_nothing():
    x = torch.randn(20, 300)
    s = seeds_for(20)
    base = gumbel_ext.sample(x, seeds=s)
    for f in (dict(top_k=300), dict(top_k=10_000), dict(top_p=1.0), dict(min_p=0.0), dict(top_k=0)):
        assert torch.equal(gumbel_ext.sample(x, seeds=s, **f), base), f


def test_single_survivor(path):
    x = torch.randn(10, 200)
    am = x.argmax(-1)
    s = seeds_for(10)
    for f in (dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0)):
        idx, lp = gumbel_ext.sample(x, seeds=s, return_logprobs=True, **f)
        assert torch.equal(idx, am), f
        assert torch.equal(lp, torch.zeros(10)), f


def test_inf_masks_are_never_drawn(path):
    x = torch.randn(200, 64)
    x[:, ::2] = float("-inf")
    x[:, 1] = float("-inf")
    for f in (dict(top_k=5), dict(top_k=60), dict(top_p=0.95), dict(min_p=0.0, temperature=3.0)):
        idx = gumbel_ext.sample(x, seeds=seeds_for(200), **f)
        assert torch.isfinite(x.gather(-1, idx[:, None])).all(), f


def test_boundary_ties_are_kept(path):
    # top-k=2 on [3, 2, 2, 2, 0]: the three tied 2s all survive; top-p's boundary too.
    x = torch.tensor([3.0, 2.0, 2.0, 2.0, 0.0, -1.0])
    n = 20_000
    for f in (dict(top_k=2), dict(top_p=0.5)):
        idx = gumbel_ext.sample(x.expand(n, -1), seeds=seeds_for(n), **f)
        counts = counts_of(idx, 6)
        assert (counts[1:4] > 0).all() and counts[4:].sum() == 0, f
        assert chi2_p(counts, oracle_probs(x, **f)) > P_MIN


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_logits(dtype):
    x = (LOGITS * 2).to(dtype)
    n = 50_000
    f = dict(temperature=0.8, top_k=6, top_p=0.9)
    idx, lp = gumbel_ext.sample(x.expand(n, -1), seeds=seeds_for(n), return_logprobs=True, **f)
    assert lp.dtype == torch.float32
    assert chi2_p(counts_of(idx, LOGITS.numel()), oracle_probs(x.double(), **f)) > P_MIN


def test_per_row_filter_tensors():
    x = torch.randn(4, 100)
    k = torch.tensor([1, 2, 0, 100])
    p = torch.tensor([1.0, 0.5, 0.9, 1.0])
    s = seeds_for(4)
    idx = gumbel_ext.sample(x, top_k=k, top_p=p, seeds=s)
    for r in range(4):
        one = gumbel_ext.sample(x[r:r + 1], top_k=int(k[r]), top_p=float(p[r]), seeds=s[r:r + 1])
        assert idx[r] == one[0]
    # Broadcasting: a [1] tensor is one value for every row.
    assert torch.equal(gumbel_ext.sample(x, top_k=torch.tensor([3]), seeds=s), gumbel_ext.sample(x, top_k=3, seeds=s))


def test_empty_and_zero_dim():
    assert gumbel_ext.sample(torch.randn(0, 5), top_k=2).shape == (0,)
    idx, lp = gumbel_ext.sample(torch.randn(3, 0, 5), dim=0, top_p=0.5, return_logprobs=True)
    assert idx.shape == (0, 5) and lp.shape == (0, 5)


def test_nan_row_raises():
    x = torch.randn(3, 10)
    x[1, 4] = float("nan")
    with pytest.raises(ValueError, match="row 1"):
        gumbel_ext.sample(x, top_k=3)


def test_too_few_survivors_for_num_samples_raises():
    with pytest.raises(ValueError, match="num_samples"):
        gumbel_ext.sample(torch.randn(2, 10), 3, top_k=2, seeds=seeds_for(2))


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(temperature=-0.1), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(temperature="hot"), TypeError, "temperature"),
        (dict(temperature=torch.tensor([1.0, -1.0, 1.0])), ValueError, "temperature"),
        (dict(top_k=-1), ValueError, "top_k"),
        (dict(top_k=2.5), TypeError, "top_k"),
        (dict(top_k=torch.tensor([1.0, 2.0, 3.0])), TypeError, "top_k"),
        (dict(top_p=0.0), ValueError, "top_p"),
        (dict(top_p=1.5), ValueError, "top_p"),
        (dict(top_p=torch.tensor([0.5, 0.0, 1.0])), ValueError, "top_p"),
        (dict(min_p=-0.1), ValueError, "min_p"),
        (dict(min_p=1.1), ValueError, "min_p"),
        (dict(top_p=torch.ones(4)), ValueError, "top_p"),
        (dict(seeds=torch.ones(3, dtype=torch.int32)), TypeError, "seeds"),
        (dict(seeds=torch.ones(5, dtype=torch.int64)), ValueError, "seeds"),
        (dict(seeds=[1, 2, 3]), TypeError, "seeds"),
        (dict(offsets=torch.zeros(3, dtype=torch.int64)), ValueError, "offsets"),
        (dict(seeds=torch.ones(3, dtype=torch.int64), offsets=torch.full((3,), -4)), ValueError, "offsets"),
        (dict(seeds=torch.ones(3, dtype=torch.int64), generator=torch.Generator()), ValueError, "generator"),
        (dict(return_logprobs=1), TypeError, "return_logprobs"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        gumbel_ext.sample(torch.randn(3, 10), **kwargs)


def test_cpu_kernel_checks_per_row_values_itself():
    # The op checks the values it reads (the wrapper's checks are skipped when compiling).
    x = torch.randn(2, 10)
    with pytest.raises(ValueError, match="top_p"):
        torch.ops.gumbel_ext.sample_filtered(x, 1, 1, 1.0, None, 0, None, 1.0, torch.tensor([0.5, 2.0]).double(),
                                             0.0, None, None, None, False)


# ------------------------------------------------------------------- gumbel_softmax
def test_gumbel_softmax_seeds_noise_forward_and_backward():
    x = torch.randn(6, 40, dtype=torch.float64, requires_grad=True)
    s, o = seeds_for(6), torch.arange(6) * 64
    noise = sampling.seeded_noise(x, 1, s, o)
    y = gumbel_ext.gumbel_softmax(x, tau=0.5, seeds=s, offsets=o)
    expected = torch.softmax((x + noise.double()) / 0.5, -1)
    torch.testing.assert_close(y, expected)
    g = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, g)
    (grad_expected,) = torch.autograd.grad(expected, x, g)
    torch.testing.assert_close(grad, grad_expected)
    hard = gumbel_ext.gumbel_softmax(x, hard=True, seeds=s, offsets=o)
    assert torch.equal(hard.argmax(-1), (x + noise.double()).argmax(-1))
    # The noise is the sampler's: sample's keys are (x - max) + g at T = 1.
    assert torch.equal(hard.argmax(-1), gumbel_ext.sample(x.detach(), seeds=s, offsets=o, top_p=1.0))
    # Batch invariance: a row alone.
    alone = gumbel_ext.gumbel_softmax(x[2:3], tau=0.5, seeds=s[2:3], offsets=o[2:3])
    torch.testing.assert_close(alone[0], y[2])


def test_gumbel_softmax_seed_errors():
    x = torch.randn(3, 5)
    with pytest.raises(ValueError, match="offsets"):
        gumbel_ext.gumbel_softmax(x, offsets=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="seeds"):
        gumbel_ext.gumbel_softmax(x, seeds=torch.zeros(3))
    with pytest.raises(ValueError, match="generator"):
        gumbel_ext.gumbel_softmax(x, seeds=torch.zeros(3, dtype=torch.int64), generator=torch.Generator())


# ------------------------------------------------------------------- torch.compile
def test_opcheck():
    x = torch.randn(5, 300)
    s = seeds_for(5)
    for case in (dict(top_k=7, top_p=0.9, temperature=0.8), dict(min_p=0.1), dict(temperature=torch.rand(5))):
        args = _op_args(x, 2, -1, seeds=s, **case)
        torch.library.opcheck(torch.ops.gumbel_ext.sample_filtered.default, args,
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_compile_fullgraph():
    x = torch.randn(8, 500)
    s = seeds_for(8)

    def f(x, s, T):
        return gumbel_ext.sample(x, temperature=T, top_k=20, top_p=0.9, seeds=s, return_logprobs=True)

    T = torch.full((8,), 0.7)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    idx, lp = compiled(x, s, T)
    e_idx, e_lp = f(x, s, T)
    assert torch.equal(idx, e_idx) and torch.equal(lp, e_lp)


# ------------------------------------------------------------------- benchmark smoke
def test_sampler_benchmark_quick(tmp_path):
    from benchmarks import sampler as bench

    bench.main(["--quick", "--scale", "1", "--out", str(tmp_path)])
    text = (tmp_path / "cpu-sampler-quick.md").read_text()
    assert "peer" in text and "top_k=50 + top_p=0.9" in text
