// The host side of gumbel_ext::sample_filtered shared by the CPU op (csrc/sampling.cpp) and
// the CUDA one (csrc/cuda/sample_filtered.cu): the argument checks, the per-row tensors'
// pointers, and the arguments unpacked into the kernels' structs. Per-row tensors arrive
// flattened to [rows], contiguous: float64 for temperature / top_p / min_p, int64 for
// top_k, seeds, offsets.
#pragma once

#include <ATen/ATen.h>

#include <optional>
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

// The sampler's scalar arguments and per-row tensors (checked by sampler_rows_*), written
// into either op's argument struct: cpu::SampleArgs and cuda::SampleFilteredArgs<T> name
// these fields alike.
template <typename Args>
inline void unpack_sampler_args(Args& a, const at::Tensor& logits, int64_t rows, int64_t length,
                                int64_t num_samples, double temperature,
                                const std::optional<at::Tensor>& temperature_rows, int64_t top_k,
                                const std::optional<at::Tensor>& top_k_rows, double top_p,
                                const std::optional<at::Tensor>& top_p_rows, double min_p,
                                const std::optional<at::Tensor>& min_p_rows, const std::optional<at::Tensor>& seeds,
                                const std::optional<at::Tensor>& offsets) {
  a.rows = rows;
  a.length = length;
  a.num_samples = num_samples;
  a.temperature = temperature;
  a.top_k = top_k;
  a.top_p = top_p;
  a.min_p = min_p;
  a.temperature_rows = sampler_rows_f64(temperature_rows, "temperature", logits, rows);
  a.top_p_rows = sampler_rows_f64(top_p_rows, "top_p", logits, rows);
  a.min_p_rows = sampler_rows_f64(min_p_rows, "min_p", logits, rows);
  a.top_k_rows = sampler_rows_i64(top_k_rows, "top_k", logits, rows);
  a.seeds = sampler_rows_i64(seeds, "seeds", logits, rows);
  a.offsets = sampler_rows_i64(offsets, "offsets", logits, rows);
}

// The checks both ops make before reading anything.
inline void check_sampler_args(const at::Tensor& logits, int64_t dim, const std::optional<at::Tensor>& seeds,
                               const std::optional<at::Tensor>& offsets,
                               const std::optional<at::Generator>& generator) {
  check_logits(logits);
  check_dim(logits, dim);
  check_generator_device(generator, logits);
  TORCH_CHECK_VALUE(seeds.has_value() == offsets.has_value(),
                    "gumbel_ext.sample: seeds and offsets go together (the wrapper defaults offsets to 0)");
  TORCH_CHECK_VALUE(!(seeds.has_value() && generator.has_value() && generator->defined()),
                    "gumbel_ext.sample: pass seeds/offsets or a generator, not both");
}

// The logits as contiguous [rows, length] rows along `dim` (a copy unless dim is last).
inline at::Tensor sampler_rows(const at::Tensor& logits, int64_t dim, const RowLayout& layout) {
  return logits.dim() == 0 ? logits.reshape({1, 1})
                           : logits.movedim(c10::maybe_wrap_dim(dim, logits.dim()), -1)
                                 .contiguous()
                                 .view({layout.rows(), layout.length});
}

}  // namespace gumbel_ext
