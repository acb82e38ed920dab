"""The nn.Module, patch_torch, and sample()'s contract with hard=True."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gumbel_ext
from helpers import DTYPES, gen


def test_module_matches_functional(device):
    layer = gumbel_ext.GumbelSoftmax(tau=0.5, hard=True, dim=0)
    x = torch.randn(7, 3, device=device)
    assert torch.equal(layer(x, generator=gen(1, device)),
                       gumbel_ext.gumbel_softmax(x, 0.5, True, dim=0, generator=gen(1, device)))
    assert repr(layer) == "GumbelSoftmax(tau=0.5, hard=True, dim=0)"


def test_module_learnable_tau(device):
    layer = gumbel_ext.GumbelSoftmax(tau=nn.Parameter(torch.tensor(2.0, device=device)))
    assert [n for n, _ in layer.named_parameters()] == ["tau"]
    assert "tau=2 (learnable)" in repr(layer)
    x = torch.randn(4, 6, device=device)
    (layer(x) * torch.arange(6.0, device=device)).sum().backward()
    assert layer.tau.grad is not None and layer.tau.grad.item() != 0
    per_row = gumbel_ext.GumbelSoftmax(tau=nn.Parameter(torch.ones(4, 1, device=device)))
    assert "learnable tensor of shape (4, 1)" in repr(per_row)


def test_patch_torch_context_and_functions():
    original = F.gumbel_softmax
    with gumbel_ext.patch_torch():
        assert F.gumbel_softmax is gumbel_ext.gumbel_softmax and gumbel_ext.is_patched()
        y = F.gumbel_softmax(torch.randn(3, 4), tau=0.5, hard=True)
        assert torch.equal(y.sum(-1), torch.ones(3))
    assert F.gumbel_softmax is original
    gumbel_ext.patch_torch()
    try:
        assert F.gumbel_softmax is gumbel_ext.gumbel_softmax
    finally:
        gumbel_ext.unpatch_torch()
    assert F.gumbel_softmax is original and not gumbel_ext.is_patched()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((64, 1000), -1), ((5, 17, 3), 1), ((9,), 0), ((), 0)])
def test_sample_equals_hard_argmax(dtype, shape, dim, device):
    x = torch.randn(shape, device=device).to(dtype)
    idx = gumbel_ext.sample(x, dim=dim, generator=gen(5, device))
    hard = gumbel_ext.gumbel_softmax(x, hard=True, dim=dim, generator=gen(5, device))
    assert idx.dtype == torch.int64
    assert torch.equal(idx, hard.argmax(dim) if hard.dim() else torch.tensor(0, device=device))


@pytest.mark.parametrize("shape,dim,k", [((64, 100), -1, 5), ((5, 17, 3), 1, 4), ((4, 6), 0, 4)])
def test_sample_top_k(shape, dim, k, device):
    x = torch.randn(shape, device=device)
    idx = gumbel_ext.sample(x, num_samples=k, dim=dim, generator=gen(6, device))
    expected_shape = list(shape)
    expected_shape[dim] = k
    assert list(idx.shape) == expected_shape
    # Distinct per row, and the first equals the num_samples=1 draw with the same noise.
    moved = idx.movedim(dim, -1)
    assert (moved.sort(-1).values.diff(dim=-1) > 0).all()
    first = gumbel_ext.sample(x, dim=dim, generator=gen(6, device))
    assert torch.equal(moved[..., 0], first)
    # Matches the reference's stable descending sort of the perturbed logits.
    state = torch.ops.gumbel_ext.gumbel_softmax_forward(x, 1.0, None, True, dim, gen(6, device))[1]
    assert torch.equal(idx, gumbel_ext.reference.sample(x, k, dim, rng_state=state))


def test_sample_never_draws_masked(device):
    x = torch.randn(5000, 12, device=device)
    x[:, 1::2] = float("-inf")
    assert (gumbel_ext.sample(x) % 2 == 0).all()
    assert (gumbel_ext.sample(x, num_samples=6) % 2 == 0).all()


def test_sample_empty(device):
    assert gumbel_ext.sample(torch.randn(0, 5, device=device)).shape == (0,)
    assert gumbel_ext.sample(torch.randn(0, 5, device=device), 3).shape == (0, 3)
