"""Shared test utilities: call the fused op directly (to get its rng_state) and the
reference with the same noise; tolerance tables per dtype."""

import torch

from gumbel_ext import reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Fused vs reference on the same noise: they differ only by float rounding (libm vs SLEEF
# log/exp, summation order), so within a few ulps of the output dtype -- for float64 a
# few ulps of float32, the precision of the noise itself.
TOL = {
    torch.float64: dict(atol=1e-6, rtol=1e-5),
    torch.float32: dict(atol=2e-6, rtol=2e-5),
    torch.float16: dict(atol=1e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=8e-3, rtol=1.6e-2),
}


def fused(x, tau=1.0, hard=False, dim=-1, generator=None, rng_state=None, tau_rows=None):
    """(out, rng_state) from the fused op."""
    return torch.ops.gumbel_ext.gumbel_softmax_forward(x, tau, tau_rows, hard, dim, generator, rng_state)


def ref(x, rng_state, tau=1.0, hard=False, dim=-1):
    return reference.gumbel_softmax(x, tau, hard, dim, rng_state=rng_state)


def assert_close(actual, expected, dtype=None):
    tol = TOL[dtype or actual.dtype]
    torch.testing.assert_close(actual, expected, equal_nan=True, **tol)


def gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)
