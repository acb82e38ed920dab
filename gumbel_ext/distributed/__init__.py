"""Vocabulary-parallel Gumbel-softmax and sampling over ``torch.distributed``: each rank
holds a contiguous slice of the category dim; results equal the unsharded ones (``sample``
and ``hard=True`` bit for bit) with O(rows x world size) communication. See
docs/distributed.md."""

from ._sample import sample
from ._softmax import gumbel_softmax

__all__ = ["sample", "gumbel_softmax"]
