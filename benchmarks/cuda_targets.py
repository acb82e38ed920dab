"""Issue 3's CUDA targets, read off `make bench` records (ratios within one run):

    python3 -m benchmarks.cuda_targets benchmarks/results/cuda-*.json [--md targets.md]

At 8192x32000 (workload lm-32k-batch), fp32 and bf16, soft and hard, fwd and fwd+bwd:
time within 1.2x of torch.softmax on the same tensor (fwd+bwd: softmax's fwd+bwd), at least
80% of the GPU's peak memory bandwidth (bytes read + written, see Case.bytes_moved), at
least 5x faster than F.gumbel_softmax eager and 1.5x faster than torch.compile of it. At
256x10 (rl-head): at least 3x eager. A target whose case is missing from the records is
"not measured" (the default CUDA run has fp32; bf16 comes from a second run,
`--workloads lm-32k-batch --dtypes bf16`). A benchmark, not a test: the exit status is 0
whatever was missed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

# (label, how to read it off a case, the bound, "min" = at least / "max" = at most)
BIG_TARGETS = (
    ("time / softmax", lambda c: _inverse(c["speedups"].get("softmax")), 1.2, "max"),
    ("% of peak bandwidth", lambda c: c["results"].get("gumbel_ext", {}).get("pct_peak"), 80.0, "min"),
    ("vs eager", lambda c: c["speedups"].get("eager"), 5.0, "min"),
    ("vs torch.compile", lambda c: c["speedups"].get("compiled"), 1.5, "min"),
)
SMALL_TARGETS = (("vs eager", lambda c: c["speedups"].get("eager"), 3.0, "min"),)


def _inverse(value: Optional[float]) -> Optional[float]:
    return 1.0 / value if value else None


def load_cases(paths: Iterable[Path]) -> Dict[str, dict]:
    """Every case of the records by key (workload/dtype/mode/pass); a later file wins."""
    cases: Dict[str, dict] = {}
    for path in paths:
        record = json.loads(Path(path).read_text())
        for case in record["cases"]:
            case = dict(case, source=f"{Path(path).name} ({record['meta'].get('date', '?')})")
            cases[case["key"]] = case
    return cases


def evaluate(cases: Dict[str, dict]) -> List[dict]:
    """One row per (case, target): value, bound, and met / MISSED / not measured."""
    plan = [
        (f"lm-32k-batch/{dtype}/{mode}/{pass_}", BIG_TARGETS)
        for dtype in ("fp32", "bf16") for mode in ("soft", "hard") for pass_ in ("fwd", "fwd+bwd")
    ] + [(f"rl-head/fp32/{mode}/{pass_}", SMALL_TARGETS) for mode in ("soft", "hard") for pass_ in ("fwd", "fwd+bwd")]
    rows = []
    for key, targets in plan:
        case = cases.get(key)
        for label, read, bound, kind in targets:
            value = read(case) if case else None
            if value is None:
                status = "not measured"
            elif (value >= bound) if kind == "min" else (value <= bound):
                status = "met"
            else:
                status = "MISSED"
            rows.append(dict(case=key, target=label, value=value, bound=bound, kind=kind, status=status,
                             source=case["source"] if case else ""))
    return rows


def render(rows: Sequence[dict]) -> str:
    lines = ["| case | target | measured | bound | status |", "|---|---|---|---|---|"]
    for r in rows:
        value = "—" if r["value"] is None else f"{r['value']:.2f}"
        bound = f"{'>=' if r['kind'] == 'min' else '<='} {r['bound']:g}"
        lines.append(f"| {r['case']} | {r['target']} | {value} | {bound} | {r['status']} |")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("met", "MISSED", "not measured")}
    sources = sorted({r["source"] for r in rows if r["source"]})
    lines.append("")
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) + (f"; from {', '.join(sources)}" if sources else ""))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="+", type=Path, help="benchmark JSON files (make bench on CUDA)")
    parser.add_argument("--md", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    text = render(evaluate(load_cases(args.records)))
    print(text)
    if args.md:
        args.md.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
