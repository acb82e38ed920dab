"""Every test of tests/test_errors.py again, on the reference path: the fallback a device
without a kernel (or GUMBEL_EXT_FORCE_REFERENCE=1) takes must raise the same errors, not
rely on the C++ ops' own checks (without its tau check, tau=0 returned NaN silently)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gumbel_ext
import gumbel_ext.functional
from test_errors import *  # noqa: F401,F403 -- pytest collects the imported tests here too
from test_errors import test_op_rejects_bad_arguments

del test_op_rejects_bad_arguments  # it calls the C++ ops directly: no reference path


@pytest.fixture(autouse=True)
def _reference_path(monkeypatch):
    # What GUMBEL_EXT_FORCE_REFERENCE=1 does at import (no kernel for any device), without
    # the fallback's one-time warning.
    monkeypatch.setattr(gumbel_ext.functional, "_use_fused", lambda logits: False)


def test_forced_reference_raises_in_a_fresh_process():
    """The same with the environment variable itself, which the fixture above stands for."""
    code = (
        "import torch, gumbel_ext\n"
        "assert not gumbel_ext._EXTENSION_AVAILABLE\n"
        "x = torch.randn(2, 3)\n"
        "for call in (lambda: gumbel_ext.gumbel_softmax(x, tau=0.0),\n"
        "             lambda: gumbel_ext.sample(x.index_fill(1, torch.tensor([1]), float('nan')))):\n"
        "    try:\n"
        "        call()\n"
        "        print('no error')\n"
        "    except ValueError as e:\n"
        "        print('ValueError:', e)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, GUMBEL_EXT_FORCE_REFERENCE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == "ValueError: gumbel_ext: tau must be a finite number > 0, got 0.0"
    assert out[1] == "ValueError: gumbel_ext.sample: row 0 of the logits holds NaN or +inf"


@pytest.mark.parametrize("k", [1, 2])
def test_row_numbering_matches_the_op(k):
    """Rows are numbered as the op numbers them: the flattened other dims, dim not last."""
    x = torch.randn(2, 5, 3)
    x[1, k - 1:, 2] = float("-inf")  # row 1 * 3 + 2: k - 1 finite logits
    with pytest.raises(ValueError) as op_error:
        torch.ops.gumbel_ext.sample(x, k, 1)
    with pytest.raises(ValueError) as fallback_error:
        gumbel_ext.sample(x, k, 1)
    assert str(fallback_error.value) == str(op_error.value)
    assert "row 5" in str(op_error.value)
