"""What a run shows: the machine it ran on, the table (terminal and Markdown), the JSON
record, and the speedup plot."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

import gumbel_ext
from gumbel_ext import _ops

REPO = Path(__file__).resolve().parent.parent

# Peak DRAM bandwidth (TB/s) by torch.cuda.get_device_name() pattern, first match wins;
# vendor data-sheet figures. "% of peak" is left out on GPUs not listed here (and on CPUs).
PEAK_TBPS = (
    (r"(?<!G)H200", 4.8),  # not GH200, whose memory differs by variant
    (r"H100.*NVL", 3.9),
    (r"H100.*PCIe", 2.0),
    (r"(?<!G)H100", 3.35),  # SXM5, reported as "NVIDIA H100 80GB HBM3"
    (r"B200", 8.0),
    (r"A100.*80GB.*PCIe", 1.935),
    (r"A100.*80GB", 2.039),
    (r"A100", 1.555),
    (r"L40S", 0.864),
    (r"A10\b", 0.6),
    (r"L4\b", 0.3),
)


def peak_bandwidth(device: torch.device) -> Optional[float]:
    """Peak memory bandwidth in bytes/s of a known GPU, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for pattern, tbps in PEAK_TBPS:
        if re.search(pattern, name):
            return tbps * 1e12
    return None


def device_slug(device: torch.device) -> str:
    """The results' file stem: ``cpu``, or ``cuda-<gpu name>`` (e.g. cuda-h100-80gb-hbm3)."""
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device).lower().replace("nvidia", "")
    return "cuda-" + re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_revision() -> Optional[str]:
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() or None


def machine_info(device: torch.device) -> Dict[str, object]:
    info: Dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_slug(device),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gumbel_ext": gumbel_ext.__version__,
        "git": _git_revision(),
        "fused_kernel": _ops.has_kernel(device),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.run", *sys.argv[1:]]),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        peak = peak_bandwidth(device)
        info.update(
            gpu=torch.cuda.get_device_name(device),
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            peak_bandwidth_tbps=peak / 1e12 if peak else None,
        )
    return info


def describe_machine(info: Dict[str, object]) -> str:
    where = info.get("gpu") or info["cpu"]
    text = (
        f"{info['date']} · {info['device']} ({where}) · torch {info['torch']}"
        f"{' CUDA ' + str(info['cuda']) if info.get('cuda') else ''} · {info['torch_threads']} threads "
        f"of {info['cpu_count']} CPUs · gumbel_ext {info['gumbel_ext']} ({info['git']})"
    )
    if not info["fused_kernel"]:
        text += " · NO FUSED KERNEL: gumbel_ext ran its pure-PyTorch reference"
    if "load_average_at_start" in info:
        text += f" · load average {info['load_average_at_start']}"
    if is_busy(info):
        text += (
            " · BUSY MACHINE: other work was running (1-min load >= half the CPUs); "
            "multi-threaded timings stall and are not representative"
        )
    return text


def is_busy(info: Dict[str, object]) -> bool:
    load = info.get("load_average_at_start")
    return bool(load) and info.get("device") == "cpu" and load[0] >= 0.5 * (info["cpu_count"] or 1)


# ------------------------------------------------------------------------------ table
def fmt_time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "n/a"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def _cell_time(result: Optional[dict], spread: bool) -> str:
    if not result:
        return ""
    if result.get("error"):
        return "error"
    text = fmt_time(result["median_s"])
    if spread:
        text += f" ±{100 * result['iqr_s'] / result['median_s']:.0f}%"
    return text


def _ratio(value: Optional[float]) -> str:
    return f"{value:.2f}x" if value else ""


def fmt_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _bytes_pair(values: Sequence[Optional[int]]) -> str:
    return " / ".join(fmt_bytes(v) for v in values) if None not in values else ""


def table_rows(cases: Sequence[dict], impls: Sequence[dict], spread: bool = True) -> List[List[str]]:
    """One row per case: the gumbel_ext time, each other implementation's time, then
    gumbel_ext's speedup over each baseline and its ratio to the floor."""
    baselines = [i for i in impls if i["role"] == "baseline"]
    has_peak = any(c["results"].get("gumbel_ext", {}).get("pct_peak") for c in cases)
    has_cuda_peak = any(r.get("cuda_peak_bytes") is not None for c in cases for r in c["results"].values())
    rows = [
        ["workload", "shape", "dtype", "mode", "pass", "check"]
        + [i["key"] for i in impls]
        + [f"vs {i['key']}" for i in baselines]
        + ["/ floor", "GB/s"]
        + (["% peak"] if has_peak else [])
        + ["saved (ext / eager)"]
        + (["CUDA peak (ext / eager)"] if has_cuda_peak else [])
    ]
    for c in cases:
        res = c["results"]
        fused = res.get("gumbel_ext", {})
        saved = [res.get(k, {}).get("saved_beyond_inputs_bytes") for k in ("gumbel_ext", "eager")]
        peak = [res.get(k, {}).get("cuda_peak_bytes") for k in ("gumbel_ext", "eager")]
        floor = c["speedups"].get("softmax")
        rows.append(
            [c["workload"], c["shape"], c["dtype"], c["mode"], c["pass"], c["check"]["status"]]
            + [_cell_time(res.get(i["key"]), spread) for i in impls]
            + [_ratio(c["speedups"].get(i["key"])) for i in baselines]
            + [_ratio(1 / floor if floor else None), f"{fused['gbps']:.1f}" if fused.get("gbps") else ""]
            + ([f"{fused['pct_peak']:.0f}%" if fused.get("pct_peak") else ""] if has_peak else [])
            + [_bytes_pair(saved)]
            + ([_bytes_pair(peak)] if has_cuda_peak else [])
        )
    return rows


