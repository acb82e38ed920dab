"""Swap ``torch.nn.functional.gumbel_softmax`` for the fused one in existing code bases."""

from __future__ import annotations

import torch.nn.functional as F

from .functional import gumbel_softmax

_ORIGINAL = F.gumbel_softmax


class patch_torch:
    """Replace ``torch.nn.functional.gumbel_softmax`` with :func:`gumbel_ext.gumbel_softmax`.

    Takes effect when called; used as a context manager it restores the original on exit.
    Code that did ``from torch.nn.functional import gumbel_softmax`` before the patch keeps
    its own reference and is not affected.

    Examples
    --------
    >>> import torch, torch.nn.functional as F, gumbel_ext
    >>> _ = gumbel_ext.patch_torch()        # for the rest of the program
    >>> gumbel_ext.unpatch_torch()
    >>> with gumbel_ext.patch_torch():      # only inside the block
    ...     y = F.gumbel_softmax(torch.randn(8, 10), tau=0.5, hard=True)
    >>> gumbel_ext.is_patched()
    False
    """

    def __init__(self) -> None:
        self._previous = F.gumbel_softmax
        F.gumbel_softmax = gumbel_softmax

    def __enter__(self) -> "patch_torch":
        return self

    def __exit__(self, *exc) -> None:
        F.gumbel_softmax = self._previous


def unpatch_torch() -> None:
    """Restore torch's own ``torch.nn.functional.gumbel_softmax``."""
    F.gumbel_softmax = _ORIGINAL


def is_patched() -> bool:
    """True while ``torch.nn.functional.gumbel_softmax`` is :func:`gumbel_ext.gumbel_softmax`."""
    return F.gumbel_softmax is gumbel_softmax
