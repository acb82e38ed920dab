"""The public functions: argument validation, then the fused ops (whose autograd lives in
C++, csrc/autograd.cpp; a thin Python autograd.Function under torch.func transforms), or
the reference on devices without a kernel."""

from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple, Union

import torch

from . import _ops, reference

Tau = Union[float, torch.Tensor]

_warned_fallback: set = set()


# ----------------------------------------------------------------------------- checks
def _check_logits(logits: torch.Tensor, name: str = "gumbel_softmax") -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"gumbel_ext.{name}: logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.dtype.is_floating_point:
        raise TypeError(
            f"gumbel_ext.{name}: logits must have a floating point dtype (float16, bfloat16, "
            f"float32 or float64), got {logits.dtype}"
        )


def _wrap_dim(logits: torch.Tensor, dim: int) -> int:
    ndim = max(logits.dim(), 1)
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"gumbel_ext: dim must be an int, got {type(dim).__name__}")
    if not -ndim <= dim < ndim:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-ndim}, {ndim - 1}], but got {dim})"
        )
    return dim % ndim if logits.dim() else 0


def _check_generator(generator: Optional[torch.Generator], logits: torch.Tensor) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"gumbel_ext: generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != logits.device.type:
        raise ValueError(
            f"gumbel_ext: the generator is on {generator.device} but logits are on "
            f"{logits.device}; pass a generator of the logits' device"
        )


def _skip_value_checks() -> bool:
    # Reading tensor values syncs the device: impossible while capturing a CUDA graph,
    # a graph break under torch.compile.
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _tau_args(logits: torch.Tensor, tau: Tau, dim: int) -> Tuple[float, Optional[torch.Tensor]]:
    """(float tau, per-row tau tensor or None) as the ops take them."""
    if isinstance(tau, torch.Tensor):
        if not tau.dtype.is_floating_point:
            raise TypeError(f"gumbel_ext: tau must be a floating point tensor, got {tau.dtype}")
        if tau.device != logits.device:
            raise ValueError(f"gumbel_ext: tau is on {tau.device} but logits are on {logits.device}")
        keep = list(logits.shape)
        if keep:
            keep[dim] = 1
        try:
            fits = list(torch.broadcast_shapes(tau.shape, keep)) == keep
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"gumbel_ext: tau of shape {tuple(tau.shape)} must be 0-dim or broadcastable to "
                f"the logits' shape with dim {dim} of size 1, {tuple(keep)}"
            )
        if not _skip_value_checks() and not bool(((tau > 0) & torch.isfinite(tau)).all()):
            raise ValueError("gumbel_ext: every entry of tau must be finite and > 0")
        acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
        return 1.0, tau.to(acc).expand(keep).contiguous()
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise TypeError(f"gumbel_ext: tau must be a float or a tensor, got {type(tau).__name__}")
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"gumbel_ext: tau must be a finite number > 0, got {tau}")
    return float(tau), None


def _use_fused(logits: torch.Tensor) -> bool:
    if _ops.has_kernel(logits.device):
        return True
    if logits.device.type not in _warned_fallback:
        _warned_fallback.add(logits.device.type)
        if _ops.AVAILABLE:  # (a missing extension has warned already)
            warnings.warn(
                f"gumbel_ext: no fused kernel for device '{logits.device.type}'; using the "
                "pure-PyTorch reference implementation.",
                RuntimeWarning,
                stacklevel=3,
            )
    return False


# --------------------------------------------------------------------------- autograd
class _FunctorchFunction(torch.autograd.Function):
    """torch.func transforms (grad, vjp, vmap of grad, ...) refuse C++ autograd Functions,
    so under them the same ops are wrapped here instead: the forward and backward ops, and
    for a differentiable backward (create_graph, grad of grad) the op
    gumbel_ext::_differentiable_backward -- the math csrc/autograd.cpp also uses."""

    @staticmethod
    def forward(logits, tau_rows, tau, hard, dim, generator):
        return torch.ops.gumbel_ext.gumbel_softmax_forward(logits, tau, tau_rows, hard, dim, generator)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, tau_rows, tau, hard, dim, _ = inputs
        out, rng_state = output
        ctx.mark_non_differentiable(rng_state)
        ctx.tau, ctx.hard, ctx.dim = tau, hard, dim
        ctx.save_for_backward(logits if hard else out, rng_state, tau_rows)

    @staticmethod
    def backward(ctx, grad_out, _grad_rng_state):
        saved, rng_state, tau_rows = ctx.saved_tensors
        need_tau = ctx.needs_input_grad[1]
        if torch.is_grad_enabled():
            op = torch.ops.gumbel_ext._differentiable_backward
            grad_logits, grad_tau = op(grad_out, saved, rng_state, ctx.tau, tau_rows, ctx.hard, ctx.dim)
        else:
            grad_logits, grad_tau = torch.ops.gumbel_ext.gumbel_softmax_backward(
                grad_out, saved, rng_state, ctx.tau, tau_rows, ctx.hard, ctx.dim, need_tau
            )
        return grad_logits, (grad_tau if need_tau else None), None, None, None, None


