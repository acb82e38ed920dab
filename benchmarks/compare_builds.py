"""The CPU bench of two builds of gumbel_ext, interleaved in one run: is a change faster or
slower, workload by workload?

    python3 -m benchmarks.compare_builds BEFORE_DIR [AFTER_DIR] [--rounds 3] [--workloads a,b] [--out FILE.md]

BEFORE_DIR and AFTER_DIR (default: this checkout) are checkouts with gumbel_ext built in
place (`make build`). Two builds cannot share a process (they register the same ops), so
each round runs one child process per build, in alternating order, timing gumbel_ext on
every case of the default preset (benchmarks/workloads.py: fp32, every workload, mode and
pass) with torch.utils.benchmark. A ratio is after / before for the same case in the same
round; the report gives the median ratio over rounds, so a load change between rounds
moves both builds alike. Used for issue #11(d): the CPU must not get slower by more than 5%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.workloads import PRESETS, find_workloads, make_cases  # noqa: E402

# Runs in the child with the build's directory first on sys.path; reads the cases as JSON
# on stdin and prints {key: median seconds}.
CHILD = r"""
import json, sys
import torch
from torch.utils import benchmark
import gumbel_ext

cases = json.load(sys.stdin)
out = {}
for c in cases:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(c["shape"], generator=gen)
    if c["memory_format"]:
        x = x.to(memory_format=getattr(torch, c["memory_format"]))
    dim, hard = c["dim"], c["mode"] == "hard"
    if c["mode"] == "sample":
        fn = lambda: gumbel_ext.sample(x, dim=dim)
    elif c["pass"] == "fwd":
        fn = lambda: gumbel_ext.gumbel_softmax(x, tau=1.0, hard=hard, dim=dim)
    else:
        xg = x.clone().requires_grad_(True)
        grad = torch.randn(x.shape, generator=gen)
        fn = lambda: gumbel_ext.gumbel_softmax(xg, tau=1.0, hard=hard, dim=dim).backward(grad)
    fn()
    t = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    out[c["key"]] = t.blocked_autorange(min_run_time=c["min_run_time"]).median
print(json.dumps(out))
"""


def case_specs(workloads: str = "") -> List[dict]:
    preset = PRESETS["default"]
    chosen = find_workloads(workloads.split(",")) if workloads else preset.workloads
    cases = make_cases(chosen, preset.dtypes, preset.modes, preset.passes)
    return [
        dict(key=c.key, shape=list(c.workload.shape), dim=c.workload.dim, memory_format=c.workload.memory_format,
             mode=c.mode, **{"pass": c.pass_}, min_run_time=preset.min_run_time)
        for c in cases
    ]


def run_build(build: Path, specs: List[dict]) -> Dict[str, float]:
    code = f"import sys; sys.path.insert(0, {str(build)!r})\n" + CHILD
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(specs), capture_output=True, text=True,
                          cwd=build, check=False)
    if done.returncode != 0:
        raise SystemExit(f"compare_builds: the child for {build} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def revision(build: Path) -> str:
    done = subprocess.run(["git", "-C", str(build), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path, nargs="?", default=ROOT)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", default="", help="comma-separated workload names (default: all)")
    parser.add_argument("--out", type=Path, help="write the report (markdown) here too")
    args = parser.parse_args()
    specs = case_specs(args.workloads)
    builds = {"before": args.before.resolve(), "after": args.after.resolve()}
    ratios: Dict[str, List[float]] = {s["key"]: [] for s in specs}
    times: Dict[str, Dict[str, List[float]]] = {k: {s["key"]: [] for s in specs} for k in builds}
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        got = {name: run_build(builds[name], specs) for name in order}
        for key in ratios:
            ratios[key].append(got["after"][key] / got["before"][key])
            for name in builds:
                times[name][key].append(got[name][key])
        print(f"compare_builds: round {r + 1}/{args.rounds} done", file=sys.stderr)
    lines = [
        f"CPU bench, before ({revision(builds['before'])}) vs after ({revision(builds['after'])}), "
        f"interleaved in one run, {args.rounds} rounds, {len(specs)} cases of the default preset; "
        "ratio = after / before (< 1: faster), median over rounds.",
        "",
        "| case | before | after | after / before |",
        "|---|---:|---:|---:|",
    ]
    for key, rs in ratios.items():
        b, a = (statistics.median(times[n][key]) * 1e3 for n in ("before", "after"))
        lines.append(f"| {key} | {b:.3f} ms | {a:.3f} ms | {statistics.median(rs):.3f} |")
    worst = max(ratios, key=lambda k: statistics.median(ratios[k]))
    geo = statistics.geometric_mean([statistics.median(rs) for rs in ratios.values()])
    lines += ["", f"Geometric mean of the ratios: {geo:.3f}; slowest case: {worst} "
                  f"({statistics.median(ratios[worst]):.3f})."]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
