"""The token sampler on CUDA (tests/test_sampler.py's checks, for when a GPU is there).
sample(..., top_k=..., seeds=...) runs the fused kernel of
csrc/cuda/sample_filtered_kernels.cuh (tests/test_sampler_emulated.py runs the same code
on the CPU through the SIMT emulator). These tests pin what it promises: the CPU kernel's
draws for the same seeds (torch.equal on indices: its exp is the CPU AVX copies', Note
[CUDA sampler exp]), batch invariance, no host synchronization (CUDA-graph safe), the
filtered distribution, torch.compile. Without a GPU every test here skips."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

import gumbel_ext
from test_sampler import LOGITS, P_MIN, chi2_p, counts_of, oracle_probs, seeds_for

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

CASES = [
    dict(temperature=0.7),
    dict(top_k=50, top_p=0.9),
    dict(temperature=0.8, top_k=40, top_p=0.8, min_p=0.02),
    dict(temperature=1.2, top_p=0.9, min_p=0.01),
]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_equals_cpu_kernel(case, dtype):
    x = (torch.randn(64, 32000) * 3).to(dtype)
    s, o = seeds_for(64), torch.arange(64) * 32000
    idx, lp = gumbel_ext.sample(x, seeds=s, offsets=o, return_logprobs=True, **case)
    c_idx, c_lp = gumbel_ext.sample(x.cuda(), seeds=s.cuda(), offsets=o.cuda(), return_logprobs=True, **case)
    # Same noise, same exp bits (the CPU's AVX copies): the same kept sets and draws. Only
    # top-p's mass sums are rounded differently (Note [Radix select]), which random
    # logits never hit.
    assert torch.equal(c_idx.cpu(), idx)
    torch.testing.assert_close(c_lp.cpu(), lp, atol=1e-5, rtol=0)


def test_cuda_batch_invariance():
    x = torch.randn(64, 5000, device="cuda")
    s = seeds_for(64).cuda()
    kw = dict(temperature=0.8, top_k=20, top_p=0.9)
    idx = gumbel_ext.sample(x, seeds=s, **kw)
    perm = torch.randperm(64, device="cuda")
    assert torch.equal(gumbel_ext.sample(x[perm], seeds=s[perm], **kw), idx[perm])
    for r in (0, 17, 63):
        assert gumbel_ext.sample(x[r:r + 1], seeds=s[r:r + 1], **kw)[0] == idx[r]


def test_cuda_no_host_sync_and_graph_capture():
    x = torch.randn(16, 4000, device="cuda")
    s = seeds_for(16).cuda()
    T = torch.full((16,), 0.8, device="cuda")
    kw = dict(temperature=T, top_k=30, top_p=0.9, min_p=0.01, seeds=s, return_logprobs=True)
    eager = gumbel_ext.sample(x, **kw)  # warm-up outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gumbel_ext.sample(x, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gumbel_ext.sample(x, **kw)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out[0], eager[0]) and torch.equal(out[1], eager[1])


def test_cuda_filtered_frequencies():
    n = 100_000
    f = dict(temperature=0.8, top_k=8, top_p=0.7, min_p=0.1)
    idx = gumbel_ext.sample(LOGITS.cuda().expand(n, -1), seeds=seeds_for(n).cuda(), **f)
    counts = counts_of(idx.cpu(), LOGITS.numel())
    assert chi2_p(counts, oracle_probs(LOGITS, **f)) > P_MIN
    plain = torch.softmax(LOGITS.double(), -1)
    assert stats.chisquare(counts.numpy(), (plain * n).numpy()).pvalue < P_MIN


def test_cuda_compile_fullgraph():
    x = torch.randn(8, 1000, device="cuda")
    s = seeds_for(8).cuda()

    def f(x, s):
        return gumbel_ext.sample(x, temperature=0.7, top_k=20, top_p=0.9, seeds=s, return_logprobs=True)

    got = torch.compile(f, fullgraph=True)(x, s)
    want = f(x, s)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=0)


def test_cuda_gumbel_softmax_seeds_match_cpu():
    x = torch.randn(6, 300, dtype=torch.float64)
    s, o = seeds_for(6), torch.arange(6) * 300
    y = gumbel_ext.gumbel_softmax(x, tau=0.5, seeds=s, offsets=o)
    y_cuda = gumbel_ext.gumbel_softmax(x.cuda(), tau=0.5, seeds=s.cuda(), offsets=o.cuda())
    torch.testing.assert_close(y_cuda.cpu(), y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("num_samples", [1, 4])
def test_cuda_equals_cpu_kernel_mixed_rows(dtype, num_samples):
    """Per-row values with greedy rows mixed in, -inf masks, integer logits (ties at every
    boundary), 1x128256 and 4x128256 decode shapes."""
    g = torch.Generator().manual_seed(0)
    for x in (torch.randn(8, 128256, generator=g) * 2, torch.randint(-3, 4, (8, 4099), generator=g).float()):
        x[1, ::3] = -float("inf")
        x = x.to(dtype)
        rows = x.shape[0]
        T = torch.tensor([0.0, 0.7, 1.0, 0.0, 1.3, 0.9, 0.5, 1.1], dtype=torch.float64)
        k = torch.tensor([0, 50, 20, 5, 0, 1000, 40, 8])
        p = torch.tensor([1.0, 0.9, 0.95, 0.5, 0.99, 0.8, 1.0, 0.97], dtype=torch.float64)
        m = torch.tensor([0.0, 0.0, 0.01, 0.0, 0.001, 0.0, 0.02, 0.0], dtype=torch.float64)
        s, o = seeds_for(rows), torch.arange(rows) * 131072
        kw = dict(temperature=T, top_k=k, top_p=p, min_p=m, return_logprobs=True, num_samples=num_samples)
        idx, lp = gumbel_ext.sample(x, seeds=s, offsets=o, **kw)
        ckw = {key: (v.cuda() if isinstance(v, torch.Tensor) else v) for key, v in kw.items()}
        c_idx, c_lp = gumbel_ext.sample(x.cuda(), seeds=s.cuda(), offsets=o.cuda(), **ckw)
        assert torch.equal(c_idx.cpu(), idx)
        torch.testing.assert_close(c_lp.cpu(), lp, atol=1e-5, rtol=0)
        for r in (1, 4):  # the decode shapes: a row alone, four rows
            c1 = gumbel_ext.sample(x[:r].cuda(), seeds=s[:r].cuda(), offsets=o[:r].cuda(),
                                   **{key: (v[:r] if isinstance(v, torch.Tensor) else v) for key, v in ckw.items()})
            assert torch.equal(c1[0].cpu(), idx[:r])


def test_cuda_generator_rows_advance():
    """seeds=None: the generator's Philox offset moves on, so two calls differ; the same
    generator state gives the same draws."""
    x = torch.zeros(256, 1000, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(3)
    a = gumbel_ext.sample(x, top_k=500, generator=g)
    b = gumbel_ext.sample(x, top_k=500, generator=g)
    assert not torch.equal(a, b)
    g.manual_seed(3)
    assert torch.equal(gumbel_ext.sample(x, top_k=500, generator=g), a)
