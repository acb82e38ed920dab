"""The public functions: argument validation, then the fused ops (whose autograd lives in
C++, csrc/autograd.cpp; a thin Python autograd.Function under torch.func transforms), or
the reference on devices without a kernel."""

from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple, Union

import torch

from . import _ops, reference, sampling

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
        if not _ops._broadcasts_to(tau.shape, keep):
            raise ValueError(
                f"gumbel_ext: tau of shape {tuple(tau.shape)} must be 0-dim or broadcastable to "
                f"the logits' shape with dim {dim} of size 1, {tuple(keep)}"
            )
        # Reading the values of a device tensor would sync the device on every call: only a
        # CPU tau is checked here. On CUDA a row whose tau entry is not finite and > 0 comes
        # out NaN (soft output and gradients; a hard one-hot does not depend on tau), as
        # for a NaN logit: Note [tau_rows values] in csrc/ops.cpp and csrc/cuda/rows.cuh.
        if tau.device.type == "cpu" and not _skip_value_checks() and not bool(((tau > 0) & torch.isfinite(tau)).all()):
            raise ValueError("gumbel_ext: every entry of tau must be finite and > 0")
        acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
        return 1.0, tau.to(acc).expand(keep).contiguous()
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise TypeError(f"gumbel_ext: tau must be a float or a tensor, got {type(tau).__name__}")
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"gumbel_ext: tau must be a finite number > 0, got {tau}")
    return float(tau), None


