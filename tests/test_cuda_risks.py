"""What the CPU emulator of the CUDA kernels cannot check, run by the first GPU session
(issue 12, scripts/gpu_session.py): CUDA graph capture at long rows (the shared-memory
opt-in and the regenerate paths), a user generator under capture, hard-versus-soft
backward bit for bit at the target shape, aligned against misaligned rows, and CPU
against CUDA bit for bit on hard outputs and sample indices.

`test_every_strategy_small` is what the session runs under `compute-sanitizer --tool
memcheck`: one small launch of every kernel strategy. Without a GPU every test skips.
"""

from __future__ import annotations

import pytest
import torch

import gumbel_ext
from gumbel_ext import _ops, reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

ops = torch.ops.gumbel_ext

# Long rows: 32000 fits the opt-in shared memory (227 KiB on Hopper); 70000 and 128256 do
# not (fp32 x alone is 280 / 513 KB): with so few rows they are split across P blocks
# (Note [Split rows]: a cluster or a cooperative launch, captured in the graph).
LONG = [(4, 32000), (2, 70000), (3, 128256)]


@pytest.fixture(autouse=True)
def _needs_cuda_kernels():
    if not _ops.has_kernel(torch.device("cuda")):
        pytest.skip("gumbel_ext was built without CUDA kernels")


def logits(shape, dtype=torch.float32, seed=0, scale=3.0):
    # Drawn on the GPU: these tests are about the device, and the CPU copy would be slow at 8192x32000.
    gen = torch.Generator("cuda").manual_seed(seed)
    return (torch.randn(shape, generator=gen, device="cuda") * scale).to(dtype)


def state(seed, offset=0, device="cuda"):
    return torch.tensor([seed, offset], dtype=torch.int64, device=device)


def warm_up(fn):
    """Capture needs the allocator and the kernels warm, on a side stream (as torch's docs do)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


def step_fn(x, grad, hard, generator=None):
    def step():
        out, used = ops.gumbel_softmax_forward(x, 0.5, None, hard, -1, generator, None)
        gl, _ = ops.gumbel_softmax_backward(grad, x if hard else out, used, 0.5, None, hard, -1, False)
        return out, used, gl

    return step


# --------------------------------------------------------------- graphs at long rows
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("shape", LONG, ids=lambda s: "x".join(map(str, s)))
def test_graph_replay_long_rows(shape, hard):
    """Each replay draws fresh noise, and replays the eager result for the (seed, offset)
    it recorded: forward and backward, through every long-row path."""
    x, grad = logits(shape, seed=1), logits(shape, seed=2)
    step = step_fn(x, grad, hard)
    warm_up(step)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, used, gl = step()
    results = []
    for _ in range(2):
        graph.replay()
        results.append((out.clone(), used.clone(), gl.clone()))
    torch.cuda.synchronize()
    assert not torch.equal(results[0][0], results[1][0]), "a replay reused the previous noise"
    assert results[0][1][1] != results[1][1][1], "the replays recorded the same Philox offset"
    for out_r, used_r, gl_r in results:
        out_e, _ = ops.gumbel_softmax_forward(x, 0.5, None, hard, -1, None, used_r)
        gl_e, _ = ops.gumbel_softmax_backward(grad, x if hard else out_e, used_r, 0.5, None, hard, -1, False)
        assert torch.equal(out_r, out_e)
        assert torch.equal(gl_r, gl_e)
        # And the replay is right, not only repeatable: the reference on the same noise.
        want = reference.gumbel_softmax(x, 0.5, hard, -1, rng_state=used_r)
        if hard:
            assert torch.equal(out_r, want)
        else:
            torch.testing.assert_close(out_r, want, rtol=1e-5 + shape[1] * 2.0**-24, atol=1e-6)


def test_graph_user_generator_registered():
    """A user torch.Generator('cuda') registered with the graph: fresh noise on each replay,
    the generator's offset advances, and the recorded (seed, offset) is its own."""
    gen = torch.Generator("cuda").manual_seed(1234)
    x, grad = logits((4, 70000), seed=3), logits((4, 70000), seed=4)
    step = step_fn(x, grad, True, gen)
    warm_up(step)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(gen)
    with torch.cuda.graph(graph):
        out, used, _ = step()
    graph.replay()
    first_out, first_used = out.clone(), used.clone()
    graph.replay()
    torch.cuda.synchronize()
    assert first_used[0].item() == gen.initial_seed()
    assert used[1].item() > first_used[1].item()
    assert not torch.equal(first_out, out)
    out_e, _ = ops.gumbel_softmax_forward(x, 0.5, None, True, -1, None, used)
    assert torch.equal(out, out_e)


# ------------------------------------------------------ hard == soft backward, bitwise
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_hard_backward_equals_soft_bitwise_at_target_shape(dtype):
    """Hard mode regenerates y_soft in its backward; it must give the soft backward's bits
    (8192x32000: the benchmark's target shape, the shared-memory path)."""
    x, grad = logits((8192, 32000), dtype, seed=5), logits((8192, 32000), dtype, seed=6)
    soft, used = ops.gumbel_softmax_forward(x, 1.0, None, False, -1, None, None)
    g_soft, _ = ops.gumbel_softmax_backward(grad, soft, used, 1.0, None, False, -1, False)
    del soft
    g_hard, _ = ops.gumbel_softmax_backward(grad, x, used, 1.0, None, True, -1, False)
    assert torch.equal(g_soft, g_hard)


