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

SamplerResult sample_filtered_cpu(const SamplerCall& c) {
  check_sampler_args(c);
  const RowLayout layout = row_layout(c.logits, c.dim);
  if (layout.rows() == 0) return empty_sample(c);
  check_num_samples(c.logits, c.num_samples, layout);
  cpu::SampleArgs a{};
  a.dtype = c.logits.scalar_type();
  unpack_sampler_args(a, c, layout);
  if (!a.seeds) {
    // One fresh key from the generator, as sample() draws it (csrc/ops.cpp).
    auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(c.generator, at::detail::getDefaultCPUGenerator());
    std::lock_guard<std::mutex> lock(gen->mutex_);
    a.seed = gen->random64();
  }
  // Rows along the last dim, contiguous: the kernel walks rows only.
  const at::Tensor rows = sampler_rows(c.logits, c.dim, layout);
  at::Tensor idx, lp;
  std::tie(idx, lp) = sample_outputs(c, a.rows);
  cpu::sample_filtered(a, rows.const_data_ptr(), idx.mutable_data_ptr<int64_t>(),
                       c.return_logprobs ? lp.mutable_data_ptr<float>() : nullptr);
  return sample_results(c, layout, idx, lp);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gumbel_ext, m) {
  m.def("sample_filtered(Tensor logits, int num_samples, int dim, float temperature, Tensor? temperature_rows, "
        "int top_k, Tensor? top_k_rows, float top_p, Tensor? top_p_rows, float min_p, Tensor? min_p_rows, "
        "Tensor? seeds, Tensor? offsets, bool return_logprobs, Generator? generator=None) -> (Tensor, Tensor)",
        {at::Tag::nondeterministic_seeded});
}

TORCH_LIBRARY_IMPL(gumbel_ext, CPU, m) {
  m.impl("sample_filtered", &sample_filtered_entry<&sample_filtered_cpu>);
}

}  // namespace gumbel_ext
