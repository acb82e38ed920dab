// Forward launchers: soft sample, exact one-hot, or Gumbel-max index (sample, k = 1).
// Strategy by layout and row length C (as ATen's softmax and apex's fused softmax):
//   inner == 1, C <= 1024: warp per row, the row in registers. 128-thread blocks; a row
//     of K chunks (4 columns for fp32/fp64, 8 for the half types; K padded to a power of
//     two) takes W = min(K, 32) lanes, so tiny rows pack 32 / W rows into a warp.
//   inner == 1, C >  1024: block per row, 128 .. 1024 threads (about four chunks each).
//     The soft path keeps x in shared memory when C * sizeof(acc) fits the device's
//     opt-in limit (227 KiB on H100: C <= ~57k), else its second pass regenerates x from
//     the logits and the Philox counter; max and sum come from one online pass.
//   inner == 1, C >= 8192, few rows or rows too long for one block's shared memory:
//     the row split across P blocks (split_rows.cu, Note [Split rows]), x on chip.
//   inner  > 1: 2-D blocks of <= 256 threads, x over inner (coalesced), y splitting the
//     row's 4-column Philox blocks; no transposed copy. The soft path keeps x in shared
//     memory, blockDim.x sized so that it fits (Note [Spatial launch]).
// 16-byte vector loads and stores for the whole chunks of every row whose pointers are
// aligned, decided row by row (Note [Per-row vector loads]); every offset is 64-bit. One-hot and index modes only need the argmax of
// x: no exp, nothing kept on chip.
#include "forward_kernels.cuh"
#include "split_rows.h"
#include "launch_settings.h"

namespace gumbel_ext {
namespace cuda {
namespace {

template <typename scalar_t, int L>
void launch_warp_forward(const ForwardArgs<scalar_t>& args, int64_t rows, int length,
                         const Rng& rng, cudaStream_t stream) {
  const int64_t blocks = std::min(ceil_div(rows, warp_rows_per_block<L>()), kMaxGrid);
  const bool aligned = aligned_rows_copy_enabled() && warp_forward_aligned_copy(args, length);
  with_warp_rows_copy<scalar_t, L, 1>(aligned, [&](auto copy) {
    warp_forward_kernel<scalar_t, L, decltype(copy)::value>
        <<<static_cast<unsigned>(blocks), kWarpRowThreads, 0, stream>>>(args, rows, length, rng);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int L = 0>
void warp_forward(int log2_chunks, const ForwardArgs<scalar_t>& args, int64_t rows, int length,
                  const Rng& rng, cudaStream_t stream) {
  if constexpr ((1 << L) * chunk_size<scalar_t>() > kMaxWarpRow) {
    TORCH_INTERNAL_ASSERT(false, "gumbel_ext: row too long for the warp kernel");
  } else {
    if (log2_chunks == L) {
      launch_warp_forward<scalar_t, L>(args, rows, length, rng, stream);
    } else {
      warp_forward<scalar_t, L + 1>(log2_chunks, args, rows, length, rng, stream);
    }
  }
}

template <typename scalar_t>
void block_forward(const ForwardArgs<scalar_t>& args, int64_t rows, int64_t length,
                   const Rng& rng, cudaStream_t stream) {
  const int64_t chunks = ceil_div(length, chunk_size<scalar_t>());
  const int threads = row_block_threads(chunks);
  const ForwardSmem smem = forward_smem<scalar_t>(args.mode, chunks, max_block_smem());
  allow_dynamic_smem(block_forward_kernel<scalar_t>, smem.bytes);
  block_forward_kernel<scalar_t><<<static_cast<unsigned>(std::min(rows, kMaxGrid)), threads, smem.bytes, stream>>>(
      args, rows, length, smem.keep_x, rng);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

template <typename scalar_t>
void forward(const ForwardArgs<scalar_t>& args, const Shape& shape, const Rng& rng,
             cudaStream_t stream) {
  constexpr int V = chunk_size<scalar_t>();
  const int64_t rows = shape.rows(), length = shape.length;
  if (rows == 0 || length == 0) return;
  if (shape.inner > 1) {
    const SpatialLaunch launch = spatial_launch<scalar_t>(args.mode == Mode::kSoft, shape, max_block_smem());
    allow_dynamic_smem(spatial_forward_kernel<scalar_t>, launch.bytes);
    spatial_forward_kernel<scalar_t><<<spatial_grid(shape, launch.block), launch.block, launch.bytes, stream>>>(
        args, shape, launch.keep_x, rng);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  if (length <= kMaxWarpRow) {
    warp_forward<scalar_t>(ceil_log2(ceil_div(length, V)), args, rows, static_cast<int>(length), rng,
                           stream);
  } else if (!split_forward<scalar_t>(args, rows, length, rng, stream)) {  // Note [Split rows]
    block_forward<scalar_t>(args, rows, length, rng, stream);
  }
}

template void forward<float>(const ForwardArgs<float>&, const Shape&, const Rng&, cudaStream_t);
template void forward<double>(const ForwardArgs<double>&, const Shape&, const Rng&, cudaStream_t);
template void forward<c10::Half>(const ForwardArgs<c10::Half>&, const Shape&, const Rng&, cudaStream_t);
template void forward<c10::BFloat16>(const ForwardArgs<c10::BFloat16>&, const Shape&, const Rng&,
                                     cudaStream_t);

}  // namespace cuda
}  // namespace gumbel_ext
