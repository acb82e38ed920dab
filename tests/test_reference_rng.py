"""The fallback (reference.py: devices without a kernel, GUMBEL_EXT_FORCE_REFERENCE=1)
takes the same (seed, offset) from the generator as the fused op, and advances it the
same: a seeded program gives the same samples whichever path runs, in either order."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import gumbel_ext
from gumbel_ext import reference
from helpers import TOL

pytestmark = pytest.mark.skipif(
    not gumbel_ext._EXTENSION_AVAILABLE, reason="the compiled extension is not available"
)

ops = torch.ops.gumbel_ext
ROOT = Path(__file__).resolve().parents[1]


def _fused_state(x, dim, generator):
    return ops.gumbel_softmax_forward(x, 1.0, None, True, dim, generator)[1]


# Every kind of generator a program can hand us: the default one (torch.manual_seed),
# an explicit one, one never seeded, one restored from a saved state, one whose seed
# has the top bit set (a uint64 seed that is negative as an int64).
GENERATORS = ["default", "explicit", "unseeded", "restored", "high-seed"]


def _generator(kind, device):
    if kind == "default":
        torch.manual_seed(1234)
        if device == "cuda":
            torch.cuda.manual_seed(1234)
        return None
    if kind == "unseeded":
        return torch.Generator(device=device)
    if kind == "high-seed":
        return torch.Generator(device=device).manual_seed(2**64 - 12345)
    g = torch.Generator(device=device).manual_seed(99)
    if kind == "restored":
        saved = g.get_state()
        torch.randn(10, generator=g, device=device)
        g.set_state(saved)
    return g


def _underlying(generator, device):
    """The generator a call with ``generator`` uses (None: the device's default one)."""
    if generator is not None:
        return generator
    return torch.cuda.default_generators[0] if device == "cuda" else torch.default_generator


@pytest.mark.parametrize("kind", GENERATORS)
@pytest.mark.parametrize("length", [1, 5, 8, 1000])
def test_reference_draws_the_fused_ops_state(kind, length, device):
    """Three draws in a row, through the fused op and through the reference, in every
    interleaving: each call of either path gets the state the other would have got."""
    x = torch.zeros(3, length, device=device)
    generator = _generator(kind, device)
    start = _underlying(generator, device).get_state()
    paths = {
        "fused": lambda g: _fused_state(x, -1, g),
        "reference": lambda g: reference.draw_rng_state(x.device, g, length),
    }
    results = {}
    for order in (("fused",) * 3, ("reference",) * 3, ("fused", "reference", "fused"), ("reference", "fused", "reference")):
        _underlying(generator, device).set_state(start)
        results[order] = [paths[p](generator).tolist() for p in order]
    first = results[("fused",) * 3]
    assert len({tuple(s) for s in first}) == 3  # fresh noise every call
    for order, states in results.items():
        assert states == first, order


@pytest.mark.parametrize("kind", GENERATORS)
def test_fallback_outputs_equal_fused_outputs(kind, device):
    """gumbel_softmax (soft and hard) and sample (k = 1 and k = 3) through the public
    functions equal the reference's, called the way the fallback calls it, from the same
    generator state."""
    x = torch.randn(16, 50, device=device, generator=torch.Generator(device=device).manual_seed(5))

    def program(path):
        g = _generator(kind, device)
        if path == "fused":
            return (gumbel_ext.gumbel_softmax(x, tau=0.5, generator=g),
                    gumbel_ext.gumbel_softmax(x, hard=True, generator=g),
                    gumbel_ext.sample(x, generator=g), gumbel_ext.sample(x, 3, generator=g))
        return (reference.gumbel_softmax(x, 0.5, generator=g), reference.gumbel_softmax(x, 1.0, True, generator=g),
                reference.sample(x, generator=g), reference.sample(x, 3, generator=g))

    ours, theirs = program("fused"), program("reference")
    torch.testing.assert_close(ours[0], theirs[0], **TOL[torch.float32])
    for a, b in zip(ours[1:], theirs[1:]):
        assert torch.equal(a, b)


def test_empty_inputs_draw_nothing(device):
    """The fused ops draw nothing for an empty input; nor does the reference."""
    g = torch.Generator(device=device).manual_seed(3)
    before = g.get_state()
    empty = torch.zeros(0, 5, device=device)
    reference.gumbel_softmax(empty, generator=g)
    assert reference.sample(empty, 2, generator=g).shape == (0, 2)
    assert torch.equal(g.get_state(), before)
    gumbel_ext.gumbel_softmax(empty, generator=g)
    gumbel_ext.sample(empty, 2, generator=g)
    assert torch.equal(g.get_state(), before)


PROGRAM = textwrap.dedent(
    """
    import torch, gumbel_ext
    torch.manual_seed(2024)
    x = torch.randn(8, 30)
    print(gumbel_ext.sample(x).tolist())
    print(gumbel_ext.sample(x, 4).tolist())
    print(gumbel_ext.gumbel_softmax(x, hard=True).argmax(-1).tolist())
    print(gumbel_ext._EXTENSION_AVAILABLE)
    """
)


def test_seeded_program_same_with_forced_reference():
    """The README's promise, end to end: the same seeded program prints the same samples
    with GUMBEL_EXT_FORCE_REFERENCE=1 as with the fused op."""
    env = {k: v for k, v in os.environ.items() if k != "GUMBEL_EXT_FORCE_REFERENCE"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])

    def run(extra):
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", PROGRAM], env=dict(env, **extra), cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.splitlines()
        return out[:-1], out[-1]

    fused, fused_available = run({})
    fallback, fallback_available = run({"GUMBEL_EXT_FORCE_REFERENCE": "1"})
    assert (fused_available, fallback_available) == ("True", "False")
    assert fused == fallback
