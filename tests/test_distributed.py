"""gumbel_ext.distributed on CPU with gloo: one pool of 3 worker processes for the whole
module (tests/distributed_workers.py), world sizes 1, 2 and 3 as groups of its first
ranks. Every rank's result is compared with the single-process gumbel_ext call on the
concatenated logits: torch.equal for sample and hard=True, a tolerance for soft outputs
and gradients (docs/distributed.md: the sum-exp runs in another order)."""

from __future__ import annotations

import multiprocessing as mp
import queue
import socket

import pytest
import torch

import gumbel_ext
import gumbel_ext.distributed as gd

import distributed_workers as dw

POOL = 3
TIMEOUT = 90  # seconds a case may take before the test fails (a hang is a failure)

# Uneven splits (a vocabulary not divisible by the world size), a 1-column and an empty slice.
SPLITS = {1: [[37]], 2: [[18, 19], [1, 36]], 3: [[12, 12, 13], [20, 1, 16], [0, 30, 7]]}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pool:
    def __init__(self):
        ctx = mp.get_context("spawn")
        port = _port()
        self.inboxes = [ctx.Queue() for _ in range(POOL)]
        self.outbox = ctx.Queue()
        self.procs = [ctx.Process(target=dw.serve, args=(r, POOL, port, self.inboxes[r], self.outbox), daemon=True)
                      for r in range(POOL)]
        for p in self.procs:
            p.start()
        for _ in range(POOL):
            self.outbox.get(timeout=TIMEOUT)

    def run(self, case, world, spec):
        """[(status, value, counts)] for ranks 0 .. world - 1."""
        for box in self.inboxes:
            box.put((case, world, spec))
        out = {}
        try:
            for _ in range(POOL):
                rank, result, counts = self.outbox.get(timeout=TIMEOUT)
                out[rank] = (result, counts)
        except queue.Empty:
            self.close(kill=True)
            pytest.fail(f"{case}: no answer from every rank within {TIMEOUT} s (a hang)")
        return [(out[r][0][0], out[r][0][1], out[r][1]) for r in range(world)]

    def close(self, kill=False):
        for box in self.inboxes:
            box.put(None)
        for p in self.procs:
            p.join(timeout=0 if kill else 10)
            if p.is_alive():
                p.kill()


@pytest.fixture(scope="module")
def pool():
    p = Pool()
    yield p
    p.close()


def _ok(results):
    for status, value, _ in results:
        assert status == "ok", value[2] if status == "error" else value
    return [v for _, v, _ in results]


def _cases(world):
    return [(world, s) for s in SPLITS[world]]


WORLD_SPLITS = _cases(1) + _cases(2) + _cases(3)


# ------------------------------------------------------------------------------- sample
SAMPLE_KWARGS = [
    {},
    {"top_k": 5, "return_logprobs": True},
    {"top_k": "rows", "temperature": "mixed", "seeds": "rows"},
    {"temperature": 0.7},
    {"seeds": "rows", "offsets": "rows"},
    {"temperature": "mixed", "seeds": "rows", "return_logprobs": True},
    {"temperature": 1.3, "return_logprobs": True},
]


def _materialize(kw, rows_shape):
    kw = dict(kw)
    n = 1
    for d in rows_shape:
        n *= d
    if kw.get("seeds") == "rows":
        kw["seeds"] = (torch.arange(n, dtype=torch.int64) * 7919 - 3).reshape(rows_shape)
    if kw.get("offsets") == "rows":
        kw["offsets"] = (torch.arange(n, dtype=torch.int64) * 4 + (1 << 40)).reshape(rows_shape)
    if kw.get("top_k") == "rows":  # off, 1, a few, and more than the vocabulary
        kw["top_k"] = torch.tensor([0, 1, 3, 100] * n)[:n].reshape(rows_shape)
    if kw.get("temperature") == "mixed":  # greedy and sampled rows in one batch
        kw["temperature"] = torch.tensor([0.0, 0.5, 1.0, 2.0] * n)[:n].reshape(rows_shape)
    return kw


def _expected_sample(full, dim, k, kw, seed=0):
    torch.manual_seed(seed)
    return gumbel_ext.sample(full, k, dim, **kw)


