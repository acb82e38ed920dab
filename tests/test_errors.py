"""Every bad input gets a clear error (type and message) before anything runs."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import gumbel_ext


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
@pytest.mark.parametrize("fn", [gumbel_ext.gumbel_softmax, gumbel_ext.sample])
def test_non_floating_logits(dtype, fn):
    x = torch.zeros(3, 4, dtype=dtype)
    with pytest.raises(TypeError, match=rf"floating point.*{dtype}".replace("torch.", "torch\\.")):
        fn(x)


def test_non_tensor_logits():
    with pytest.raises(TypeError, match="logits must be a torch.Tensor, got list"):
        gumbel_ext.gumbel_softmax([1.0, 2.0])


@pytest.mark.parametrize("tau", [0, -1.0, float("nan"), float("inf"), -float("inf")])
def test_bad_float_tau(tau):
    with pytest.raises(ValueError, match=r"tau must be a finite number > 0, got"):
        gumbel_ext.gumbel_softmax(torch.randn(2, 3), tau=tau)


@pytest.mark.parametrize("tau", ["1.0", None, True])
def test_tau_of_wrong_type(tau):
    with pytest.raises(TypeError, match="tau must be a float or a tensor"):
        gumbel_ext.gumbel_softmax(torch.randn(2, 3), tau=tau)


@pytest.mark.parametrize(
    "tau,match",
    [
        (torch.tensor([[1.0], [0.0]]), "every entry of tau must be finite and > 0"),
        (torch.tensor([[1.0], [float("nan")]]), "every entry of tau must be finite and > 0"),
        (torch.ones(2, 3), r"tau of shape \(2, 3\) must be 0-dim or broadcastable"),
        (torch.ones(3), r"tau of shape \(3,\) must be 0-dim or broadcastable"),
        (torch.ones(1, 2, 1), r"tau of shape \(1, 2, 1\)"),
        (torch.ones(2, 1, dtype=torch.int64), "tau must be a floating point tensor"),
        (torch.ones(2, 1, device="meta"), "tau is on meta but logits are on cpu"),
    ],
)
def test_bad_tensor_tau(tau, match):
    with pytest.raises((ValueError, TypeError), match=match):
        gumbel_ext.gumbel_softmax(torch.randn(2, 3), tau=tau)


@pytest.mark.parametrize("shape,dim", [((2, 3), 2), ((2, 3), -3), ((), 1), ((4,), 5)])
def test_dim_out_of_range(shape, dim):
    x = torch.randn(shape)
    with pytest.raises(IndexError) as ours:
        gumbel_ext.gumbel_softmax(x, dim=dim)
    with pytest.raises(IndexError) as theirs:
        torch.softmax(x, dim)
    assert str(ours.value) == str(theirs.value)


def test_generator_on_another_device():
    x = torch.randn(2, 3, device="meta")
    with pytest.raises(ValueError, match="the generator is on cpu but logits are on meta"):
        gumbel_ext.gumbel_softmax(x, generator=torch.Generator())


def test_generator_of_wrong_type():
    with pytest.raises(TypeError, match="generator must be a torch.Generator, got int"):
        gumbel_ext.gumbel_softmax(torch.randn(2, 3), generator=3)


def test_eps_warns_like_torch():
    x = torch.randn(2, 3)
    with pytest.warns(UserWarning) as ours:
        gumbel_ext.gumbel_softmax(x, eps=1e-5)
    with pytest.warns(UserWarning) as theirs:
        F.gumbel_softmax(x, eps=1e-5)
    assert str(ours[0].message) == str(theirs[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gumbel_ext.gumbel_softmax(x)  # the default eps does not warn


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_sample_bad_num_samples(k):
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        gumbel_ext.sample(torch.randn(2, 3), num_samples=k)


def test_sample_more_than_categories():
    with pytest.raises(ValueError, match="num_samples=4 exceeds the 3 categories"):
        gumbel_ext.sample(torch.randn(2, 3), num_samples=4)


def test_sample_more_than_finite_categories():
    x = torch.randn(2, 5)
    x[1, :3] = float("-inf")
    with pytest.raises(ValueError, match="num_samples=3 exceeds the 2 finite logits of row 1"):
        gumbel_ext.sample(x, num_samples=3)
    x[1] = float("-inf")
    with pytest.raises(ValueError, match="row 1 has no finite logit"):
        gumbel_ext.sample(x)


def test_sample_nan_row():
    x = torch.randn(3, 5)
    x[2, 4] = float("nan")
    with pytest.raises(ValueError, match="row 2 of the logits holds NaN or \\+inf"):
        gumbel_ext.sample(x)


# The ops themselves check their arguments too (they are public through torch.ops).
def test_op_rejects_bad_arguments():
    ops = torch.ops.gumbel_ext
    with pytest.raises(TypeError, match="floating point"):
        ops.gumbel_softmax_forward(torch.zeros(2, 3, dtype=torch.int32), 1.0, None, False, -1)
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        ops.gumbel_softmax_forward(torch.zeros(2, 3), 0.0, None, False, -1)
    with pytest.raises(IndexError, match="Dimension out of range"):
        ops.gumbel_softmax_forward(torch.zeros(2, 3), 1.0, None, False, 3)
    with pytest.raises(ValueError, match="rng_state must be a contiguous int64 tensor of 2 elements"):
        ops.gumbel_softmax_forward(torch.zeros(2, 3), 1.0, None, False, -1, None, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="tau_rows must be contiguous with one entry per row"):
        ops.gumbel_softmax_forward(torch.zeros(2, 3), 1.0, torch.ones(3), False, -1)
    with pytest.raises(ValueError, match="tau_rows must have dtype Float for Half logits"):
        ops.gumbel_softmax_forward(torch.zeros(2, 3, dtype=torch.half), 1.0, torch.ones(2, dtype=torch.half), False, -1)
    state = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="grad has shape"):
        ops.gumbel_softmax_backward(torch.zeros(2, 2), torch.zeros(2, 3), state, 1.0, None, False, -1, False)
    with pytest.raises(ValueError, match="need_grad_tau=True requires tau_rows"):
        ops.gumbel_softmax_backward(torch.zeros(2, 3), torch.zeros(2, 3), state, 1.0, None, False, -1, True)
