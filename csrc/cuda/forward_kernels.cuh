// Forward kernels: soft sample, exact one-hot, or Gumbel-max index (sample, k = 1), one
// per strategy (see forward.cu for the ladder). In a header so that the CPU emulation
// test (tests/emulation) runs exactly this code.
#pragma once

#include "rows.cuh"

namespace gumbel_ext {
namespace cuda {


// The one-hot of column `arg`, or NaN everywhere when the row's max is not finite: the
// two values are picked once per row, so an element costs one compare and one select
// (index_t: int where the row length fits, so the compare is 32-bit).
template <typename acc_t>
struct OneHot {
  acc_t hit, miss;
  __device__ __forceinline__ explicit OneHot(bool finite)
      : hit(finite ? acc_t(1) : quiet_nan<acc_t>()), miss(finite ? acc_t(0) : quiet_nan<acc_t>()) {}
};

template <typename acc_t, int V, typename index_t>
__device__ __forceinline__ void one_hot_chunk(index_t c0, index_t arg, const OneHot<acc_t>& oh, acc_t (&v)[V]) {
#pragma unroll
  for (int i = 0; i < V; ++i) v[i] = c0 + i == arg ? oh.hit : oh.miss;
}

// The one-hot's next chunk as a realigned store of a misaligned row needs it (Note
// [Misaligned rows]): computed here, no shuffle.
template <typename scalar_t, typename acc_t, typename index_t>
__device__ __forceinline__ NextChunk<scalar_t> one_hot_next(index_t c0, index_t arg, const OneHot<acc_t>& oh) {
  constexpr int V = chunk_size<scalar_t>();
  NextChunk<scalar_t> next{};
  next.have = true;
  if constexpr (sizeof(scalar_t) <= 4) {  // fp64 stores need no neighbour
    acc_t y[V];
    one_hot_chunk(c0, arg, oh, y);
    uint32_t w[chunk_words<scalar_t, V>()];
    to_words<scalar_t, V>(y, w);
#pragma unroll
    for (int i = 0; i < next_words<scalar_t>(); ++i) next.w[i] = w[i];
  }
  return next;
}

// ------------------------------------------------------------------- warp per row
// kAlignedRows: Note [Warp kernels' occupancy] in rows.cuh.
template <typename scalar_t, int kLog2Chunks, bool kAlignedRows>
__global__ void __launch_bounds__(kWarpRowThreads, warp_row_blocks_per_sm<scalar_t, kLog2Chunks, 1, kAlignedRows>())
    warp_forward_kernel(ForwardArgs<scalar_t> args, int64_t rows, int length, Rng rng) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = chunk_size<scalar_t>();
  constexpr int K = 1 << kLog2Chunks;              // chunks per row, padded to a power of 2
  constexpr int W = K < kWarpSize ? K : kWarpSize;  // lanes per row
  constexpr int J = K / W;                          // chunks per lane
  constexpr int R = kWarpSize / W;                  // rows per warp
  uint64_t seed, offset;
  seed_offset(rng, seed, offset);
  const int lane = threadIdx.x % kWarpSize;
  const int64_t rows_per_block = int64_t{blockDim.x / kWarpSize} * R;
  const int64_t my_row = threadIdx.x / kWarpSize * R + lane / W;
  for (int64_t base = blockIdx.x * rows_per_block; base < rows; base += gridDim.x * rows_per_block) {
    int lw = lane % W;  // see loop_variant
    if constexpr (warp_row_blocks_per_sm<scalar_t, kLog2Chunks, 1, kAlignedRows>() == 8) lw = loop_variant(lw);
    // Rows past the end still take part in the shuffles, as empty rows.
    const int64_t r = base + my_row;
    const bool valid = r < rows;
    const scalar_t* row = args.logits + (valid ? r : 0) * length;
    // Where the row sits on the 16-byte grid, per tensor (Note [Misaligned rows]; out's
    // where it is stored, out is null in index mode).
    const RowAlignment in_a = warp_row_alignment<kAlignedRows, scalar_t>((valid ? r : 0) * length, args.logits);
    acc_t x[J][V];
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int c0 = (j * W + lw) * V;
      if (valid && c0 < length) {
        perturbed_chunk<V>(row, c0, length, in_a, seed, offset, r, x[j]);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) x[j][i] = neg_inf<acc_t>();
      }
    }
    if (GUMBEL_RUNTIME(args.mode, static_cast<Mode>(GUMBEL_EXT_SASS_MODE)) == Mode::kSoft) {
      const acc_t inv_tau = valid ? row_inv_tau(args.tau_rows, args.inv_tau, r) : acc_t(1);
      const acc_t inv_sum = softmax_registers<W>(x, inv_tau);
      // Misaligned rows store realigned vectors, with the next chunk's words by shuffles
      // (every lane takes part, rows past the end too).
      const RowAlignment out_a = warp_row_alignment<kAlignedRows, scalar_t>((valid ? r : 0) * length, args.out);
      const bool misaligned = !kAlignedRows && warp_any_misaligned(out_a);
      scalar_t* out = args.out + (valid ? r : 0) * length;
#pragma unroll
      for (int j = 0; j < J; ++j) {
        const int c0 = (j * W + lw) * V;
        const NextChunk<scalar_t> next =
            next_chunk_words<scalar_t, W>(x, j, lw, misaligned, [inv_sum](acc_t e) { return e * inv_sum; });
        if (!valid || c0 >= length) continue;
        acc_t y[V];
#pragma unroll
        for (int i = 0; i < V; ++i) y[i] = x[j][i] * inv_sum;
        store_chunk<V>(out, c0, length, out_a, y, next, true);
      }
      continue;
    }
    // Columns past the row hold -inf and never win a strict >.
    acc_t best_v = neg_inf<acc_t>();
    int best_c = lw * V;
#pragma unroll
    for (int j = 0; j < J; ++j)
#pragma unroll
      for (int i = 0; i < V; ++i) argmax_step(best_v, best_c, x[j][i], (j * W + lw) * V + i);
    const ArgMax<acc_t> best = warp_allreduce<W>(ArgMax<acc_t>{best_v, best_c}, ArgMaxOp());
    if (!valid) continue;
    if (GUMBEL_RUNTIME(args.mode, static_cast<Mode>(GUMBEL_EXT_SASS_MODE)) == Mode::kIndex) {
      if (lw == 0) args.indices[r] = best.i;
      continue;
    }
    const OneHot<acc_t> one_hot(is_finite(best.v));
    const int arg = static_cast<int>(best.i);  // < length <= kMaxWarpRow
    scalar_t* out = args.out + r * length;
    const RowAlignment out_a = warp_row_alignment<kAlignedRows, scalar_t>(r * length, args.out);
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int c0 = (j * W + lw) * V;
      if (c0 >= length) continue;
      acc_t y[V];
      one_hot_chunk(c0, arg, one_hot, y);
      store_chunk<V>(out, c0, length, out_a, y, one_hot_next<scalar_t>(c0 + V, arg, one_hot), true);
    }
  }
}

