// The host side of gumbel_ext::sample_filtered shared by the CPU op (csrc/sampling.cpp) and
// the CUDA one (csrc/cuda/sample_filtered.cu): the argument checks, the per-row tensors'
// pointers, and the arguments unpacked into the kernels' structs. Per-row tensors arrive
// flattened to [rows], contiguous: float64 for temperature / top_p / min_p, int64 for
// top_k, seeds, offsets.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

#include "op_common.h"

namespace gumbel_ext {

inline const double* sampler_rows_f64(const std::optional<at::Tensor>& t, const char* name,
                                      const at::Tensor& logits, int64_t rows) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK_VALUE(t->scalar_type() == at::kDouble && t->numel() == rows && t->is_contiguous() &&
                        t->device() == logits.device(),
                    "gumbel_ext.sample: ", name, " must be a contiguous float64 tensor with one value per row (",
                    rows, ") on ", logits.device(), ", got ", t->scalar_type(), " of shape ", t->sizes(), " on ",
                    t->device());
  return t->const_data_ptr<double>();
}

inline const int64_t* sampler_rows_i64(const std::optional<at::Tensor>& t, const char* name,
                                       const at::Tensor& logits, int64_t rows) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK_VALUE(t->scalar_type() == at::kLong && t->numel() == rows && t->is_contiguous() &&
                        t->device() == logits.device(),
                    "gumbel_ext.sample: ", name, " must be a contiguous int64 tensor with one value per row (",
                    rows, ") on ", logits.device(), ", got ", t->scalar_type(), " of shape ", t->sizes(), " on ",
                    t->device());
  return t->const_data_ptr<int64_t>();
}

// One call of gumbel_ext::sample_filtered: its arguments as the schema passes them. The
// op's C++ signature is spelled once, in sample_filtered_entry; each backend takes this.
struct SamplerCall {
  const at::Tensor& logits;
  int64_t num_samples, dim;
  double temperature;
  const std::optional<at::Tensor>& temperature_rows;
  int64_t top_k;
  const std::optional<at::Tensor>& top_k_rows;
  double top_p;
  const std::optional<at::Tensor>& top_p_rows;
  double min_p;
  const std::optional<at::Tensor>& min_p_rows;
  const std::optional<at::Tensor>& seeds;
  const std::optional<at::Tensor>& offsets;
  bool return_logprobs;
  const std::optional<at::Generator>& generator;
};

using SamplerResult = std::tuple<at::Tensor, at::Tensor>;  // (indices, logprobs or empty)

// What m.impl registers: `m.impl("sample_filtered", &sample_filtered_entry<&backend>)`.
template <SamplerResult (*Backend)(const SamplerCall&)>
SamplerResult sample_filtered_entry(const at::Tensor& logits, int64_t num_samples, int64_t dim, double temperature,
                                    const std::optional<at::Tensor>& temperature_rows, int64_t top_k,
                                    const std::optional<at::Tensor>& top_k_rows, double top_p,
                                    const std::optional<at::Tensor>& top_p_rows, double min_p,
                                    const std::optional<at::Tensor>& min_p_rows,
                                    const std::optional<at::Tensor>& seeds, const std::optional<at::Tensor>& offsets,
                                    bool return_logprobs, std::optional<at::Generator> generator) {
  return Backend(SamplerCall{logits, num_samples, dim, temperature, temperature_rows, top_k, top_k_rows, top_p,
                             top_p_rows, min_p, min_p_rows, seeds, offsets, return_logprobs, generator});
}

// The checks both ops make before reading anything.
inline void check_sampler_args(const SamplerCall& c) {
  check_logits(c.logits);
  check_dim(c.logits, c.dim);
  check_generator_device(c.generator, c.logits);
  TORCH_CHECK_VALUE(c.seeds.has_value() == c.offsets.has_value(),
                    "gumbel_ext.sample: seeds and offsets go together (the wrapper defaults offsets to 0)");
  TORCH_CHECK_VALUE(!(c.seeds.has_value() && c.generator.has_value() && c.generator->defined()),
                    "gumbel_ext.sample: pass seeds/offsets or a generator, not both");
}

// The outputs of a call without rows (nothing to draw, no key taken from the generator).
inline SamplerResult empty_sample(const SamplerCall& c) {
  const auto lp_options = c.logits.options().dtype(at::kFloat);
  const auto shape = sample_shape(c.logits, c.dim, c.num_samples);
  return {at::empty(shape, c.logits.options().dtype(at::kLong)),
          c.return_logprobs ? at::empty(shape, lp_options) : at::empty({0}, lp_options)};
}

// The indices and log-probs [rows, num_samples] the kernels write (log-probs empty unless
// requested).
inline SamplerResult sample_outputs(const SamplerCall& c, int64_t rows) {
  const auto lp_options = c.logits.options().dtype(at::kFloat);
  return {at::empty({rows, c.num_samples}, c.logits.options().dtype(at::kLong)),
          c.return_logprobs ? at::empty({rows, c.num_samples}, lp_options) : at::empty({0}, lp_options)};
}

// The outputs in the op's shape, from the kernels' [rows, num_samples].
inline SamplerResult sample_results(const SamplerCall& c, const RowLayout& layout, const at::Tensor& idx,
                                    const at::Tensor& lp) {
  return {sample_from_rows(idx, c.logits, c.dim, layout, c.num_samples),
          c.return_logprobs ? sample_from_rows(lp, c.logits, c.dim, layout, c.num_samples) : lp};
}

// The scalars and per-row pointers (checked by sampler_rows_*), written into either op's
// argument struct: cpu::SampleArgs and cuda::SampleFilteredArgs<T> name these fields alike.
template <typename Args>
inline void unpack_sampler_args(Args& a, const SamplerCall& c, const RowLayout& layout) {
  const int64_t rows = layout.rows();
  a.rows = rows;
  a.length = layout.length;
  a.num_samples = c.num_samples;
  a.temperature = c.temperature;
  a.top_k = c.top_k;
  a.top_p = c.top_p;
  a.min_p = c.min_p;
  a.temperature_rows = sampler_rows_f64(c.temperature_rows, "temperature", c.logits, rows);
  a.top_p_rows = sampler_rows_f64(c.top_p_rows, "top_p", c.logits, rows);
  a.min_p_rows = sampler_rows_f64(c.min_p_rows, "min_p", c.logits, rows);
  a.top_k_rows = sampler_rows_i64(c.top_k_rows, "top_k", c.logits, rows);
  a.seeds = sampler_rows_i64(c.seeds, "seeds", c.logits, rows);
  a.offsets = sampler_rows_i64(c.offsets, "offsets", c.logits, rows);
}

// The logits as contiguous [rows, length] rows along `dim` (a copy unless dim is last).
inline at::Tensor sampler_rows(const at::Tensor& logits, int64_t dim, const RowLayout& layout) {
  return logits.dim() == 0 ? logits.reshape({1, 1})
                           : logits.movedim(c10::maybe_wrap_dim(dim, logits.dim()), -1)
                                 .contiguous()
                                 .view({layout.rows(), layout.length});
}

}  // namespace gumbel_ext
