"""The CUDA targets (issues 3 and 12), read off benchmark records, with the two floors
beside them:

    python3 -m benchmarks.cuda_targets benchmarks/results/cuda-h200-targets.json [--md targets.md]

At 8192x32000 (workload lm-32k-batch), soft and hard, fwd and fwd+bwd, fp32: time at most
1.2x torch.softmax's on the same tensor (fwd+bwd: softmax's fwd+bwd), at least 5x faster
than F.gumbel_softmax eager and 1.5x faster than torch.compile of it; fp32 and bf16: at
least 80% of the bandwidth of a device-to-device copy measured in the same run (not the
data sheet); bf16: at most 1.6x torch.softmax. At 256x10 (rl-head) fp32: at least 3x eager.

Floors (records of `benchmarks.gpu_targets`): `copy` is the time of a device copy moving
the case's bytes, `noise` the time of the noise-only kernel over its elements. A MISSED
row gives its reason: instruction-bound when the noise alone takes longer than the copy
(the Philox and log work exceed the memory time), memory-bound otherwise; launch-bound
when both floors are a few microseconds. A `make bench` record has no floors: its
bandwidth rows are "not measured". A target whose case is missing is "not measured".
A benchmark, not a test: the exit status is 0 whatever was missed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

# Both floors under this: the case is bound by launches and host overhead, not the GPU.
LAUNCH_BOUND_S = 10e-6


def _inverse(value: Optional[float]) -> Optional[float]:
    return 1.0 / value if value else None


def _pct_copy(case: dict) -> Optional[float]:
    return case["results"].get("gumbel_ext", {}).get("pct_copy")


# (label, how to read it off a case, the bound, "min" = at least / "max" = at most)
def _vs_softmax(bound):
    return ("time / softmax", lambda c: _inverse(c["speedups"].get("softmax")), bound, "max")


BANDWIDTH = ("% of copy bandwidth", _pct_copy, 80.0, "min")
FP32_TARGETS = (
    _vs_softmax(1.2),
    BANDWIDTH,
    ("vs eager", lambda c: c["speedups"].get("eager"), 5.0, "min"),
    ("vs torch.compile", lambda c: c["speedups"].get("compiled"), 1.5, "min"),
)
BF16_TARGETS = (_vs_softmax(1.6), BANDWIDTH)
SMALL_TARGETS = (("vs eager", lambda c: c["speedups"].get("eager"), 3.0, "min"),)


def plan() -> List[tuple]:
    big = [(f"lm-32k-batch/{dtype}/{mode}/{pass_}", FP32_TARGETS if dtype == "fp32" else BF16_TARGETS)
           for dtype in ("fp32", "bf16") for pass_ in ("fwd", "fwd+bwd") for mode in ("soft", "hard")]
    return big + [(f"rl-head/fp32/{mode}/{pass_}", SMALL_TARGETS) for pass_ in ("fwd", "fwd+bwd")
                  for mode in ("soft", "hard")]


def cases_of(record: dict, source: str) -> Dict[str, dict]:
    return {c["key"]: dict(c, source=f"{source} ({record['meta'].get('date', '?')})") for c in record["cases"]}


def load_cases(paths: Iterable[Path]) -> Dict[str, dict]:
    """Every case of the records by key (workload/dtype/mode/pass); a later file wins."""
    cases: Dict[str, dict] = {}
    for path in paths:
        cases.update(cases_of(json.loads(Path(path).read_text()), Path(path).name))
    return cases


def bound_by(case: dict) -> str:
    """Which floor limits the case: the reason given for a miss."""
    floors = case.get("floors") or {}
    copy_s, noise_s = floors.get("copy_s"), floors.get("noise_s")
    if copy_s is None or noise_s is None:
        return "no floors in this record"
    if max(copy_s, noise_s) < LAUNCH_BOUND_S:
        return f"launch-bound: both floors under {LAUNCH_BOUND_S * 1e6:.0f} µs"
    if noise_s > copy_s:
        return f"instruction-bound: the noise alone takes {noise_s / copy_s:.2f}x the copy"
    return f"memory-bound: the copy takes {copy_s / noise_s:.2f}x the noise alone"


def evaluate(cases: Dict[str, dict]) -> List[dict]:
    """One row per (case, target): value, bound, met / MISSED / not measured, the case's
    time and floors, and for a miss the reason."""
    rows = []
    for key, targets in plan():
        case = cases.get(key)
        floors = (case or {}).get("floors") or {}
        ours = (case or {}).get("results", {}).get("gumbel_ext", {}).get("median_s")
        for label, read, bound, kind in targets:
            value = read(case) if case else None
            if value is None:
                status = "not measured"
            elif (value >= bound) if kind == "min" else (value <= bound):
                status = "met"
            else:
                status = "MISSED"
            rows.append(dict(case=key, target=label, value=value, bound=bound, kind=kind, status=status,
                             ours_s=ours, copy_s=floors.get("copy_s"), noise_s=floors.get("noise_s"),
                             reason=bound_by(case) if status == "MISSED" else "",
                             source=case["source"] if case else ""))
    return rows


def _us(seconds: Optional[float]) -> str:
    return "—" if seconds is None else f"{seconds * 1e6:.1f} µs"


def render(rows: Sequence[dict]) -> str:
    lines = ["| case | target | measured | bound | status | ours | copy floor | noise floor | reason |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        value = "—" if r["value"] is None else f"{r['value']:.2f}"
        bound = f"{'>=' if r['kind'] == 'min' else '<='} {r['bound']:g}"
        lines.append(f"| {r['case']} | {r['target']} | {value} | {bound} | {r['status']} | {_us(r['ours_s'])} "
                     f"| {_us(r['copy_s'])} | {_us(r['noise_s'])} | {r['reason']} |")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("met", "MISSED", "not measured")}
    sources = sorted({r["source"] for r in rows if r["source"]})
    lines.append("")
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) + (f"; from {', '.join(sources)}" if sources else ""))
    lines.append("")
    lines.append("copy floor: a device copy moving the case's bytes; noise floor: the noise-only kernel "
                 "(twice for hard fwd+bwd); % of copy bandwidth = copy floor / ours.")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="+", type=Path, help="benchmark JSON files (gpu_targets or make bench)")
    parser.add_argument("--md", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    text = render(evaluate(load_cases(args.records)))
    print(text)
    if args.md:
        args.md.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
