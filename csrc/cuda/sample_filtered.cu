// gumbel_ext::sample_filtered on CUDA: the checks and outputs of the CPU op
// (csrc/sampling.cpp), the generator, and the launch of the fused kernel of
// sample_filtered_kernels.cuh. Per-row values, seeds and offsets stay on the device and
// are read by the kernel: no host synchronization, so the op can be captured in a CUDA
// graph. With seeds absent, the kernel takes (seed, offset) from the generator's
// philox_cuda_state, reserving philox_increment(length) counters per row (Note [CUDA
// rng_state] in ops_cuda.cu): row r's noise is the contract's row r under that key and
// counter start, the noise sample() draws.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/DistributionsHelper.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <mutex>

#include "../op_common.h"
#include "../sample_args.h"
#include "sample_filtered_kernels.cuh"

namespace gumbel_ext {
namespace {

std::tuple<at::Tensor, at::Tensor> sample_filtered_cuda(
    const at::Tensor& logits, int64_t num_samples, int64_t dim, double temperature,
    const std::optional<at::Tensor>& temperature_rows, int64_t top_k, const std::optional<at::Tensor>& top_k_rows,
    double top_p, const std::optional<at::Tensor>& top_p_rows, double min_p,
    const std::optional<at::Tensor>& min_p_rows, const std::optional<at::Tensor>& seeds,
    const std::optional<at::Tensor>& offsets, bool return_logprobs, std::optional<at::Generator> generator) {
  check_sampler_args(logits, dim, seeds, offsets, generator);
  // The scalars are checked here; per-row values are not read on the host (Note [CUDA
  // sampler bad rows] in sample_filtered_kernels.cuh).
  TORCH_CHECK_VALUE(temperature >= 0 && std::isfinite(temperature),
                    "gumbel_ext.sample: temperature must be finite and >= 0, got ", temperature);
  TORCH_CHECK_VALUE(top_k >= 0, "gumbel_ext.sample: top_k must be >= 0, got ", top_k);
  TORCH_CHECK_VALUE(top_p > 0 && top_p <= 1, "gumbel_ext.sample: top_p must be in (0, 1], got ", top_p);
  TORCH_CHECK_VALUE(min_p >= 0 && min_p <= 1, "gumbel_ext.sample: min_p must be in [0, 1], got ", min_p);
  const c10::cuda::CUDAGuard guard(logits.device());
  const RowLayout layout = row_layout(logits, dim);
  const auto shape = sample_shape(logits, dim, num_samples);
  const auto lp_options = logits.options().dtype(at::kFloat);
  if (layout.rows() == 0) {
    return {at::empty(shape, logits.options().dtype(at::kLong)),
            return_logprobs ? at::empty(shape, lp_options) : at::empty({0}, lp_options)};
  }
  check_num_samples(logits, num_samples, layout);
  TORCH_CHECK_VALUE(num_samples <= cuda::kSamplerMaxDrawn, "gumbel_ext.sample: the fused CUDA sampler draws at most ",
                    cuda::kSamplerMaxDrawn, " samples per row, got num_samples=", num_samples,
                    " (gumbel_ext.sample routes larger counts to the reference)");
  const int64_t rows = layout.rows(), length = layout.length;
  const at::Tensor x = sampler_rows(logits, dim, layout);
  at::Tensor idx = at::empty({rows, num_samples}, logits.options().dtype(at::kLong));
  at::Tensor lp = return_logprobs ? at::empty({rows, num_samples}, lp_options) : at::empty({0}, lp_options);
  cuda::Rng rng;
  if (!seeds.has_value()) {
    auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
        generator, at::cuda::detail::getDefaultCUDAGenerator(logits.device().index()));
    std::lock_guard<std::mutex> lock(gen->mutex_);
    rng.philox = gen->philox_cuda_state(philox_increment(static_cast<uint64_t>(length)));
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(logits.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gumbel_sample_filtered_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using key_t = typename cuda::KeyOf<acc_t>::type;
    cuda::SampleFilteredArgs<scalar_t> a;
    a.logits = x.const_data_ptr<scalar_t>();
    unpack_sampler_args(a, logits, rows, length, num_samples, temperature, temperature_rows, top_k, top_k_rows,
                        top_p, top_p_rows, min_p, min_p_rows, seeds, offsets);
    a.indices = idx.mutable_data_ptr<int64_t>();
    a.logprobs = return_logprobs ? lp.mutable_data_ptr<float>() : nullptr;
    a.mass_shift = cuda::sampler_mass_shift(length);
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(rows, cuda::kMaxGrid));
    const size_t smem = cuda::sampler_dynamic_smem(num_samples, sizeof(key_t), sizeof(acc_t));
    cuda::sample_filtered_kernel<scalar_t>
        <<<grid, cuda::sampler_block_threads(length), smem, stream>>>(a, rng);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {sample_from_rows(idx, logits, dim, layout, num_samples),
          return_logprobs ? sample_from_rows(lp, logits, dim, layout, num_samples) : lp};
}

}  // namespace

TORCH_LIBRARY_IMPL(gumbel_ext, CUDA, m) {
  m.impl("sample_filtered", &sample_filtered_cuda);
}

}  // namespace gumbel_ext
