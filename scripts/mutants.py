"""`make mutants`: does the fast test suite kill every mutation in tests/mutants/?

Each tests/mutants/*.toml is one small deliberate bug, kept as data:

    why = "what it breaks, and which test should catch it"
    first = ["tests/test_cuda_emulated.py"]   # optional: run these test files first
    [[edit]]                  # one or more exact-text replacements
    file = "csrc/gumbel_noise.h"
    old = '''text that must occur exactly once in the file'''
    new = '''its replacement'''

The current working tree (tracked and untracked, not ignored files) is copied to a
scratch folder (build-mutants/, git-ignored; --scratch to choose); there the suite first
runs unmutated (it must pass), then each mutant in turn is applied, the extension rebuilt
(incrementally, through ccache when the environment has it) and the suite run with -x.
A mutant whose text no longer occurs exactly once is reported as a failure, so that it is
updated with the code rather than silently skipped. Exit status 1 if any mutant survives,
no longer applies or does not build.

    python3 scripts/mutants.py                     # every mutant
    python3 scripts/mutants.py 01_uniform_half_step --no-baseline
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "tests" / "mutants"

# The fast suite: every default (not slow) test but the ones that check builds, packaging,
# benchmarks or the GPU session script rather than the computation; the files most likely to
# kill a mutant first, since -x stops at a failure.
FIRST = ["test_spec.py", "test_errors.py", "test_errors_reference.py", "test_forward.py", "test_backward.py",
         "golden/test_golden_noise.py", "test_cpu_isa.py"]
SKIPPED = ["test_build_paths.py", "test_bench.py", "test_cuda_check.py", "test_release.py", "test_gpu_session.py"]


@dataclass
class Mutant:
    name: str
    why: str
    edits: List[Dict[str, str]]
    first: List[str] = field(default_factory=list)


@dataclass
class Outcome:
    name: str
    status: str  # killed | SURVIVED | NOT APPLICABLE | BUILD FAILED
    detail: str = ""
    seconds: Dict[str, float] = field(default_factory=dict)


def load_mutants(names: List[str]) -> List[Mutant]:
    paths = sorted(MUTANTS.glob("*.toml"))
    if names:
        wanted = {n.removesuffix(".toml") for n in names}
        unknown = wanted - {p.stem for p in paths}
        if unknown:
            sys.exit(f"mutants.py: no such mutant: {', '.join(sorted(unknown))}")
        paths = [p for p in paths if p.stem in wanted]
    mutants = []
    for p in paths:
        data = tomllib.loads(p.read_text())
        edits = data.get("edit", [])
        if not data.get("why") or not edits or any(set(e) != {"file", "old", "new"} for e in edits):
            sys.exit(f"mutants.py: {p.name} needs `why` and [[edit]] tables of file, old, new")
        mutants.append(Mutant(p.stem, data["why"].strip(), edits, list(data.get("first", []))))
    return mutants


def tree_files() -> List[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                         capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def sync(scratch: Path) -> None:
    """Copy the working tree into scratch, touching only files that differ (so the
    extension rebuilds incrementally)."""
    for rel in tree_files():
        src, dst = ROOT / rel, scratch / rel
        if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def apply(mutant: Mutant, scratch: Path) -> Optional[Dict[Path, str]]:
    """Apply every edit; returns the files' original texts, or None (nothing changed) if an
    edit's old text does not occur exactly once."""
    originals: Dict[Path, str] = {}
    texts: Dict[Path, str] = {}
    for e in mutant.edits:
        path = scratch / e["file"]
        if not path.is_file():
            return _not_applicable(mutant, f"{e['file']} does not exist")
        text = texts.get(path, path.read_text())
        originals.setdefault(path, path.read_text())
        count = text.count(e["old"])
        if count != 1:
            found = "text not found" if count == 0 else f"text found {count} times"
            return _not_applicable(mutant, f"{found} in {e['file']}")
        texts[path] = text.replace(e["old"], e["new"])
    for path, text in texts.items():
        path.write_text(text)
    return originals


def _not_applicable(mutant: Mutant, why: str) -> None:
    print(f"mutant {mutant.name} no longer applies ({why}): update tests/mutants/{mutant.name}.toml", flush=True)
    return None


