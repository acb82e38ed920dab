// Host-side pieces every backend shares: argument checks, the row layout, the rng
// state tensor. Kernels see logits as [outer, length, inner] with `length` the reduced
// dim; row r = o * inner + i (see Note [Philox counter layout] in gumbel_noise.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/Generator.h>

#include <cmath>
#include <cstdint>
#include <optional>

namespace gumbel_ext {

struct RowLayout {
  int64_t outer = 1;
  int64_t length = 1;
  int64_t inner = 1;
  int64_t rows() const { return outer * inner; }
};

// A 0-dim tensor is one row of length 1, as softmax treats it.
inline RowLayout row_layout(const at::Tensor& t, int64_t dim) {
  RowLayout layout;
  if (t.dim() == 0) return layout;
  const int64_t d = c10::maybe_wrap_dim(dim, t.dim());
  layout.length = t.size(d);
  for (int64_t i = 0; i < d; ++i) layout.outer *= t.size(i);
  for (int64_t i = d + 1; i < t.dim(); ++i) layout.inner *= t.size(i);
  return layout;
}

inline void check_logits(const at::Tensor& logits, const char* name = "logits") {
  TORCH_CHECK_TYPE(at::isFloatingType(logits.scalar_type()),
                   "gumbel_ext: ", name, " must have a floating point dtype (float16, bfloat16, "
                   "float32 or float64), got ", logits.scalar_type());
}

inline void check_tau(double tau) {
  TORCH_CHECK_VALUE(std::isfinite(tau) && tau > 0,
                    "gumbel_ext: tau must be a finite number > 0, got ", tau);
}

// The opmath type a kernel accumulates in: double for double, float otherwise.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Note [Tensor arguments on another device]
// Every tensor argument must be on the logits' device. The dispatcher picks the kernel
// from all tensor arguments, and Meta outranks every backend: CPU logits with a meta
// rng_state reach the fake kernel (gumbel_ext/_ops.py), which would return uninitialized
// CPU tensors. So the fakes check devices too, with this same message (torch's own ops
// say "Tensor on device meta is not on the expected device cpu!"), and the real kernels
// check before anything else reads a tensor.
inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& expected,
                              const char* expected_name = "logits") {
  TORCH_CHECK_VALUE(t.device() == expected.device(), "gumbel_ext: Tensor ", name, " on device ",
                    t.device(), " is not on the expected device ", expected.device(),
                    " (the device of ", expected_name, ")");
}

// The number of rows, as a SymInt: the checks also run in _differentiable_backward, a
// CompositeImplicitAutograd op that torch.compile traces with symbolic shapes (where
// sizes() and numel() throw). Hence sym_sizes()/sym_numel() in every shared check.
inline c10::SymInt sym_rows(const at::Tensor& t, int64_t dim) {
  c10::SymInt rows = 1;
  if (t.dim() == 0) return rows;
  const int64_t d = c10::maybe_wrap_dim(dim, t.dim());
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i != d) rows = rows * t.sym_size(i);
  }
  return rows;
}

// tau_rows: one temperature per row, shaped like logits with `dim` of size 1, in the
// accumulation dtype, contiguous (the Python wrapper broadcasts a user tensor to this).
inline void check_tau_rows(const std::optional<at::Tensor>& tau_rows, const at::Tensor& logits,
                           int64_t dim, const char* logits_name = "logits") {
  if (!tau_rows.has_value()) return;
  const at::Tensor& t = *tau_rows;
  check_same_device(t, "tau_rows", logits, logits_name);
  TORCH_CHECK_VALUE(t.scalar_type() == acc_dtype(logits.scalar_type()),
                    "gumbel_ext: tau_rows must have dtype ", acc_dtype(logits.scalar_type()),
                    " for ", logits.scalar_type(), " logits, got ", t.scalar_type());
  const c10::SymInt rows = sym_rows(logits, dim);
  TORCH_CHECK_VALUE(t.sym_numel() == rows && t.is_contiguous(),
                    "gumbel_ext: tau_rows must be contiguous with one entry per row (", rows,
                    "), got shape ", t.sym_sizes());
}

inline void check_dim(const at::Tensor& logits, int64_t dim) {
  // maybe_wrap_dim raises IndexError with torch's own message.
  c10::maybe_wrap_dim(dim, std::max<int64_t>(logits.dim(), 1));
}

inline void check_generator_device(const std::optional<at::Generator>& gen,
                                   const at::Tensor& logits) {
  if (!gen.has_value() || !gen->defined()) return;
  TORCH_CHECK_VALUE(gen->device().type() == logits.device().type(),
                    "gumbel_ext: the generator is on ", gen->device(), " but logits are on ",
                    logits.device(), "; pass a generator of the logits' device");
}

// rng_state: int64 [2] = (seed, offset) on the logits' device; seed holds uint64 bits.
inline void check_rng_state(const at::Tensor& s, const at::Tensor& logits,
                            const char* logits_name = "logits") {
  check_same_device(s, "rng_state", logits, logits_name);
  TORCH_CHECK_VALUE(s.scalar_type() == at::kLong && s.sym_numel() == 2 && s.is_contiguous(),
                    "gumbel_ext: rng_state must be a contiguous int64 tensor of 2 elements "
                    "(seed, offset), got ", s.scalar_type(), " of shape ", s.sym_sizes());
}