@pytest.mark.parametrize("world,sizes", WORLD_SPLITS)
@pytest.mark.parametrize("kwargs", SAMPLE_KWARGS, ids=lambda k: "-".join(k) or "plain")
def test_sample_equals_unsharded(pool, world, sizes, kwargs):
    torch.manual_seed(world)
    full = torch.randn(4, 37) * 3
    kw = _materialize(kwargs, [4])
    results = _ok(pool.run("case_sample", world, {"full": full, "dim": 1, "sizes": sizes, "kwargs": kw}))
    expected = _expected_sample(full, 1, 1, kw)
    for got in results:
        if kw.get("return_logprobs"):
            assert torch.equal(got[0], expected[0])
            torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=0)
        else:
            assert torch.equal(got, expected)


@pytest.mark.parametrize("world,sizes", [(2, [1, 12]), (3, [4, 4, 5])])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("kwargs", [{}, {"temperature": 0.5, "seeds": "rows"}, {"top_k": 4, "seeds": "rows"}],
                         ids=["plain", "sampler", "top_k"])
def test_sample_3d_dim_not_last(pool, world, sizes, dtype, num_samples, kwargs):
    torch.manual_seed(num_samples)
    full = (torch.randn(2, 13, 3) * 2).to(dtype)
    kw = _materialize(kwargs, [2, 3])
    results = _ok(pool.run("case_sample", world, {"full": full, "dim": 1, "sizes": sizes, "kwargs": kw,
                                                  "num_samples": num_samples}))
    expected = _expected_sample(full, 1, num_samples, kw)
    for got in results:
        assert torch.equal(got, expected)


def test_sample_ties_and_masks(pool):
    """Ties across ranks (greedy, bf16-like repeated values) go to the lowest global index;
    -inf masks are never drawn."""
    full = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, -float("inf"), 2.0],
                         [-float("inf"), -float("inf"), 5.0, 5.0, 5.0, 1.0, 1.0]])
    for kw, k in (({"temperature": 0.0}, 3), ({"temperature": 0.0}, 1), ({}, 2), ({"top_k": 2}, 2),
                  ({"top_k": 3, "temperature": 0.5}, 1)):
        results = _ok(pool.run("case_sample", 3, {"full": full, "dim": 1, "sizes": [2, 2, 3], "kwargs": kw,
                                                   "num_samples": k}))
        expected = _expected_sample(full, 1, k, kw)
        for got in results:
            assert torch.equal(got, expected)


