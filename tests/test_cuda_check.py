"""The CUDA compile check's reading of ptxas's resource report (scripts/check_cuda_compile.py):
a kernel of ours that spills must fail the check; cub's kernels and clean ones must not."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_cuda_compile.py"
spec = importlib.util.spec_from_file_location("check_cuda_compile", SCRIPT)
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)

OURS = "_ZN10gumbel_ext4cuda19warp_forward_kernelIfLi3EEEvNS0_11ForwardArgsIT_EElibNS0_3RngE"
CUB = "_ZN3cub17CUB_300001_SM_9006detail10radix_sort30DeviceSegmentedRadixSortKernelI"

REPORT = f"""\
ptxas info    : Compiling entry function '{OURS}' for 'sm_90'
ptxas info    : Function properties for {OURS}
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers
ptxas info    : Compiling entry function '{CUB}' for 'sm_90'
ptxas info    : Function properties for {CUB}
    24 bytes stack frame, 24 bytes spill stores, 24 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers, 29440 bytes smem
"""


def test_resources_are_read_per_kernel():
    assert check.resources(REPORT) == [(OURS, "sm_90", 40, 0, 0), (CUB, "sm_90", 168, 24, 48)]


def test_only_our_spills_fail():
    assert check.spilling(REPORT) == []
    spilled = REPORT.replace("0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads",
                             "8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads", 1)
    (line,) = check.spilling(spilled)
    assert OURS in line and "8 B stack frame" in line and "8 B spilled" in line


def test_nvcc_is_asked_for_the_report():
    cmd = check.nvcc_command("nvcc", Path("a.cu"), Path("a.o"), ["90"], check.load_build_config())
    assert cmd[cmd.index("-Xptxas") + 1] == "-v"
