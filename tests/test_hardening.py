"""Threads, out-of-memory, huge inputs: nothing wrong in silence."""

import threading

import pytest
import torch

import gumbel_ext
from gumbel_ext import reference
from helpers import fused

ops = torch.ops.gumbel_ext


@pytest.mark.parametrize("shared", [False, True])
def test_threads_never_reuse_noise(shared, device):
    # Each call reserves its noise under the generator's lock: 8 threads x 50 calls
    # must get 400 distinct (seed, offset) pairs and valid results.
    g = torch.Generator(device=device).manual_seed(0) if shared else None
    x = torch.randn(32, 100, device=device)
    states, errors = [], []

    def work():
        try:
            for _ in range(50):
                out, state = fused(x, 0.5, False, generator=g)
                torch.testing.assert_close(out.sum(-1), torch.ones(32, device=device))
                states.append(tuple(state.tolist()))
        except Exception as err:  # noqa: BLE001 -- reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(states) == 400 and len(set(states)) == 400


def test_oom_in_forward_raises_torch_error_and_process_survives():
    huge = torch.zeros(1, 1).expand(2**40, 2)  # 8 TB once materialized
    with pytest.raises(RuntimeError, match="(?i)memory|allocat"):
        gumbel_ext.gumbel_softmax(huge)
    assert torch.equal(gumbel_ext.gumbel_softmax(torch.zeros(3, 1)), torch.ones(3, 1))


def test_oom_in_backward_raises_torch_error_and_process_survives():
    huge = torch.zeros(1, 1).expand(2**40, 2)
    state = torch.zeros(2, dtype=torch.int64)
    for hard in (False, True):
        with pytest.raises(RuntimeError, match="(?i)memory|allocat"):
            ops.gumbel_softmax_backward(huge, huge, state, 1.0, None, hard, -1, False)
    x = torch.randn(4, 5, requires_grad=True)
    gumbel_ext.gumbel_softmax(x, hard=True).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("hard", [False, True])
def test_nan_propagates_like_softmax_in_backward(hard):
    x = torch.randn(3, 4)
    x[1, 2] = float("nan")
    x.requires_grad_()
    y = gumbel_ext.gumbel_softmax(x, hard=hard)
    y.sum().backward()
    assert x.grad[1].isnan().all() and not x.grad[[0, 2]].isnan().any()


def _check_row_against_reference(x, out, state, row, hard, tau=1.0):
    seed, offset = (int(v) for v in state.tolist())
    cols = torch.arange(x.shape[-1], dtype=torch.int64)
    noise = reference.noise_at(seed, offset, torch.tensor(row), cols)
    logits = x[row].float()
    if hard:
        expected = reference.hard_from_noise(logits, noise, -1)
        assert torch.equal(out[row].float(), expected)
    else:
        expected = reference.soft_from_noise(logits, noise, tau, -1)
        torch.testing.assert_close(out[row].float(), expected, atol=2e-3, rtol=2e-3)


@pytest.mark.slow
@pytest.mark.parametrize("hard", [False, True])
def test_row_longer_than_2_pow_24(hard):
    # Column counters past 2^24 must not lose precision (they are integers, never floats).
    length = 2**24 + 77
    x = torch.randn(1, length)
    out, state = fused(x, 1.0, hard)
    _check_row_against_reference(x, out, state, 0, hard)
    noise = ops.gumbel_noise(x, -1, state)
    assert noise[0, 2**24:].unique().numel() > 70  # distinct draws beyond 2^24


@pytest.mark.slow
@pytest.mark.parametrize("hard", [False, True])
def test_more_than_2_pow_31_elements(hard):
    # fp16, 2^31 + 2^15 elements: ~4.3 GB in + ~4.3 GB out (about 9 GB of memory).
    rows, length = 2**16 + 1, 2**15
    try:
        x = torch.randn(rows, length, dtype=torch.float16)
        out, state = fused(x, 1.0, hard)
    except RuntimeError as err:
        pytest.skip(f"not enough memory: {err}")
    for row in (0, rows // 2, rows - 1):
        _check_row_against_reference(x, out, state, row, hard)
    assert out.isfinite().all()
