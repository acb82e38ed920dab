"""Strided inputs read in place (issue 15, item 5) and argmax indices past 2^31 (item 2).

Every layout the CPU kernels read in place must give the contiguous call's results bit for
bit, forward, backward and sample, on every compiled ISA copy; outputs are laid out as
torch.softmax lays out its own (contiguous on CPU)."""

import pytest
import torch

import gumbel_ext
from helpers import fused

ops = torch.ops.gumbel_ext

pytestmark = pytest.mark.skipif(not gumbel_ext._EXTENSION_AVAILABLE, reason="needs the compiled extension")

CL, CL3 = torch.channels_last, torch.channels_last_3d


def _channels_last(shape, fmt):
    return lambda x: x.to(memory_format=fmt)


# (name, contiguous shape, dim, view): view(x) has x's values in another layout.
LAYOUTS = [
    ("channels_last", (2, 40, 5, 7), 1, _channels_last(None, CL)),
    ("channels_last-long", (2, 300, 3, 6), 1, _channels_last(None, CL)),  # several column blocks
    ("channels_last-few-channels", (3, 6, 4, 5), 1, _channels_last(None, CL)),
    ("channels_last_3d", (2, 9, 3, 4, 5), 1, _channels_last(None, CL3)),
    ("transposed-dim0", (70, 33), 0, lambda x: x.t().contiguous().t()),
    ("transposed-dim1", (70, 33), 1, lambda x: x.t().contiguous().t()),
    ("permuted", (3, 4, 50, 6), 2, lambda x: x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)),
    ("sliced-rows", (9, 100), 1, lambda x: torch.cat([x, x], 1)[:, :100]),
    ("sliced-short-rows", (40, 10), 1, lambda x: torch.cat([x, x], 1)[:, :10]),
    ("sliced-lanes", (3, 50, 20), 1, lambda x: torch.cat([x, x], 2)[:, :, :20]),
    ("expanded", (12, 64), 1, None),  # one row repeated: built from a [1, 64] tensor below
    # Not read in place: the kernels get a contiguous copy. dim=2 of channels_last (neither
    # the reduced dim nor the inner dims adjacent); dim=1 of a transposed matrix (the rows
    # walk needs each row's columns adjacent).
    ("channels_last-dim2", (2, 8, 30, 4), 2, _channels_last(None, CL)),
]
COPIED = ("channels_last-dim2", "transposed-dim1")
IN_PLACE = [layout[0] for layout in LAYOUTS if layout[0] not in COPIED]


def _capabilities():
    return list(ops._cpu_capabilities()) if gumbel_ext._EXTENSION_AVAILABLE else []


@pytest.fixture(params=["default", "avx2", "avx512"])
def capability(request):
    if request.param not in _capabilities():
        pytest.skip(f"the {request.param} kernels are not available here")
    before = ops._cpu_capability()
    ops._set_cpu_capability(request.param)
    yield request.param
    ops._set_cpu_capability(before)


def _pair(name, shape, view, dtype, seed=0):
    """(contiguous x, the same values in the layout under test)."""
    gen = torch.Generator().manual_seed(seed)
    if name == "expanded":
        one = torch.randn((1,) + shape[1:], generator=gen).to(dtype)
        strided = one.expand(shape)
        return strided.contiguous(), strided
    x = torch.randn(shape, generator=gen).to(dtype)
    y = view(x)
    assert torch.equal(x, y)
    return x, y


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name,shape,dim,view", LAYOUTS, ids=[layout[0] for layout in LAYOUTS])
def test_layout_matches_contiguous(capability, name, shape, dim, view, dtype):
    x, xs = _pair(name, shape, view, dtype)
    assert not xs.is_contiguous()
    state = torch.tensor([1234, 56])
    for hard in (False, True):
        want, _ = fused(x, 0.7, hard, dim, rng_state=state)
        got, _ = fused(xs, 0.7, hard, dim, rng_state=state)
        assert torch.equal(got, want), (name, hard)
        assert got.stride() == torch.softmax(xs, dim).stride()  # torch.softmax's output layout
        # Backward, with the saved tensor (soft: the output; hard: the logits) and the
        # incoming grad in the layout under test as well.
        g, gs = _pair(name, shape, view, dtype, seed=1)
        saved, saved_s = (x, xs) if hard else (want, view(want) if view else want)
        want_g, _ = ops.gumbel_softmax_backward(g, saved, state, 0.7, None, hard, dim, False)
        for grad, kept in ((gs, saved), (g, saved_s), (gs, saved_s)):
            got_g, _ = ops.gumbel_softmax_backward(grad, kept, state, 0.7, None, hard, dim, False)
            assert torch.equal(got_g, want_g), (name, hard)
            assert got_g.is_contiguous()
    for k in (1, 3):
        assert torch.equal(ops.sample(xs, k, dim, None, state), ops.sample(x, k, dim, None, state))


