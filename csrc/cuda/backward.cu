// Fused backward: dL/dlogit_c = y_c (g_c - sum_j g_j y_j) / tau, and per-row dL/dtau,
// in one kernel with the forward's strategy ladder. y is the saved soft output, or, in
// hard mode, y_soft regenerated from the logits and the saved (seed, offset) -- see
// Note [Regenerated y_soft] -- so nothing of the logits' size is kept between passes.
#include "backward_kernels.cuh"
#include "split_rows.h"
#include "launch_settings.h"

namespace gumbel_ext {
namespace cuda {
namespace {

// Calls f(std::bool_constant<args.grad_tau != nullptr>): the kernels take it as a template
// parameter, so the log of dL/dtau is compiled out when no tau gradient is wanted.
template <typename scalar_t, typename F>
void with_grad_tau(const BackwardArgs<scalar_t>& args, F&& f) {
  if (args.grad_tau != nullptr) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

template <typename scalar_t, int L>
void launch_warp_backward(const BackwardArgs<scalar_t>& args, int64_t rows, int length,
                          const Rng& rng, cudaStream_t stream) {
  const int64_t blocks = std::min(ceil_div(rows, warp_rows_per_block<L>()), kMaxGrid);
  const bool aligned = aligned_rows_copy_enabled() && warp_backward_aligned_copy(args, length);
  with_grad_tau(args, [&](auto grad_tau) {
    with_warp_rows_copy<scalar_t, L, 2>(aligned, [&](auto copy) {
      warp_backward_kernel<scalar_t, L, decltype(grad_tau)::value, decltype(copy)::value>
          <<<static_cast<unsigned>(blocks), kWarpRowThreads, 0, stream>>>(args, rows, length, rng);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int L = 0>
void warp_backward(int log2_chunks, const BackwardArgs<scalar_t>& args, int64_t rows, int length,
                   const Rng& rng, cudaStream_t stream) {
  if constexpr ((1 << L) * chunk_size<scalar_t>() > kMaxWarpRow) {
    TORCH_INTERNAL_ASSERT(false, "gumbel_ext: row too long for the warp kernel");
  } else {
    if (log2_chunks == L) {
      launch_warp_backward<scalar_t, L>(args, rows, length, rng, stream);
    } else {
      warp_backward<scalar_t, L + 1>(log2_chunks, args, rows, length, rng, stream);
    }
  }
}

template <typename scalar_t>
void block_backward(const BackwardArgs<scalar_t>& args, int64_t rows, int64_t length,
                    const Rng& rng, cudaStream_t stream) {
  const int64_t chunks = ceil_div(length, chunk_size<scalar_t>());
  const int threads = row_block_threads(chunks);
  const BackwardSmem smem = backward_smem<scalar_t>(args.hard, chunks, max_block_smem());
  with_grad_tau(args, [&](auto grad_tau) {
    constexpr bool kGradTau = decltype(grad_tau)::value;
    allow_dynamic_smem(block_backward_kernel<scalar_t, kGradTau>, smem.bytes);
    block_backward_kernel<scalar_t, kGradTau>
        <<<static_cast<unsigned>(std::min(rows, kMaxGrid)), threads, smem.bytes, stream>>>(
            args, rows, length, smem.keep_y, smem.keep_g, rng);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

template <typename scalar_t>
void backward(const BackwardArgs<scalar_t>& args, const Shape& shape, const Rng& rng,
              cudaStream_t stream) {
  constexpr int V = chunk_size<scalar_t>();
  TORCH_INTERNAL_ASSERT(!args.hard || rng.replay != nullptr, "gumbel_ext: hard backward needs rng_state");
  const int64_t rows = shape.rows(), length = shape.length;
  if (rows == 0 || length == 0) return;
  if (shape.inner > 1) {
    const SpatialLaunch launch = spatial_launch<scalar_t>(args.hard, shape, max_block_smem());
    with_grad_tau(args, [&](auto grad_tau) {
      constexpr bool kGradTau = decltype(grad_tau)::value;
      allow_dynamic_smem(spatial_backward_kernel<scalar_t, kGradTau>, launch.bytes);
      spatial_backward_kernel<scalar_t, kGradTau>
          <<<spatial_grid(shape, launch.block), launch.block, launch.bytes, stream>>>(args, shape, launch.keep_x, rng);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  if (length <= kMaxWarpRow) {
    warp_backward<scalar_t>(ceil_log2(ceil_div(length, V)), args, rows, static_cast<int>(length), rng,
                            stream);
  } else if (!split_backward<scalar_t>(args, rows, length, rng, stream)) {  // Note [Split rows]
    block_backward<scalar_t>(args, rows, length, rng, stream);
  }
}

template void backward<float>(const BackwardArgs<float>&, const Shape&, const Rng&, cudaStream_t);
template void backward<double>(const BackwardArgs<double>&, const Shape&, const Rng&, cudaStream_t);
template void backward<c10::Half>(const BackwardArgs<c10::Half>&, const Shape&, const Rng&, cudaStream_t);
template void backward<c10::BFloat16>(const BackwardArgs<c10::BFloat16>&, const Shape&, const Rng&,
                                      cudaStream_t);

}  // namespace cuda
}  // namespace gumbel_ext
