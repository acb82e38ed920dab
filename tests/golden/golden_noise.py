"""The golden noise table: where its entries sit, how it is read and written, and how an
entry is evaluated by the compiled ops and by the reference. Shared by
tests/golden/test_golden_noise.py and scripts/regenerate_golden_noise.py.

Note [Golden noise table]
noise.csv holds, for NOISE_VERSION, the float32 bits of the Gumbel noise at fixed
(seed, offset, row, column) positions, chosen to cover the contract's corners: all four
Philox lanes, 64-bit seeds (both key words), offsets whose counter word carries into its
high half and offsets near 2^64, rows and columns past 2^20, 2^32 and 2^40.

Version 1 is not one algorithm on every CPU copy: the baseline (DEFAULT) copy takes its
logs from libm, the AVX2 and AVX-512 copies share one inline vector log (vec_math.h)
that differs in the last bits for about 39% of the values. So each entry records both:
`default_bits` (the DEFAULT copy) and `simd_bits` (AVX2 and AVX-512, which run the same
lane-wise operations and agree bit for bit). Every copy is checked exactly against its
column. Once the noise is one algorithm on every copy (issue #11), the regenerated table
has equal columns and test_every_copy_gives_the_same_bits, an expected failure for
version 1 only, enforces it from then on.

The reference (torch.log, whose last bits are torch's and vary with its build and CPU)
and, on a GPU, the CUDA kernels of version 1 are checked within NOISE_ATOL: a change of
the counter layout, the key or the uniform moves a value by O(1), far beyond it.

The ops materialize a [row + 1, column + 1] float32 output for an entry. Entries beyond
OP_BUDGET elements use the contract's own identity n = offset / 4 + column / 4: the draw
at (offset, column) is the one at (offset + 4k, column - 4k), so large columns are
evaluated at column % 4. Rows have no such identity: entries with rows too large to
materialize (>= 2^32 take the counter's high row word) record as default_bits the
baseline copy's formula evaluated here (model_noise: for version 1 with the same libm
logf, from version 2 the table log modelled exactly; itself checked bit for bit against
the DEFAULT copy on every reachable entry), leave simd_bits empty, and are checked
against the reference.

Version 2 (issue #11) is one algorithm on every copy and on CUDA: the columns are equal.
"""

from __future__ import annotations

import csv
import ctypes
import ctypes.util
import functools
import io
import math
import re
import struct
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional

import torch

TABLE = Path(__file__).resolve().parent / "noise.csv"
FIELDS = ["seed", "offset", "row", "column", "default_bits", "simd_bits"]
OP_BUDGET = 1 << 22  # float32 elements an op call may materialize (16 MiB)
NOISE_ATOL = 1e-5  # g in [-2.8, 16.7]: a few float ulps; a wrong counter is off by O(1)
U64 = 1 << 64

SEEDS = [
    0,
    1,
    0x00000000FFFFFFFF,
    0x0000000100000000,
    0x8000000000000000,
    0xFFFFFFFFFFFFFFFF,
    0x9E3779B97F4A7C15,
]
OFFSETS = [0, 4, 7, 0x3FFFFFFFC, 0xFFFFFFFFFFFFFFFC]  # 7: offset / 4 floors; 0x3FFFFFFFC: n carries
POSITIONS = [  # (row, column)
    (0, 0),
    (0, 1),
    (0, 2),
    (0, 3),
    (0, 4),
    (1, 5),
    (3, 7),
    (17, 1023),
    (1000, 4),
    (65537, 2),
    ((1 << 22) - 1, 0),
    (2, (1 << 20) + 3),
    (0, (1 << 32) + 5),
    (5, (1 << 40) + 2),
    ((1 << 32) - 1, 1),
    (1 << 32, 3),
    ((1 << 40) + 7, 9),
    ((1 << 63) - 1, 2),
]


