// gumbel_ext::sample_filtered: the token sampler (temperature, top-k / top-p / min-p,
// per-row seeds and offsets, log-probs); semantics in Note [Sampler semantics] and
// Note [Per-row noise keys] (csrc/cpu/sample_kernels.h). A new op rather than new
// arguments on `sample`: `sample`'s schema, its CUDA kernel and its C++ API stay as they
// are, and the Python `sample` routes here only when a sampler argument is used, so the
// default call is today's op, bit for bit.
//
// Per-row tensors arrive flattened to [rows] (row r = o * inner + i, the noise's row
// order), contiguous: float64 for temperature / top_p / min_p, int64 for top_k, seeds,
// offsets. Returns (indices, logprobs); logprobs is float32 in the indices' shape, or
// empty when not requested.
#include <torch/library.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/DistributionsHelper.h>

#include <mutex>

#include "cpu/kernels.h"
#include "op_common.h"
#include "sample_args.h"

namespace gumbel_ext {
namespace {

std::tuple<at::Tensor, at::Tensor> sample_filtered_cpu(
    const at::Tensor& logits, int64_t num_samples, int64_t dim, double temperature,
    const std::optional<at::Tensor>& temperature_rows, int64_t top_k, const std::optional<at::Tensor>& top_k_rows,
    double top_p, const std::optional<at::Tensor>& top_p_rows, double min_p,
    const std::optional<at::Tensor>& min_p_rows, const std::optional<at::Tensor>& seeds,
    const std::optional<at::Tensor>& offsets, bool return_logprobs, std::optional<at::Generator> generator) {
  check_sampler_args(logits, dim, seeds, offsets, generator);
  const RowLayout layout = row_layout(logits, dim);
  const auto shape = sample_shape(logits, dim, num_samples);
  const auto lp_options = logits.options().dtype(at::kFloat);
  if (layout.rows() == 0) {
    return {at::empty(shape, logits.options().dtype(at::kLong)),
            return_logprobs ? at::empty(shape, lp_options) : at::empty({0}, lp_options)};
  }
  check_num_samples(logits, num_samples, layout);
  cpu::SampleArgs a{};
  a.dtype = logits.scalar_type();
  unpack_sampler_args(a, logits, layout.rows(), layout.length, num_samples, temperature, temperature_rows, top_k,
                      top_k_rows, top_p, top_p_rows, min_p, min_p_rows, seeds, offsets);
  if (!a.seeds) {
    // One fresh key from the generator, as sample() draws it (csrc/ops.cpp).
    auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
    std::lock_guard<std::mutex> lock(gen->mutex_);
    a.seed = gen->random64();
  }
  // Rows along the last dim, contiguous: the kernel walks rows only.
  const at::Tensor rows = sampler_rows(logits, dim, layout);
  at::Tensor idx = at::empty({a.rows, num_samples}, logits.options().dtype(at::kLong));
  at::Tensor lp = return_logprobs ? at::empty({a.rows, num_samples}, lp_options) : at::empty({0}, lp_options);
  cpu::sample_filtered(a, rows.const_data_ptr(), idx.mutable_data_ptr<int64_t>(),
                       return_logprobs ? lp.mutable_data_ptr<float>() : nullptr);
  return {sample_from_rows(idx, logits, dim, layout, num_samples),
          return_logprobs ? sample_from_rows(lp, logits, dim, layout, num_samples) : lp};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gumbel_ext, m) {
  m.def("sample_filtered(Tensor logits, int num_samples, int dim, float temperature, Tensor? temperature_rows, "
        "int top_k, Tensor? top_k_rows, float top_p, Tensor? top_p_rows, float min_p, Tensor? min_p_rows, "
        "Tensor? seeds, Tensor? offsets, bool return_logprobs, Generator? generator=None) -> (Tensor, Tensor)",
        {at::Tag::nondeterministic_seeded});
}

TORCH_LIBRARY_IMPL(gumbel_ext, CPU, m) {
  m.impl("sample_filtered", &sample_filtered_cpu);
}

}  // namespace gumbel_ext
