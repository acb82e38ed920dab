// Backward of rows split across P blocks (Note [Split rows] in split_rows.cuh). One
// kernel for both modes, so that the soft and the straight-through gradients sum
// sum_c g_c y_c in the same order and come out equal bit for bit:
//   - soft: y is the saved soft output, read from global memory in both passes (as the
//     block-per-row soft backward does; nothing kept on chip);
//   - hard: y_soft is regenerated exactly as split_forward_kernel computes it -- the
//     same slices, block reduction, exchange order and rounding (Note [Regenerated
//     y_soft]) -- and kept in shared memory for the second pass: its noise is drawn once.
// Exchanges per row: the row statistics (hard only), sum g y, and sum log(y) dz for
// the tau gradient (kGradTau only).
#pragma once

#include "backward_kernels.cuh"
#include "split_rows.cuh"

namespace gumbel_ext {
namespace cuda {

template <typename scalar_t, bool kGradTau, bool kCluster>
__global__ void __launch_bounds__(kSplitThreads, kSplitBlocksPerSM)
    split_backward_kernel(BackwardArgs<scalar_t> args, int64_t rows, int64_t length, SplitShape split,
                          SplitWorkspace ws, Rng rng) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = chunk_size<scalar_t>();
  unsigned char* smem = dynamic_smem();
  void* scratch = smem;
  acc_t* ys = reinterpret_cast<acc_t*>(smem + kSplitXsOffset);  // hard: x, then y_soft
  SplitExchange<kCluster> ex(split.parts, smem, ws);
  const bool hard = GUMBEL_RUNTIME(args.hard, GUMBEL_EXT_SASS_MODE != 0);
  uint64_t seed = 0, offset = 0;
  if (hard) seed_offset(rng, seed, offset);
  const int64_t chunks = ceil_div(length, V);
  const Slice sl(split, ex.part, chunks);
  for (int64_t r = ex.first_row(); r < rows; r += ex.row_stride()) {
    const int64_t start = r * length;
    // 16-byte accesses for this row? (Note [Per-row vector loads])
    const bool aligned = row_vectorizable<scalar_t>(start, args.grad, args.saved, args.grad_logits);
    const acc_t inv_tau = row_inv_tau(args.tau_rows, args.inv_tau, r);
    const acc_t scale = exp2_scale(inv_tau);
    MaxSum<acc_t> st = max_sum_identity<acc_t>();
    if (hard) {
      const MaxSum<acc_t> part = slice_stats<V>(args.saved + start, length, sl, aligned, seed, offset, r, scale,
                                                ys, scratch);
      st = ex.all_reduce(part, MaxSumExp2Op<acc_t>{scale});
    }
    const SoftRow<acc_t> soft(st, scale);
    // y of chunk k in the first pass: the stored soft output, or y_soft from the x that
    // slice_stats kept (this thread's own chunks), rounded as the forward stores it.
    auto first_y = [&](int64_t k, acc_t (&y)[V]) {
      if (!hard) {
        load_chunk<V>(args.saved + start, k * V, length, aligned, y, acc_t(0));
        return;
      }
      smem_load_chunk<V>(ys, k - sl.first, y);
#pragma unroll
      for (int i = 0; i < V; ++i) y[i] = k * V + i < length ? as_stored<scalar_t>(soft(y[i])) : acc_t(0);
    };
    acc_t dot = 0;
    for (int64_t k = sl.first + threadIdx.x; k < sl.end; k += blockDim.x) {
      acc_t y[V], g[V];
      first_y(k, y);
      load_chunk<V>(args.grad + start, k * V, length, aligned, g, acc_t(0));
      if (hard) smem_store_chunk<V>(ys, k - sl.first, y);
#pragma unroll
      for (int i = 0; i < V; ++i) dot += g[i] * y[i];
    }
    dot = ex.all_reduce(block_allreduce(dot, SumOp(), acc_t(0), scratch), SumOp());
    acc_t tau_sum = 0;
    for (int64_t k = sl.first + threadIdx.x; k < sl.end; k += blockDim.x) {
      acc_t y[V], g[V], out[V];
      if (hard) {
        smem_load_chunk<V>(ys, k - sl.first, y);
      } else {
        load_chunk<V>(args.saved + start, k * V, length, aligned, y, acc_t(0));
      }
      load_chunk<V>(args.grad + start, k * V, length, aligned, g, acc_t(0));
#pragma unroll
      for (int i = 0; i < V; ++i) tau_sum += grad_element<kGradTau>(y[i], g[i], dot, inv_tau, out[i]);
      store_chunk<V>(args.grad_logits + start, k * V, length, aligned, out);
    }
    if constexpr (kGradTau) {
      tau_sum = ex.all_reduce(block_allreduce(tau_sum, SumOp(), acc_t(0), scratch), SumOp());
      if (ex.part == 0 && threadIdx.x == 0) args.grad_tau[r] = -inv_tau * tau_sum;
    }
  }
  ex.finish();
}

}  // namespace cuda
}  // namespace gumbel_ext
