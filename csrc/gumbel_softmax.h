// The C++ API for libtorch users: the same functions, defaults and semantics as the
// Python API (gumbel_ext/functional.py), minus `eps` (deprecated there) and tensor tau.
//
//   #include <gumbel_ext/gumbel_softmax.h>
//   auto gen = at::detail::createCPUGenerator(/*seed=*/0);
//   at::Tensor y = gumbel_ext::gumbel_softmax(logits, /*tau=*/0.5, /*hard=*/true, -1, gen);
//   y.backward(grad);                       // straight-through: the soft sample's gradient
//   at::Tensor idx = gumbel_ext::sample(logits, /*num_samples=*/4);
//
// Link the `gumbel_ext` library (CMake: target gumbel_ext::gumbel_ext). The definitions
// live in that library, next to the TORCH_LIBRARY registrations, so referencing them
// guarantees the library is loaded and the ops are registered with the dispatcher.
// Bad input throws c10::Error (c10::ValueError / c10::TypeError / c10::IndexError).
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace gumbel_ext {

// A Gumbel-Softmax sample of `logits` along `dim` at temperature `tau` > 0: same shape,
// dtype and device as `logits`, rows sum to 1. `hard` returns the exact one-hot of the
// sampled category with the soft sample's gradient (straight-through). Differentiable
// (twice) in `logits`. `generator` must be on the logits' device; nullopt means the
// device's default generator (at::manual_seed makes results reproducible).
at::Tensor gumbel_softmax(const at::Tensor& logits, double tau = 1.0, bool hard = false,
                          int64_t dim = -1,
                          std::optional<at::Generator> generator = std::nullopt);

// Category indices drawn from softmax(logits) by Gumbel-max (int64). num_samples == 1:
// `dim` is removed from the shape; k > 1: k distinct categories per row (Gumbel-top-k,
// without replacement), `dim` replaced by k. With the same generator state,
// sample(x) == gumbel_softmax(x, 1.0, true).argmax(dim). Not differentiable.
at::Tensor sample(const at::Tensor& logits, int64_t num_samples = 1, int64_t dim = -1,
                  std::optional<at::Generator> generator = std::nullopt);

}  // namespace gumbel_ext
