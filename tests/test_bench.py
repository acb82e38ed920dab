"""The benchmark suite must keep running: `--quick` end to end in a subprocess (every
mode, pass and implementation, torch.compile included), and its correctness gate must
be able to fail."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("tabulate")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from benchmarks import check  # noqa: E402
from benchmarks.implementations import IMPL_KEYS  # noqa: E402
from benchmarks.workloads import PRESETS, Case, make_cases, make_input  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    return proc, out


def test_quick_run_succeeds(quick_run):
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_quick_run_prints_machine_and_table(quick_run):
    proc, _ = quick_run
    assert f"torch {torch.__version__}" in proc.stdout
    assert "threads" in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if line.startswith("workload"))
    for column in ("gumbel_ext", "eager", "compiled", "multinomial", "softmax", "vs eager", "GB/s"):
        assert column in header
    for w in PRESETS["quick"].workloads:
        assert sum(line.startswith(w.name) for line in proc.stdout.splitlines()) == 5  # 5 mode/pass rows


def test_quick_run_writes_files(quick_run):
    _, out = quick_run
    stems = {p.stem for p in out.iterdir()}
    assert len(stems) == 1, stems
    stem = stems.pop()
    assert stem.endswith("-quick")
    assert (out / f"{stem}.png").stat().st_size > 10_000
    md = (out / f"{stem}.md").read_text()
    assert "| workload" in md and f"![speedup of gumbel_ext by workload]({stem}.png)" in md

    record = json.loads((out / f"{stem}.json").read_text())
    assert record["meta"]["torch"] == torch.__version__
    preset = PRESETS["quick"]
    expected = make_cases(preset.workloads, preset.dtypes, preset.modes, preset.passes)
    assert [c["key"] for c in record["cases"]] == [c.key for c in expected]
    for case in record["cases"]:
        assert case["check"]["status"] == ("ok" if record["meta"]["fused_kernel"] else "skipped"), case["check"]
        for key, result in case["results"].items():
            assert key in IMPL_KEYS
            assert "error" not in result, (case["key"], key, result)
            assert result["median_s"] > 0 and result["iqr_s"] >= 0 and result["gbps"] > 0
        expected_impls = {"gumbel_ext", "eager", "compiled", "softmax"} | ({"multinomial"} if case["mode"] == "sample" else set())
        assert set(case["results"]) == expected_impls
        assert set(case["speedups"]) == expected_impls - {"gumbel_ext"}
        if case["pass"] == "fwd+bwd":
            fused, eager = case["results"]["gumbel_ext"], case["results"]["eager"]
            # soft keeps its output (N elements); hard keeps only the 16-byte rng_state
            # beyond the logits, while F.gumbel_softmax keeps y_soft.
            n_bytes = case["numel"] * 4
            assert eager["saved_beyond_inputs_bytes"] >= n_bytes
            assert fused["saved_beyond_inputs_bytes"] == (16 if case["mode"] == "hard" else n_bytes + 16)
        assert "compile_s" in case["results"]["compiled"]


@pytest.mark.parametrize("mode,pass_", [("soft", "fwd+bwd"), ("hard", "fwd"), ("sample", "fwd")])
def test_check_catches_wrong_noise(monkeypatch, mode, pass_):
    """The gate compares against reference.py; shifted reference noise must fail it."""
    workload = PRESETS["quick"].workloads[1]  # the strided (dim=1) one
    case = Case(workload, "fp32", mode, pass_)
    x = make_input(case, torch.device("cpu"), seed=0)
    grad = torch.randn_like(x) if pass_ == "fwd+bwd" else None
    if not check._ops.has_kernel(x.device):
        pytest.skip("no fused CPU kernel")
    assert check.check_case(case, x, grad).status == "ok"

    true_noise = check.reference.gumbel_noise
    # Rotate the noise along the categories (reference.sample and gumbel_softmax both draw
    # it from here): rows still are softmaxes / indices, only the pairing is wrong.
    monkeypatch.setattr(check.reference, "gumbel_noise", lambda x, dim, rng: true_noise(x, dim, rng).roll(1, dim))
    result = check.check_case(case, x, grad)
    assert result.status == "FAIL", result
    if mode != "sample":
        # A forward mismatch says whether a replay reproduces it, and saves what replays it.
        assert "replay reproduces it" in result.detail and "reference recomputes the same" in result.detail, result.detail
        dump = torch.load(result.detail.split("inputs saved to ")[1].rstrip("]"))
        assert torch.equal(dump["x"], x.detach()) and dump["bad_rows"]


def test_cuda_presets_add_the_target_workload():
    from benchmarks.workloads import GPU_WORKLOADS, preset_for

    assert preset_for("default", "cpu") == PRESETS["default"]
    assert preset_for("quick", "cuda") == PRESETS["quick"]
    cuda = preset_for("default", "cuda")
    assert cuda.workloads[-1] is GPU_WORKLOADS[0] and GPU_WORKLOADS[0].shape == (8192, 32000)


def test_compare_builds_runs_both_builds(tmp_path):
    """benchmarks/compare_builds.py (issue #11(d)'s before/after CPU bench) times one
    workload in two child processes and reports a ratio per case: here the same build twice."""
    out = tmp_path / "compare.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare_builds", str(ROOT), str(ROOT), "--rounds", "1",
         "--workloads", "rl-head", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| rl-head/fp32/")]
    assert len(rows) == 5, out.read_text()
    for row in rows:
        ratio = float(row.rstrip(" |").rsplit("|", 1)[1])
        assert 0 < ratio < 100
