// The C++ API for libtorch users: the same functions, defaults and semantics as the
// Python API (gumbel_ext/functional.py), minus `eps` (deprecated there) and tensor tau.
//
//   #include <gumbel_ext/gumbel_softmax.h>
//   auto gen = at::detail::createCPUGenerator(/*seed=*/0);
//   at::Tensor y = gumbel_ext::gumbel_softmax(logits, /*tau=*/0.5, /*hard=*/true, -1, gen);
//   y.backward(grad);                       // straight-through: the soft sample's gradient
//   at::Tensor idx = gumbel_ext::sample(logits, /*num_samples=*/4);
//   gumbel_ext::SamplerOptions opt;
//   opt.temperature = 0.7; opt.top_k = 50; opt.top_p = 0.9; opt.seeds = seeds;
//   auto [tokens, logprobs] = gumbel_ext::sample(logits, opt);
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
#include <tuple>

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

// The token sampler's arguments, as Python's sample(..., temperature=, top_k=, top_p=,
// min_p=, seeds=, offsets=, return_logprobs=): a scalar, or a tensor with one value per
// row (the logits' shape without `dim`, or broadcastable to it) that replaces it. Filter
// order and semantics: temperature, top-k, top-p, min-p (docs/semantics.md; Note [Sampler
// semantics] in csrc/cpu/sample_kernels.h). seeds/offsets (int64, per row) key each row's
// noise independently of its batch; offsets default to 0; not with a generator.
struct SamplerOptions {
  double temperature = 1.0;  // >= 0; 0 is greedy
  std::optional<at::Tensor> temperature_rows;
  int64_t top_k = 0;  // 0: off
  std::optional<at::Tensor> top_k_rows;
  double top_p = 1.0;  // (0, 1]; 1: off
  std::optional<at::Tensor> top_p_rows;
  double min_p = 0.0;  // [0, 1]; 0: off
  std::optional<at::Tensor> min_p_rows;
  std::optional<at::Tensor> seeds, offsets;
  bool return_logprobs = false;
};

// The token sampler: (indices, logprobs) shaped as sample()'s indices; logprobs (float32)
// is the log-probability of each index under the processed distribution when
// options.return_logprobs, else an empty tensor. Not differentiable.
std::tuple<at::Tensor, at::Tensor> sample(const at::Tensor& logits, const SamplerOptions& options,
                                          int64_t num_samples = 1, int64_t dim = -1,
                                          std::optional<at::Generator> generator = std::nullopt);

}  // namespace gumbel_ext
