// CPU kernels behind the ops in csrc/ops.cpp. Tensors arrive checked, in any layout: the
// inputs are read in place where the kernels can (Note [Strided inputs] in
// cpu/gumbel_softmax_kernel.h), else copied; outputs are contiguous.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "../op_common.h"
#include "kernel_table.h"

namespace gumbel_ext {
namespace cpu {

void forward(const at::Tensor& logits, at::Tensor& out, const RowLayout& layout, int64_t dim,
             uint64_t seed, uint64_t offset, double tau, const std::optional<at::Tensor>& tau_rows,
             bool hard);

// saved: the soft output (hard=false) or the logits (hard=true, y_soft is regenerated).
// grad_tau: per-row dL/dtau, or an undefined tensor when not needed.
void backward(const at::Tensor& grad, const at::Tensor& saved, at::Tensor& grad_logits,
              at::Tensor& grad_tau, const RowLayout& layout, int64_t dim, uint64_t seed,
              uint64_t offset, double tau, const std::optional<at::Tensor>& tau_rows, bool hard);

// The float32 Gumbel noise of every element.
void noise(at::Tensor& out, const RowLayout& layout, uint64_t seed, uint64_t offset);

// Gumbel-top-k indices, [rows, k] in row order; k = 1 is Gumbel-max.
void sample(const at::Tensor& logits, at::Tensor& out, const RowLayout& layout, int64_t dim,
            uint64_t seed, uint64_t offset, int64_t num_samples);

// gumbel_ext::sample_filtered on rows x length contiguous logits (csrc/cpu/sample_kernels.h).
void sample_filtered(const SampleArgs& a, const void* logits, int64_t* out, float* logprobs);

// gumbel_ext::keyed_noise: any columns of any rows of the noise contract (keyed_noise_kernel.h).
void keyed_noise(const KeyedNoiseArgs& a, float* out);

// Which per-ISA copy of the kernels runs (Note [Per-ISA CPU kernels] in kernel_table.h):
// "default", "avx2" or "avx512". The first call picks the best one this CPU supports, or
// the one GUMBEL_EXT_CPU_CAPABILITY names.
std::string capability();
// The copies compiled into this build that this CPU can run, narrowest first.
std::vector<std::string> capabilities();
// Switches copies (tests and benchmarks); raises for one that is not available.
void set_capability(const std::string& name);
// Testing hook: argmaxes walk the columns in segments of `columns` (0: the default, 2^30;
// Note [Argmax segments] in cpu/group_kernels.h), so tests reach the segment logic
// without 2^31 columns. Returns the previous value.
int64_t set_argmax_segment(int64_t columns);
// Testing hook: the active copy's inline log ("log") or exp ("exp") of a float32 tensor.
at::Tensor vec_math(const at::Tensor& x, const std::string& fn);

}  // namespace cpu
}  // namespace gumbel_ext