def positions() -> List[Dict[str, int]]:
    """The table's (seed, offset, row, column) entries, three per position, cycling the
    seeds and offsets so that every seed meets every kind of offset and position."""
    out = []
    for i, (row, column) in enumerate(POSITIONS):
        for j in range(3):
            out.append({
                "seed": SEEDS[(i + j) % len(SEEDS)],
                "offset": OFFSETS[(i + 2 * j) % len(OFFSETS)],
                "row": row,
                "column": column,
            })
    return out


def _int64(v: int) -> int:
    """A uint64 as the int64 with the same bits (rng_state is an int64 tensor)."""
    return v - U64 if v >= 1 << 63 else v


def rng_state(seed: int, offset: int) -> torch.Tensor:
    return torch.tensor([_int64(seed), _int64(offset)], dtype=torch.int64)


def op_noise(seed: int, offset: int, row: int, column: int, device: str = "cpu") -> Optional[float]:
    """The entry's noise from torch.ops.gumbel_ext.gumbel_noise on ``device`` (on the CPU,
    the copy currently selected), or None where it cannot be materialized (see Note
    [Golden noise table])."""
    if (row + 1) * (column + 1) > OP_BUDGET:
        offset, column = offset + 4 * (column // 4), column % 4
        if (row + 1) * (column + 1) > OP_BUDGET or offset >= U64:
            return None
    logits = torch.empty((), device=device).expand(row + 1, column + 1)  # the op reads only its shape
    state = rng_state(seed, offset).to(device)
    return torch.ops.gumbel_ext.gumbel_noise(logits, -1, state)[row, column].item()


def reference_noise(seed: int, offset: int, row: int, column: int) -> float:
    from gumbel_ext import reference

    rows, cols = torch.tensor([row]), torch.tensor([column])
    return reference.noise_at(seed, offset, rows, cols).item()


@functools.lru_cache(maxsize=None)
def _logf():
    name = ctypes.util.find_library("m")
    if name is None:
        return None
    logf = ctypes.CDLL(name).logf
    logf.restype, logf.argtypes = ctypes.c_float, [ctypes.c_float]
    return logf


def libm_noise(seed: int, offset: int, row: int, column: int) -> Optional[float]:
    """The baseline (DEFAULT) copy's noise of version 1 without the ops: the reference's
    exact Philox bits and uniform, then -logf(-logf(u)) with this process's libm (the
    copy takes std::log per lane). None without a libm to call."""
    logf = _logf()
    if logf is None:
        return None
    u = _uniform(seed, offset, row, column)
    return -logf(-logf(u))


def _uniform(seed: int, offset: int, row: int, column: int) -> float:
    from gumbel_ext import reference

    n = (offset % U64) // 4 + column // 4
    counter = tuple(torch.tensor([v & 0xFFFFFFFF]) for v in (n, n >> 32, row, row >> 32))
    bits = reference.philox4x32_10(counter, seed % U64)[column % 4].item()
    return ((bits >> 9) + 0.5) * 2.0**-23  # exact in float32 (Note [Uniform in (0, 1)])


# ---- version 2: the table log of Note [Noise log] (csrc/gumbel_noise.h), modelled with
# exact rational arithmetic and one float32 rounding per operation, as fma does.
def _f32(x: Fraction) -> float:
    """x rounded to the nearest float32 (ties to even); normal range only."""
    if x == 0:
        return 0.0
    a = abs(x)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    m = round(a / Fraction(2) ** (e - 23))  # round() of a Fraction: half to even
    return math.copysign(m * 2.0 ** (e - 23), x)


def _fma(a: float, b: float, c: float) -> float:
    return _f32(Fraction(a) * Fraction(b) + Fraction(c))


def _f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def _bits_f32(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b & 0xFFFFFFFF))[0]


