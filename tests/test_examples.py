"""The examples' --quick modes run in `make test`, so the examples cannot rot; and the checks
they make (the VAE's agreement of the two samplers, the token sampler's batch invariance)
fail when the sampler is wrong."""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gumbel_ext

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # the VAE example sets one thread
    yield
    torch.set_num_threads(threads)
    gumbel_ext.unpatch_torch()


# ---------------------------------------------------------------------- discrete_vae.py
def load_vae():
    pytest.importorskip("sklearn", reason="examples/discrete_vae.py needs scikit-learn (make deps installs it)")
    pytest.importorskip("matplotlib", reason="examples/discrete_vae.py needs matplotlib (make deps installs it)")
    return load("discrete_vae")


def test_discrete_vae_quick(tmp_path, capsys):
    vae = load_vae()
    png = tmp_path / "vae.png"
    assert vae.main(["--quick", "--out", str(png)]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert png.stat().st_size > 10_000
    assert "agree" in out and "DISAGREE" not in out
    for name in ("torch", "gumbel_ext"):
        assert f"  {name} " in out and "of the step" in out


@contextlib.contextmanager
def _patched_with(fn):
    previous = F.gumbel_softmax
    F.gumbel_softmax = fn
    try:
        yield
    finally:
        F.gumbel_softmax = previous


def test_discrete_vae_agreement_check_catches_a_wrong_sampler(tmp_path, capsys, monkeypatch):
    """A sampler that draws from softmax(logits / 2) instead of softmax(logits) -- noise of
    the right kind, the wrong distribution -- must fail the example's check."""
    vae = load_vae()

    def wrong(logits, tau=1.0, hard=False, eps=1e-10, dim=-1):
        return gumbel_ext.gumbel_softmax(logits / 2, tau=tau, hard=hard, dim=dim)

    monkeypatch.setitem(vae.IMPLEMENTATIONS, "gumbel_ext", lambda: _patched_with(wrong))
    assert vae.main(["--quick", "--out", str(tmp_path / "vae.png")]) == 1
    assert "DISAGREE" in capsys.readouterr().out


# --------------------------------------------------------------------- token_sampling.py
def test_token_sampling_quick(capsys):
    """Runs against the installed gumbel_ext: every seeded request keeps its tokens, and the
    contrast (one generator for the batch) shows tokens that change."""
    tokens = load("token_sampling")
    assert tokens.main(["--quick"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "-> the same tokens" in out and "the two batch orders: the same tokens" in out
    assert "one generator for the whole batch" in out and "different from token" in out


def _stand_in_sample(row_key):
    """A plain-PyTorch sampler with gumbel_ext.sample's signature: temperature, then top-k, top-p,
    min-p, then Gumbel-max with noise from a generator seeded by row_key(row, seed,
    offset). With row_key independent of the row's position it is batch-invariant."""

    def sample(logits, num_samples=1, dim=-1, *, temperature=1.0, top_k=None, top_p=None, min_p=None,
               seeds=None, offsets=None, generator=None, return_logprobs=False):
        rows = logits.shape[0]
        per_row = lambda v, fill: v if isinstance(v, torch.Tensor) else torch.full((rows,), fill if v is None else v)  # noqa: E731
        temperature, top_k = per_row(temperature, 1.0), per_row(top_k, 0)
        top_p, min_p = per_row(top_p, 1.0), per_row(min_p, 0.0)
        out, logprobs = [], []
        for r in range(rows):
            t = float(temperature[r])
            x = logits[r].double() / (t if t > 0 else 1.0)
            if int(top_k[r]) > 0:
                x = x.masked_fill(x < x.topk(int(top_k[r])).values[-1], float("-inf"))
            p = x.softmax(-1)
            sorted_p, order = p.sort(descending=True)
            drop = (sorted_p.cumsum(0) - sorted_p) >= float(top_p[r])  # keep until the mass reaches p
            x = x.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
            x = x.masked_fill(p < float(min_p[r]) * p.max(), float("-inf"))
            if seeds is None:  # today's behaviour: one generator for the batch
                g = generator
            else:
                g = torch.Generator().manual_seed(row_key(r, int(seeds[r]), int(offsets[r])))
            noise = -torch.log(-torch.log(torch.rand(x.shape, generator=g, dtype=torch.float64)))
            idx = int(x.argmax() if t == 0 else (x + noise).argmax())
            out.append(idx)
            logprobs.append(float(x.log_softmax(-1)[idx]))
        idx = torch.tensor(out)
        return (idx, torch.tensor(logprobs, dtype=torch.float32)) if return_logprobs else idx

    return sample


def test_token_sampling_per_request_path(monkeypatch, capsys):
    """The example's check can fail: with a plain-PyTorch stand-in for sample it passes,
    and with a broken stand-in whose noise follows the row's batch position it must
    catch the change."""
    tokens = load("token_sampling")
    monkeypatch.setattr(gumbel_ext, "sample", _stand_in_sample(lambda r, seed, offset: seed * 1_000_003 + offset))
    assert tokens.main(["--quick"]) == 0, capsys.readouterr().out
    assert "-> the same tokens" in capsys.readouterr().out

    monkeypatch.setattr(gumbel_ext, "sample", _stand_in_sample(lambda r, seed, offset: r * 1_000_003 + offset))
    assert tokens.main(["--quick"]) == 1
    assert "TOKENS CHANGED" in capsys.readouterr().out


def test_stand_in_has_the_signature_of_sample():
    """The stand-in above must mirror gumbel_ext.sample's arguments (names and order), or
    the test above tests something else."""
    real = inspect.signature(gumbel_ext.sample).parameters
    stand_in = inspect.signature(_stand_in_sample(None)).parameters
    assert list(real) == list(stand_in)
