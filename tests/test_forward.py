"""Forward: the fused op equals the reference element-wise on the same noise, over the
shapes, dims, layouts and dtypes users hit; the layout/dim invariances of the noise contract."""

import pytest
import torch
import torch.nn.functional as F

import gumbel_ext
from helpers import DTYPES, TOL, assert_close, fused, gen, ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 7, 8, 31, 33, 100, 1000, 1023, 4097, 100_000])
def test_matches_reference_by_length(dtype, hard, length, device):
    rows = max(1, 20_000 // length)
    x = (torch.randn(rows, length, device=device) * 3).to(dtype)
    out, state = fused(x, 0.7, hard)
    expected = ref(x, state, 0.7, hard)
    assert out.dtype == dtype and out.shape == x.shape
    if hard:
        assert torch.equal(out, expected)
    else:
        # The row sum is accumulated in the kernel's order, the reference's in torch.sum's;
        # their float32 rounding differs by ~sqrt(length) ulps.
        tol = dict(TOL[dtype])
        tol["rtol"] += 1e-6 * length**0.5
        torch.testing.assert_close(out, expected, **tol)


@pytest.mark.parametrize("shape", [(6,), (5, 7), (3, 4, 5), (2, 3, 4, 5), (2, 1, 3, 1)])
@pytest.mark.parametrize("hard", [False, True])
def test_every_dim(shape, hard, device):
    x = torch.randn(shape, device=device)
    for dim in range(-len(shape), len(shape)):
        out, state = fused(x, 1.3, hard, dim)
        expected = ref(x, state, 1.3, hard, dim)
        assert_close(out, expected)
        assert_close(out.sum(dim), torch.ones(()).expand(out.sum(dim).shape).to(device))


def test_zero_dim_gives_one(device):
    x = torch.tensor(0.3, device=device)
    for hard in (False, True):
        y = gumbel_ext.gumbel_softmax(x, hard=hard)
        assert y.shape == () and y.item() == 1.0
        assert F.gumbel_softmax(x, hard=hard).item() == 1.0


@pytest.mark.parametrize("shape,dim", [((0, 5), -1), ((5, 0), -1), ((5, 0), 0), ((2, 0, 3), 1), ((0,), 0)])
@pytest.mark.parametrize("hard", [False, True])
def test_empty(shape, dim, hard, device):
    x = torch.randn(shape, device=device, requires_grad=True)
    y = gumbel_ext.gumbel_softmax(x, hard=hard, dim=dim)
    assert y.shape == x.shape and y.numel() == 0
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("hard", [False, True])
def test_layout_does_not_matter(hard, device):
    base = torch.randn(8, 30, 12, device=device)
    views = {
        "transposed": base.transpose(0, 2),
        "sliced": base[::2, 3:27:3, 1:],
        "expanded": torch.randn(1, 30, 1, device=device).expand(4, 30, 5),
        "channels_last": torch.randn(2, 6, 5, 7, device=device).to(memory_format=torch.channels_last),
    }
    for name, v in views.items():
        assert not v.is_contiguous(), name
        for dim in range(v.dim()):
            out, state = fused(v, 0.9, hard, dim)
            out_c, _ = fused(v.contiguous(), 0.9, hard, dim, rng_state=state)
            assert torch.equal(out, out_c), (name, dim)


@pytest.mark.parametrize("hard", [False, True])
def test_movedim_moves_result(hard, device):
    x = torch.randn(4, 9, 6, device=device)
    out, state = fused(x, 1.0, hard, 1)
    moved, _ = fused(x.movedim(1, -1).contiguous(), 1.0, hard, -1, rng_state=state)
    assert_close(moved, out.movedim(1, -1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_is_one_hot_of_soft_argmax(dtype, device):
    x = torch.randn(2000, 50, device=device).to(dtype)
    soft = gumbel_ext.gumbel_softmax(x, tau=0.5, generator=gen(7, device))
    hard = gumbel_ext.gumbel_softmax(x, tau=0.5, hard=True, generator=gen(7, device))
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(hard.sum(-1), torch.ones(2000, device=device, dtype=dtype))
    index = hard.argmax(-1, keepdim=True)
    # The picked entry is a maximum of the soft output; for fp32/fp64 exactly its argmax.
    assert torch.equal(soft.gather(-1, index).squeeze(-1), soft.max(-1).values)
    if dtype in (torch.float32, torch.float64):
        assert torch.equal(hard, F.one_hot(soft.argmax(-1), 50).to(dtype))


def test_generator_reproducible_and_advances(device):
    x = torch.randn(16, 40, device=device)
    g = gen(123, device)
    a = gumbel_ext.gumbel_softmax(x, generator=g)
    b = gumbel_ext.gumbel_softmax(x, generator=g)
    assert not torch.equal(a, b)  # the generator advanced: fresh noise
    g2 = gen(123, device)
    assert torch.equal(gumbel_ext.gumbel_softmax(x, generator=g2), a)
    assert torch.equal(gumbel_ext.gumbel_softmax(x, generator=g2), b)


def test_manual_seed_reproduces_default_generator(device):
    x = torch.randn(16, 40, device=device)
    torch.manual_seed(5)
    a = gumbel_ext.gumbel_softmax(x, hard=True)
    torch.manual_seed(5)
    assert torch.equal(gumbel_ext.gumbel_softmax(x, hard=True), a)


def test_masked_logits_get_exact_zero(device):
    x = torch.randn(3000, 20, device=device)
    x[:, ::3] = float("-inf")
    soft = gumbel_ext.gumbel_softmax(x, tau=0.3)
    hard = gumbel_ext.gumbel_softmax(x, hard=True)
    assert torch.all(soft[:, ::3] == 0)
    assert torch.all(hard[:, ::3] == 0)
    assert_close(soft.sum(-1), torch.ones(3000, device=device))


@pytest.mark.parametrize("hard", [False, True])
def test_nan_and_all_masked_rows_are_nan_like_softmax(hard, device):
    x = torch.randn(4, 6, device=device)
    x[0, 2] = float("nan")
    x[1] = float("-inf")
    x[2, 1] = float("inf")
    y = gumbel_ext.gumbel_softmax(x, hard=hard)
    expected_nan = torch.softmax(x, -1).isnan().all(-1)
    assert torch.equal(y.isnan().all(-1), expected_nan)
    assert expected_nan.tolist() == [True, True, True, False]
    assert torch.isfinite(y[3]).all()


@pytest.mark.parametrize(
    "dtype,value", [(torch.float16, 6e4), (torch.bfloat16, 1e30), (torch.float32, 1e30), (torch.float64, 1e300)]
)
@pytest.mark.parametrize("tau", [1e-4, 1.0, 1e4])
@pytest.mark.parametrize("hard", [False, True])
def test_extreme_values_stay_finite(dtype, value, tau, hard, device):
    x = torch.randn(64, 33, device=device).sign().to(dtype) * value
    x[:, 5] = 0
    y = gumbel_ext.gumbel_softmax(x, tau=tau, hard=hard)
    assert torch.isfinite(y).all()
    assert_close(y.float().sum(-1), torch.ones(64, device=device), dtype)


def test_logits_never_modified(device):
    x = torch.randn(10, 10, device=device)
    before = x.clone()
    for hard in (False, True):
        gumbel_ext.gumbel_softmax(x, hard=hard)
    assert torch.equal(x, before)


@pytest.mark.parametrize("hard", [False, True])
def test_tensor_tau_matches_reference(hard, device):
    x = torch.randn(6, 5, 7, device=device)
    tau = torch.rand(6, 1, 7, device=device) + 0.2
    out = gumbel_ext.gumbel_softmax(x, tau=tau, hard=hard, dim=1, generator=gen(3, device))
    _, state = fused(x, 1.0, hard, 1, generator=gen(3, device))
    assert_close(out, ref(x, state, tau, hard, 1))


def test_noise_op_matches_reference(device):
    x = torch.randn(5, 1001, device=device)
    _, state = fused(x)
    noise = torch.ops.gumbel_ext.gumbel_noise(x, -1, state)
    torch.testing.assert_close(noise, gumbel_ext.reference.gumbel_noise(x, -1, state), atol=2e-6, rtol=1e-6)


def test_same_noise_for_every_dtype(device):
    x = torch.randn(50, 64, device=device)
    _, state = fused(x)
    outs = [fused(x.to(dt), 1.0, True, rng_state=state)[0].float() for dt in DTYPES]
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


def test_philox_known_answer():
    # Random123's published known-answer test for Philox4x32-10 (kat_vectors):
    # counter = 0, key = 0 -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8.
    words = [torch.tensor([0], dtype=torch.int64)] * 4
    out = gumbel_ext.reference.philox4x32_10(words, 0)
    assert [int(w) for w in out] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    # ... and counter = key = all ones -> 408f276d 41c83b0e a20bc7c6 6d5451fd
    words = [torch.tensor([0xFFFFFFFF], dtype=torch.int64)] * 4
    out = gumbel_ext.reference.philox4x32_10(words, 0xFFFFFFFFFFFFFFFF)
    assert [int(w) for w in out] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


@pytest.mark.parametrize("hard", [False, True])
def test_long_row_accuracy(hard, device):
    # One 2M-category row: the softmax sum must not drift as it outgrows its terms.
    x = torch.randn(1, 2**21, device=device)
    out, state = fused(x, 1.0, hard)
    noise = torch.ops.gumbel_ext.gumbel_noise(x, -1, state)
    if hard:
        assert torch.equal(out, gumbel_ext.reference.hard_from_noise(x, noise, -1))
        return
    exact = gumbel_ext.reference.soft_from_noise(x.double(), noise, 1.0, -1)
    torch.testing.assert_close(out.double(), exact, atol=1e-10, rtol=1e-4)
    grad = torch.randn_like(x)
    gx, _ = torch.ops.gumbel_ext.gumbel_softmax_backward(grad, out, state, 1.0, None, False, -1, False)
    y = out.double()
    exact_gx = y * (grad.double() - (grad.double() * y).sum())
    torch.testing.assert_close(gx.double(), exact_gx, atol=1e-9, rtol=1e-3)