@functools.lru_cache(maxsize=None)
def _neg_log_table():
    """(pairs (1/c, -log c), -log 2) read from csrc/gumbel_noise.h, the one source."""
    text = (Path(__file__).resolve().parents[2] / "csrc" / "gumbel_noise.h").read_text()
    body = text[text.index("#define GUMBEL_NEG_LOG_TABLE(X)"):text.index("#define GUMBEL_FIRST_")]
    hexf = lambda v: float.fromhex(v.rstrip("f")) if "x" in v else float(v.rstrip("f"))  # noqa: E731
    pairs = [(hexf(a), hexf(b)) for a, b in re.findall(r"X\(([^,]+), ([^)]+)\)", body)]
    ln2 = hexf(re.search(r"kNegLogLn2 = ([^;]+);", text).group(1).strip())
    assert len(pairs) == 16
    return pairs, ln2


def neg_log_v2(x: float) -> float:
    pairs, ln2 = _neg_log_table()
    ix = _f32_bits(x)
    tmp = (ix - 0x3F330000) & 0xFFFFFFFF
    inv_c, neg_log_c = pairs[(tmp >> 19) & 15]
    k = float((tmp - (1 << 32) if tmp >= 1 << 31 else tmp) >> 23)
    z = _bits_f32(ix - (tmp & 0xFF800000))
    rn = _fma(-z, inv_c, 1.0)
    neg_y0 = _fma(k, ln2, neg_log_c)
    r2 = _f32(Fraction(rn) * Fraction(rn))
    p = _fma(_f32(Fraction(1, 5)), rn, 0.25)
    p = _fma(p, rn, _f32(Fraction(1, 3)))
    p = _fma(p, rn, 0.5)
    return _f32(Fraction(_fma(p, r2, rn)) + Fraction(neg_y0))


def model_noise(seed: int, offset: int, row: int, column: int, version: int) -> Optional[float]:
    """An entry's noise without the ops (for rows they cannot reach): version 1 the DEFAULT
    copy's libm formula (None without a libm), version 2 the one algorithm of every copy."""
    if version == 1:
        return libm_noise(seed, offset, row, column)
    return neg_log_v2(neg_log_v2(_uniform(seed, offset, row, column)))


def to_bits(value: float) -> str:
    return "0x%08x" % (torch.tensor(value, dtype=torch.float32).view(torch.int32).item() & 0xFFFFFFFF)


def from_bits(bits: str) -> float:
    b = int(bits, 16)
    return torch.tensor(b - (1 << 32) if b >= 1 << 31 else b, dtype=torch.int32).view(torch.float32).item()


def read_table(path: Path = TABLE):
    """(noise_version, entries) of the table; entries keep the bits as hex strings."""
    version = None
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            if key.strip() == "noise_version":
                version = int(value)
        elif line.strip():
            lines.append(line)
    entries = []
    for rec in csv.DictReader(lines):
        entry = {k: int(rec[k], 0) for k in ("seed", "offset", "row", "column")}
        entry.update(default_bits=rec["default_bits"], simd_bits=rec["simd_bits"])
        entries.append(entry)
    return version, entries


HEADER = """\
# Golden Gumbel noise of gumbel_ext: float32 bits at (seed, offset, row, column).
# Generated by scripts/regenerate_golden_noise.py; checked by tests/golden/test_golden_noise.py.
# Do not edit by hand. A change of these bits is a change of the noise contract: bump
# NOISE_VERSION (gumbel_ext/_version.py), say so in CHANGELOG.md, then regenerate.
# default_bits: the baseline (DEFAULT) CPU copy; simd_bits: the AVX2 and AVX-512 copies.
# noise_version: {version}
"""


def format_table(version: int, entries: List[Dict]) -> str:
    buf = io.StringIO()
    buf.write(HEADER.format(version=version))
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for e in entries:
        writer.writerow({
            "seed": "0x%016x" % e["seed"],
            "offset": "0x%x" % e["offset"],
            "row": e["row"],
            "column": e["column"],
            "default_bits": e["default_bits"],
            "simd_bits": e["simd_bits"],
        })
    return buf.getvalue()