def test_sample_communication_is_o_rows(pool):
    """Calls and bytes per call do not grow with the vocabulary: 2 collectives (metadata,
    candidates) for the plain path, 3 with temperature (the row max first) or top-k (the
    row max and each rank's top-k values, in one all_gather)."""
    R, meta = 6, 22 * 8
    cases = (({}, 2, meta + R * 2 * 8), ({"temperature": 0.8}, 3, meta + R * 2 * 8 + R * 2 * 8),
             ({"top_k": 5}, 3, meta + R * (2 + 5) * 8 + R * 2 * 8))
    sent = {}
    for V in (40, 4000):
        full = torch.randn(R, V)
        for i, (kw, calls, _) in enumerate(cases):
            res = pool.run("case_sample", 2, {"full": full, "dim": 1, "sizes": [V // 2, V - V // 2], "kwargs": kw})
            _ok(res)
            for _, _, counts in res:
                assert counts["calls"] == calls, counts["names"]
                assert set(counts["names"]) <= {"all_gather_single", "all_gather_into_tensor", "all_reduce"}
                sent.setdefault((V, i), []).append(counts["bytes"])
    for i, (_, _, expected) in enumerate(cases):
        assert sent[(40, i)] == sent[(4000, i)] == [expected, expected]


# ------------------------------------------------------------------------------ softmax
def _expected_softmax(full, dim, kw, weight, seed=0):
    x = full.clone().requires_grad_()
    torch.manual_seed(seed)
    y = gumbel_ext.gumbel_softmax(x, dim=dim, **kw)
    (y * weight).sum().backward()
    return y.detach(), x.grad


@pytest.mark.parametrize("world,sizes", WORLD_SPLITS)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("seeded", [False, True])
def test_gumbel_softmax_equals_unsharded(pool, world, sizes, hard, seeded):
    torch.manual_seed(10 + world)
    full = torch.randn(3, 37)
    weight = torch.randn(3, 37)
    kw = {"tau": 0.7, "hard": hard}
    if seeded:
        kw["seeds"] = torch.tensor([5, -6, 1 << 62])
    results = _ok(pool.run("case_softmax", world, {"full": full, "dim": 1, "sizes": sizes, "kwargs": kw,
                                                    "weight": weight}))
    y_ref, g_ref = _expected_softmax(full, 1, kw, weight)
    for rank, (y, g) in enumerate(results):
        y_slice = dw.local_part(y_ref, 1, sizes, rank)
        g_slice = dw.local_part(g_ref, 1, sizes, rank)
        if hard:
            assert torch.equal(y, y_slice)
        else:
            torch.testing.assert_close(y, y_slice, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(g, g_slice, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float64, 1e-12)])
@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_3d_dtypes(pool, dtype, tol, hard):
    torch.manual_seed(3)
    full = torch.randn(2, 11, 3, dtype=torch.float64).to(dtype)
    weight = torch.randn(2, 11, 3, dtype=torch.float64).to(dtype)
    kw = {"tau": 1.5, "hard": hard}
    sizes = [4, 1, 6]
    results = _ok(pool.run("case_softmax", 3, {"full": full, "dim": 1, "sizes": sizes, "kwargs": kw,
                                                "weight": weight}))
    y_ref, g_ref = _expected_softmax(full, 1, kw, weight)
    for rank, (y, g) in enumerate(results):
        assert y.dtype == dtype and g.dtype == dtype
        if hard:
            assert torch.equal(y, dw.local_part(y_ref, 1, sizes, rank))
        else:
            torch.testing.assert_close(y, dw.local_part(y_ref, 1, sizes, rank), atol=tol, rtol=tol)
        torch.testing.assert_close(g, dw.local_part(g_ref, 1, sizes, rank), atol=tol, rtol=tol)


@pytest.mark.parametrize("world,sizes", [(1, [5]), (2, [2, 3]), (3, [1, 2, 2])])
@pytest.mark.parametrize("hard", [False, True])
def test_gradcheck_float64(pool, world, sizes, hard):
    torch.manual_seed(4)
    full = torch.randn(2, 5, dtype=torch.float64)
    spec = {"full": full, "dim": 1, "sizes": sizes,
            "kwargs": {"tau": 0.8, "hard": hard, "seeds": torch.tensor([11, 12])}}
    for err in _ok(pool.run("case_gradcheck", world, spec)):
        assert err < 1e-6


def test_gumbel_softmax_communication(pool):
    """Forward: metadata + one [rows, 3] exchange; backward: one all_reduce of [rows]."""
    for V in (30, 3000):
        full, weight = torch.randn(4, V), torch.randn(4, V)
        res = pool.run("case_softmax", 2, {"full": full, "dim": 1, "sizes": [V // 2, V - V // 2],
                                            "kwargs": {"tau": 1.0}, "weight": weight})
        _ok(res)
        for _, _, counts in res:
            assert counts["calls"] == 3, counts["names"]
            assert counts["bytes"] == 22 * 8 + 4 * 3 * 8 + 4 * 8


# ------------------------------------------------------------------------------- errors
def _errors(results):
    assert all(status == "error" for status, _, _ in results), [s for s, _, _ in results]
    return [value for _, value, _ in results]


def test_mismatched_dims_raise_on_every_rank(pool):
    full = torch.randn(4, 20)
    spec = {"full": full, "dim": 1, "sizes": [10, 10], "rank1_shape": (5, 10)}
    for kind, msg, _ in _errors(pool.run("case_sample", 2, spec)):
        assert kind == "ValueError" and "dims other than dim" in msg and "rank 1: [5, *]" in msg


def test_mismatched_dtype_raises_on_every_rank(pool):
    spec = {"full": torch.randn(4, 20), "dim": 1, "sizes": [10, 10], "rank1_dtype": torch.float64}
    for kind, msg, _ in _errors(pool.run("case_sample", 2, spec)):
        assert kind == "TypeError" and "same dtype" in msg


def test_mismatched_generator_raises_on_every_rank(pool):
    spec = {"full": torch.randn(4, 20), "dim": 1, "sizes": [10, 10], "seed_skew": 1}
    for kind, msg, _ in _errors(pool.run("case_sample", 2, spec)):
        assert kind == "RuntimeError" and "generator states" in msg
    spec = {"full": torch.randn(4, 20), "dim": 1, "sizes": [10, 10], "seed_skew": 1, "weight": torch.ones(4, 20)}
    for kind, msg, _ in _errors(pool.run("case_softmax", 2, spec)):
        assert kind == "RuntimeError" and "generator states" in msg


def test_bad_argument_on_one_rank_raises_on_every_rank(pool):
    spec = {"full": torch.randn(4, 20), "dim": 1, "sizes": [10, 10], "rank1_kwargs": {"temperature": -1.0}}
    errors = _errors(pool.run("case_sample", 2, spec))
    assert errors[1][0] == "ValueError" and "temperature" in errors[1][1]
    assert errors[0][0] == "RuntimeError" and "rank(s) [1] failed" in errors[0][1]


def test_filters_not_implemented(pool):
    spec = {"full": torch.randn(4, 20), "dim": 1, "sizes": [10, 10], "kwargs": {"top_p": 0.9}}
    for kind, msg, _ in _errors(pool.run("case_sample", 2, spec)):
        assert kind == "NotImplementedError" and "top_p" in msg


def test_nan_row_raises_on_every_rank(pool):
    full = torch.randn(3, 20)
    full[2, 15] = float("nan")
    for kw in ({}, {"temperature": 0.5}):
        for kind, msg, _ in _errors(pool.run("case_sample", 2, {"full": full, "dim": 1, "sizes": [10, 10],
                                                                 "kwargs": kw})):
            assert kind == "ValueError" and "row 2" in msg and "NaN" in msg


# ------------------------------------------------------------------- keyed_noise (local)
@pytest.mark.parametrize("col_start,length", [(0, 103), (1, 7), (3, 50), (5, 98), (64, 1), (101, 2)])
def test_keyed_noise_equals_fused_noise(col_start, length):
    from gumbel_ext._keyed_noise import keyed_noise
    x = torch.empty(6, 103)
    for seed, offset in ((123, 0), (-(1 << 62), 8), ((1 << 63) - 1, (1 << 62) - 4)):
        state = torch.tensor([seed, offset])
        noise = torch.ops.gumbel_ext.gumbel_noise(x, -1, state)
        rows = torch.arange(6)
        got = keyed_noise(torch.full((6,), seed), torch.full((6,), offset), rows, col_start, length)
        assert torch.equal(got, noise[:, col_start:col_start + length])


def test_keyed_noise_every_cpu_copy():
    """Each per-ISA copy (DEFAULT / AVX2 / AVX-512) draws the same bits: they share
    NoiseStream, and the noise is bit-identical across copies (Note [Bit-identical noise])."""
    from gumbel_ext._keyed_noise import keyed_noise

    ops = torch.ops.gumbel_ext
    before = ops._cpu_capability()
    keys, offs, rows = torch.tensor([7, -9, 1 << 50]), torch.tensor([0, 4, 1 << 40]), torch.tensor([0, 5, 1 << 33])
    outs = []
    try:
        for cap in ops._cpu_capabilities():
            ops._set_cpu_capability(cap)
            outs.append(keyed_noise(keys, offs, rows, 13, 301))
    finally:
        ops._set_cpu_capability(before)
    assert all(torch.equal(o, outs[0]) for o in outs)


def test_keyed_noise_64bit_rows_and_offsets():
    """Row counters, offsets and columns past 2^32 (the carries of the 64-bit counter words),
    bit for bit: the Philox bits and the uniform from the torch-op reference (integer math,
    exact), then the fused transform -log(-log(u)) through the active CPU copy's own noise
    log (_cpu_vec_math)."""
    from gumbel_ext._keyed_noise import keyed_noise
    from gumbel_ext.reference import _MASK32, philox4x32_10

    ops = torch.ops.gumbel_ext
    keys = torch.tensor([1, -5, 1 << 40, -(1 << 63)])
    offs = torch.tensor([(1 << 62), 4, (1 << 33) + 12, (1 << 32) - 4])
    rows = torch.tensor([(1 << 62) + 3, (1 << 32) - 1, 7, (1 << 63) - 1])
    col_start, length = (1 << 35) + 2, 33
    got = keyed_noise(keys, offs, rows, col_start, length)
    c = torch.arange(col_start, col_start + length).view(1, -1)
    n = offs.view(-1, 1) // 4 + c // 4
    r = rows.view(-1, 1).expand_as(n)
    words = philox4x32_10((n & _MASK32, (n >> 32) & _MASK32, r & _MASK32, (r >> 32) & _MASK32), keys.view(-1, 1))
    bits = torch.stack(words, dim=-1).gather(-1, (c % 4).expand_as(n).unsqueeze(-1)).squeeze(-1)
    u = ((bits >> 9).to(torch.float32) + 0.5) * 2.0**-23  # exact
    neg_log = lambda t: -ops._cpu_vec_math(t.contiguous(), "log")  # noqa: E731
    assert torch.equal(got, neg_log(neg_log(u)))


def test_seeded_gumbel_softmax_draws_the_sampler_noise():
    """gumbel_softmax(seeds=) perturbs with exactly the noise sample(seeds=) uses: its hard
    argmax equals the sampler's draw at temperature 1 wherever (x - M) + g and x + g
    rank alike (checked on logits that make the shift exact)."""
    torch.manual_seed(0)
    x = torch.randint(-8, 8, (16, 300)).float()  # integers: x - M is exact
    seeds, offsets = torch.arange(16) * 31 + 1, torch.arange(16) * 1024
    y = gumbel_ext.gumbel_softmax(x, hard=True, seeds=seeds, offsets=offsets)
    assert torch.equal(y.argmax(-1), gumbel_ext.sample(x, seeds=seeds, offsets=offsets))


def test_keyed_noise_opcheck():
    from torch.library import opcheck
    args = (torch.tensor([1, 2]), torch.tensor([0, 4]), torch.tensor([0, 9]), 3, 10)
    opcheck(torch.ops.gumbel_ext.keyed_noise, args)


# ---------------------------------------------------------------------------- benchmark
def test_benchmark_tiny(pool):
    """benchmarks/distributed.py's measurement on 2 ranks, tiny (the --quick mode spawns
    its own processes; this runs the same code on the pool): tokens equal between the two
    methods (it raises otherwise) and ours sends O(rows) bytes, the gather O(rows x V)."""
    from benchmarks import distributed as bench

    rows = _ok(pool.run("case_bench", 2, {"batches": [4], "vocab": 2048, "iters": 1}))[0]
    assert {r["mode"] for r in rows} == {"plain", "T=0.7, seeds"}
    for r in rows:
        assert r["ours_bytes_per_rank"] * 10 < r["gather_bytes_per_rank"] == 4 * 1024 * 4
    assert "| 2 | 4 x 2048 |" in bench.markdown(rows)


# ------------------------------------------------------------------------------ example
def test_example_quick():
    """examples/vocab_parallel_sampling.py --quick: spawns 2 gloo ranks and checks the
    sharded decode's tokens against the unsharded one (exit status 1 if they differ)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "vocab_parallel_sampling.py"
    result = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sharded == unsharded tokens: True" in result.stdout


# ------------------------------------------------------------------------------ DTensor
@pytest.mark.parametrize("shape,dim,placement", [
    ((6, 37), 1, 1),      # vocabulary-parallel (uneven: 13, 13, 11)
    ((6, 37), 1, 0),      # rows sharded: local, global row keys
    ((6, 37), 1, None),   # replicated
    ((4, 11, 5), 1, 2),   # 3-D, dim not last, sharded on a trailing row dim
    ((4, 11, 5), 1, 0),
])
@pytest.mark.parametrize("seeded", [False, True])
def test_dtensor_equals_unsharded(pool, shape, dim, placement, seeded):
    torch.manual_seed(5)
    full, weight = torch.randn(shape), torch.randn(shape)
    rows = [s for i, s in enumerate(shape) if i != dim]
    kw = {"temperature": 0.8, "seeds": (torch.arange(int(torch.tensor(rows).prod())) * 3 + 1).reshape(rows)} \
        if seeded else {}
    results = _ok(pool.run("case_dtensor", 3, {"full": full, "dim": dim, "placement": placement, "kwargs": kw,
                                                "weight": weight}))
    torch.manual_seed(0)
    idx_ref = gumbel_ext.sample(full, 1, dim, **kw)
    x = full.clone().requires_grad_()
    torch.manual_seed(1)
    y_ref = gumbel_ext.gumbel_softmax(x, tau=0.7, dim=dim, seeds=kw.get("seeds"))
    (y_ref * weight).sum().backward()
    out_dim = None if placement in (None, dim) else (placement if placement < dim else placement - 1)
    for idx, idx_placement, y, g, d, lo, n in results:
        cut = (lambda t, e=d: t) if d is None else (lambda t, e=d: t.narrow(e, lo, n))
        if out_dim is None:
            assert idx_placement == "R" and torch.equal(idx, idx_ref)
        else:
            assert torch.equal(idx, idx_ref.narrow(out_dim, lo, n))
        torch.testing.assert_close(y, cut(y_ref.detach()), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(g, cut(x.grad), atol=1e-6, rtol=1e-5)
