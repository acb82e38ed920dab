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

SamplerResult sample_filtered_cuda(const SamplerCall& c) {
  check_sampler_args(c);
  // The scalars are checked here; per-row values are not read on the host (Note [CUDA
  // sampler bad rows] in sample_filtered_kernels.cuh).
  TORCH_CHECK_VALUE(c.temperature >= 0 && std::isfinite(c.temperature),
                    "gumbel_ext.sample: temperature must be finite and >= 0, got ", c.temperature);
  TORCH_CHECK_VALUE(c.top_k >= 0, "gumbel_ext.sample: top_k must be >= 0, got ", c.top_k);
  TORCH_CHECK_VALUE(c.top_p > 0 && c.top_p <= 1, "gumbel_ext.sample: top_p must be in (0, 1], got ", c.top_p);
  TORCH_CHECK_VALUE(c.min_p >= 0 && c.min_p <= 1, "gumbel_ext.sample: min_p must be in [0, 1], got ", c.min_p);
  const c10::cuda::CUDAGuard guard(c.logits.device());
  const RowLayout layout = row_layout(c.logits, c.dim);
  if (layout.rows() == 0) return empty_sample(c);
  check_num_samples(c.logits, c.num_samples, layout);
  TORCH_CHECK_VALUE(c.num_samples <= cuda::kSamplerMaxDrawn,
                    "gumbel_ext.sample: the fused CUDA sampler draws at most ", cuda::kSamplerMaxDrawn,
                    " samples per row, got num_samples=", c.num_samples,
                    " (gumbel_ext.sample routes larger counts to the reference)");
  const int64_t rows = layout.rows(), length = layout.length;
  const at::Tensor x = sampler_rows(c.logits, c.dim, layout);
  at::Tensor idx, lp;
  std::tie(idx, lp) = sample_outputs(c, rows);
  cuda::Rng rng;
  if (!c.seeds.has_value()) {
    auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
        c.generator, at::cuda::detail::getDefaultCUDAGenerator(c.logits.device().index()));
    std::lock_guard<std::mutex> lock(gen->mutex_);
    rng.philox = gen->philox_cuda_state(philox_increment(static_cast<uint64_t>(length)));
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(c.logits.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gumbel_sample_filtered_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using key_t = typename cuda::KeyOf<acc_t>::type;
    cuda::SampleFilteredArgs<scalar_t> a;
    a.logits = x.const_data_ptr<scalar_t>();
    unpack_sampler_args(a, c, layout);
    a.indices = idx.mutable_data_ptr<int64_t>();
    a.logprobs = c.return_logprobs ? lp.mutable_data_ptr<float>() : nullptr;
    a.mass_shift = cuda::sampler_mass_shift(length);
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(rows, cuda::kMaxGrid));
    const size_t smem = cuda::sampler_dynamic_smem(c.num_samples, sizeof(key_t), sizeof(acc_t));
    cuda::sample_filtered_kernel<scalar_t>
        <<<grid, cuda::sampler_block_threads(length), smem, stream>>>(a, rng);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return sample_results(c, layout, idx, lp);
}

}  // namespace

TORCH_LIBRARY_IMPL(gumbel_ext, CUDA, m) {
  m.impl("sample_filtered", &sample_filtered_entry<&sample_filtered_cuda>);
}

}  // namespace gumbel_ext