# ------------------------------------------------------------ aligned vs misaligned
def misaligned_rows(make, dtype):
    """Rows that do not all start on a 16-byte boundary: an odd vocabulary (row r starts
    r * 50257 elements in), a warp-kernel length C % 4 != 0, or contiguous rows at a
    storage offset of 1..3 elements."""
    if make == "vocab-50257":
        return logits((33, 50257), dtype, seed=7)
    if make == "warp-1001":
        return logits((33, 1001), dtype, seed=7)
    offset = int(make.removeprefix("offset-"))
    return logits((33 * 32000 + offset,), dtype, seed=8)[offset:].view(33, 32000)


@pytest.mark.parametrize("make", ["vocab-50257", "warp-1001", "offset-1", "offset-2", "offset-3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_misaligned_rows_equal_aligned_copy(make, dtype):
    """Note [Per-row vector loads]: each row picks 16-byte or column-by-column accesses
    for itself, and the two paths give the same bits (same noise, same summation order):
    forward, sample and both backwards equal those of the same values in a fresh tensor,
    and the CPU op's on the same noise (hard and sample bitwise)."""
    x = misaligned_rows(make, dtype)
    assert x.is_contiguous()
    if x.data_ptr() % 16 == 0 and (x.stride(0) * x.element_size()) % 16 == 0:
        pytest.skip("every row is 16-byte aligned in this dtype (fp64 at offset 2)")
    aligned = x.clone()
    grad = logits(tuple(x.shape), dtype, seed=9)
    s = state(99, 64)
    for hard in (False, True):
        a, used = ops.gumbel_softmax_forward(x, 0.8, None, hard, -1, None, s)
        b, _ = ops.gumbel_softmax_forward(aligned, 0.8, None, hard, -1, None, s)
        assert torch.equal(a, b)
        cpu, _ = ops.gumbel_softmax_forward(x.cpu(), 0.8, None, hard, -1, None, s.cpu())
        if hard:
            assert torch.equal(a.cpu(), cpu)
        else:  # the device's exp2.approx and tree sums against the CPU's: within a few ulp
            wide = dtype.itemsize >= 4
            tol = dict(rtol=1e-5 + x.shape[1] * 2.0**-24, atol=1e-6) if wide else dict(rtol=2e-2, atol=1e-5)
            torch.testing.assert_close(a.cpu(), cpu, **tol)
        saved = x if hard else a
        g_misaligned, _ = ops.gumbel_softmax_backward(grad, saved, used, 0.8, None, hard, -1, False)
        g_aligned, _ = ops.gumbel_softmax_backward(grad.clone(), saved.clone(), used, 0.8, None, hard, -1, False)
        assert torch.equal(g_misaligned, g_aligned)
    assert torch.equal(ops.sample(x, 1, -1, None, s), ops.sample(aligned, 1, -1, None, s))
    assert torch.equal(ops.sample(x, 1, -1, None, s).cpu(), ops.sample(x.cpu(), 1, -1, None, s.cpu()))


# ------------------------------------------------------------- CPU == CUDA, bitwise
@pytest.mark.parametrize("shape", [(1024, 32000), (64, 128256), (4096, 10), (9, 2**20)],
                         ids=lambda s: "x".join(map(str, s)))
def test_cpu_and_cuda_agree_bitwise_on_hard_and_sample(shape):
    """The noise contract says CPU and CUDA draw the same noise for the same (seed,
    offset): hard one-hots and sample indices must be equal, not close."""
    x = logits(shape, seed=9)
    x_cpu = x.cpu()
    s = state(0x5EED, 4 * 12345)
    hard, _ = ops.gumbel_softmax_forward(x, 1.0, None, True, -1, None, s)
    hard_cpu, _ = ops.gumbel_softmax_forward(x_cpu, 1.0, None, True, -1, None, s.cpu())
    differ = (hard.cpu() != hard_cpu).any(-1).nonzero().flatten().tolist()
    assert not differ, f"hard one-hots differ on rows {differ[:10]} ({len(differ)} rows)"
    for k in (1, 4):
        idx = ops.sample(x, k, -1, None, s)
        idx_cpu = ops.sample(x_cpu, k, -1, None, s.cpu())
        assert torch.equal(idx.cpu(), idx_cpu), f"sample(k={k}) indices differ"


# ------------------------------------------------------ the compute-sanitizer run
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_every_strategy_small(dtype):
    """One small launch of every strategy: forward soft/hard and backward for warp-per-row
    (several rows per warp, one row per warp), block-per-row in shared memory, a row
    split across blocks (2 x 70000: P = 8); a dim that is not last; misaligned rows; sample k = 1 and top-k;
    the noise alone. Cheap enough to run under compute-sanitizer."""
    s = state(3, 0)
    cases = [((37, 7), -1), ((9, 1000), -1), ((3, 4097), -1), ((2, 70000), -1), ((4, 33, 5), 1)]
    for shape, dim in cases:
        x, grad = logits(shape, dtype, seed=10), logits(shape, dtype, seed=11)
        for hard in (False, True):
            out, used = ops.gumbel_softmax_forward(x, 0.7, None, hard, dim, None, s)
            gl, _ = ops.gumbel_softmax_backward(grad, x if hard else out, used, 0.7, None, hard, dim, False)
            assert torch.isfinite(gl).all()
        for k in (1, 3):
            idx = ops.sample(x, k, dim, None, s)
            assert idx.min() >= 0 and idx.max() < shape[dim]
        assert torch.isfinite(ops.gumbel_noise(x, dim, s)).all()
    odd = logits((5, 1001), dtype, seed=12)[:, 1:]
    assert torch.isfinite(gumbel_ext.gumbel_softmax(odd, hard=True)).all()
    torch.cuda.synchronize()
