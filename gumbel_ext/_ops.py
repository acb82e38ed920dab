"""The dispatcher ops: loading, fake (meta) kernels for torch.compile, and which
devices have a fused kernel."""

from __future__ import annotations

from typing import List, Optional

import torch

from . import _build

AVAILABLE: bool = _build.load()


def _kernel_device_types() -> frozenset:
    if not AVAILABLE:
        return frozenset()
    return frozenset(
        device_type
        for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA"))
        if torch._C._dispatch_has_kernel_for_dispatch_key("gumbel_ext::gumbel_softmax_forward", key)
    )


# Computed once: a constant torch.compile can trace through.
KERNEL_DEVICE_TYPES = _kernel_device_types()


def has_kernel(device: torch.device) -> bool:
    """True if ``device`` has a fused kernel (else the reference is used)."""
    return device.type in KERNEL_DEVICE_TYPES


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sample_shape(logits: torch.Tensor, num_samples: int, dim: int) -> List[int]:
    shape = list(logits.shape)
    if logits.dim() == 0:
        return shape + ([num_samples] if num_samples > 1 else [])
    dim = dim % logits.dim()
    if num_samples == 1:
        del shape[dim]
    else:
        shape[dim] = num_samples
    return shape


def _broadcasts_to(shape, target: List[int]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to exactly ``target`` (a per-row argument
    must not widen the logits' shape)."""
    try:
        return list(torch.broadcast_shapes(shape, target)) == target
    except RuntimeError:
        return False


def _check_same_device(expected: torch.Tensor, expected_name: str, **tensors: Optional[torch.Tensor]) -> None:
    """Every tensor argument on ``expected``'s device, in the order given, with the message
    of check_same_device in csrc/op_common.h. The fakes are also the ops' Meta kernels, and
    Meta outranks every backend: CPU logits with a meta rng_state land here, and must raise
    rather than return uninitialized CPU tensors (Note [Tensor arguments on another device])."""
    for name, t in tensors.items():
        if t is not None and t.device != expected.device:
            raise ValueError(
                f"gumbel_ext: Tensor {name} on device {t.device} is not on the expected device "
                f"{expected.device} (the device of {expected_name})"
            )


if AVAILABLE:

    @torch.library.register_fake("gumbel_ext::gumbel_softmax")
    def _gumbel_softmax_fake(logits, tau, tau_rows, hard, dim, generator=None, rng_state=None):
        _check_same_device(logits, "logits", tau_rows=tau_rows, rng_state=rng_state)
        return torch.empty_like(logits, memory_format=torch.contiguous_format)

    @torch.library.register_fake("gumbel_ext::gumbel_softmax_forward")
    def _forward_fake(logits, tau, tau_rows, hard, dim, generator=None, rng_state=None):
        _check_same_device(logits, "logits", tau_rows=tau_rows, rng_state=rng_state)
        out = torch.empty_like(logits, memory_format=torch.contiguous_format)
        return out, logits.new_empty((2,), dtype=torch.int64)

    @torch.library.register_fake("gumbel_ext::gumbel_softmax_backward")
    def _backward_fake(grad, saved, rng_state, tau, tau_rows, hard, dim, need_grad_tau):
        _check_same_device(saved, "saved", grad=grad, rng_state=rng_state, tau_rows=tau_rows)
        grad_logits = torch.empty_like(saved, memory_format=torch.contiguous_format)
        if need_grad_tau:
            return grad_logits, torch.empty_like(tau_rows)
        return grad_logits, saved.new_empty((0,), dtype=_acc_dtype(saved.dtype))

    @torch.library.register_fake("gumbel_ext::gumbel_noise")
    def _noise_fake(logits, dim, rng_state):
        _check_same_device(logits, "logits", rng_state=rng_state)
        return logits.new_empty(logits.shape, dtype=torch.float32)

    @torch.library.register_fake("gumbel_ext::sample")
    def _sample_fake(logits, num_samples, dim, generator=None, rng_state=None):
        _check_same_device(logits, "logits", rng_state=rng_state)
        return logits.new_empty(_sample_shape(logits, num_samples, dim), dtype=torch.int64)

