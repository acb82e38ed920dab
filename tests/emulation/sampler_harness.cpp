// C entry point (for ctypes) that runs the fused CUDA sampler kernel
// (csrc/cuda/sample_filtered_kernels.cuh) under the SIMT emulator with the launch choices
// of csrc/cuda/sample_filtered.cu; tests/test_sampler_emulated.py compares it with the
// CPU op. `grid_cap` shrinks the grid so that the kernel's row loop runs.
#include "simt.h"

// Shared-memory atomics of the kernel, for the host threads of the emulator.
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}
inline int atomicAdd(int* address, int value) { return __atomic_fetch_add(address, value, __ATOMIC_RELAXED); }

#include "sample_filtered_kernels.cuh"

using namespace gumbel_ext::cuda;

namespace {

template <typename scalar_t>
int run(const void* logits, int64_t rows, int64_t length, int64_t ns, double temperature, const double* temp_rows,
        int64_t top_k, const int64_t* top_k_rows, double top_p, const double* top_p_rows, double min_p,
        const double* min_p_rows, const int64_t* seeds, const int64_t* offsets, const int64_t* rng_state,
        int64_t* idx, float* lp, int64_t grid_cap) {
  using acc_t = at::opmath_type<scalar_t>;
  using key_t = typename KeyOf<acc_t>::type;
  SampleFilteredArgs<scalar_t> a;
  a.logits = static_cast<const scalar_t*>(logits);
  a.rows = rows;
  a.length = length;
  a.num_samples = ns;
  a.temperature = temperature;
  a.temperature_rows = temp_rows;
  a.top_k = top_k;
  a.top_k_rows = top_k_rows;
  a.top_p = top_p;
  a.top_p_rows = top_p_rows;
  a.min_p = min_p;
  a.min_p_rows = min_p_rows;
  a.seeds = seeds;
  a.offsets = offsets;
  a.indices = idx;
  a.logprobs = lp;
  a.mass_shift = sampler_mass_shift(length);
  Rng rng;
  rng.replay = rng_state;
  const unsigned grid = static_cast<unsigned>(std::max<int64_t>(1, std::min(rows, grid_cap)));
  simt::launch(sample_filtered_kernel<scalar_t>, dim3(grid), dim3(sampler_block_threads(length)),
               sampler_dynamic_smem(ns, sizeof(key_t), sizeof(acc_t)), a, rng);
  return simt::Barrier::deadlocks().exchange(0) == 0 ? 0 : -2;
}

}  // namespace

extern "C" {

// dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16. Null pointers: scalars / generator
// key rng_state = (seed, offset) / no log-probs.
int emu_sample_filtered(int dtype, const void* logits, int64_t rows, int64_t length, int64_t ns, double temperature,
                        const double* temp_rows, int64_t top_k, const int64_t* top_k_rows, double top_p,
                        const double* top_p_rows, double min_p, const double* min_p_rows, const int64_t* seeds,
                        const int64_t* offsets, const int64_t* rng_state, int64_t* idx, float* lp,
                        int64_t grid_cap) {
  switch (dtype) {
    case 0:
      return run<float>(logits, rows, length, ns, temperature, temp_rows, top_k, top_k_rows, top_p, top_p_rows,
                        min_p, min_p_rows, seeds, offsets, rng_state, idx, lp, grid_cap);
    case 1:
      return run<double>(logits, rows, length, ns, temperature, temp_rows, top_k, top_k_rows, top_p, top_p_rows,
                         min_p, min_p_rows, seeds, offsets, rng_state, idx, lp, grid_cap);
    case 2:
      return run<c10::Half>(logits, rows, length, ns, temperature, temp_rows, top_k, top_k_rows, top_p, top_p_rows,
                            min_p, min_p_rows, seeds, offsets, rng_state, idx, lp, grid_cap);
    case 3:
      return run<c10::BFloat16>(logits, rows, length, ns, temperature, temp_rows, top_k, top_k_rows, top_p,
                                top_p_rows, min_p, min_p_rows, seeds, offsets, rng_state, idx, lp, grid_cap);
    default:
      return -1;
  }
}

// sampler_exp as the kernel computes it, for a bitwise check against the CPU's exp.
void emu_sampler_exp(const float* x, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = sampler_exp(x[i]);
}

}  // extern "C"
