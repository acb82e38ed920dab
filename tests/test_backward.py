"""Backward: gradcheck / gradgradcheck in float64 with a pinned generator, agreement with
the reference's autograd on the same noise, straight-through, tau gradients."""

import pytest
import torch

import gumbel_ext
from helpers import DTYPES, TOL, fused, gen, ref


def _pinned(hard, tau=0.6, dim=-1, device="cpu"):
    # Every call draws from a fresh generator with one seed: the noise is fixed, so the
    # function of (logits, tau) is deterministic, as gradcheck needs.
    return lambda x, t=tau: gumbel_ext.gumbel_softmax(x, tau=t, hard=hard, dim=dim, generator=gen(11, device))


# hard=True is piecewise constant (its numerical gradient is 0): its straight-through
# gradient is checked against the soft one below instead.
@pytest.mark.parametrize("shape,dim", [((4, 7), -1), ((3, 5, 4), 1), ((9,), 0), ((), -1)])
def test_gradcheck(shape, dim, device):
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    torch.autograd.gradcheck(_pinned(False, dim=dim, device=device), (x,))


@pytest.mark.parametrize("shape,dim", [((4, 7), -1), ((3, 5, 4), 1)])
def test_gradgradcheck_soft(shape, dim, device):
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    torch.autograd.gradgradcheck(_pinned(False, dim=dim, device=device), (x,))


@pytest.mark.parametrize("tau_shape", [(), (1, 1, 1), (4, 1, 1), (1, 1, 6), (4, 1, 6), (6,)])
def test_gradcheck_tensor_tau(tau_shape, device):
    x = torch.randn(4, 5, 6, dtype=torch.float64, device=device, requires_grad=True)
    tau = (torch.rand(tau_shape, dtype=torch.float64, device=device) + 0.5).requires_grad_()
    f = lambda x, t: gumbel_ext.gumbel_softmax(x, tau=t, dim=1, generator=gen(2, device))
    torch.autograd.gradcheck(f, (x, tau))


def test_gradgradcheck_tensor_tau(device):
    x = torch.randn(3, 6, dtype=torch.float64, device=device, requires_grad=True)
    tau = torch.tensor([[0.7], [1.3], [2.0]], dtype=torch.float64, device=device, requires_grad=True)
    f = lambda x, t: gumbel_ext.gumbel_softmax(x, tau=t, generator=gen(4, device))
    torch.autograd.gradgradcheck(f, (x, tau))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("shape,dim", [((64, 100), -1), ((8, 33, 6), 1), ((3, 2000), -1)])
def test_matches_reference_autograd(dtype, hard, shape, dim, device):
    """The fused backward op vs autograd through reference.py, same noise, with a tau tensor."""
    x = torch.randn(shape, device=device).to(dtype)
    grad_out = torch.randn(shape, device=device).to(dtype)
    keep = [1 if i == dim % len(shape) else s for i, s in enumerate(shape)]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    tau_rows = (torch.rand(keep, device=device, dtype=acc) + 0.5).contiguous()

    x_ref = x.clone().requires_grad_()
    tau_ref = tau_rows.clone().requires_grad_()
    out, state = fused(x, 1.0, False, dim, tau_rows=tau_rows)
    y_ref = ref(x_ref, state, tau_ref, hard, dim)
    gx_ref, gt_ref = torch.autograd.grad(y_ref, (x_ref, tau_ref), grad_out)

    saved = x if hard else out
    gx, gt = torch.ops.gumbel_ext.gumbel_softmax_backward(grad_out, saved, state, 1.0, tau_rows, hard, dim, True)
    tol = TOL[dtype]
    torch.testing.assert_close(gx, gx_ref, atol=tol["atol"] * 10, rtol=tol["rtol"] * 10)
    assert gt.shape == tau_rows.shape
    scale = gt_ref.abs().max().item() + 1e-3
    torch.testing.assert_close(gt, gt_ref, atol=(2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4) * scale,
                               rtol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_straight_through_equals_soft_gradient(dtype, device):
    x = torch.randn(50, 30, device=device).to(dtype)
    grad_out = torch.randn(50, 30, device=device).to(dtype)
    grads = []
    for hard in (False, True):
        xi = x.clone().requires_grad_()
        y = gumbel_ext.gumbel_softmax(xi, tau=0.4, hard=hard, generator=gen(9, device))
        (y * grad_out).sum().backward()
        grads.append(xi.grad)
    assert torch.equal(grads[0], grads[1])


def test_hard_mode_saves_nothing_logits_sized(device):
    x = torch.randn(256, 1000, device=device, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        gumbel_ext.gumbel_softmax(x, hard=True)
    new_bytes = sum(t.numel() * t.element_size() for t in saved if t.data_ptr() != x.data_ptr())
    assert new_bytes <= 16  # the (seed, offset) pair only; the logits are the input itself


def test_zero_dim_backward(device):
    x = torch.tensor(1.5, device=device, requires_grad=True)
    for hard in (False, True):
        x.grad = None
        gumbel_ext.gumbel_softmax(x, hard=hard).backward()
        assert x.grad.item() == 0.0
