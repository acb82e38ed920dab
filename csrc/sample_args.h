// The host side of gumbel_ext::sample_filtered shared by the CPU op (csrc/sampling.cpp) and
// the CUDA one (csrc/cuda/sample_filtered.cu): the argument checks and the per-row
// tensors' pointers. Per-row tensors arrive flattened to [rows], contiguous: float64 for
// temperature / top_p / min_p, int64 for top_k, seeds, offsets.
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