// ------------------------------------------------------------------ block per row
template <typename scalar_t>
__global__ void __launch_bounds__(kMaxBlockThreads)
    block_forward_kernel(ForwardArgs<scalar_t> args, int64_t rows, int64_t length, bool keep_x, Rng rng) {
  keep_x = GUMBEL_RUNTIME(keep_x, GUMBEL_EXT_SASS_KEEP != 0);
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = chunk_size<scalar_t>();
  __shared__ __align__(16) unsigned char scratch[kScratchBytes];
  acc_t* xs = keep_x ? reinterpret_cast<acc_t*>(dynamic_smem()) : nullptr;
  uint64_t seed, offset;
  seed_offset(rng, seed, offset);
  const int64_t chunks = ceil_div(length, V);
  constexpr int kU = chunks_in_flight<acc_t, V>();  // chunks per thread in flight
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const scalar_t* row = args.logits + r * length;
    // Where the row sits on the 16-byte grid, per tensor (Note [Misaligned rows]; out is
    // null in index mode).
    const auto in_a = block_load_alignment<scalar_t>(r * length, args.logits);
    const RowAlignment out_a = row_alignment<scalar_t>(r * length, args.out);
    if (GUMBEL_RUNTIME(args.mode, static_cast<Mode>(GUMBEL_EXT_SASS_MODE)) == Mode::kSoft) {
      const acc_t scale = exp2_scale(row_inv_tau(args.tau_rows, args.inv_tau, r));
      const SoftRow<acc_t> soft(block_stats<V>(row, length, in_a, seed, offset, r, scale, keep_x, xs, scratch), scale);
      scalar_t* out = args.out + r * length;
      for (int64_t k0 = threadIdx.x; k0 < chunks; k0 += kU * int64_t{blockDim.x}) {
        acc_t x[kU][V];
        if (keep_x) {
#pragma unroll
          for (int u = 0; u < kU; ++u) {
            const int64_t k = k0 + u * int64_t{blockDim.x};
            if (k < chunks) smem_load_chunk<V>(xs, k, x[u]);
          }
        } else {
          perturbed_chunks<kU>(row, k0, blockDim.x, chunks, length, in_a, seed, offset, r, x);
        }
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const int64_t k = k0 + u * int64_t{blockDim.x};
          if (k >= chunks) break;
#pragma unroll
          for (int i = 0; i < V; ++i) x[u][i] = soft(x[u][i]);
          // (a misaligned row's stores go column by column here: Note [Misaligned rows])
          store_chunk<V>(out, k * V, length, out_a, x[u]);
        }
      }
      continue;
    }
    const ArgMax<acc_t> best = block_argmax<V>(row, 0, chunks, length, in_a, seed, offset, r, scratch);
    if (GUMBEL_RUNTIME(args.mode, static_cast<Mode>(GUMBEL_EXT_SASS_MODE)) == Mode::kIndex) {
      if (threadIdx.x == 0) args.indices[r] = best.i;
      continue;
    }
    const OneHot<acc_t> one_hot(is_finite(best.v));
    scalar_t* out = args.out + r * length;
    for (int64_t k = threadIdx.x; k < chunks; k += blockDim.x) {
      acc_t y[V];
      one_hot_chunk(k * V, best.i, one_hot, y);
      store_chunk<V>(out, k * V, length, out_a, y, one_hot_next<scalar_t>(k * V + V, best.i, one_hot), true);
    }
  }
}