def test_per_row_tau_and_autograd_in_channels_last():
    x = torch.randn(2, 24, 5, 3)
    xs = x.to(memory_format=CL).requires_grad_()
    xc = x.clone().requires_grad_()
    tau = torch.rand(2, 1, 5, 3) + 0.5
    for hard in (False, True):
        g = torch.randn(2, 24, 5, 3).to(memory_format=CL)
        outs = []
        for leaf in (xc, xs):
            leaf.grad = None
            t = tau.clone().requires_grad_()
            y = gumbel_ext.gumbel_softmax(leaf, tau=t, hard=hard, dim=1, generator=torch.Generator().manual_seed(3))
            y.backward(g)
            outs.append((y, leaf.grad, t.grad))
        for a, b in zip(*outs):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", IN_PLACE)
def test_in_place_layouts_are_not_copied(name):
    """The ops read these layouts where they lie: no copy kernel runs (the profiler sees
    every ATen op the kernels' host code calls)."""
    _, shape, dim, view = next(layout for layout in LAYOUTS if layout[0] == name)
    _, xs = _pair(name, shape, view, torch.float32)
    state = torch.tensor([7, 8])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        y, _ = fused(xs, 1.0, True, dim, rng_state=state)
        ops.gumbel_softmax_backward(xs, xs, state, 1.0, None, True, dim, False)
        ops.gumbel_softmax_backward(xs, y, state, 1.0, None, False, dim, False)
        ops.sample(xs, 1, dim, None, state)  # k > 1 reorders its small [rows, k] result
    copies = {e.name for e in prof.events() if e.name in ("aten::copy_", "aten::clone", "aten::contiguous")}
    assert not copies, copies


@pytest.mark.parametrize("name", COPIED)
def test_layout_not_readable_is_copied(name):
    # The counterpart of the test above: the check can see a copy.
    _, shape, dim, view = next(layout for layout in LAYOUTS if layout[0] == name)
    _, xs = _pair(name, shape, view, torch.float32)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fused(xs, 1.0, True, dim, rng_state=torch.tensor([7, 8]))
    assert any(e.name == "aten::copy_" for e in prof.events())


# ------------------------------------------------------------------ argmax segments
@pytest.fixture
def segment():
    """Argmaxes in 64-column segments (Note [Argmax segments]): the 2^30-column logic
    of long rows, on short ones."""
    before = ops._set_cpu_argmax_segment(64)
    yield 64
    ops._set_cpu_argmax_segment(before)


def test_segment_setting_is_checked():
    for bad in (-64, 63, 100, 2**31):
        with pytest.raises(ValueError, match="multiple of 64"):
            ops._set_cpu_argmax_segment(bad)
    assert ops._set_cpu_argmax_segment(0) == 0


# (shape, dim): rows (dim last, one row split across threads or not) and lane sets (dim not
# last, in place and from a channels_last tile).
SEGMENT_CASES = [((3, 1000), -1), ((1, 20000), -1), ((2, 1000, 5), 1), ((2, 300, 4, 3), 1)]


