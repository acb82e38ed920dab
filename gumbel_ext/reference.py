"""Pure-PyTorch Gumbel-Softmax with the same noise as the fused kernels.

Two jobs: the oracle every fused kernel is tested against element-wise, and the
fallback for devices without a kernel (MPS, XLA, ...) or when the extension cannot be
built. It implements csrc/gumbel_noise.h in torch ops: Philox4x32-10 with key = seed,
counter = (offset/4 + c/4, row), lane c % 4, u = ((bits >> 9) + 0.5) * 2^-23 and
g = -log(-log(u)) in float32, then Note [Per-row softmax math].
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

_MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85


def _mulhilo(a: int, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    # 32x32 -> 64-bit product in int64 without overflow: split the constant in 16-bit halves.
    p_lo = b * (a & 0xFFFF)
    p_hi = b * (a >> 16)
    mid = p_lo + ((p_hi & 0xFFFF) << 16)
    return ((p_hi >> 16) + (mid >> 32)) & _MASK32, mid & _MASK32


def philox4x32_10(counter: Tuple[torch.Tensor, ...], seed: int) -> Tuple[torch.Tensor, ...]:
    """Philox4x32-10 of four int64 tensors holding 32-bit words; ``seed`` is the 64-bit key."""
    x, y, z, w = counter
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for i in range(10):
        hi0, lo0 = _mulhilo(_M0, x)
        hi1, lo1 = _mulhilo(_M1, z)
        x, y, z, w = hi1 ^ y ^ k0, lo1, hi0 ^ w ^ k1, lo0
        k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    return x, y, z, w


def noise_at(seed: int, offset: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Float32 Gumbel noise of element (rows, cols) (int64 tensors, broadcast together)."""
    seed &= (1 << 64) - 1
    rows, cols = torch.broadcast_tensors(rows, cols)
    n = cols // 4 + (offset & ((1 << 64) - 1)) // 4
    words = philox4x32_10((n & _MASK32, (n >> 32) & _MASK32, rows & _MASK32, (rows >> 32) & _MASK32), seed)
    lane = (cols % 4).unsqueeze(-1)
    bits = torch.stack(words, dim=-1).gather(-1, lane).squeeze(-1)
    u = ((bits >> 9).to(torch.float32) + 0.5) * 2.0**-23
    return -torch.log(-torch.log(u))


def noise_rows(rows: int, length: int, seed: int, offset: int, device: torch.device) -> torch.Tensor:
    """Float32 Gumbel noise of shape ``[rows, length]`` for element (row r, column c)."""
    r = torch.arange(rows, device=device, dtype=torch.int64).view(-1, 1)
    c = torch.arange(length, device=device, dtype=torch.int64).view(1, -1)
    return noise_at(seed, offset, r, c)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gumbel_noise(logits: torch.Tensor, dim: int, rng_state: torch.Tensor) -> torch.Tensor:
    """The float32 noise each element of ``logits`` gets for ``rng_state = (seed, offset)``."""
    seed, offset = (int(v) for v in rng_state.tolist())
    x = logits.reshape(1) if logits.dim() == 0 else logits.movedim(dim, -1)
    length = x.shape[-1]
    rows = x.numel() // length if length else 0
    g = noise_rows(rows, length, seed, offset, logits.device).reshape(x.shape)
    return g.reshape(()) if logits.dim() == 0 else g.movedim(-1, dim)