def _functorch_active() -> bool:
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


# ----------------------------------------------------------------------------- public
def gumbel_softmax(
    logits: torch.Tensor,
    tau: Tau = 1.0,
    hard: bool = False,
    eps: float = 1e-10,
    dim: int = -1,
    *,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Sample from the Gumbel-Softmax distribution; a drop-in for
    :func:`torch.nn.functional.gumbel_softmax`, fused into one kernel.

    Parameters
    ----------
    logits : Tensor of shape ``[*, C, *]``
        Unnormalized log-probabilities along ``dim`` (float16, bfloat16, float32, float64).
        ``-inf`` masks a category: it gets probability exactly 0.
    tau : float or Tensor, default 1.0
        Temperature > 0: a float, or a tensor (0-dim, or broadcastable to the logits' shape
        with ``dim`` of size 1) that receives a gradient when it requires one.
    hard : bool, default False
        If True, return the exact one-hot of the sampled category, with the soft sample's
        gradient (straight-through).
    eps : float
        Deprecated and ignored, as in torch; a non-default value warns.
    dim : int, default -1
        The dimension of the categories.
    generator : torch.Generator, optional
        Generator on the logits' device; None means the device's default generator.

    Returns
    -------
    Tensor
        Same shape, dtype and device as ``logits``; rows sum to 1.

    Examples
    --------
    >>> logits = torch.randn(20, 32)
    >>> y = gumbel_softmax(logits, tau=0.5)              # soft sample
    >>> y_hard = gumbel_softmax(logits, hard=True)       # one-hot, soft gradient
    """
    if eps != 1e-10:
        warnings.warn("`eps` parameter is deprecated and has no effect.", stacklevel=2)
    _check_logits(logits)
    dim = _wrap_dim(logits, dim)
    tau_value, tau_rows = _tau_args(logits, tau, dim)
    _check_generator(generator, logits)
    if not _use_fused(logits):
        return reference.gumbel_softmax(logits, tau, bool(hard), dim, generator=generator)
    if _functorch_active():
        return _FunctorchFunction.apply(logits, tau_rows, tau_value, bool(hard), dim, generator)[0]
    # The op's autograd kernel is C++ (csrc/autograd.cpp): a few microseconds a call, where
    # a Python autograd.Function costs tens -- the kernel's own time on small inputs.
    return torch.ops.gumbel_ext.gumbel_softmax(logits, tau_value, tau_rows, bool(hard), dim, generator)


def sample(
    logits: torch.Tensor,
    num_samples: int = 1,
    dim: int = -1,
    *,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Draw category indices from ``softmax(logits)`` by the Gumbel-max trick, fused.

    Nothing of the logits' size is materialized: one pass per row reads the logits and
    writes indices. With the same generator state, ``sample(x)`` equals
    ``gumbel_softmax(x, hard=True).argmax(dim)``.

    Parameters
    ----------
    logits : Tensor of shape ``[*, C, *]``
        Unnormalized log-probabilities along ``dim``; ``-inf`` categories are never drawn.
    num_samples : int, default 1
        ``1``: one category per row, ``dim`` removed from the result. ``k > 1``: ``k``
        distinct categories per row without replacement (Gumbel-top-k), in the order
        drawn, ``dim`` replaced by ``k``.
    dim : int, default -1
        The dimension of the categories.
    generator : torch.Generator, optional
        Generator on the logits' device.

    Returns
    -------
    LongTensor

    Notes
    -----
    On the CPU a row holding NaN or +inf, or with fewer finite logits than
    ``num_samples``, raises ``ValueError``. On CUDA that check would need a device
    synchronization (and a device assert would kill the CUDA context), so such rows get
    what :func:`gumbel_ext.reference.sample` returns -- NaN ranks above everything, ties
    go to the lowest index -- which are always valid, distinct indices.

    Examples
    --------
    >>> logits = torch.randn(64, 128256)
    >>> tokens = sample(logits)                  # shape [64]
    >>> top4 = sample(logits, num_samples=4)     # shape [64, 4], distinct per row
    """
    _check_logits(logits, "sample")
    dim = _wrap_dim(logits, dim)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"gumbel_ext.sample: num_samples must be an int >= 1, got {num_samples!r}")
    categories = logits.shape[dim] if logits.dim() else 1
    if num_samples > categories:  # with or without rows, as the op checks
        raise ValueError(
            f"gumbel_ext.sample: num_samples={num_samples} exceeds the {categories} categories "
            "along dim (sampling without replacement)"
        )
    _check_generator(generator, logits)
    if not _use_fused(logits):
        return reference.sample(logits.detach(), num_samples, dim, generator=generator)
    return torch.ops.gumbel_ext.sample(logits.detach(), num_samples, dim, generator)
