"""The sampler draws the right distribution: chi-square on categorical frequencies,
Kolmogorov-Smirnov on the noise and on soft samples, with fixed seeds. Each test also
shows it has the power to reject a broken sampler."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

import gumbel_ext
from helpers import fused, gen

P_MIN = 1e-4
LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, 1.5, 0.2, -4.0])


def _chi2_p(counts, probs):
    counts = counts.double()
    probs = probs.double() / probs.double().sum()
    return stats.chisquare(counts.numpy(), (probs * counts.sum()).numpy()).pvalue


@pytest.mark.parametrize("tau", [0.1, 1.0, 5.0])
def test_hard_frequencies_match_softmax(tau, device):
    n = 200_000
    x = LOGITS.to(device).expand(n, -1)
    y = gumbel_ext.gumbel_softmax(x, tau=tau, hard=True, generator=gen(1, device))
    counts = y.sum(0).cpu()
    probs = torch.softmax(LOGITS, -1)
    assert _chi2_p(counts, probs) > P_MIN
    # Power: the same counts against slightly wrong probabilities are rejected.
    wrong = torch.softmax(LOGITS * 1.05, -1)
    assert _chi2_p(counts, wrong) < P_MIN


def test_sample_frequencies_match_softmax(device):
    n = 200_000
    idx = gumbel_ext.sample(LOGITS.to(device).expand(n, -1), generator=gen(2, device))
    counts = torch.bincount(idx.cpu(), minlength=10)
    assert _chi2_p(counts, torch.softmax(LOGITS, -1)) > P_MIN


def test_top2_pairs_match_sequential_sampling(device):
    logits = torch.tensor([1.0, 0.0, -0.5, 0.7, -1.0])
    p = torch.softmax(logits, -1)
    n = 200_000
    idx = gumbel_ext.sample(logits.to(device).expand(n, -1), num_samples=2, generator=gen(3, device)).cpu()
    assert (idx[:, 0] != idx[:, 1]).all()
    counts = torch.bincount(idx[:, 0] * 5 + idx[:, 1], minlength=25).double()
    # P(first=i, second=j) = p_i p_j / (1 - p_i), i != j: sampling without replacement.
    expected = (p[:, None] * p[None, :] / (1 - p[:, None])).flatten()
    off_diag = torch.tensor([i != j for i in range(5) for j in range(5)])
    assert _chi2_p(counts[off_diag], expected[off_diag]) > P_MIN


def test_noise_is_gumbel(device):
    x = torch.zeros(200, 1000, device=device)
    _, state = fused(x, generator=gen(4, device))
    g = torch.ops.gumbel_ext.gumbel_noise(x, -1, state).flatten().double().cpu().numpy()
    cdf = lambda v: np.exp(-np.exp(-v))
    assert stats.kstest(g, cdf).pvalue > P_MIN
    assert stats.kstest(g + 0.02, cdf).pvalue < P_MIN  # power: a shifted noise fails


def test_noise_rows_and_columns_are_independent(device):
    # Consecutive columns (same Philox block) and consecutive rows (subsequences) are
    # uncorrelated.
    x = torch.zeros(400, 512, device=device)
    _, state = fused(x, generator=gen(5, device))
    g = torch.ops.gumbel_ext.gumbel_noise(x, -1, state).double().cpu()
    for a, b in [(g[:, :-1], g[:, 1:]), (g[:-1], g[1:]), (g[:, 0::4], g[:, 3::4])]:
        r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
        assert abs(r) < 5 / math.sqrt(a.numel())


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_soft_samples_match_torch_distribution(tau, device):
    # Two-sample KS of one coordinate of the soft sample: ours vs F.gumbel_softmax.
    n = 20_000
    x = LOGITS[:5].to(device).expand(n, -1)
    ours = gumbel_ext.gumbel_softmax(x, tau=tau, generator=gen(6, device))[:, 0].cpu().numpy()
    torch.manual_seed(7)
    theirs = F.gumbel_softmax(x, tau=tau)[:, 0].cpu().numpy()
    assert stats.ks_2samp(ours, theirs).pvalue > P_MIN
    other = F.gumbel_softmax(x, tau=tau * 1.2)[:, 0].cpu().numpy()
    assert stats.ks_2samp(ours, other).pvalue < P_MIN  # power: another tau is told apart