def _check_sample_rows(logits: torch.Tensor, num_samples: int, dim: int) -> None:
    """The CPU sample op's per-row checks, for the reference fallback on the CPU (other
    devices never raise, as on CUDA, where the check would need a device sync): the first
    row, in the flattened order of the other dims, holding NaN or +inf or with fewer
    finite logits than num_samples raises the op's ValueError."""
    if logits.device.type != "cpu" or logits.numel() == 0:
        return
    x = logits.detach()
    rows = x.reshape(1, 1) if x.dim() == 0 else x.movedim(dim, -1).reshape(-1, x.shape[dim])
    invalid = (rows.isnan() | (rows == float("inf"))).any(-1)
    finite = rows.isfinite().sum(-1)
    failing = (invalid | (finite < num_samples)).nonzero()
    if not len(failing):
        return
    r = int(failing[0])
    if invalid[r]:
        raise ValueError(f"gumbel_ext.sample: row {r} of the logits holds NaN or +inf")
    if num_samples == 1:
        raise ValueError(f"gumbel_ext.sample: row {r} has no finite logit to draw from (all -inf)")
    raise ValueError(
        f"gumbel_ext.sample: num_samples={num_samples} exceeds the {int(finite[r])} finite logits of "
        f"row {r} (sampling without replacement)"
    )


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
    seeds: Optional[torch.Tensor] = None,
    offsets: Optional[torch.Tensor] = None,
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
    seeds, offsets : int64 Tensor, optional
        Per-row noise keys instead of ``generator``, as in :func:`sample`: the same
        ``seeds``/``offsets`` give the noise :func:`sample` perturbs the logits with, and
        the backward sees the forward's noise. This path runs in torch ops (not fused).

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
    if seeds is not None or offsets is not None:
        if generator is not None:
            raise ValueError("gumbel_ext.gumbel_softmax: pass seeds/offsets or a generator, not both")
        return sampling.gumbel_softmax_seeded(logits, tau, bool(hard), dim, seeds, offsets)
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
    temperature: Union[float, torch.Tensor] = 1.0,
    top_k: Union[int, torch.Tensor, None] = None,
    top_p: Union[float, torch.Tensor, None] = None,
    min_p: Union[float, torch.Tensor, None] = None,
    seeds: Optional[torch.Tensor] = None,
    offsets: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    return_logprobs: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Draw category indices from ``softmax(logits / temperature)``, optionally filtered by
    top-k, top-p and min-p, by the Gumbel-max trick, fused.

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
    temperature : float or Tensor, default 1.0
        ``>= 0``; a tensor holds one value per row (the logits' shape without ``dim``, or
        broadcastable to it). ``0`` is greedy: the argmax (lowest index on ties), no noise,
        filters ignored; rows may mix greedy and sampled.
    top_k : int or int Tensor, optional
        Keep the logits ``>=`` the k-th largest (ties at the boundary are all kept);
        ``0`` or None is off.
    top_p : float or Tensor in (0, 1], optional
        After temperature and top-k: keep the smallest set of most probable tokens whose
        probability reaches ``p``, plus every token tied with its least probable one. It
        always keeps at least the most probable token.
    min_p : float or Tensor in [0, 1], optional
        Keep tokens with ``p >= min_p * p_max`` (unchanged by renormalization, so the
        order does not matter); the most probable token always survives, and ``min_p = 1``
        keeps only the tokens tied with it.
    seeds, offsets : int64 Tensor, optional
        One per row, instead of ``generator``. Row r's noise is keyed by ``seeds[r]`` with
        counters from ``offsets[r]`` (default 0), independent of r's position in the
        batch; read on the device, no host sync. A row of C categories consumes
        ``4 * ceil(C / 4)`` counters, so a caller advancing per step adds that (or more).
    generator : torch.Generator, optional
        Generator on the logits' device.
    return_logprobs : bool, default False
        Also return the float32 log-probability of each drawn index under the processed
        distribution (temperature and filters applied, renormalized; for
        ``num_samples > 1`` each token's own, not the conditional). Greedy rows give the
        log-prob under ``softmax(logits)`` at temperature 1.

    Returns
    -------
    LongTensor, or (LongTensor, FloatTensor) with ``return_logprobs``

    Notes
    -----
    On the CPU a row holding NaN or +inf, or with fewer finite logits than
    ``num_samples``, raises ``ValueError``. On CUDA that check would need a device
    synchronization (and a device assert would kill the CUDA context), so such rows get
    what :func:`gumbel_ext.reference.sample` returns -- NaN ranks above everything, ties
    go to the lowest index -- which are always valid, distinct indices.

    The sampler arguments are applied in the order temperature, top-k, top-p, min-p, as
    written out in Note [Sampler semantics] (csrc/cpu/sample_kernels.h). With their
    defaults, the call is today's Gumbel-max op, bit for bit. Otherwise it runs the op
    ``gumbel_ext::sample_filtered``, fused on the CPU and on CUDA (same indices for the
    same seeds; ``num_samples > 1024`` on CUDA and other devices run the reference in
    torch ops). On the CPU a row that keeps fewer tokens than ``num_samples`` raises
    ``ValueError``. CUDA reads per-row values on the device (no host sync, CUDA-graph
    safe) without checking them: out-of-range values are clamped, a bad row is drawn
    greedily with NaN log-probs, and a row keeping fewer than ``num_samples`` tokens is
    filled with removed ones at log-prob -inf (Note [CUDA sampler bad rows]).

    Examples
    --------
    >>> logits = torch.randn(64, 128256)
    >>> tokens = sample(logits)                  # shape [64]
    >>> top4 = sample(logits, num_samples=4)     # shape [64, 4], distinct per row
    >>> tokens, logprobs = sample(logits, temperature=0.7, top_k=50, top_p=0.9,
    ...                           seeds=torch.arange(64), return_logprobs=True)
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
    if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature == 1.0) or any(
        v is not None for v in (top_k, top_p, min_p, seeds, offsets)
    ) or return_logprobs is not False:
        return sampling.sample_filtered(
            logits, num_samples, dim, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seeds=seeds,
            offsets=offsets, generator=generator, return_logprobs=return_logprobs,
        )
    if not _use_fused(logits):
        _check_sample_rows(logits, num_samples, dim)
        return reference.sample(logits.detach(), num_samples, dim, generator=generator)
    return torch.ops.gumbel_ext.sample(logits.detach(), num_samples, dim, generator)
