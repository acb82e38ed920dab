"""The GPU session command (scripts/gpu_session.py) must never burn device minutes on a
typo: its --dry-run runs here end to end (every step, tiny sizes, CPU), its steps are
killed at their cap and skipped when time runs out, and benchmarks.cuda_targets reads
the targets and floors off the records it writes."""

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("tabulate")

from benchmarks import cuda_targets  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_session.py"


def _load_session_module():
    spec = importlib.util.spec_from_file_location("gpu_session", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_session = _load_session_module()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-session")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    return proc, out


# --------------------------------------------------------------------- the dry run
def test_dry_run_succeeds_and_runs_every_step(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    record = json.loads((out / "gpu-session.json").read_text())
    steps = {s["name"]: s for s in record["steps"]}
    assert tuple(steps) == gpu_session.STEP_NAMES
    for name in ("env", "build", "test_cuda", "risks", "bench", "ab", "others"):
        assert steps[name]["status"] == "ok", steps[name]
    assert steps["sanitizer"]["status"] == "skipped" and "GPU only" in steps["sanitizer"]["summary"]
    assert "skipped" in steps["test_cuda"]["summary"] and "skipped" in steps["risks"]["summary"]
    assert record["wall_s"] < record["budget_s"]


def test_dry_run_files_fit_what_the_device_returns(dry_run):
    _, out = dry_run
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8
    for p in files:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", p.name), p.name
        assert len(p.relative_to(out).parts) <= 3
    assert {p.name for p in files} == {"gpu-session.log", "gpu-session.json", "cpu-targets.json", "cpu-targets.md",
                                       "launch-ab.json", "launch-ab.md"}
    log = (out / "gpu-session.log").read_text()
    assert "== bench" in log and "== ab" in log


def test_dry_run_bench_measures_every_target_case(dry_run):
    _, out = dry_run
    record = json.loads((out / "cpu-targets.json").read_text())
    keys = [c["key"] for c in record["cases"]]
    planned = [key for key, _ in cuda_targets.plan()]
    assert set(planned) <= set(keys) and "lm-128k/fp32/sample/fwd" in keys
    assert not record["skipped"]
    for case in record["cases"]:
        assert case["check"]["status"] == "ok", case["check"]
        assert {"gumbel_ext", "softmax", "eager", "compiled"} <= set(case["results"]), case["key"]
        assert all("median_s" in r for r in case["results"].values()), case["results"]
        assert case["floors"]["copy_s"] > 0 and case["floors"]["noise_s"] > 0
    table = (out / "cpu-targets.md").read_text()
    assert "## Targets" in table and "| lm-32k-batch/bf16/hard/fwd+bwd | time / softmax |" in table
    assert " 0 not measured" in table


def test_dry_run_ab_times_every_setting_in_its_own_worker(dry_run):
    from benchmarks import launch_ab

    _, out = dry_run
    record = json.loads((out / "launch-ab.json").read_text())
    assert [(w["name"], w["status"]) for w in record["workers"]] == [(w.name, "ok") for w in launch_ab.WORKERS]
    for worker, planned in zip(record["workers"], launch_ab.WORKERS):
        assert worker["env_seen"] == worker["env"] == planned.env()  # the knobs reached the worker process
        assert list(planned.env().values()).count("auto") == (2 if planned.knob is None else 1)
        assert worker["cases"] and all(c["median_s"] > 0 and c["gbps"] > 0 for c in worker["cases"]), worker
    rows = launch_ab.comparisons(record)
    # 5 split cases x 3 settings, 6 aligned-rows cases x 2: every one measured, with its ratio to auto
    assert len(rows) == 5 * 3 + 6 * 2 and all(r["ratio"] for r in rows), rows
    assert all(r["ratio"] == 1.0 for r in rows if r["setting"] == "auto")
    table = (out / "launch-ab.md").read_text()
    assert "## GUMBEL_EXT_SPLIT" in table and "## GUMBEL_EXT_ALIGNED_ROWS" in table and "**Dry run**" in table
    assert "| lm-128k/fp32/sample/fwd" in table and "| classifier/bf16/soft/fwd+bwd" in table


# ---------------------------------------------------------------- caps and skipping
def _log(tmp_path):
    return gpu_session.Log(tmp_path / "log.txt")


def test_a_silent_hang_is_killed_at_its_cap(tmp_path):
    # A grandchild in the same process group, and output without a newline: both must
    # not keep the step alive past its cap.
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print('dots...', end='', flush=True); time.sleep(60)")
    step = gpu_session.Step("hang", cap_s=2, min_s=0, command=[sys.executable, "-c", code])
    start = time.monotonic()
    outcome = gpu_session.run_step(step, left_s=100, log=_log(tmp_path))
    assert time.monotonic() - start < 20
    assert outcome.status == "TIMED OUT" and "dots..." in outcome.summary
    assert "dots..." in (tmp_path / "log.txt").read_text()


def test_the_time_left_caps_a_step_and_a_late_step_is_skipped(tmp_path):
    step = gpu_session.Step("late", cap_s=100, min_s=30, command=[sys.executable, "-c", "print(1)"])
    outcome = gpu_session.run_step(step, left_s=10, log=_log(tmp_path))
    assert outcome.status == "skipped" and "not enough time left" in outcome.summary
    step = gpu_session.Step("capped", cap_s=100, min_s=0, command=[sys.executable, "-c", "import time; time.sleep(30)"])
    assert gpu_session.run_step(step, left_s=1.5, log=_log(tmp_path)).status == "TIMED OUT"


def test_a_failed_build_skips_the_rest_and_the_session_reports_it(tmp_path):
    ok = [sys.executable, "-c", "print('3 passed in 0.1s')"]
    steps = [
        gpu_session.Step("build", 30, 0, [sys.executable, "-c", "raise SystemExit(3)"], essential=True),
        gpu_session.Step("test_cuda", 30, 0, ok),
    ]
    rc = gpu_session.session(tmp_path, dry_run=True, budget_s=60, steps=steps)
    record = json.loads((tmp_path / "gpu-session.json").read_text())
    assert rc == 1
    assert [(s["name"], s["status"]) for s in record["steps"]] == [("build", "FAILED"), ("test_cuda", "skipped")]
    assert record["steps"][1]["summary"] == "build failed"


def test_steps_selects_a_subset_and_rejects_unknown_names(tmp_path):
    steps = [gpu_session.Step(name, 30, 0, [sys.executable, "-c", "print('ran')"]) for name in ("build", "risks")]
    assert gpu_session.session(tmp_path, dry_run=True, budget_s=60, steps=steps, only=["risks"]) == 0
    record = json.loads((tmp_path / "gpu-session.json").read_text())
    assert [(s["name"], s["status"]) for s in record["steps"]] == [("build", "skipped"), ("risks", "ok")]
    with pytest.raises(SystemExit):
        gpu_session.main(["--dry-run", "--steps", "build,tests"])


def test_pytest_and_sanitizer_summaries():
    assert gpu_session._summarize("x", ["....", "== 3 failed, 10 passed in 4.2s =="]) == "3 failed, 10 passed in 4.2s"
    assert gpu_session._summarize("sanitizer", ["========= ERROR SUMMARY: 0 errors", "1 passed in 9s"]) == \
        "ERROR SUMMARY: 0 errors"


def test_runbook_matches_the_script():
    """The one call in the GPU runbook (docs/cuda.md): the script's budget leaves at least
    2 minutes of the device tool's timeout to spare, and the budget is under 8 minutes."""
    text = (ROOT / "docs" / "cuda.md").read_text()
    assert "python3 scripts/gpu_session.py" in text
    timeout = int(re.search(r"timeout_s[`\"']?\s*[:=]\s*(\d+)", text).group(1))
    assert timeout <= 600 and gpu_session.DEFAULT_BUDGET_S <= 480
    assert timeout - gpu_session.DEFAULT_BUDGET_S >= 120


# ------------------------------------------------------------------ the targets table
def _case(key, ours, eager=None, compiled=None, softmax=None, copy=None, noise=None):
    speedups = {k: v / ours for k, v in (("eager", eager), ("compiled", compiled), ("softmax", softmax)) if v}
    fused = {"median_s": ours}
    case = {"key": key, "speedups": speedups, "results": {"gumbel_ext": fused}}
    if copy is not None:
        fused["pct_copy"] = 100 * copy / ours
        case["floors"] = {"copy_s": copy, "noise_s": noise}
    return case


def _rows(tmp_path, cases):
    path = tmp_path / "cuda.json"
    path.write_text(json.dumps({"meta": {"date": "2026-11-30"}, "cases": cases}))
    return {(r["case"], r["target"]): r for r in cuda_targets.evaluate(cuda_targets.load_cases([path]))}


def test_targets_met_missed_and_their_reasons(tmp_path):
    rows = _rows(tmp_path, [
        # all met: 1.1x softmax, 6x eager, 2x compile, 0.9 ms copy floor = 82% of copy bandwidth
        _case("lm-32k-batch/fp32/soft/fwd", 1.1e-3, 6.6e-3, 2.2e-3, 1.0e-3, copy=0.9e-3, noise=0.3e-3),
        # all missed; the noise alone outlasts the copy: instruction-bound
        _case("lm-32k-batch/fp32/hard/fwd", 2e-3, 4e-3, 2.4e-3, 1e-3, copy=0.5e-3, noise=0.8e-3),
        # missed bandwidth; the copy outlasts the noise: memory-bound
        _case("lm-32k-batch/fp32/soft/fwd+bwd", 3e-3, 30e-3, 6e-3, 2.6e-3, copy=2e-3, noise=0.4e-3),
        # bf16: 1.5x softmax is within its 1.6x bound
        _case("lm-32k-batch/bf16/soft/fwd", 1.5e-3, softmax=1e-3, copy=1.3e-3, noise=0.3e-3),
        # tiny: 2x eager misses 3x; both floors a few microseconds: launch-bound
        _case("rl-head/fp32/soft/fwd+bwd", 40e-6, eager=80e-6, copy=3e-6, noise=4e-6),
        # a make bench record: no floors
        _case("rl-head/fp32/hard/fwd", 10e-6, eager=50e-6),
    ])
    for target in ("time / softmax", "% of copy bandwidth", "vs eager", "vs torch.compile"):
        assert rows[("lm-32k-batch/fp32/soft/fwd", target)]["status"] == "met"
        missed = rows[("lm-32k-batch/fp32/hard/fwd", target)]
        assert missed["status"] == "MISSED" and missed["reason"].startswith("instruction-bound")
        assert rows[("lm-32k-batch/bf16/hard/fwd", "time / softmax")]["status"] == "not measured"
    assert rows[("lm-32k-batch/fp32/soft/fwd", "% of copy bandwidth")]["value"] == pytest.approx(100 * 0.9 / 1.1)
    bandwidth = rows[("lm-32k-batch/fp32/soft/fwd+bwd", "% of copy bandwidth")]
    assert bandwidth["status"] == "MISSED" and bandwidth["reason"].startswith("memory-bound")
    assert rows[("lm-32k-batch/fp32/soft/fwd+bwd", "vs eager")]["reason"] == ""  # met: no reason
    assert rows[("lm-32k-batch/bf16/soft/fwd", "time / softmax")]["status"] == "met"
    assert ("lm-32k-batch/bf16/soft/fwd", "vs eager") not in rows  # bf16 has no eager target
    small = rows[("rl-head/fp32/soft/fwd+bwd", "vs eager")]
    assert small["status"] == "MISSED" and small["reason"].startswith("launch-bound")
    assert rows[("rl-head/fp32/hard/fwd", "vs eager")]["status"] == "met"
    text = cuda_targets.render(list(rows.values()))
    assert "| lm-32k-batch/fp32/hard/fwd | vs eager | 2.00 | >= 5 | MISSED | 2000.0 µs | 500.0 µs | 800.0 µs |" in text


def test_cuda_targets_command_line(tmp_path, dry_run):
    _, out = dry_run
    md = tmp_path / "t.md"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.cuda_targets", str(out / "cpu-targets.json"), "--md", str(md)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert md.read_text().strip() == proc.stdout.strip() and "copy floor" in proc.stdout


def test_bench_past_its_deadline_skips_cases_and_still_writes_its_files(tmp_path):
    from benchmarks import gpu_targets

    assert gpu_targets.main(["--dry-run", "--out", str(tmp_path), "--deadline-s", "0"]) == 0
    record = json.loads((tmp_path / "cpu-targets.json").read_text())
    assert record["cases"] == [] and len(record["skipped"]) == 13
    assert all(s["reason"].startswith("out of time") for s in record["skipped"])
    table = (tmp_path / "cpu-targets.md").read_text()
    assert "0 met, 0 MISSED, 28 not measured" in table and "- skipped lm-128k/fp32/sample/fwd" in table


# --------------------------------------------------------------- the launch knobs' A/B
def _ab_worker(name, knob, env, cases):
    return {"name": name, "knob": knob, "setting": env.get(knob, "auto") if knob else "auto", "env": env,
            "status": "ok", "seconds": 9.0, "timeout_s": 40.0, "cases": cases}


def _ab_case(knob, key, median, kernels=()):
    return {"knob": knob, "key": key, "median_s": median, "iqr_s": median / 50, "gbps": 1e-6 / median,
            "kernels": list(kernels)}


def test_launch_ab_ratio_is_each_setting_over_auto(tmp_path):
    from benchmarks import launch_ab

    split, aligned = launch_ab.SPLIT, launch_ab.ALIGNED
    both_auto = {split: "auto", aligned: "auto"}
    record = {"meta": {"device": "cuda-test", "command": "test", "date": "2026-11-30", "cpu": "x", "torch": "2",
                       "torch_threads": 1, "cpu_count": 1, "gumbel_ext": "0", "git": "g", "fused_kernel": True},
              "dry_run": False, "wall_s": 30.0, "workers": [
        _ab_worker("auto", None, both_auto, [
            _ab_case(split, "lm-128k/fp32/soft/fwd", 40e-6, ["split_forward_kernel<float, true>"]),
            _ab_case(aligned, "classifier/fp32/soft/fwd", 10e-6)]),
        _ab_worker("split-off", split, {**both_auto, split: "off"},
                   [_ab_case(split, "lm-128k/fp32/soft/fwd", 50e-6, ["block_forward_kernel<float>"])]),
        _ab_worker("aligned-off", aligned, {**both_auto, aligned: "off"},
                   [_ab_case(aligned, "classifier/fp32/soft/fwd", 8e-6)]),
        {"name": "split-workspace", "knob": split, "setting": "workspace", "env": {**both_auto, split: "workspace"},
         "status": "skipped", "reason": "out of time (5 s left, needs ~11 s)", "cases": []},
    ]}
    rows = {(r["case"], r["setting"]): r for r in launch_ab.comparisons(record)}
    assert rows[("lm-128k/fp32/soft/fwd", "off")]["ratio"] == pytest.approx(50 / 40)  # off / auto
    assert rows[("lm-128k/fp32/soft/fwd", "auto")]["ratio"] == 1.0
    assert rows[("classifier/fp32/soft/fwd", "off")]["ratio"] == pytest.approx(0.8)
    workspace = rows[("lm-128k/fp32/soft/fwd", "workspace")]
    assert workspace["ratio"] is None and workspace["error"] == "not measured"
    assert len(rows) == 3 + 2  # the auto worker's aligned-rows case is not a split row
    launch_ab.write_markdown(tmp_path / "ab.md", record)
    table = (tmp_path / "ab.md").read_text()
    assert re.search(r"\| lm-128k/fp32/soft/fwd +\| off +\| 50 µs ±2% +\| 1\.250x +\|", table), table
    assert "block_forward_kernel<float>" in table and "| 0.800x" in table
    assert "- split-workspace (GUMBEL_EXT_SPLIT=workspace GUMBEL_EXT_ALIGNED_ROWS=auto): skipped, out of time" in table


def test_launch_ab_past_its_deadline_starts_no_worker(tmp_path, monkeypatch):
    from benchmarks import launch_ab

    def no_worker(*args, **kwargs):
        raise AssertionError("a worker started past the deadline")

    monkeypatch.setattr(launch_ab, "spawn_worker", no_worker)
    assert launch_ab.main(["--dry-run", "--out", str(tmp_path), "--deadline-s", "0"]) == 0
    record = json.loads((tmp_path / "launch-ab.json").read_text())
    assert [w["status"] for w in record["workers"]] == ["skipped"] * len(launch_ab.WORKERS)
    assert all(w["reason"].startswith("out of time") and not w["cases"] for w in record["workers"])
    assert launch_ab.comparisons(record) == []
    assert "(nothing measured)" in (tmp_path / "launch-ab.md").read_text()


def test_launch_ab_kernel_names_keep_the_template_arguments():
    from benchmarks.launch_ab import short_kernel_name

    assert short_kernel_name("void gumbel_ext::cuda::warp_forward_kernel<float, 8, true>(gumbel_ext::cuda::"
                             "ForwardArgs<float>, long, int, gumbel_ext::cuda::Rng)") == \
        "warp_forward_kernel<float, 8, true>"
    assert short_kernel_name("void gumbel_ext::cuda::(anonymous namespace)::split_forward_kernel<c10::BFloat16, "
                             "false>(gumbel_ext::cuda::ForwardArgs<c10::BFloat16>)") == \
        "split_forward_kernel<c10::BFloat16, false>"
    assert short_kernel_name("gumbel_ext::gumbel_softmax_forward") is None  # an op, not a kernel


def test_launch_ab_worker_past_its_timeout_is_killed_and_reported(tmp_path, monkeypatch):
    from benchmarks import launch_ab

    monkeypatch.setattr(launch_ab, "WORKERS", launch_ab.WORKERS[:1])
    monkeypatch.setattr(launch_ab, "worker_timeout", lambda need, left, dry_run: 0.3)  # under torch's import
    start = time.monotonic()
    assert launch_ab.main(["--dry-run", "--out", str(tmp_path)]) == 1
    assert time.monotonic() - start < 30
    (worker,) = json.loads((tmp_path / "launch-ab.json").read_text())["workers"]
    assert worker["status"] == "TIMED OUT" and worker["cases"] == []
    assert "- auto (GUMBEL_EXT_SPLIT=auto GUMBEL_EXT_ALIGNED_ROWS=auto): TIMED OUT" in (tmp_path / "launch-ab.md").read_text()
