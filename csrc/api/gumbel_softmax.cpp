// The C++ API (csrc/gumbel_softmax.h): thin calls of the registered ops through the
// dispatcher. Autograd comes with the op (csrc/autograd.cpp), the same kernel the Python
// API uses. Compiled by CMake only (the Python builds glob csrc/*.cpp and csrc/cpu/*.cpp,
// not csrc/api/), into the same library as ops.cpp, so any caller of these functions
// also loads the registrations.
#include "../gumbel_softmax.h"

#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>

#include <vector>

#include "../op_handles.h"

namespace gumbel_ext {

at::Tensor gumbel_softmax(const at::Tensor& logits, double tau, bool hard, int64_t dim,
                          std::optional<at::Generator> generator) {
  // The op checks the arguments before anything runs, in functional.py's order (dtype,
  // dim, tau, generator), and every op takes an unwrapped dim.
  return ops::gumbel_softmax().call(logits, tau, std::nullopt, hard, dim, std::move(generator),
                                    std::nullopt);
}

at::Tensor sample(const at::Tensor& logits, int64_t num_samples, int64_t dim,
                  std::optional<at::Generator> generator) {
  // The op checks num_samples with or without rows, as functional.py does.
  return ops::sample().call(logits.detach(), num_samples, dim, std::move(generator), std::nullopt);
}

namespace {

// A per-row tensor flattened to [rows] as the op takes it (what gumbel_ext/sampling.py's
// _rows_tensor does): broadcast to the logits' shape without dim, in `dtype`, contiguous.
std::optional<at::Tensor> per_row(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& logits,
                                  int64_t dim, at::ScalarType dtype) {
  if (!t.has_value()) return std::nullopt;
  const bool integral = dtype == at::kLong;
  TORCH_CHECK_TYPE(integral ? at::isIntegralType(t->scalar_type(), false) : at::isFloatingType(t->scalar_type()) ||
                                                                                at::isIntegralType(t->scalar_type(), false),
                   "gumbel_ext.sample: ", name, " must be ", integral ? "an integer" : "a floating point",
                   " tensor, got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->device() == logits.device(), "gumbel_ext.sample: ", name, " is on ", t->device(),
                    " but logits are on ", logits.device());
  std::vector<int64_t> rows(logits.sizes().begin(), logits.sizes().end());
  if (!rows.empty()) rows.erase(rows.begin() + c10::maybe_wrap_dim(dim, logits.dim()));
  const bool fits = at::is_expandable_to(t->sizes(), rows);
  TORCH_CHECK_VALUE(fits, "gumbel_ext.sample: ", name, " of shape ", t->sizes(),
                    " must be broadcastable to the logits' shape without dim ", dim, ", ", at::IntArrayRef(rows),
                    " (one value per row)");
  return t->to(dtype).expand(rows).reshape({-1}).contiguous();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> sample(const at::Tensor& logits, const SamplerOptions& o, int64_t num_samples,
                                          int64_t dim, std::optional<at::Generator> generator) {
  // The op checks the scalars, dtype, dim and num_samples; the per-row tensors are shaped here.
  TORCH_CHECK_VALUE(o.seeds.has_value() || !o.offsets.has_value(),
                    "gumbel_ext.sample: offsets given without seeds; pass seeds (offsets default to 0)");
  TORCH_CHECK_TYPE(!o.seeds.has_value() || o.seeds->scalar_type() == at::kLong,
                   "gumbel_ext.sample: seeds must be an int64 tensor");
  TORCH_CHECK_TYPE(!o.offsets.has_value() || o.offsets->scalar_type() == at::kLong,
                   "gumbel_ext.sample: offsets must be an int64 tensor");
  c10::maybe_wrap_dim(dim, std::max<int64_t>(logits.dim(), 1));
  const auto seeds = per_row(o.seeds, "seeds", logits, dim, at::kLong);
  const auto offsets = seeds.has_value() ? (o.offsets.has_value() ? per_row(o.offsets, "offsets", logits, dim, at::kLong)
                                                                  : std::optional<at::Tensor>(at::zeros_like(*seeds)))
                                         : std::nullopt;
  return ops::sample_filtered().call(
      logits.detach(), num_samples, dim, o.temperature, per_row(o.temperature_rows, "temperature", logits, dim, at::kDouble),
      o.top_k, per_row(o.top_k_rows, "top_k", logits, dim, at::kLong), o.top_p,
      per_row(o.top_p_rows, "top_p", logits, dim, at::kDouble), o.min_p,
      per_row(o.min_p_rows, "min_p", logits, dim, at::kDouble), seeds, offsets, o.return_logprobs,
      std::move(generator));
}

}  // namespace gumbel_ext
