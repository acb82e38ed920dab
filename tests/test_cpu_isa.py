"""Every compiled per-ISA copy of the CPU kernels (DEFAULT, AVX2, AVX512; see Note
[Per-ISA CPU kernels] in csrc/cpu/kernel_table.h) against reference.py, element-wise, with
the same rng_state. Shapes are chosen to hit every branch: row lengths around the SIMD
chunk sizes, rows split across threads, the reduced dim not last with full and partial
lane groups, and all four dtypes."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gumbel_ext
from gumbel_ext import reference as R

pytestmark = pytest.mark.skipif(
    not gumbel_ext._EXTENSION_AVAILABLE, reason="the compiled extension is not available"
)

ops = torch.ops.gumbel_ext
ALL_CAPABILITIES = ["default", "avx2", "avx512"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# (rtol, atol) of outputs in each dtype. The noise is computed in float32 by a different
# log implementation per path (a few ulps apart), which bounds how close fp64 can be.
TOL = {
    torch.float32: (3e-5, 1e-6),
    torch.float64: (3e-5, 1e-7),
    torch.bfloat16: (1.6e-2, 1e-3),
    torch.float16: (2e-3, 2e-4),
}
NOISE_ATOL = 1e-5  # g in [-2.8, 16.7]: a few float ulps; a wrong counter is off by O(1)
NEAR_TIE = 1e-4  # perturbed logits this close may order differently under noise rounding

# (shape, dim): short rows (<= kChunk / 2: transposed tiles, with a partial last group),
# row lengths around kChunk (32 on AVX2 / DEFAULT, 64 on AVX-512) and 4, long rows, rows
# split across threads (few rows of >= 8192), and the reduced dim not last with inner
# sizes below, at and above the lane count (8 / 16), several lane sets per slice (inner
# 300) and sets cut short by their buffer budget (length 2000).
ROW_SHAPES = [
    ((5, 1), -1),
    ((3, 2), -1),
    ((4, 3), -1),
    ((2, 5), -1),
    ((37, 10), -1),
    ((5, 17), -1),
    ((3, 31), -1),
    ((3, 32), -1),
    ((2, 33), -1),
    ((2, 63), -1),
    ((2, 64), -1),
    ((2, 65), -1),
    ((7, 100), -1),
    ((3, 1023), -1),
    ((40, 257), -1),
    ((1, 100_000), -1),
    ((3, 20_001), -1),
    ((), -1),
]
STRIDED_SHAPES = [
    ((3, 5, 7), 1),
    ((2, 33, 3), 1),
    ((2, 17, 40), 1),
    ((4, 9, 16), 1),
    ((2, 6, 5, 4), 1),
    ((9, 6), 0),
    ((2, 1, 8), 1),
    ((2, 3, 300), 1),
    ((1, 2000, 40), 1),
]
SHAPES = ROW_SHAPES + STRIDED_SHAPES


def _available():
    return list(ops._cpu_capabilities()) if gumbel_ext._EXTENSION_AVAILABLE else []


@pytest.fixture(params=ALL_CAPABILITIES)
def capability(request):
    if request.param not in _available():
        pytest.skip(f"the {request.param} kernels are not compiled in or not supported by this CPU")
    before = ops._cpu_capability()
    threads = torch.get_num_threads()
    # Two threads at least, so that few long rows take the split-row path.
    torch.set_num_threads(max(2, threads))
    ops._set_cpu_capability(request.param)
    yield request.param
    ops._set_cpu_capability(before)
    torch.set_num_threads(threads)


def _logits(shape, dtype, dim=-1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    if x.dim() and x.shape[dim] > 1:
        # A masked category in the first row: probability exactly 0.
        x.movedim(dim, -1).reshape(-1, x.shape[dim])[0, 1] = float("-inf")
    return x.to(dtype)


def _state(seed=0x1234_5678_9ABC, offset=8):
    return torch.tensor([seed - (1 << 64) if seed >= 1 << 63 else seed, offset], dtype=torch.int64)


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _perturbed(x, dim, state):
    acc = _acc(x.dtype)
    return x.to(acc) + R.gumbel_noise(x, dim, state).to(acc)


def _assert_argmax_matches(index, ref_index, z, dim):
    """index == ref_index, except where z (the reference's perturbed logits) nearly ties."""
    if z.dim() == 0:
        assert index.item() == ref_index.item() == 0
        return
    differ = index != ref_index
    if differ.any():
        zi = z.gather(dim, index.unsqueeze(dim)).squeeze(dim)
        zr = z.gather(dim, ref_index.unsqueeze(dim)).squeeze(dim)
        gap = (zi - zr).abs()[differ]
        assert (gap < NEAR_TIE).all(), f"{int(differ.sum())} rows pick another category (gap {gap.max()})"


@pytest.mark.parametrize("shape,dim", SHAPES)
def test_noise(capability, shape, dim):
    x = torch.zeros(shape)
    state = _state()
    got = ops.gumbel_noise(x, dim, state)
    want = R.gumbel_noise(x, dim, state)
    torch.testing.assert_close(got, want, rtol=0, atol=NOISE_ATOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", SHAPES)
def test_forward_soft(capability, shape, dim, dtype):
    x = _logits(shape, dtype, dim)
    state = _state()
    tau = 0.7
    y, used = ops.gumbel_softmax_forward(x, tau, None, False, dim, None, state)
    assert torch.equal(used, state)
    want = R.gumbel_softmax(x, tau, False, dim, rng_state=state)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", SHAPES)
def test_forward_hard_and_sample(capability, shape, dim, dtype):
    x = _logits(shape, dtype, dim)
    state = _state()
    y, _ = ops.gumbel_softmax_forward(x, 0.5, None, True, dim, None, state)
    z = _perturbed(x, dim, state)
    d = dim % max(x.dim(), 1)
    if x.dim() == 0:
        assert y.item() == 1
    else:
        # Exactly one-hot.
        assert torch.equal(y.sum(d), torch.ones_like(y.sum(d)))
        assert ((y == 0) | (y == 1)).all()
        _assert_argmax_matches(y.argmax(d), z.argmax(d), z, d)
    idx = ops.sample(x, 1, dim, None, state)
    ref = R.sample(x, 1, dim, rng_state=state)
    assert idx.shape == ref.shape
    _assert_argmax_matches(idx, ref, z, d)
    if x.dim():
        torch.testing.assert_close(idx, y.argmax(d), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,dim", [((7, 100), -1), ((1, 20_000), -1), ((2, 17, 40), 1), ((9, 6), 0)])
def test_sample_top_k(capability, shape, dim, dtype):
    x = _logits(shape, dtype, dim)
    state = _state()
    k = 3
    idx = ops.sample(x, k, dim, None, state)
    ref = R.sample(x, k, dim, rng_state=state)
    assert idx.shape == ref.shape
    z = _perturbed(x, dim, state)
    zi, zr = z.gather(dim, idx), z.gather(dim, ref)
    assert ((idx == ref) | ((zi - zr).abs() < NEAR_TIE)).all()


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("per_row_tau", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", SHAPES)
def test_backward(capability, shape, dim, dtype, per_row_tau, hard):
    x = _logits(shape, dtype, dim)
    state = _state()
    acc = _acc(dtype)
    d = dim % max(x.dim(), 1)
    keep = list(x.shape)
    if keep:
        keep[d] = 1
    g = torch.Generator().manual_seed(1)
    tau_rows = (torch.rand(keep, generator=g, dtype=torch.float64) + 0.5).to(acc) if per_row_tau else None
    tau = 0.8
    y, _ = ops.gumbel_softmax_forward(x, tau, tau_rows, False, dim, None, state)
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype)
    saved = x if hard else y
    gl, gt = ops.gumbel_softmax_backward(grad, saved, state, tau, tau_rows, hard, dim, per_row_tau)

    # The reference: the backward formula in float64 from the soft output, which for hard
    # is regenerated from the reference noise and rounded to the dtype as the forward does.
    if hard:
        tau_t = tau_rows if per_row_tau else tau
        y_ref = R.soft_from_noise(x, R.gumbel_noise(x, dim, state), tau_t, d).to(dtype)
        rtol, atol = TOL[dtype]
        torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol)
    y64 = y.double()
    g64 = grad.double()
    t64 = tau_rows.double() if per_row_tau else torch.tensor(tau, dtype=torch.float64)
    if x.dim() == 0:
        y64, g64, d = y64.reshape(1), g64.reshape(1), 0
    dz = y64 * (g64 - (g64 * y64).sum(d, keepdim=True))
    want = (dz / t64).reshape(x.shape)
    # Inputs the kernel rounds (y for half types) make the gradient differ by a few ulps of
    # the dtype relative to its largest entries.
    scale = want.abs().max().item() if want.numel() else 1.0
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(gl.double(), want, rtol=rtol, atol=atol * max(scale, 1.0) * 10)
    if per_row_tau:
        log_y = torch.log(torch.where(y64 > 0, y64, torch.ones_like(y64)))
        want_tau = -(log_y * dz).sum(d, keepdim=True) / t64
        assert gt.shape == tau_rows.shape
        tau_scale = want_tau.abs().max().item()
        torch.testing.assert_close(gt.double(), want_tau.reshape(gt.shape), rtol=rtol,
                                   atol=atol * max(tau_scale, 1.0) * 10)
    else:
        assert gt.numel() == 0


@pytest.mark.parametrize("shape,dim", [((4, 100), -1), ((4, 20_000), -1), ((3, 9, 20), 1)])
def test_non_finite_rows(capability, shape, dim):
    """A row with NaN or +inf, or only -inf, is NaN in both modes (Note [Per-row softmax
    math]); sample refuses it."""
    x = _logits(shape, torch.float32, dim)
    d = dim % x.dim()
    rows = x.movedim(d, -1)  # a view: writes go to x
    rows[..., 0, :] = float("-inf")
    rows[..., 1, 3] = float("nan")
    rows[..., 2, 5] = float("inf")
    state = _state()
    for hard in (False, True):
        y, _ = ops.gumbel_softmax_forward(x, 1.0, None, hard, dim, None, state)
        yr = y.movedim(d, -1)
        assert yr[..., :3, :].isnan().all()
        assert not yr[..., 3:, :].isnan().any()
        torch.testing.assert_close(yr[..., 3:, :].sum(-1), torch.ones_like(yr[..., 3:, 0]))
    with pytest.raises(ValueError, match="NaN or \\+inf|no finite logit"):
        ops.sample(x, 1, dim, None, state)


def test_capabilities_listed():
    names = _available()
    assert names[0] == "default" and set(names) <= set(ALL_CAPABILITIES)
    assert ops._cpu_capability() in names
    with pytest.raises(ValueError, match="one of default, avx2, avx512"):
        ops._set_cpu_capability("sse9")


def test_best_capability_is_default_choice():
    """Without the environment variable the widest available copy runs."""
    out = _run_python("import torch, gumbel_ext; print(torch.ops.gumbel_ext._cpu_capability())", env={})
    assert out.strip() == _available()[-1]


@pytest.mark.parametrize("forced", ALL_CAPABILITIES)
def test_environment_variable_forces_copy(forced):
    if forced not in _available():
        pytest.skip(f"{forced} is not available here")
    code = "import torch, gumbel_ext; print(torch.ops.gumbel_ext._cpu_capability())"
    assert _run_python(code, env={"GUMBEL_EXT_CPU_CAPABILITY": forced.upper()}).strip() == forced


def test_environment_variable_rejects_unknown_value():
    code = (
        "import torch, gumbel_ext\n"
        "try:\n"
        "    torch.ops.gumbel_ext.gumbel_noise(torch.zeros(3), -1, torch.zeros(2, dtype=torch.long))\n"
        "except ValueError as e:\n"
        "    print('ValueError:', e)\n"
    )
    out = _run_python(code, env={"GUMBEL_EXT_CPU_CAPABILITY": "avx9000"})
    assert "GUMBEL_EXT_CPU_CAPABILITY must be one of default, avx2, avx512" in out


def _run_python(code, env):
    full_env = {k: v for k, v in os.environ.items() if k != "GUMBEL_EXT_CPU_CAPABILITY"}
    full_env.update(env)
    root = Path(__file__).resolve().parents[1]
    full_env["PYTHONPATH"] = os.pathsep.join([str(root), full_env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, cwd=root, capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.slow
def test_jit_build_has_every_isa_copy(tmp_path):
    """The JIT build (cpp_extension.load has no per-file flags) compiles the AVX copies
    itself; its library offers the same copies, each drawing the reference's noise."""
    code = (
        "import importlib.util, sys, torch\n"
        "spec = importlib.util.spec_from_file_location('b', 'gumbel_ext/_build.py')\n"
        "b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b)\n"
        "b.jit_compile()\n"
        "sys.path.insert(0, 'gumbel_ext'); import reference as R\n"
        "ops = torch.ops.gumbel_ext\n"
        "x, st = torch.zeros(5, 77), torch.tensor([123, 4])\n"
        "for c in ops._cpu_capabilities():\n"
        "    ops._set_cpu_capability(c)\n"
        "    err = (ops.gumbel_noise(x, -1, st) - R.gumbel_noise(x, -1, st)).abs().max().item()\n"
        "    print(c, err < 1e-5)\n"
    )
    out = _run_python(code, env={"GUMBEL_EXT_BUILD_DIR": str(tmp_path)})
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == _available()
    assert all(line.endswith("True") for line in lines)


# ---------------------------------------------------------- no AVX outside dispatch
_AVX_REGISTER = re.compile(r"%[yz]mm\d+|%k[0-7]\b")


def _compiled_library():
    """The op library this process loaded: the AOT gumbel_ext._C, or a JIT build (as
    `make sanitize` uses), read from the process's memory map."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        path = Path(fields[5]) if len(fields) == 6 else None
        if path and path.suffix == ".so" and (
            (path.parent.name == "gumbel_ext" and path.name.startswith("_C.")) or path.name.startswith("gumbel_ext_jit")
        ):
            return str(path)
    return None


def _local_function_addresses(path):
    """Addresses of the file-local functions (nm type 't': static, anonymous namespace,
    compiler clones such as .isra/.constprop)."""
    out = subprocess.run(["nm", "--defined-only", path], capture_output=True, text=True, check=True).stdout
    return {int(f[0], 16) for f in (line.split() for line in out.splitlines()) if len(f) >= 3 and f[1] == "t"}


def _avx_offenders(disassembly, local_addresses):
    """{function: first AVX instruction} for the functions of ``objdump -d`` output that
    use AVX, are not in an AVX2/AVX512 copy (our namespaces, at::vec's, or the OpenMP
    bodies outlined from them) and are not file-local. A file-local function is reachable
    only from its own file: in a baseline file nothing is compiled with AVX flags, and in
    an ISA file its callers are that copy's functions, which run only once the CPU is
    known to have the ISA. A global function (weak inline ones included) is not safe: the
    linker may keep an ISA file's copy for every caller. ASan builds, for one, make local
    clones of std::string::assign in the ISA files."""
    offenders = {}
    function = None
    for line in disassembly.splitlines():
        header = re.match(r"^([0-9a-f]+) <(.+)>:$", line)
        if header:
            address, name = int(header.group(1), 16), header.group(2)
            function = None if address in local_addresses else name
            continue
        parts = line.split("\t")
        if function is None or len(parts) < 2:
            continue
        mnemonic = parts[1].split()[0] if parts[1].split() else ""
        is_avx = mnemonic.startswith("v") or _AVX_REGISTER.search(parts[1]) is not None
        if is_avx and "AVX2" not in function and "AVX512" not in function:
            offenders.setdefault(function, parts[1].strip())
    return offenders


def test_avx_instructions_only_in_isa_copies():
    """A binary built here must run on a CPU without AVX-512 (or AVX): every function
    that uses AVX instructions must belong to an AVX2/AVX512 copy; see Note [Per-ISA CPU
    kernels]."""
    path = _compiled_library()
    if path is None or shutil.which("objdump") is None or shutil.which("nm") is None:
        pytest.skip("needs the AOT-built gumbel_ext._C, objdump and nm")
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True, text=True,
                         check=True).stdout
    offenders = _avx_offenders(dis, _local_function_addresses(path))
    assert not offenders, f"AVX code outside the ISA copies: {sorted(offenders.items())[:10]}"


def test_avx_check_ignores_only_file_local_functions():
    """The check's own logic on a made-up listing: AVX in a local clone is ignored, AVX in
    a global or weak function outside the copies is reported, AVX in a copy is fine."""
    dis = "\n".join([
        "0000000000001000 <_ZNSs6assignEPKc.isra.0>:",
        "    1000:\tvmovdqu %ymm0,(%rdi)",
        "0000000000002000 <_ZNSs6assignEPKc>:",
        "    2000:\tvmovdqu %ymm1,(%rsi)",
        "0000000000003000 <_ZN10gumbel_ext3cpu6AVX5127forwardEv>:",
        "    3000:\tvaddps %zmm0,%zmm1,%zmm2",
        "0000000000004000 <_ZN10gumbel_ext3cpu7DEFAULT7forwardEv>:",
        "    4000:\tmovaps %xmm0,%xmm1",
    ])
    assert _avx_offenders(dis, {0x1000}) == {"_ZNSs6assignEPKc": "vmovdqu %ymm1,(%rsi)"}
    assert set(_avx_offenders(dis, set())) == {"_ZNSs6assignEPKc.isra.0", "_ZNSs6assignEPKc"}


# ------------------------------------------------------------ inline log and exp
def _ulp_error(got, want):
    w = want.to(torch.float32).abs()
    ulp = (torch.nextafter(w, torch.full_like(w, float("inf"))) - w).double()
    return (got.double() - want).abs() / ulp


def test_vec_log_accuracy(capability):
    """log_positive (Note [Vector log and exp]) over its whole domain: every 61st float
    in [2^-25, 17], plus both ends of the transform's inputs."""
    lo = torch.tensor([2.0**-25], dtype=torch.float32).view(torch.int32).item()
    hi = torch.tensor([17.0], dtype=torch.float32).view(torch.int32).item()
    bits = torch.arange(lo, hi, 61, dtype=torch.int32)
    x = torch.cat([bits.view(torch.float32), torch.tensor([2.0**-24, 1 - 2.0**-24, 1.0, 0.5, 2.0])])
    got = ops._cpu_vec_math(x, "log")
    err = _ulp_error(got, torch.log(x.double()))
    assert err.max() <= 2.0, f"max {err.max():.2f} ulp at x = {x[err.argmax()].item()!r}"


def test_vec_exp_accuracy(capability):
    """exp_nonpositive on x <= 0: within 2 ulp where the result is a normal float (below,
    within 2^-126), 0 for -inf and far below, NaN for NaN."""
    g = torch.Generator().manual_seed(0)
    x = -(torch.rand(2_000_000, generator=g) ** 3) * 90
    x = torch.cat([x, torch.tensor([0.0, -0.0, -1e-30, -0.34657, -0.34658, -87.0])])
    got = ops._cpu_vec_math(x, "exp")
    want = torch.exp(x.double())
    normal = want >= 2.0**-126  # below, AVX2 may flush to 0
    err = _ulp_error(got[normal], want[normal])
    assert err.max() <= 2.0, f"max {err.max():.2f} ulp at x = {x[normal][err.argmax()].item()!r}"
    assert (got[~normal].double() - want[~normal]).abs().max() <= 2.0**-126
    special = torch.tensor([float("-inf"), -104.0, -1000.0, float("nan")])
    out = ops._cpu_vec_math(special, "exp")
    assert out[:3].tolist() == [0.0, 0.0, 0.0] and out[3].isnan()
