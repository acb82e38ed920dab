// CUDA implementations of the ops in csrc/ops.cpp (same schemas, checks and outputs as
// the CPU ones): argument checks, the generator, dtype dispatch, then the kernels of
// forward.cu / backward.cu / noise_topk.cu. No kernel lives here.
//
// Note [CUDA rng_state]
// Noise is reserved under the generator's lock with philox_cuda_state(philox_increment(C))
// -- 4 * ceil(C / 4) counters per row, a multiple of 4 -- and the kernel reads (seed,
// offset) with at::cuda::philox::unpack, so it is right both eagerly and inside a CUDA
// graph (where each replay draws fresh noise). The kernel itself writes the pair it used
// into the int64 [2] rng_state output on the device; backward and replays read it there,
// in the kernel. The host never reads it: no synchronization, capture-safe.
//
// Note [CUDA sample errors]
// The CPU sample() raises for a row holding NaN or +inf, or with fewer finite logits than
// num_samples. Detecting that on CUDA needs a device-to-host sync (impossible under graph
// capture) and a device-side assert would kill the CUDA context. The CUDA kernels instead
// return, for such rows, exactly what gumbel_ext.reference.sample returns: the argmax /
// stable descending sort of x = logits + noise with NaN above +inf and ties to the lowest
// index. Every index is a valid, distinct category in [0, C), so nothing downstream
// faults; a caller who needs the check runs torch.isfinite on the logits.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/DistributionsHelper.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>
#include <mutex>

#include "../gumbel_noise.h"
#include "../op_common.h"
#include "kernels.h"

namespace gumbel_ext {
namespace {

cuda::Shape to_shape(const RowLayout& layout) {
  cuda::Shape shape;
  shape.outer = layout.outer;
  shape.length = layout.length;
  shape.inner = layout.inner;
  return shape;
}

// See Note [CUDA rng_state].
cuda::Rng make_rng(const at::Tensor& logits, const std::optional<at::Generator>& generator,
                   const std::optional<at::Tensor>& rng_state, int64_t length, int64_t* record) {
  cuda::Rng rng;
  rng.record = record;
  if (rng_state.has_value()) {
    rng.replay = rng_state->const_data_ptr<int64_t>();
    return rng;
  }
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator(logits.device().index()));
  std::lock_guard<std::mutex> lock(gen->mutex_);
  rng.philox = gen->philox_cuda_state(philox_increment(static_cast<uint64_t>(length)));
  return rng;
}

cudaStream_t current_stream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& logits, double tau,
                                                const std::optional<at::Tensor>& tau_rows, bool hard,
                                                int64_t dim, std::optional<at::Generator> generator,
                                                const std::optional<at::Tensor>& rng_state) {
  check_forward_args(logits, tau, tau_rows, dim, generator, rng_state);
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor out = empty_output(logits);
  if (logits.numel() == 0) {
    return {out, rng_state ? rng_state->clone() : at::zeros({2}, logits.options().dtype(at::kLong))};
  }
  at::Tensor state = at::empty({2}, logits.options().dtype(at::kLong));
  const RowLayout layout = row_layout(logits, dim);
  const cuda::Rng rng = make_rng(logits, generator, rng_state, layout.length, state.mutable_data_ptr<int64_t>());
  const at::Tensor input = logits.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "gumbel_softmax_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cuda::ForwardArgs<scalar_t> args;
    args.logits = input.const_data_ptr<scalar_t>();
    args.out = out.mutable_data_ptr<scalar_t>();
    args.tau_rows = tau_rows ? tau_rows->const_data_ptr<acc_t>() : nullptr;
    args.inv_tau = 1.0 / tau;
    args.mode = hard ? cuda::Mode::kHard : cuda::Mode::kSoft;
    cuda::forward<scalar_t>(args, to_shape(layout), rng, current_stream(logits));
  });
  return {out, state};
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad, const at::Tensor& saved,
                                                 const at::Tensor& rng_state, double tau,
                                                 const std::optional<at::Tensor>& tau_rows, bool hard,
                                                 int64_t dim, bool need_grad_tau) {
  check_backward_args(grad, saved, rng_state, tau, tau_rows, dim, need_grad_tau);
  const c10::cuda::CUDAGuard guard(saved.device());
  at::Tensor grad_logits = empty_output(saved);
  if (saved.numel() == 0) {
    return {grad_logits, need_grad_tau ? at::zeros_like(*tau_rows) : at::empty({0}, tau_rows_options(saved))};
  }
  // Every row's dL/dtau is written by the kernel.
  at::Tensor grad_tau = need_grad_tau ? at::empty_like(*tau_rows) : at::empty({0}, tau_rows_options(saved));
  const at::Tensor g = grad.to(saved.scalar_type()).contiguous();
  const at::Tensor s = saved.contiguous();
  const RowLayout layout = row_layout(saved, dim);
  cuda::Rng rng;
  rng.replay = rng_state.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "gumbel_softmax_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cuda::BackwardArgs<scalar_t> args;
    args.grad = g.const_data_ptr<scalar_t>();
    args.saved = s.const_data_ptr<scalar_t>();
    args.grad_logits = grad_logits.mutable_data_ptr<scalar_t>();
    args.grad_tau = need_grad_tau ? grad_tau.mutable_data_ptr<acc_t>() : nullptr;
    args.tau_rows = tau_rows ? tau_rows->const_data_ptr<acc_t>() : nullptr;
    args.inv_tau = 1.0 / tau;
    args.hard = hard;
    cuda::backward<scalar_t>(args, to_shape(layout), rng, current_stream(saved));
  });
  return {grad_logits, grad_tau};
}

