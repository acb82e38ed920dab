"""The argument handling both vocabulary-parallel ops share: column_offset, the per-row noise
keys (seeds/offsets) or the generator's key, and the agreement step that turns them into a
Layout (Note [Agreement before exchange] in _layout.py)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional

import torch

from .. import sampling
from ..functional import _check_generator
from . import _layout, _noise


@dataclass
class NoiseKey:
    """The noise of a call: per-row seeds/offsets ([rows] int64, or None), or the key
    (seed, offset) drawn from the generator; key/key_offset fingerprint the seeds otherwise,
    so the exchange compares them across ranks."""

    seeds: Optional[torch.Tensor] = None
    offsets: Optional[torch.Tensor] = None
    seeded: bool = False
    key: int = 0
    key_offset: int = 0


def check_placement(name: str, x: torch.Tensor, column_offset, generator: Optional[torch.Generator]) -> None:
    """column_offset (an int >= 0 or None) and the generator's device."""
    if column_offset is not None and (isinstance(column_offset, bool) or not isinstance(
            column_offset, numbers.Integral) or column_offset < 0):
        raise ValueError(f"{name}: column_offset must be an int >= 0, got {column_offset!r}")
    _check_generator(generator, x)


def noise_key(name: str, x: torch.Tensor, dim: int, device: torch.device, seeds, offsets,
              generator: Optional[torch.Generator]) -> NoiseKey:
    """Checks seeds/offsets and normalizes them to [rows] int64 (offsets default to 0); without
    seeds, reads the generator's key as the unsharded op would (advancing a CPU generator)
    whenever the logits have rows."""
    if offsets is not None and seeds is None:
        raise ValueError(f"{name}: offsets given without seeds; pass seeds (offsets default to 0)")
    if seeds is not None:
        if generator is not None:
            raise ValueError(f"{name}: pass seeds/offsets or a generator, not both")
        for n, t in (("seeds", seeds), ("offsets", offsets)):
            if t is not None and (not isinstance(t, torch.Tensor) or t.dtype != torch.int64):
                raise TypeError(f"{name}: {n} must be an int64 tensor")
        seeds = sampling._rows_tensor("seeds", seeds, x, dim, torch.int64, True)
        offsets = (torch.zeros_like(seeds) if offsets is None
                   else sampling._rows_tensor("offsets", offsets, x, dim, torch.int64, True))
        if offsets.numel() and bool((offsets < 0).any()):
            raise ValueError(f"{name}: every entry of offsets must be >= 0")
        return NoiseKey(seeds, offsets, True, _layout.tensor_hash(seeds), _layout.tensor_hash(offsets))
    if _layout.has_rows(x, dim):  # as the unsharded op: a key whenever there are rows
        key, key_offset = _noise.read_key(device, generator)
        return NoiseKey(key=key, key_offset=key_offset)
    return NoiseKey()


def agree(name: str, op: int, group, device: torch.device, x: Optional[torch.Tensor], dim: int, nk: NoiseKey,
          mode: int, params: int, column_offset: Optional[int], error: Optional[BaseException],
          local: bool) -> _layout.Layout:
    """The Layout every rank agreed on (raising the same error on every rank), or with
    ``local`` (a DTensor's rows: this rank owns the whole vocabulary) the local one without
    an exchange, raising this rank's own argument error."""
    if local:
        if error is not None:
            raise error
        return _layout.local_layout(x, dim, nk.key, nk.key_offset)
    return _layout.exchange(name, op, group, device, x, dim, nk.key, nk.key_offset, nk.seeded, mode, params,
                            column_offset, error)
