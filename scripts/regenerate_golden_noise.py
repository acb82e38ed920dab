"""Regenerate tests/golden/noise.csv, the golden noise table (Note [Golden noise table] in
tests/golden/golden_noise.py), from the compiled CPU copies of this checkout.

    make build && python3 scripts/regenerate_golden_noise.py

Run it only for a deliberate change of the noise bits, after bumping NOISE_VERSION in
gumbel_ext/_version.py and adding a CHANGELOG.md entry that says the same (seed, offset)
no longer gives the same samples. It refuses to rewrite changed bits under an unchanged
NOISE_VERSION. Needs an x86-64 CPU with AVX2 (the SIMD copies); where AVX-512 is also
present it checks that the AVX-512 copy gives the AVX2 copy's bits.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "golden")]

import torch  # noqa: E402

import gumbel_ext  # noqa: E402
import golden_noise as G  # noqa: E402


def bits_of(capability, entries):
    """The copy's bits of each entry; "" where the ops cannot reach it (rows past the
    memory budget; Note [Golden noise table])."""
    ops = torch.ops.gumbel_ext
    previous = ops._cpu_capability()
    ops._set_cpu_capability(capability)
    try:
        out = []
        for e in entries:
            value = G.op_noise(e["seed"], e["offset"], e["row"], e["column"])
            out.append("" if value is None else G.to_bits(value))
        return out
    finally:
        ops._set_cpu_capability(previous)


def model_bits(e):
    value = G.model_noise(e["seed"], e["offset"], e["row"], e["column"], gumbel_ext.NOISE_VERSION)
    if value is None:
        sys.exit("regenerate_golden_noise: no libm to evaluate the unreachable entries with")
    return G.to_bits(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report whether the table is current")
    args = parser.parse_args()
    if not gumbel_ext._EXTENSION_AVAILABLE:
        sys.exit("regenerate_golden_noise: the compiled extension is not available (run `make build`)")
    available = list(torch.ops.gumbel_ext._cpu_capabilities())
    if "avx2" not in available:
        sys.exit(f"regenerate_golden_noise: needs the AVX2 copy (this CPU offers {available})")

    entries = G.positions()
    default_bits = bits_of("default", entries)
    simd_bits = bits_of("avx2", entries)
    if "avx512" in available and bits_of("avx512", entries) != simd_bits:
        sys.exit("regenerate_golden_noise: the AVX-512 copy's bits differ from the AVX2 copy's; "
                 "the table's simd_bits column assumes one vector algorithm (give each its own column)")
    for e, d, s in zip(entries, default_bits, simd_bits):
        if d and d != model_bits(e):
            sys.exit(f"regenerate_golden_noise: the DEFAULT copy no longer computes golden_noise.model_noise at {e}; "
                     "update it, which stands in for the copy on unreachable rows")
        e.update(default_bits=d or model_bits(e), simd_bits=s)

    version = gumbel_ext.NOISE_VERSION
    text = G.format_table(version, entries)
    old = G.TABLE.read_text() if G.TABLE.exists() else None
    if old == text:
        print(f"{G.TABLE.relative_to(ROOT)} is current (noise version {version})")
        return 0
    if args.check:
        print(f"{G.TABLE.relative_to(ROOT)} is out of date")
        return 1
    if old is not None:
        old_version, old_entries = G.read_table()
        key = lambda e: (e["seed"], e["offset"], e["row"], e["column"])  # noqa: E731
        old_bits = {key(e): (e["default_bits"], e["simd_bits"]) for e in old_entries}
        changed = [e for e in entries if key(e) in old_bits and old_bits[key(e)] != (e["default_bits"], e["simd_bits"])]
        if changed and old_version == version:
            sys.exit(f"regenerate_golden_noise: {len(changed)} entries change bits but NOISE_VERSION is "
                     f"still {version}: bump it in gumbel_ext/_version.py and add a CHANGELOG.md entry first")
    G.TABLE.write_text(text)
    print(f"wrote {G.TABLE.relative_to(ROOT)}: {len(entries)} entries, noise version {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
