"""The three ways the package gets its ops: AOT (what the other tests use), JIT from a
source checkout, and the reference fallback when the extension cannot be built or a
device has no kernel. JIT runs in a subprocess with a private build directory."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import gumbel_ext
from helpers import fused

ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent(
    """
    import warnings, torch
    warnings.simplefilter("always")
    import gumbel_ext
    from gumbel_ext import _ops
    x = torch.randn(64, 100)
    out, state = torch.ops.gumbel_ext.gumbel_softmax_forward(x, 0.5, None, False, -1) if _ops.AVAILABLE else (None, None)
    y = gumbel_ext.gumbel_softmax(x, tau=0.5, hard=True)
    assert torch.equal(y.sum(-1), torch.ones(64))
    print("AVAILABLE", _ops.AVAILABLE, "CPU-KERNEL", _ops.has_kernel(torch.device("cpu")))
    if out is not None:
        ref = gumbel_ext.reference.gumbel_softmax(x, 0.5, False, -1, rng_state=state)
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=2e-5)
        print("MATCHES-REFERENCE")
    """
)


def _run(env_extra, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), GUMBEL_EXT_BUILD_DIR=str(tmp_path / "jit"), **env_extra)
    return subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)


def test_jit_compiles_and_matches(tmp_path):
    proc = _run({"GUMBEL_EXT_FORCE_JIT": "1"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "compiling the C++" in proc.stderr  # the user is told while it compiles
    assert "AVAILABLE True CPU-KERNEL True" in proc.stdout
    assert "MATCHES-REFERENCE" in proc.stdout
    # Cached: a second import does not compile again.
    again = _run({"GUMBEL_EXT_FORCE_JIT": "1"}, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "AVAILABLE True" in again.stdout


def test_failed_jit_falls_back_with_one_warning(tmp_path):
    proc = _run({"GUMBEL_EXT_FORCE_JIT": "1", "CXX": "false"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "AVAILABLE False" in proc.stdout
    log = tmp_path / "jit" / "gumbel_ext_build_error.log"
    assert proc.stderr.count("JIT compilation of the C++ extension failed") == 1
    assert str(log) in proc.stderr
    assert log.read_text()


def test_forced_reference_still_works(tmp_path):
    proc = _run({"GUMBEL_EXT_FORCE_REFERENCE": "1"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "AVAILABLE False" in proc.stdout


@pytest.mark.parametrize("hard", [False, True])
def test_reference_fallback_matches_fused_semantics(hard):
    # The fallback path (no kernel for the device) is the reference: same noise contract.
    x = torch.randn(32, 50, requires_grad=True)
    _, state = fused(x.detach(), 0.5, hard)
    y = gumbel_ext.reference.gumbel_softmax(x, 0.5, hard, -1, rng_state=state)
    out, _ = fused(x.detach(), 0.5, hard, rng_state=state)
    torch.testing.assert_close(y.detach(), out, atol=2e-6, rtol=2e-5)
    y.sum().backward()  # the reference is differentiable
    assert x.grad is not None