def render(rows: List[List[str]], fmt: str) -> str:
    from tabulate import tabulate

    return tabulate(rows[1:], headers=rows[0], tablefmt=fmt, disable_numparse=True)


LEGEND = """\
Times are medians per call (torch.utils.benchmark, ±IQR as % of the median). `vs X` is
X's time / gumbel_ext's time: above 1.00x gumbel_ext is faster. `/ floor` is gumbel_ext's
time / torch.softmax's on the same tensor (1.00x would mean the noise is free). GB/s is
gumbel_ext's effective bandwidth: the bytes an ideal kernel moves (read logits, write
output; backward also reads grad and the saved tensor and writes grad) / time. `saved`:
memory autograd keeps for backward beyond the input itself, gumbel_ext / F.gumbel_softmax
(`CUDA peak`: the peak allocation of one call above what was allocated before it).
sample mode: gumbel_ext.sample vs F.gumbel_softmax(hard=True).argmax (eager, compiled) and
torch.multinomial(torch.softmax(x)). Compile times (kept out of the timings) are in the JSON."""


def compile_summary(record: dict) -> str:
    times = sorted(
        r["compile_s"] for c in record["cases"] for r in c["results"].values() if r.get("compile_s") is not None
    )
    if not times:
        return ""
    return (
        f"torch.compile, first call (compile + one run) per case, kept out of the timings: median "
        f"{times[len(times) // 2]:.2f} s, max {max(times):.2f} s, total {sum(times):.0f} s "
        "(inductor's on-disk cache shortens repeated runs)."
    )


# ------------------------------------------------------------------------------ files
def write_json(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")


def write_markdown(path: Path, record: dict, rows: List[List[str]], plot_name: Optional[str]) -> None:
    meta = record["meta"]
    lines = [
        f"# gumbel_ext benchmark: {meta['device']}",
        "",
        describe_machine(meta),
        "",
        f"Preset `{record['preset']}`; run time {record['wall_s']:.0f} s; command `{meta['command']}`.",
        "",
        render(rows, "github"),
        "",
        LEGEND,
    ]
    if compile_summary(record):
        lines += ["", compile_summary(record)]
    failures = [c for c in record["cases"] if c["check"]["status"] == "FAIL"]
    for c in failures:
        lines += ["", f"**Correctness FAILED** for {c['key']}: {c['check']['detail']}"]
    if plot_name:
        lines += ["", f"![speedup of gumbel_ext by workload]({plot_name})"]
    path.write_text("\n".join(lines) + "\n")


COLORS = {"eager": "tab:blue", "compiled": "tab:orange", "multinomial": "tab:green", "softmax": "tab:gray"}


def write_plot(path: Path, record: dict) -> bool:
    """Speedup of gumbel_ext over each other implementation, one panel per mode/pass,
    grouped by workload (log scale; above 1 gumbel_ext is faster)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        print("report: matplotlib missing, no plot", file=sys.stderr)
        return False
    cases = [c for c in record["cases"] if c["speedups"]]
    order = {"soft": 0, "hard": 1, "sample": 2}
    panels = sorted({(c["mode"], c["pass"]) for c in cases}, key=lambda mp: (order[mp[0]], mp[1]))
    if not panels:
        return False
    others = [i for i in record["implementations"] if i["role"] != "fused"]
    dtypes = sorted({c["dtype"] for c in cases})
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.6 * len(panels) + 0.8), squeeze=False)
    for ax, (mode, pass_) in zip(axes[:, 0], panels):
        group = [c for c in cases if c["mode"] == mode and c["pass"] == pass_]
        labels = [c["workload"] + (f" {c['dtype']}" if len(dtypes) > 1 else "") for c in group]
        present = [i for i in others if any(i["key"] in c["speedups"] for c in group)]
        width = 0.8 / max(len(present), 1)
        for j, impl in enumerate(present):
            values = [c["speedups"].get(impl["key"], float("nan")) for c in group]
            xs = [n + (j - (len(present) - 1) / 2) * width for n in range(len(group))]
            bars = ax.bar(xs, values, width, color=COLORS.get(impl["key"]), label=impl["label"])
            ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=6, padding=1)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * 2)  # room for the bar labels
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_xticks(range(len(group)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(f"{mode}, {pass_}", fontsize=9)
    handles = {}
    for ax in axes[:, 0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    meta = record["meta"]
    fig.suptitle(
        f"time(implementation) / time(gumbel_ext): above 1x gumbel_ext is faster\n"
        f"{meta['device']} · {meta.get('gpu') or meta['cpu']} · {meta['date']} · torch {meta['torch']}",
        fontsize=9,
    )
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
