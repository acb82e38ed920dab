"""The noise key of a vocabulary-parallel call, and the noise of this rank's columns.

Note [Distributed noise keys]
Row r's noise is that of the unsharded call (Note [Per-row noise keys] in
csrc/cpu/sample_kernels.h), drawn at this rank's global columns by gumbel_ext::keyed_noise:
  - seeds given: key seeds[r], counters from offsets[r], row counter 0;
  - no seeds: one key from the generator, as the unsharded op takes it. On the CPU that is
    one random64() (reference.draw_rng_state), taken before the metadata exchange so it can be
    compared across ranks. On CUDA the op reserves 4 * ceil(V / 4) counters for the GLOBAL
    vocabulary V, known only after the exchange: the state (seed, offset) is read before it
    and advanced after it. Row counter = the row's global index (a DTensor sharded over
    rows maps its local rows to global ones)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import reference
from .._keyed_noise import keyed_noise


def read_key(device: torch.device, generator: Optional[torch.Generator]) -> Tuple[int, int]:
    """(seed, offset) as the unsharded op would use it; advances a CPU generator."""
    if device.type == "cuda":
        if generator is None:
            index = device.index if device.index is not None else torch.cuda.current_device()
            generator = torch.cuda.default_generators[index]
        seed = generator.initial_seed()
        return (seed - (1 << 64) if seed >= (1 << 63) else seed), generator.get_offset()
    state = reference.draw_rng_state(device, generator)
    return int(state[0]), int(state[1])


def advance_key(device: torch.device, generator: Optional[torch.Generator], vocab: int) -> None:
    """Reserve the counters the unsharded CUDA op reserves (nothing to do on the CPU)."""
    if device.type == "cuda":
        if generator is None:
            index = device.index if device.index is not None else torch.cuda.current_device()
            generator = torch.cuda.default_generators[index]
        generator.set_offset(generator.get_offset() + 4 * ((max(vocab, 0) + 3) // 4))


def local_noise(rows: int, device: torch.device, key: int, key_offset: int, seeds: Optional[torch.Tensor],
                offsets: Optional[torch.Tensor], row_ids: Optional[torch.Tensor], col_start: int,
                length: int) -> torch.Tensor:
    """Float32 [rows, length]: the noise of global columns col_start .. + length - 1; row j
    is global row row_ids[j] (default j)."""
    if seeds is not None:
        return keyed_noise(seeds, offsets, torch.zeros_like(seeds), col_start, length)
    keys = torch.full((rows,), key, dtype=torch.int64, device=device)
    offs = torch.full((rows,), key_offset, dtype=torch.int64, device=device)
    row_ctr = torch.arange(rows, dtype=torch.int64, device=device) if row_ids is None else row_ids.to(device)
    return keyed_noise(keys, offs, row_ctr, col_start, length)
