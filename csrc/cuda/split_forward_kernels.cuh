// Forward of rows split across P blocks (Note [Split rows] in split_rows.cuh): soft
// sample, exact one-hot, or Gumbel-max index. kCluster: the exchange through a
// thread-block cluster (sm_90) or a global workspace (sm_80). In a header so that the
// CPU emulation test (tests/emulation) runs exactly this code.
#pragma once

#include "forward_kernels.cuh"
#include "split_rows.cuh"

namespace gumbel_ext {
namespace cuda {

// Block b of the grid works on slice b % P of rows b / P, b / P + gridDim.x / P, ...
// Dynamic shared memory: kSplitXsOffset bytes, plus the slice's x (acc_t) in soft mode.
template <typename scalar_t, bool kCluster>
__global__ void __launch_bounds__(kSplitThreads, kSplitBlocksPerSM)
    split_forward_kernel(ForwardArgs<scalar_t> args, int64_t rows, int64_t length, SplitShape split,
                         SplitWorkspace ws, Rng rng) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = chunk_size<scalar_t>();
  constexpr int kU = chunks_in_flight<acc_t, V>();
  unsigned char* smem = dynamic_smem();
  void* scratch = smem;
  acc_t* xs = reinterpret_cast<acc_t*>(smem + kSplitXsOffset);
  SplitExchange<kCluster> ex(split.parts, smem, ws);
  uint64_t seed, offset;
  seed_offset(rng, seed, offset);
  const int64_t chunks = ceil_div(length, V);
  const Slice sl(split, ex.part, chunks);
  const Mode mode = GUMBEL_RUNTIME(args.mode, static_cast<Mode>(GUMBEL_EXT_SASS_MODE));
  for (int64_t r = ex.first_row(); r < rows; r += ex.row_stride()) {
    const scalar_t* row = args.logits + r * length;
    // 16-byte accesses for this row? (Note [Per-row vector loads]; out is null in index mode)
    const bool aligned = row_vectorizable<scalar_t>(r * length, args.logits, args.out);
    if (mode == Mode::kSoft) {
      const acc_t scale = exp2_scale(row_inv_tau(args.tau_rows, args.inv_tau, r));
      const MaxSum<acc_t> part = slice_stats<V>(row, length, sl, aligned, seed, offset, r, scale, xs, scratch);
      const SoftRow<acc_t> soft(ex.all_reduce(part, MaxSumExp2Op<acc_t>{scale}), scale);
      scalar_t* out = args.out + r * length;
      // The chunks this thread kept, in the order it kept them: x comes back from its own
      // shared-memory writes, no barrier needed.
      for (int64_t k0 = sl.first + threadIdx.x; k0 < sl.end; k0 += kU * int64_t{blockDim.x}) {
        acc_t x[kU][V];
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const int64_t k = k0 + u * int64_t{blockDim.x};
          if (k < sl.end) smem_load_chunk<V>(xs, k - sl.first, x[u]);
        }
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const int64_t k = k0 + u * int64_t{blockDim.x};
          if (k >= sl.end) break;
#pragma unroll
          for (int i = 0; i < V; ++i) x[u][i] = soft(x[u][i]);
          store_chunk<V>(out, k * V, length, aligned, x[u]);
        }
      }
      continue;
    }
    const ArgMax<acc_t> part = block_argmax<V>(row, sl.first, sl.end, length, aligned, seed, offset, r, scratch);
    const ArgMax<acc_t> best = ex.all_reduce(part, ArgMaxOp());
    if (mode == Mode::kIndex) {
      if (ex.part == 0 && threadIdx.x == 0) args.indices[r] = best.i;
      continue;
    }
    const OneHot<acc_t> one_hot(is_finite(best.v));
    scalar_t* out = args.out + r * length;
    for (int64_t k = sl.first + threadIdx.x; k < sl.end; k += blockDim.x) {
      acc_t y[V];
      one_hot_chunk(k * V, best.i, one_hot, y);
      store_chunk<V>(out, k * V, length, aligned, y);
    }
  }
  ex.finish();
}

}  // namespace cuda
}  // namespace gumbel_ext
