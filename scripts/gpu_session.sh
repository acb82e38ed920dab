#!/usr/bin/env bash
# What a session with a GPU runs (issue 3), as two commands of under 10 minutes each on an
# H100/H200 box (torch with CUDA, nvcc, no network):
#
#   scripts/gpu_session.sh test    # build with the CUDA kernels; pytest (every device-
#                                  # parametrized test on CUDA, tests/test_cuda.py), ctest,
#                                  # cuda-check -- each step runs even if one before failed
#   scripts/gpu_session.sh bench   # make bench (the CUDA default set: fp32, with the 8192x32000
#                                  # target shape), bf16 at that shape, and the targets table
#
# Logs and results go to $OUT (the device tool's return folder) or, without it, to
# benchmarks/results/gpu-session/; copy the bench files into benchmarks/results/ and commit
# them with the date, device and torch version (all inside the JSON and env.txt).
set -uo pipefail
cd "$(dirname "$0")/.."

step=${1:-}
if [[ "$step" != test && "$step" != bench ]]; then
  echo "usage: scripts/gpu_session.sh test|bench" >&2
  exit 2
fi
out=${OUT:-benchmarks/results/gpu-session}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
# Build for the GPU that is here (sm_90 on Hopper) unless told otherwise.
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
  TORCH_CUDA_ARCH_LIST=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST
fi

{
  date -u '+%Y-%m-%d %H:%M UTC'
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvcc --version | tail -n 2
  echo "git $(git describe --always --dirty 2>/dev/null)  TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

run() {  # run NAME CMD...: log to $out/NAME.log, remember the status
  local name=$1
  shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc" | tee -a "$out/summary.txt"
  return "$rc"
}

case "$step" in
  test)
    : >"$out/summary.txt"
    run build make build || exit 1
    python3 -c "import gumbel_ext, torch; assert gumbel_ext._ops.has_kernel(torch.device('cuda')), 'no CUDA kernels built'" \
      || exit 1
    # -rfEs: every failure and every skip with its reason (no CUDA case may skip here).
    run pytest python3 -m pytest -q -rfEs --durations=15
    run ctest make ctest
    run cuda-check make cuda-check
    cat "$out/summary.txt"
    ! grep -qv "exit 0" "$out/summary.txt"
    ;;
  bench)
    # At most 8 files come back from the device: env.txt, bench.log, cuda-*.json/.md/.png,
    # cuda-*-bf16.json/.md and cuda-targets.md.
    make build || exit 1
    {
      make bench BENCH_ARGS="--out $out"
      python3 -m benchmarks.run --workloads lm-32k-batch --dtypes bf16 --no-plot --out "$out"
    } 2>&1 | tee "$out/bench.log"
    # A filtered run is named -custom (git-ignored as a scratch run): this one is a result.
    for f in "$out"/cuda-*-custom.*; do
      [[ -e "$f" ]] && mv "$f" "${f/-custom./-bf16.}"
    done
    python3 -m benchmarks.cuda_targets "$out"/cuda-*.json --md "$out/cuda-targets.md"
    ;;
esac
