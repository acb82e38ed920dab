"""gumbel_ext: a fused, drop-in ``torch.nn.functional.gumbel_softmax`` for CPU and CUDA.

>>> import torch, gumbel_ext
>>> y = gumbel_ext.gumbel_softmax(torch.randn(8, 1000), tau=0.5, hard=True)
>>> tokens = gumbel_ext.sample(torch.randn(8, 32000))
"""

from . import reference
from ._version import NOISE_VERSION, __version__
from ._ops import AVAILABLE as _EXTENSION_AVAILABLE
from .functional import gumbel_softmax, sample
from .modules import GumbelSoftmax
from .patch import is_patched, patch_torch, unpatch_torch

__all__ = [
    "gumbel_softmax",
    "sample",
    "GumbelSoftmax",
    "patch_torch",
    "unpatch_torch",
    "is_patched",
    "reference",
    "NOISE_VERSION",
    "__version__",
]