def build(scratch: Path, log: Path) -> bool:
    env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count() or 1)))
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=scratch, env=env,
                              stdout=f, stderr=subprocess.STDOUT)
    return proc.returncode == 0


def suite_files(scratch: Path, first: List[str]) -> List[str]:
    """The fast suite's test files; `first` (a mutant's hint), then FIRST, then the rest."""
    tests = scratch / "tests"
    found = sorted(p.relative_to(tests).as_posix() for p in tests.rglob("test_*.py"))
    files = [f"tests/{f}" for f in found if f not in SKIPPED]
    order = list(dict.fromkeys(first + [f"tests/{f}" for f in FIRST]))
    return [f for f in order if f in files] + [f for f in files if f not in order]


def run_suite(scratch: Path, log: Path, first: List[str] = ()) -> subprocess.CompletedProcess:
    # The scratch copy's own package, never an installed or JIT-built one.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUMBEL_EXT_") and k != "PYTHONPATH"}
    env["GUMBEL_EXT_BUILD_DIR"] = str(scratch / "build-jit")  # a failed import must not touch the user's cache
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"]
    with log.open("w") as f:
        return subprocess.run(cmd + suite_files(scratch, list(first)), cwd=scratch, env=env, stdout=f,
                              stderr=subprocess.STDOUT)


def first_failure(log: Path) -> str:
    for line in log.read_text().splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0]
    return "see " + str(log)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (file stems in tests/mutants/); all by default")
    parser.add_argument("--scratch", type=Path, default=ROOT / "build-mutants")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    args = parser.parse_args()
    mutants = load_mutants(args.names)
    scratch = args.scratch.resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    logs = scratch / "mutant-logs"
    logs.mkdir(exist_ok=True)
    sync(scratch)
    print(f"{len(mutants)} mutants, scratch copy {scratch}", flush=True)

    if not args.no_baseline:
        t0 = time.monotonic()
        if not build(scratch, logs / "baseline-build.log"):
            print(f"the unmutated tree does not build: {logs / 'baseline-build.log'}")
            return 1
        proc = run_suite(scratch, logs / "baseline-tests.log")
        if proc.returncode != 0:
            print(f"the suite fails without any mutant ({first_failure(logs / 'baseline-tests.log')}): fix that first")
            return 1
        print(f"baseline: the suite passes unmutated ({time.monotonic() - t0:.0f} s)", flush=True)

    outcomes = []
    for m in mutants:
        originals = apply(m, scratch)
        if originals is None:
            outcomes.append(Outcome(m.name, "NOT APPLICABLE", "its text no longer occurs exactly once"))
            continue
        out = Outcome(m.name, "")
        try:
            t0 = time.monotonic()
            built = build(scratch, logs / f"{m.name}-build.log")
            out.seconds["build"] = time.monotonic() - t0
            if not built:
                out.status, out.detail = "BUILD FAILED", str(logs / f"{m.name}-build.log")
            else:
                t1 = time.monotonic()
                proc = run_suite(scratch, logs / f"{m.name}-tests.log", m.first)
                out.seconds["tests"] = time.monotonic() - t1
                if proc.returncode == 0:
                    out.status, out.detail = "SURVIVED", m.why
                else:
                    out.status, out.detail = "killed", first_failure(logs / f"{m.name}-tests.log")
        finally:
            for path, text in originals.items():
                path.write_text(text)
        outcomes.append(out)
        times = ", ".join(f"{k} {v:.0f} s" for k, v in out.seconds.items())
        print(f"{m.name}: {out.status} by {out.detail} ({times})" if out.status == "killed"
              else f"{m.name}: {out.status}: {out.detail} ({times})", flush=True)

    # Leave the scratch library unmutated for the next run's incremental build.
    build(scratch, logs / "restore-build.log")
    bad = [o for o in outcomes if o.status != "killed"]
    total = sum(sum(o.seconds.values()) for o in outcomes)
    print(f"\n{len(outcomes) - len(bad)} of {len(outcomes)} mutants killed; "
          f"{total:.0f} s of build and tests, {total / max(len(outcomes), 1):.0f} s a mutant")
    for o in bad:
        print(f"  {o.name}: {o.status}: {o.detail}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