@pytest.mark.parametrize("shape,dim", SEGMENT_CASES)
def test_segmented_argmax_is_the_single_pass_one(capability, segment, shape, dim):
    # Logits of 1e30 absorb the noise (1e30 + g == 1e30 in float), so every row holds ties:
    # the first of them must win, across segment boundaries; rows whose winner sits in a
    # later segment, and -inf everywhere else.
    length = shape[dim]
    x = torch.full(shape, float("-inf"))
    xm = x.movedim(dim, -1)  # a view: the reduced dim last
    rows = xm.reshape(-1, length).shape[0]
    picks = torch.stack([torch.arange(rows) * 97 % length, torch.arange(rows) * 31 % length + 200], 1) % length
    flat = xm.reshape(-1, length) if xm.is_contiguous() else None
    for r in range(rows):
        idx = torch.unravel_index(torch.tensor(r), xm.shape[:-1])
        for c in picks[r].tolist():
            xm[idx + (c,)] = 1e30
    assert flat is None or flat.data_ptr() == xm.data_ptr()
    want = picks.min(1).values.reshape(xm.shape[:-1])
    state = torch.tensor([11, 12])
    for xs in (x, x.to(memory_format=CL) if x.dim() == 4 else x):
        assert torch.equal(ops.sample(xs, 1, dim, None, state), want)
        hard, _ = fused(xs, 1.0, True, dim, rng_state=state)
        assert torch.equal(hard.movedim(dim, -1).argmax(-1), want)
        assert torch.equal(hard.sum(dim), torch.ones_like(want, dtype=hard.dtype))


@pytest.mark.parametrize("shape,dim", SEGMENT_CASES)
def test_segmented_results_equal_unsegmented(capability, shape, dim):
    x = torch.randn(shape)
    state = torch.tensor([21, 22])
    want = [ops.sample(x, 1, dim, None, state), fused(x, 1.0, True, dim, rng_state=state)[0]]
    before = ops._set_cpu_argmax_segment(64)
    try:
        got = [ops.sample(x, 1, dim, None, state), fused(x, 1.0, True, dim, rng_state=state)[0]]
    finally:
        ops._set_cpu_argmax_segment(before)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def _huge_bf16(length):
    try:
        return torch.full((1, length, 2), float("-inf"), dtype=torch.bfloat16)
    except RuntimeError as err:
        pytest.skip(f"not enough memory: {err}")


@pytest.mark.slow
def test_sample_not_last_dim_past_2_pow_31():
    # Issue 15: bf16 [1, 2^31 + 64, 2], the only finite logits at row 2^31 + 61, sampled
    # along dim 1 (the lane-set path), returned -2147483587. About 8.6 GB.
    length, winner = 2**31 + 64, 2**31 + 61
    x = _huge_bf16(length)
    x[0, winner] = 0.0
    assert ops.sample(x, 1, 1, None, torch.tensor([1, 2])).tolist() == [[winner, winner]]


@pytest.mark.slow
def test_hard_one_hot_not_last_dim_past_2_pow_31():
    # The one-hot of the same case: its one at 2^31 + 61 in both lanes. About 17 GB.
    length, winner = 2**31 + 64, 2**31 + 61
    x = _huge_bf16(length)
    x[0, winner] = 0.0
    try:
        y, _ = fused(x, 1.0, True, 1, rng_state=torch.tensor([1, 2]))
    except RuntimeError as err:
        pytest.skip(f"not enough memory: {err}")
    del x
    assert y[0, winner].tolist() == [1.0, 1.0]
    assert y.sum(1, dtype=torch.float32).tolist() == [[1.0, 1.0]]


@pytest.mark.parametrize("hard", [False, True])
def test_non_finite_rows_in_channels_last(capability, hard):
    # A NaN logit, an all -inf row and a +inf logit: those rows come out NaN, as contiguous.
    x = torch.randn(2, 20, 3, 4)
    x[1, 3, 0, 0] = float("nan")
    x[0, :, 1, 2] = float("-inf")
    x[0, 5, 2, 3] = float("inf")
    state = torch.tensor([3, 4])
    want, _ = fused(x, 1.0, hard, 1, rng_state=state)
    got, _ = fused(x.to(memory_format=CL), 1.0, hard, 1, rng_state=state)
    assert torch.equal(got.isnan(), want.isnan()) and want.isnan().any(1).sum() == 3
    assert torch.equal(got.nan_to_num(), want.nan_to_num())
