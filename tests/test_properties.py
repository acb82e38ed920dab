"""Property-based tests (hypothesis): random shapes, dims, layouts, dtypes, tau, masks.
Bounded for CI; `--hypothesis-profile=thorough` runs many more examples locally."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gumbel_ext
from helpers import DTYPES, TOL, fused, ref



@st.composite
def cases(draw):
    ndim = draw(st.integers(0, 4))
    shape = draw(st.lists(st.integers(0 if ndim else 1, 9), min_size=ndim, max_size=ndim))
    if ndim and draw(st.booleans()):
        shape[draw(st.integers(0, ndim - 1))] = draw(st.integers(10, 300))
    dim = draw(st.integers(-max(ndim, 1), max(ndim, 1) - 1))
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced", "expanded", "channels_last"]))
    tau = draw(st.floats(1e-4, 1e4))
    tau_kind = draw(st.sampled_from(["float", "scalar_tensor", "per_row"]))
    hard = draw(st.booleans())
    mask = draw(st.floats(0, 0.5))
    seed = draw(st.integers(0, 2**31))
    return shape, dim, dtype, layout, tau, tau_kind, hard, mask, seed


def _make(shape, dtype, layout, mask, seed):
    g = torch.Generator().manual_seed(seed)
    if layout == "sliced" and shape:
        big = torch.randn([s * 2 + 1 for s in shape], generator=g) * 4
        x = big[tuple(slice(1, None, 2) for _ in shape)]
    elif layout == "transposed" and len(shape) >= 2:
        x = (torch.randn(list(reversed(shape)), generator=g) * 4).t() if len(shape) == 2 else \
            (torch.randn(shape[::-1], generator=g) * 4).permute(*reversed(range(len(shape))))
    elif layout == "expanded" and shape:
        x = (torch.randn([1] + shape[1:], generator=g) * 4).expand(shape)
    elif layout == "channels_last" and len(shape) == 4:
        x = (torch.randn(shape, generator=g) * 4).to(memory_format=torch.channels_last)
    else:
        x = torch.randn(shape, generator=g) * 4
    x = x.to(dtype)
    if mask and x.numel():
        masked = torch.rand(x.shape, generator=g) < mask
        x = x.masked_fill(masked, float("-inf"))
    return x


@given(cases())
def test_fused_equals_reference(case):
    shape, dim, dtype, layout, tau, tau_kind, hard, mask, seed = case
    x = _make(shape, dtype, layout, mask, seed)
    dim = dim if x.dim() else -1
    keep = list(x.shape)
    if keep:
        keep[dim] = 1
    g = torch.Generator().manual_seed(seed + 1)
    tau_arg = {"float": tau, "scalar_tensor": torch.tensor(tau),
               "per_row": torch.empty(keep).uniform_(max(tau / 2, 1e-4), tau * 2, generator=g)}[tau_kind]
    xr = x.detach().clone().requires_grad_()
    xf = x.detach().clone().requires_grad_()
    gen = torch.Generator().manual_seed(seed)
    y = gumbel_ext.gumbel_softmax(xf, tau=tau_arg, hard=hard, dim=dim, generator=gen)
    state = fused(x, 1.0, False, dim, generator=torch.Generator().manual_seed(seed))[1]
    y_ref = ref(xr, state, tau_arg, hard, dim)
    assert y.shape == x.shape and y.dtype == x.dtype
    if x.numel() == 0:
        return
    tol = dict(TOL[dtype])
    if dtype == torch.float32:
        tol["atol"] = 1e-5  # tiny tau amplifies the 1-ulp noise differences
    if hard:
        assert torch.equal(y.isnan(), y_ref.isnan())
        finite = ~y.isnan().any(dim, keepdim=True).expand_as(y) if y.dim() else ~y.isnan()
        assert set(y[finite].unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(y, y_ref, equal_nan=True, **(tol if tau >= 1e-2 else dict(atol=5e-2, rtol=0.0)))
    # Rows without NaN sum to 1.
    s = y.float().sum(dim) if y.dim() else y.float()
    ok = ~s.isnan()
    torch.testing.assert_close(s[ok], torch.ones_like(s[ok]), atol=2e-2 if dtype != torch.float64 else 1e-6, rtol=0)
    # Gradients match the reference's autograd (finite rows).
    grad = torch.randn(x.shape, generator=g).to(dtype)
    if tau_kind == "float" and tau >= 1e-2 and not y.isnan().any():
        (gx,) = torch.autograd.grad(y, xf, grad)
        (gx_ref,) = torch.autograd.grad(y_ref, xr, grad)
        # Half types: like torch's softmax backward, the fused backward uses the output as
        # rounded to the dtype, the reference its float32 value; y (g - sum g y) cancels,
        # so the difference is a few ulps of the dtype times |grad| / tau (for fp32/fp64,
        # the 1-ulp float32 noise differences scaled by 1/tau).
        eps = torch.finfo(dtype).eps if dtype in (torch.float16, torch.bfloat16) else 0.0
        atol = (4 * eps + 1e-6) * grad.abs().max().item() / tau + 1e-4 * (gx_ref.abs().max().item() + 1e-6)
        torch.testing.assert_close(gx, gx_ref, atol=atol, rtol=5e-2)


@given(cases())
def test_sample_equals_hard_argmax(case):
    shape, dim, dtype, layout, _, _, _, mask, seed = case
    x = _make(shape, dtype, layout, 0.0, seed)
    dim = dim if x.dim() else -1
    if x.dim() and x.shape[dim] == 0:
        # No category to draw, with or without rows (as torch.multinomial).
        with pytest.raises(ValueError, match="exceeds the 0 categories"):
            gumbel_ext.sample(x, dim=dim)
        return
    idx = gumbel_ext.sample(x, dim=dim, generator=torch.Generator().manual_seed(seed))
    hard = gumbel_ext.gumbel_softmax(x, hard=True, dim=dim, generator=torch.Generator().manual_seed(seed))
    if x.numel():
        assert torch.equal(idx, hard.argmax(dim) if x.dim() else torch.tensor(0))
