"""The ops are public (torch.ops.gumbel_ext.*, the C++ API): each checks its own
arguments, whichever kernel the dispatcher picks -- the real one or the fake (Meta) one."""

import math

import pytest
import torch

import gumbel_ext

pytestmark = pytest.mark.skipif(
    not gumbel_ext._EXTENSION_AVAILABLE, reason="the compiled extension is not available"
)

ops = torch.ops.gumbel_ext
LONG = torch.int64


def _state(device="cpu"):
    return torch.tensor([7, 4], dtype=LONG, device=device)


def _calls(device_of):
    """(label, call, reference argument's name, bad argument's name): every op with one
    tensor argument on ``device_of(name)``; the logits (or saved) are on ``device_of("x")``."""
    x = torch.zeros(2, 3, device=device_of("x"))
    rows = torch.ones(2, 1, device=device_of("tau_rows"))
    state = _state(device_of("rng_state"))
    grad = torch.ones(2, 3, device=device_of("grad"))
    return [
        ("forward", lambda: ops.gumbel_softmax_forward(x, 1.0, rows, False, -1, None, state), "logits"),
        ("gumbel_softmax", lambda: ops.gumbel_softmax(x, 1.0, rows, True, -1, None, state), "logits"),
        ("backward", lambda: ops.gumbel_softmax_backward(grad, x, state, 1.0, rows, True, -1, True), "saved"),
        ("_differentiable_backward", lambda: ops._differentiable_backward(grad, x, state, 1.0, rows, False, -1),
         "saved"),
        ("gumbel_noise", lambda: ops.gumbel_noise(x, -1, state), "logits"),
        ("sample", lambda: ops.sample(x, 1, -1, None, state), "logits"),
    ]


ARGUMENTS = {
    "forward": ["tau_rows", "rng_state"],
    "gumbel_softmax": ["tau_rows", "rng_state"],
    "backward": ["grad", "rng_state", "tau_rows"],
    "_differentiable_backward": ["grad", "rng_state", "tau_rows"],
    "gumbel_noise": ["rng_state"],
    "sample": ["rng_state"],
}
CASES = [(op, arg) for op, args in ARGUMENTS.items() for arg in args]


def _message(name, bad, good, reference):
    return f"gumbel_ext: Tensor {name} on device {bad} is not on the expected device {good} (the device of {reference})"


@pytest.mark.parametrize("op,arg", CASES)
@pytest.mark.parametrize("logits_device,other_device", [("cpu", "meta"), ("meta", "cpu")])
def test_tensor_on_another_device(op, arg, logits_device, other_device):
    """CPU logits with a meta tensor argument reach the fake kernel (Meta outranks CPU),
    which used to return uninitialized CPU tensors; meta logits with a CPU argument too."""
    calls = {label: (call, ref) for label, call, ref in _calls(lambda n: other_device if n == arg else logits_device)}
    call, reference = calls[op]
    with pytest.raises(ValueError) as err:
        call()
    assert str(err.value).splitlines()[0] == _message(arg, other_device, logits_device, reference)


@pytest.mark.parametrize("op,arg", [(op, arg) for op, arg in CASES if op in ("forward", "backward", "gumbel_noise", "sample")])
def test_real_kernels_give_the_fakes_message(op, arg):
    """The CPU kernel, reached directly, raises what the fake raises for the same call."""
    op_fn = {"forward": ops.gumbel_softmax_forward, "backward": ops.gumbel_softmax_backward,
              "gumbel_noise": ops.gumbel_noise, "sample": ops.sample}[op]
    device_of = lambda n: "meta" if n == arg else "cpu"  # noqa: E731
    x = torch.zeros(2, 3)
    rows = torch.ones(2, 1, device=device_of("tau_rows"))
    state = _state(device_of("rng_state"))
    grad = torch.ones(2, 3, device=device_of("grad"))
    args = {
        "forward": (x, 1.0, rows, False, -1, None, state),
        "backward": (grad, x, state, 1.0, rows, True, -1, True),
        "gumbel_noise": (x, -1, state),
        "sample": (x, 1, -1, None, state),
    }[op]
    with pytest.raises(ValueError) as fake:
        op_fn(*args)
    cpu_only = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
    with pytest.raises(ValueError) as real:
        op_fn.default.redispatch(cpu_only, *args)
    assert str(real.value).splitlines()[0] == str(fake.value).splitlines()[0]


@pytest.mark.parametrize("value", [-1.0, 0.0, math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tau_rows_values(value, dtype):
    """Note [tau_rows values]: on the CPU the ops refuse what the public API refuses."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(3, 40, dtype=dtype)
    rows = torch.tensor([[0.5], [value], [2.0]], dtype=acc)
    state = _state()
    match = r"every entry of tau_rows must be finite and > 0, got .* at flat index 1"
    for hard in (False, True):
        with pytest.raises(ValueError, match=match):
            ops.gumbel_softmax_forward(x, 1.0, rows, hard, -1, None, state)
        with pytest.raises(ValueError, match=match):
            ops.gumbel_softmax_backward(x, x, state, 1.0, rows, hard, -1, True)
    with pytest.raises(ValueError, match=match):
        ops.gumbel_softmax(x, 1.0, rows, False, -1)


@pytest.mark.parametrize("grad_shape", [(1, 5, 6), (), (1, 6), (5, 1), (6, 5)])
@pytest.mark.parametrize("hard", [False, True])
def test_differentiable_backward_shape_checks(grad_shape, hard):
    """_differentiable_backward is built of ATen ops, which would broadcast these grads:
    it refuses them as gumbel_softmax_backward does, with the same message."""
    x = torch.randn(5, 6)
    grad = torch.ones(grad_shape)
    state = _state()
    with pytest.raises(ValueError, match="grad has shape") as fused:
        ops.gumbel_softmax_backward(grad, x, state, 1.0, None, hard, -1, False)
    with pytest.raises(ValueError, match="grad has shape") as differentiable:
        ops._differentiable_backward(grad, x, state, 1.0, None, hard, -1)
    assert str(differentiable.value).splitlines()[0] == str(fused.value).splitlines()[0]


@pytest.mark.parametrize("shape", [(0, 5), (3, 0, 5), (0,)])
@pytest.mark.parametrize("k", [0, -1])
def test_sample_zero_rows_checks_num_samples(shape, k):
    """No row to sample does not make num_samples < 1 valid: ValueError, as with rows."""
    x = torch.zeros(shape)
    dim = -1
    with pytest.raises(ValueError, match=f"num_samples must be >= 1, got {k}"):
        ops.sample(x, k, dim)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        ops.sample(torch.zeros(2, 5), k, dim)
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        gumbel_ext.sample(x, k, dim)


def test_sample_zero_rows_checks_categories():
    x = torch.zeros(0, 5)
    with pytest.raises(ValueError, match="num_samples=6 exceeds the 5 categories"):
        ops.sample(x, 6, -1)
    with pytest.raises(ValueError, match="num_samples=6 exceeds the 5 categories"):
        gumbel_ext.sample(x, 6)
    assert ops.sample(x, 5, -1).shape == (0, 5)
    assert gumbel_ext.sample(x, 1).shape == (0,)