inline void check_forward_args(const at::Tensor& logits, double tau,
                               const std::optional<at::Tensor>& tau_rows, int64_t dim,
                               const std::optional<at::Generator>& gen,
                               const std::optional<at::Tensor>& rng_state) {
  if (tau_rows.has_value()) check_same_device(*tau_rows, "tau_rows", logits);
  if (rng_state.has_value()) check_same_device(*rng_state, "rng_state", logits);
  check_logits(logits);
  check_dim(logits, dim);
  check_tau(tau);
  check_tau_rows(tau_rows, logits, dim);
  check_generator_device(gen, logits);
  if (rng_state.has_value()) check_rng_state(*rng_state, logits);
}

inline void check_backward_args(const at::Tensor& grad, const at::Tensor& saved,
                                const at::Tensor& rng_state, double tau,
                                const std::optional<at::Tensor>& tau_rows, int64_t dim,
                                bool need_grad_tau) {
  check_same_device(grad, "grad", saved, "saved");
  check_same_device(rng_state, "rng_state", saved, "saved");
  if (tau_rows.has_value()) check_same_device(*tau_rows, "tau_rows", saved, "saved");
  TORCH_CHECK_VALUE(!need_grad_tau || tau_rows.has_value(),
                    "gumbel_ext: need_grad_tau=True requires tau_rows");
  check_logits(saved, "saved");
  check_dim(saved, dim);
  check_tau(tau);
  TORCH_CHECK_VALUE(grad.sym_sizes() == saved.sym_sizes(), "gumbel_ext: grad has shape ",
                    grad.sym_sizes(), " but the output has shape ", saved.sym_sizes());
  check_tau_rows(tau_rows, saved, dim, "saved");
  check_rng_state(rng_state, saved, "saved");
}

inline void check_noise_args(const at::Tensor& logits, int64_t dim, const at::Tensor& rng_state) {
  check_rng_state(rng_state, logits);
  check_dim(logits, dim);
}

inline at::TensorOptions tau_rows_options(const at::Tensor& logits) {
  return logits.options().dtype(acc_dtype(logits.scalar_type()));
}

// Output of the same shape, dtype and device as `t`, contiguous.
inline at::Tensor empty_output(const at::Tensor& t) {
  return at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::Contiguous));
}

}  // namespace gumbel_ext

namespace gumbel_ext {

inline void check_num_samples(const at::Tensor& logits, int64_t num_samples, const RowLayout& layout) {
  TORCH_CHECK_VALUE(num_samples >= 1, "gumbel_ext.sample: num_samples must be >= 1, got ", num_samples);
  TORCH_CHECK_VALUE(num_samples <= layout.length, "gumbel_ext.sample: num_samples=", num_samples,
                    " exceeds the ", layout.length, " categories along dim (sampling without "
                    "replacement)");
}

// Everything sample() checks before it looks at a value, rows or no rows: num_samples is
// in [1, categories] whether or not there is a row to sample.
inline void check_sample_args(const at::Tensor& logits, int64_t num_samples, int64_t dim,
                              const std::optional<at::Generator>& generator,
                              const std::optional<at::Tensor>& rng_state) {
  if (rng_state.has_value()) check_rng_state(*rng_state, logits);
  check_logits(logits);
  check_dim(logits, dim);
  check_generator_device(generator, logits);
  check_num_samples(logits, num_samples, row_layout(logits, dim));
}

// sample() returns `dim` removed (num_samples == 1) or replaced by num_samples.
inline std::vector<int64_t> sample_shape(const at::Tensor& logits, int64_t dim, int64_t num_samples) {
  std::vector<int64_t> shape(logits.sizes().begin(), logits.sizes().end());
  if (logits.dim() == 0) {
    if (num_samples > 1) shape.push_back(num_samples);
    return shape;
  }
  const int64_t d = c10::maybe_wrap_dim(dim, logits.dim());
  if (num_samples == 1) {
    shape.erase(shape.begin() + d);
  } else {
    shape[d] = num_samples;
  }
  return shape;
}

// Kernels write sample indices as [outer, inner, k] (row order); move k into `dim`.
inline at::Tensor sample_from_rows(const at::Tensor& rows_k, const at::Tensor& logits, int64_t dim,
                                   const RowLayout& layout, int64_t num_samples) {
  const auto shape = sample_shape(logits, dim, num_samples);
  if (num_samples == 1) return rows_k.view(shape);
  return rows_k.view({layout.outer, layout.inner, num_samples}).transpose(1, 2).contiguous().view(shape);
}

inline at::Tensor make_rng_state_cpu(uint64_t seed, uint64_t offset) {
  at::Tensor s = at::empty({2}, at::TensorOptions().dtype(at::kLong));
  s.mutable_data_ptr<int64_t>()[0] = static_cast<int64_t>(seed);
  s.mutable_data_ptr<int64_t>()[1] = static_cast<int64_t>(offset);
  return s;
}

}  // namespace gumbel_ext
