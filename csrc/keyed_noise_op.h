// The argument checks of gumbel_ext::keyed_noise, shared by its CPU (keyed_noise.cpp) and
// CUDA (cuda/keyed_noise.cu) implementations.
#pragma once

#include <ATen/ATen.h>

namespace gumbel_ext {

// keys, offsets, row_ctr: int64 [R] on one device; col_start, length >= 0.
inline void check_keyed_noise_args(const at::Tensor& keys, const at::Tensor& offsets, const at::Tensor& row_ctr,
                                   int64_t col_start, int64_t length) {
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{keys, "keys"}, {offsets, "offsets"},
                                {row_ctr, "row_ctr"}}) {
    TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, "gumbel_ext.keyed_noise: ", name,
                     " must be an int64 tensor, got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == keys.size(0), "gumbel_ext.keyed_noise: ", name,
                      " must be 1-D with one entry per row (", keys.numel(), "), got shape ", t.sizes());
    TORCH_CHECK_VALUE(t.device() == keys.device(), "gumbel_ext.keyed_noise: ", name, " is on ", t.device(),
                      " but keys are on ", keys.device());
  }
  TORCH_CHECK_VALUE(col_start >= 0, "gumbel_ext.keyed_noise: col_start must be >= 0, got ", col_start);
  TORCH_CHECK_VALUE(length >= 0, "gumbel_ext.keyed_noise: length must be >= 0, got ", length);
}

}  // namespace gumbel_ext
