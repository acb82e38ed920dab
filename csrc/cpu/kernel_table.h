// The interface between the CPU dispatcher (gumbel_softmax_cpu.cpp) and the per-ISA copies
// of the kernels (isa/kernels_*.cpp). Plain pointers and PODs only: see Note [Per-ISA CPU
// kernels].
//
// Note [Per-ISA CPU kernels]
// gumbel_softmax_kernel.h is compiled once per instruction set, as ATen's native/cpu
// kernels are: isa/kernels_DEFAULT.cpp with the baseline flags, isa/kernels_AVX2.cpp with
// -mavx2 -mfma -mf16c, isa/kernels_AVX512.cpp with -mavx512f -mavx512bw -mavx512vl
// -mavx512dq -mfma (CPU_ISA_FLAGS in gumbel_ext/_build.py; setup.py, the JIT loader and
// CMake pass the same). A wrapper defines its CPU_CAPABILITY itself and refuses to compile
// without its flags. Each copy lives in its own namespace gumbel_ext::cpu::<CPU_CAPABILITY>
// (at::vec::Vectorized does the same) and exports one constant table of function pointers,
// `kKernels`; gumbel_softmax_cpu.cpp, compiled with the baseline flags, picks one at run
// time from cpuinfo, or from GUMBEL_EXT_CPU_CAPABILITY=default|avx2|avx512.
// What keeps a binary safe on a CPU without AVX-512:
//   * The ISA copies see only PODs (no at::Tensor), so they instantiate few shared inline
//     functions; the ones they do share (c10::Half conversions, parallel_for internals,
//     string formatting of errors) are also instantiated by kernels_DEFAULT.cpp, whose
//     object comes first at link time, so the linker keeps the baseline copy (first
//     definition of a COMDAT group wins). Builds must link DEFAULT before AVX2 before AVX512.
//   * No static initializers in the ISA copies (they would run with AVX instructions at
//     load time): kKernels is constant-initialized.
//   * The AVX copies are referenced weakly, so a build without them (non-x86, or a
//     build system that skipped them) still links and runs the DEFAULT copy.
// tests/test_cpu_isa.py disassembles the built library and fails if an AVX instruction
// appears in any function outside the AVX2/AVX512 copies.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace gumbel_ext {
namespace cpu {

// Everything a kernel needs besides the data pointers; tensors are [outer, length, inner]
// with `length` the reduced dim. Outputs are contiguous; inputs may be strided (Strides).
struct KernelArgs {
  c10::ScalarType dtype;
  int64_t outer, length, inner;
  uint64_t seed, offset;
  double tau;
  const void* tau_rows;  // one acc_t per row, or null
  // Columns per argmax segment, a multiple of kChunk (Note [Argmax segments]); 0: the default.
  int64_t argmax_segment;
};

// Element (o, c, i) of an input sits at data + o * outer + c * length + i * inner (in
// elements). Kernels read in place the layouts where the reduced dim or the inner dims
// are adjacent in memory (Note [Strided inputs] in gumbel_softmax_kernel.h):
//   inner == 1: length == 1 (each row contiguous, rows `outer` apart);
//   inner > 1: inner == 1 (lanes adjacent) or length == 1 (rows contiguous, `inner` apart).
struct Strides {
  int64_t outer, length, inner;
};

inline Strides contiguous_strides(const KernelArgs& a) {
  return {a.length * a.inner, a.inner, 1};
}

inline bool readable_in_place(const KernelArgs& a, const Strides& s) {
  return a.inner == 1 ? s.length == 1 : s.inner == 1 || s.length == 1;
}

// gumbel_ext::sample_filtered (csrc/cpu/sample_kernels.h): rows x length, contiguous. A
// per-row array, when not null, replaces its scalar; seeds/offsets null means one
// generator seed for all rows.
struct SampleArgs {
  c10::ScalarType dtype;
  int64_t rows, length, num_samples;
  double temperature, top_p, min_p;
  int64_t top_k;
  const double *temperature_rows, *top_p_rows, *min_p_rows;
  const int64_t* top_k_rows;
  uint64_t seed;
  const int64_t *seeds, *offsets;
};

// gumbel_ext::keyed_noise (csrc/cpu/keyed_noise_kernel.h): out is float32 [rows, length];
// row j is the noise contract's row row_ctr[j] under key keys[j], counter start
// offsets[j], global columns col_start .. col_start + length - 1.
struct KeyedNoiseArgs {
  int64_t rows, col_start, length;
  const int64_t *keys, *offsets, *row_ctr;
};

struct KernelTable {
  const char* name;
  void (*forward)(const KernelArgs& a, const void* logits, const Strides& ls, void* out, bool hard);
  // grad_tau: one acc_t per row, or null when not needed.
  void (*backward)(const KernelArgs& a, const void* grad, const Strides& gs, const void* saved,
                   const Strides& ss, void* grad_logits, void* grad_tau, bool hard);
  void (*noise)(const KernelArgs& a, float* out);
  void (*sample)(const KernelArgs& a, const void* logits, const Strides& ls, int64_t* out,
                 int64_t num_samples);
  // Testing hook: y = -neg_log_positive(x) (fn 0) or exp_nonpositive(x) (fn 1) of vec_math.h.
  void (*vec_math)(const float* x, float* y, int64_t n, int fn);
  // logprobs: float32 [rows, num_samples], or null.
  void (*sample_filtered)(const SampleArgs& a, const void* logits, int64_t* out, float* logprobs);
  void (*keyed_noise)(const KeyedNoiseArgs& a, float* out);
};

}  // namespace cpu
}  // namespace gumbel_ext
