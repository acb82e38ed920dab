"""nn.Module front end."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from .functional import gumbel_softmax


class GumbelSoftmax(nn.Module):
    """Gumbel-Softmax as a layer: ``GumbelSoftmax(tau, hard, dim)(logits)``.

    Parameters
    ----------
    tau : float or Tensor, default 1.0
        Temperature > 0. Pass an ``nn.Parameter`` (0-dim, or broadcastable per row) to
        learn it; it is registered as a parameter of the module.
    hard : bool, default False
        Straight-through one-hot output.
    dim : int, default -1
        The dimension of the categories.

    Examples
    --------
    >>> layer = GumbelSoftmax(tau=nn.Parameter(torch.tensor(1.0)), hard=True)
    >>> y = layer(torch.randn(8, 10))   # one-hot rows; layer.tau receives a gradient
    """

    def __init__(self, tau: Union[float, torch.Tensor] = 1.0, hard: bool = False, dim: int = -1) -> None:
        super().__init__()
        if isinstance(tau, nn.Parameter):
            self.tau = tau
        elif isinstance(tau, torch.Tensor):
            self.register_buffer("tau", tau)
        else:
            self.tau = float(tau)
        self.hard = hard
        self.dim = dim

    def forward(self, logits: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return gumbel_softmax(logits, tau=self.tau, hard=self.hard, dim=self.dim, generator=generator)

    def extra_repr(self) -> str:
        if isinstance(self.tau, torch.Tensor):
            kind = "learnable" if self.tau.requires_grad else "fixed"
            tau = f"{kind} tensor of shape {tuple(self.tau.shape)}" if self.tau.dim() else f"{self.tau.item():g} ({kind})"
        else:
            tau = f"{self.tau:g}"
        return f"tau={tau}, hard={self.hard}, dim={self.dim}"