// ------------------------------------------------------------ parallel over inner
// Note [Spatial launch]: `keep_x` when the block's x fits in its dynamic shared memory.
template <typename scalar_t>
__global__ void __launch_bounds__(kSpatialThreads)
    spatial_forward_kernel(ForwardArgs<scalar_t> args, Shape shape, bool keep_x, Rng rng) {
  keep_x = GUMBEL_RUNTIME(keep_x, GUMBEL_EXT_SASS_KEEP != 0);
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ __align__(16) unsigned char scratch[kScratchBytes];
  acc_t* xs = keep_x ? reinterpret_cast<acc_t*>(dynamic_smem()) : nullptr;
  uint64_t seed, offset;
  seed_offset(rng, seed, offset);
  const int64_t length = shape.length, inner = shape.inner;
  for (int64_t o = blockIdx.y; o < shape.outer; o += gridDim.y) {
    for (int64_t i0 = int64_t{blockIdx.x} * blockDim.x; i0 < inner; i0 += int64_t{gridDim.x} * blockDim.x) {
      const int64_t i = i0 + threadIdx.x;
      const bool valid = i < inner;
      const int64_t r = o * inner + i;
      const int64_t start = o * length * inner + i;
      const scalar_t* row = args.logits + (valid ? start : 0);
      if (GUMBEL_RUNTIME(args.mode, static_cast<Mode>(GUMBEL_EXT_SASS_MODE)) == Mode::kSoft) {
        const acc_t scale = exp2_scale(valid ? row_inv_tau(args.tau_rows, args.inv_tau, r) : acc_t(1));
        const SoftRow<acc_t> soft(spatial_stats(row, inner, length, valid, seed, offset, r, scale, keep_x, xs, scratch), scale);
        if (!valid) continue;
        scalar_t* out = args.out + start;
        for_each_quad(inner, length, [&](int64_t q, int64_t off, auto whole) {
          constexpr bool kWhole = decltype(whole)::value;
          acc_t x[4];
          spatial_quad_again<kWhole>(row + off, inner, q, length, seed, offset, r, keep_x, xs, x);
#pragma unroll
          for (int j = 0; j < 4; ++j)
            if (kWhole || 4 * q + j < length) out[off + j * inner] = static_cast<scalar_t>(soft(x[j]));
        });
        continue;
      }
      // Columns past the row hold -inf and never win a strict >.
      acc_t best_v = neg_inf<acc_t>();
      int64_t best_c = valid ? 4 * int64_t{threadIdx.y} : INT64_MAX;
      if (valid) {
        for_each_quad(inner, length, [&](int64_t q, int64_t off, auto whole) {
          acc_t x[4];
          perturbed_quad<decltype(whole)::value>(row + off, inner, q, length, seed, offset, r, x);
          // The quad's winner by a 32-bit index, folded into the 64-bit one once per quad.
          int hit = -1;
#pragma unroll
          for (int j = 0; j < 4; ++j) argmax_step(best_v, hit, x[j], j);
          if (hit >= 0) best_c = 4 * q + hit;
        });
      }
      const ArgMax<acc_t> best = column_allreduce(ArgMax<acc_t>{best_v, best_c}, ArgMaxOp(), scratch);
      if (!valid) continue;
      if (GUMBEL_RUNTIME(args.mode, static_cast<Mode>(GUMBEL_EXT_SASS_MODE)) == Mode::kIndex) {
        if (threadIdx.y == 0) args.indices[r] = best.i;
        continue;
      }
      const OneHot<acc_t> one_hot(is_finite(best.v));
      const scalar_t hit = static_cast<scalar_t>(one_hot.hit), miss = static_cast<scalar_t>(one_hot.miss);
      scalar_t* out = args.out + start;
      for_each_quad(inner, length, [&](int64_t q, int64_t off, auto whole) {
        // The winner's place in this quad, or -1: one 64-bit compare per quad, a 32-bit one per column.
        const int64_t d = best.i - 4 * q;
        const int hit_j = static_cast<uint64_t>(d) < 4 ? static_cast<int>(d) : -1;
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (decltype(whole)::value || 4 * q + j < length) out[off + j * inner] = hit_j == j ? hit : miss;
      });
    }
  }
}

}  // namespace cuda
}  // namespace gumbel_ext
