"""Fitting PyTorch: opcheck on every op, torch.compile(fullgraph=True) without graph
breaks, deterministic-algorithms mode."""

import pytest
import torch

import gumbel_ext
from helpers import fused

ops = torch.ops.gumbel_ext


def _forward_samples(device):
    state = torch.tensor([1234, 8], dtype=torch.int64, device=device)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        x = torch.randn(5, 7, device=device).to(dtype)
        for hard in (False, True):
            yield (x, 0.7, None, hard, -1, None, state)
            yield (x, 1.0, torch.rand(5, 1, device=device, dtype=acc) + 0.5, hard, 1 - 2, None, state)
        yield (torch.randn(3, 4, 5, device=device).to(dtype), 1.5, None, False, 1, None, state)
        yield (torch.randn((), device=device).to(dtype), 1.0, None, True, 0, None, state)
        yield (torch.randn(0, 4, device=device).to(dtype), 1.0, None, False, -1, None, state)


def test_opcheck_forward(device):
    for args in _forward_samples(device):
        torch.library.opcheck(ops.gumbel_softmax_forward.default, args)


def test_opcheck_differentiable_op(device):
    # Also checks that the autograd kernel is registered and that AOT dispatch traces it.
    for args in _forward_samples(device):
        x, tau, tau_rows, hard, dim, gen, state = args
        if x.dtype in (torch.float32, torch.float64) and x.numel():
            x = x.detach().requires_grad_()
            if tau_rows is not None:
                tau_rows = tau_rows.detach().requires_grad_()
        torch.library.opcheck(ops.gumbel_softmax.default, (x, tau, tau_rows, hard, dim, gen, state))


def test_autograd_is_a_cpp_kernel(device):
    assert torch._C._dispatch_has_kernel_for_dispatch_key("gumbel_ext::gumbel_softmax", "Autograd")
    x = torch.randn(4, 6, device=device, requires_grad=True)
    y = gumbel_ext.gumbel_softmax(x, hard=True)
    # A C++ node (not a Python BackwardCFunction) that saved no logits-sized tensor of its own.
    assert type(y.grad_fn).__name__ != "BackwardCFunction"
    assert "GumbelSoftmaxFunction" in y.grad_fn.name()


@pytest.mark.parametrize("hard", [False, True])
def test_torch_func_grad_and_grad_of_grad(hard, device):
    # torch.func refuses C++ autograd Functions: the wrapper switches to a Python one there.
    x = torch.randn(5, 7, device=device, dtype=torch.float64)
    w = torch.randn(5, 7, device=device, dtype=torch.float64)
    tau = torch.tensor(0.7, device=device, dtype=torch.float64)

    def loss(x, tau):
        gen = torch.Generator(device=device).manual_seed(4)
        return (gumbel_ext.gumbel_softmax(x, tau=tau, hard=hard, generator=gen) * w).sum()

    gx, gt = torch.func.grad(loss, argnums=(0, 1))(x, tau)
    xe, te = x.clone().requires_grad_(), tau.clone().requires_grad_()
    ex, et = torch.autograd.grad(loss(xe, te), (xe, te), create_graph=True)
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(gt, et)
    # grad of grad (double backward) agrees with eager's create_graph path.
    hx = torch.func.grad(lambda x: torch.func.grad(loss)(x, tau).pow(2).sum())(x)
    (ehx,) = torch.autograd.grad(ex.pow(2).sum(), xe)
    torch.testing.assert_close(hx, ehx)


def test_opcheck_differentiable_backward(device):
    state = torch.tensor([77, 0], dtype=torch.int64, device=device)
    x = torch.randn(4, 9, device=device, dtype=torch.float64)
    y, _ = ops.gumbel_softmax_forward(x, 0.5, None, False, -1, None, state)
    rows = torch.rand(4, 1, device=device, dtype=torch.float64) + 0.5
    for saved, tau_rows, hard in ((y, None, False), (x, rows, True)):
        torch.library.opcheck(ops._differentiable_backward.default,
                              (torch.randn_like(x), saved, state, 0.5, tau_rows, hard, -1))


def test_inference_mode(device):
    x = torch.randn(4, 6, device=device)
    state = torch.tensor([5, 0], dtype=torch.int64, device=device)
    with torch.inference_mode():
        y = ops.gumbel_softmax(x, 0.5, None, False, -1, None, state)
        z = gumbel_ext.gumbel_softmax(x, tau=0.5, hard=True)
    assert y.is_inference() and z.is_inference()
    torch.testing.assert_close(y, ops.gumbel_softmax_forward(x, 0.5, None, False, -1, None, state)[0])
    assert torch.equal(z.sum(-1), torch.ones(4, device=device))


def test_opcheck_backward(device):
    for x, tau, tau_rows, hard, dim, _, state in _forward_samples(device):
        out, _ = fused(x, tau, hard, dim, rng_state=state, tau_rows=tau_rows)
        saved = x if hard else out
        grad = torch.randn_like(out)
        torch.library.opcheck(ops.gumbel_softmax_backward.default,
                              (grad, saved, state, tau, tau_rows, hard, dim, tau_rows is not None))


def test_opcheck_noise_and_sample(device):
    state = torch.tensor([99, 4], dtype=torch.int64, device=device)
    for shape, dim in [((4, 9), -1), ((3, 6, 2), 1), ((), 0)]:
        x = torch.randn(shape, device=device)
        torch.library.opcheck(ops.gumbel_noise.default, (x, dim, state))
        torch.library.opcheck(ops.sample.default, (x, 1, dim, None, state))
    torch.library.opcheck(ops.sample.default, (torch.randn(4, 9, device=device), 3, -1, None, state))
    torch.library.opcheck(ops.sample.default, (torch.randn(3, 6, 2, device=device), 4, 1, None, state))


@pytest.mark.parametrize("hard", [False, True])
def test_compile_fullgraph_forward_backward(hard, device):
    def f(x, tau):
        return (gumbel_ext.gumbel_softmax(x, tau=tau, hard=hard) * torch.arange(x.shape[-1], device=x.device)).sum()

    x = torch.randn(16, 40, device=device, requires_grad=True)
    tau = torch.tensor(0.8, device=device, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    expected = f(x, tau)
    gx, gt = torch.autograd.grad(expected, (x, tau))
    torch.manual_seed(3)
    got = compiled(x, tau)
    cx, ct = torch.autograd.grad(got, (x, tau))
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(cx, gx)
    torch.testing.assert_close(ct, gt)


def test_compile_inductor_sample_and_forward(device):
    def f(x):
        return gumbel_ext.gumbel_softmax(x, tau=0.5), gumbel_ext.sample(x, num_samples=2)

    x = torch.randn(8, 30, device=device)
    compiled = torch.compile(f, fullgraph=True)
    torch.manual_seed(1)
    y, idx = f(x)
    torch.manual_seed(1)
    cy, cidx = compiled(x)
    torch.testing.assert_close(cy, y)
    assert torch.equal(cidx, idx)


def test_deterministic_algorithms(device):
    torch.use_deterministic_algorithms(True)
    try:
        x = torch.randn(10, 20, device=device, requires_grad=True)
        torch.manual_seed(0)
        a = gumbel_ext.gumbel_softmax(x, hard=True)
        a.sum().backward()
        torch.manual_seed(0)
        assert torch.equal(gumbel_ext.gumbel_softmax(x, hard=True), a)
        assert gumbel_ext.sample(x.detach()).shape == (10,)
    finally:
        torch.use_deterministic_algorithms(False)