def _as_int64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def draw_rng_state(
    device: torch.device, generator: Optional[torch.Generator] = None, length: int = 1
) -> torch.Tensor:
    """The (seed, offset) the fused op on ``device`` takes from ``generator`` (or the
    device's default one) for rows of ``length`` categories, advancing it as the op does:
    a seeded program draws the same noise whichever path runs.

    - CPU: the op takes ``random64()`` from the mt19937 generator as the seed, offset 0
      (csrc/ops.cpp). ``random_`` over the full int64 range takes exactly one
      ``random64()`` and keeps all its bits (``torch.randint`` would fold it into a range).
    - CUDA: the op reserves ``philox_increment(length)`` counters with
      ``philox_cuda_state``, getting (the generator's seed, its offset before the
      increment) (Note [CUDA rng_state]); the same through ``get_offset``/``set_offset``.
      Not under CUDA graph capture, where the fused op is the only path.
    - Other devices have no fused op: a 64-bit seed from their generator, offset 0.
    """
    device = torch.device(device)
    if device.type == "cuda":
        if generator is None:
            index = device.index if device.index is not None else torch.cuda.current_device()
            generator = torch.cuda.default_generators[index]
        seed, offset = generator.initial_seed(), generator.get_offset()
        generator.set_offset(offset + 4 * ((max(length, 0) + 3) // 4))  # philox_increment
        return torch.tensor([_as_int64(seed), offset], dtype=torch.int64, device=device)
    seed = torch.empty((), dtype=torch.int64, device=device).random_(-(2**63), None, generator=generator)
    return torch.stack([seed, torch.zeros_like(seed)])


def _row_length(logits: torch.Tensor, dim: int) -> int:
    return logits.shape[dim] if logits.dim() else 1


def soft_from_noise(
    logits: torch.Tensor, noise: torch.Tensor, tau: Union[float, torch.Tensor], dim: int
) -> torch.Tensor:
    """y = softmax((logits + noise) / tau) by Note [Per-row softmax math], in the accumulation dtype.

    Differentiable in ``logits`` and a tensor ``tau``.
    """
    acc = _acc_dtype(logits.dtype)
    x = logits.to(acc) + noise.to(acc)
    x_max = x.amax(dim=dim, keepdim=True).detach()
    inv_tau = 1.0 / (tau.to(acc) if isinstance(tau, torch.Tensor) else torch.tensor(tau, dtype=acc))
    e = torch.exp((x - x_max) * inv_tau.to(x.device))
    return e * (1.0 / e.sum(dim=dim, keepdim=True))


def hard_from_noise(logits: torch.Tensor, noise: torch.Tensor, dim: int) -> torch.Tensor:
    """The exact one-hot of argmax(logits + noise) (lowest index on ties); NaN rows where
    the max is not finite, as the soft output is."""
    x = logits.to(_acc_dtype(logits.dtype)) + noise.to(_acc_dtype(logits.dtype))
    x_max, index = x.max(dim=dim, keepdim=True)
    one_hot = torch.zeros_like(x).scatter_(dim, index, 1.0)
    return torch.where(torch.isfinite(x_max), one_hot, torch.full_like(x, float("nan")))


def gumbel_softmax(
    logits: torch.Tensor,
    tau: Union[float, torch.Tensor] = 1.0,
    hard: bool = False,
    dim: int = -1,
    *,
    generator: Optional[torch.Generator] = None,
    rng_state: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Reference Gumbel-Softmax. ``rng_state`` replays a fused call's noise; otherwise one
    is drawn from ``generator``. ``tau`` is a float or a tensor broadcastable to the
    logits' shape with ``dim`` of size 1. Straight-through for ``hard``: the values are the
    exact one-hot, the gradient is the soft one."""
    if logits.numel() == 0:
        return logits.clone()
    if rng_state is None:
        rng_state = draw_rng_state(logits.device, generator, _row_length(logits, dim))
    noise = gumbel_noise(logits, dim, rng_state)
    y_soft = soft_from_noise(logits, noise, tau, dim)
    if hard:
        y_soft = y_soft.to(logits.dtype)
        y_hard = hard_from_noise(logits, noise, dim).to(logits.dtype)
        return y_hard + (y_soft - y_soft.detach())
    return y_soft.to(logits.dtype)


def sample(
    logits: torch.Tensor,
    num_samples: int = 1,
    dim: int = -1,
    *,
    generator: Optional[torch.Generator] = None,
    rng_state: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Reference Gumbel-max (num_samples=1) / Gumbel-top-k sampling of category indices."""
    if logits.numel() == 0:
        # No row, no draw from the generator, as the fused op (a row of no category is
        # refused by num_samples >= 1 before this).
        shape = list(logits.shape)
        if shape:
            shape[dim] = num_samples
            if num_samples == 1:
                del shape[dim]
        return torch.empty(shape, dtype=torch.int64, device=logits.device)
    if rng_state is None:
        rng_state = draw_rng_state(logits.device, generator, _row_length(logits, dim))
    x = logits.to(_acc_dtype(logits.dtype)) + gumbel_noise(logits, dim, rng_state).to(_acc_dtype(logits.dtype))
    if logits.dim() == 0:
        x = x.reshape(1)
        dim = 0
    if num_samples == 1:
        return x.argmax(dim=dim)
    # A stable descending sort gives ties to the lowest index, as the kernels do.
    return torch.sort(x, dim=dim, descending=True, stable=True).indices.narrow(dim, 0, num_samples)
from ._reference_sampler import keyed_noise, sample_filtered  # noqa: E402,F401  (the token sampler)