at::Tensor noise_cuda(const at::Tensor& logits, int64_t dim, const at::Tensor& rng_state) {
  check_noise_args(logits, dim, rng_state);
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor out = at::empty(logits.sizes(), logits.options().dtype(at::kFloat));
  if (logits.numel() == 0) return out;
  cuda::Rng rng;
  rng.replay = rng_state.const_data_ptr<int64_t>();
  cuda::noise(out.mutable_data_ptr<float>(), to_shape(row_layout(logits, dim)), rng, current_stream(logits));
  return out;
}

// Gumbel-top-k by a stable descending sort of every row's perturbed logits, a bounded
// number of rows at a time to cap the scratch memory (keys and columns, twice: 16 bytes
// an element for float keys, so at most 256 MiB plus cub's temporary storage).
constexpr int64_t kTopkBatchElements = int64_t{1} << 24;

void topk_cuda(const at::Tensor& input, at::Tensor& rows_k, const RowLayout& layout,
               const cuda::Rng& rng, int64_t k, cudaStream_t stream) {
  const int64_t length = layout.length, rows = layout.rows();
  TORCH_CHECK_VALUE(length <= std::numeric_limits<int32_t>::max(),
                    "gumbel_ext.sample: num_samples > 1 on CUDA supports at most 2^31 - 1 "
                    "categories, got ", length);
  const int64_t batch = std::min(rows, std::max<int64_t>(1, kTopkBatchElements / length));
  const at::ScalarType key_dtype = acc_dtype(input.scalar_type());
  const at::TensorOptions opts = input.options();
  at::Tensor keys = at::empty({batch * length}, opts.dtype(key_dtype));
  at::Tensor sorted_keys = at::empty_like(keys);
  at::Tensor cols = at::empty({batch * length}, opts.dtype(at::kInt));
  at::Tensor sorted_cols = at::empty_like(cols);
  at::Tensor offsets = at::arange(0, (batch + 1) * length, length, opts.dtype(at::kLong));
  at::Tensor temp;
  int64_t* out = rows_k.mutable_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "gumbel_sample_topk_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t r0 = 0; r0 < rows; r0 += batch) {
      const int64_t n = std::min(batch, rows - r0);
      cuda::perturbed_keys<scalar_t>(input.const_data_ptr<scalar_t>(), keys.mutable_data_ptr<acc_t>(),
                                     cols.mutable_data_ptr<int32_t>(), to_shape(layout), r0, n, rng, stream);
      size_t bytes = 0;
      cuda::sort_keys<acc_t>(nullptr, bytes, keys.const_data_ptr<acc_t>(), sorted_keys.mutable_data_ptr<acc_t>(),
                             cols.const_data_ptr<int32_t>(), sorted_cols.mutable_data_ptr<int32_t>(), n,
                             length, offsets.const_data_ptr<int64_t>(), stream);
      if (!temp.defined() || temp.numel() < static_cast<int64_t>(bytes)) {
        temp = at::empty({std::max<int64_t>(1, static_cast<int64_t>(bytes))}, opts.dtype(at::kByte));
      }
      cuda::sort_keys<acc_t>(temp.mutable_data_ptr(), bytes, keys.const_data_ptr<acc_t>(),
                             sorted_keys.mutable_data_ptr<acc_t>(), cols.const_data_ptr<int32_t>(),
                             sorted_cols.mutable_data_ptr<int32_t>(), n, length,
                             offsets.const_data_ptr<int64_t>(), stream);
      cuda::gather_topk(sorted_cols.const_data_ptr<int32_t>(), out + r0 * k, n, length, k, stream);
    }
  });
}

at::Tensor sample_cuda(const at::Tensor& logits, int64_t num_samples, int64_t dim,
                       std::optional<at::Generator> generator,
                       const std::optional<at::Tensor>& rng_state) {
  check_sample_args(logits, num_samples, dim, generator, rng_state);
  const c10::cuda::CUDAGuard guard(logits.device());
  const RowLayout layout = row_layout(logits, dim);
  if (layout.rows() == 0) {
    return at::empty(sample_shape(logits, dim, num_samples), logits.options().dtype(at::kLong));
  }
  at::Tensor rows_k = at::empty({layout.rows(), num_samples}, logits.options().dtype(at::kLong));
  const cuda::Rng rng = make_rng(logits, generator, rng_state, layout.length, nullptr);
  const at::Tensor input = logits.contiguous();
  const cudaStream_t stream = current_stream(logits);
  if (num_samples == 1) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "gumbel_sample_cuda", [&] {
      cuda::ForwardArgs<scalar_t> args;
      args.logits = input.const_data_ptr<scalar_t>();
      args.indices = rows_k.mutable_data_ptr<int64_t>();
      args.mode = cuda::Mode::kIndex;
      cuda::forward<scalar_t>(args, to_shape(layout), rng, stream);
    });
  } else {
    topk_cuda(input, rows_k, layout, rng, num_samples, stream);
  }
  return sample_from_rows(rows_k, logits, dim, layout, num_samples);
}

}  // namespace

TORCH_LIBRARY_IMPL(gumbel_ext, CUDA, m) {
  m.impl("gumbel_softmax_forward", &forward_cuda);
  m.impl("gumbel_softmax_backward", &backward_cuda);
  m.impl("gumbel_noise", &noise_cuda);
  m.impl("sample", &sample_cuda);
}

}  // namespace gumbel_ext
