// Fused backward kernels, one per strategy (see backward.cu). In a header so that the
// CPU emulation test (tests/emulation) runs exactly this code.
#pragma once

#include "rows.cuh"

namespace gumbel_ext {
namespace cuda {

// y rounded through the output dtype, as the soft forward stores it.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t as_stored(acc_t y) {
  return static_cast<acc_t>(static_cast<scalar_t>(y));
}

// dz = y (g - dot); writes dz / tau and returns log(y) * dz (0 where y == 0), the
// element's share of sum_c z_c dL/dz_c (see the CPU backward). kGradTau is a template
// parameter of the kernels: without a tau gradient there is no log at all.
template <bool kGradTau, typename acc_t>
__device__ __forceinline__ acc_t grad_element(acc_t y, acc_t g, acc_t dot, acc_t inv_tau, acc_t& out) {
  const acc_t dz = y * (g - dot);
  out = dz * inv_tau;
  if constexpr (kGradTau) {
    return y > acc_t(0) ? acc_log(y) * dz : acc_t(0);
  } else {
    return acc_t(0);
  }
}

// ------------------------------------------------------------------- warp per row
// kAlignedRows: Note [Warp kernels' occupancy] in rows.cuh.
template <typename scalar_t, int kLog2Chunks, bool kGradTau, bool kAlignedRows>
__global__ void __launch_bounds__(kWarpRowThreads, warp_row_blocks_per_sm<scalar_t, kLog2Chunks, 2, kAlignedRows>())
    warp_backward_kernel(BackwardArgs<scalar_t> args, int64_t rows, int length, Rng rng) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = chunk_size<scalar_t>();
  constexpr int K = 1 << kLog2Chunks;
  constexpr int W = K < kWarpSize ? K : kWarpSize;
  constexpr int J = K / W;
  constexpr int R = kWarpSize / W;
  uint64_t seed = 0, offset = 0;
  if (GUMBEL_RUNTIME(args.hard, GUMBEL_EXT_SASS_MODE != 0)) seed_offset(rng, seed, offset);
  const int lane = threadIdx.x % kWarpSize;
  const int64_t rows_per_block = int64_t{blockDim.x / kWarpSize} * R;
  const int64_t my_row = threadIdx.x / kWarpSize * R + lane / W;
  for (int64_t base = blockIdx.x * rows_per_block; base < rows; base += gridDim.x * rows_per_block) {
    int lw = lane % W;  // see loop_variant
    if constexpr (warp_row_blocks_per_sm<scalar_t, kLog2Chunks, 2, kAlignedRows>() == 8) lw = loop_variant(lw);
    const int64_t r = base + my_row;
    const bool valid = r < rows;
    const int64_t start = (valid ? r : 0) * length;
    const acc_t inv_tau = valid ? row_inv_tau(args.tau_rows, args.inv_tau, r) : acc_t(1);
    // Where the row sits on the 16-byte grid, per tensor (Note [Misaligned rows]), each
    // taken where it is used: live across the divisions' calls, they spilled.
    const RowAlignment grad_a = warp_row_alignment<kAlignedRows, scalar_t>(start, args.grad);
    const RowAlignment saved_a = warp_row_alignment<kAlignedRows, scalar_t>(start, args.saved);
    acc_t y[J][V], g[J][V];
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int c0 = (j * W + lw) * V;
      const bool here = valid && c0 < length;
      if (here) {
        load_chunk<V>(args.grad + start, c0, length, grad_a, g[j], acc_t(0));
        if (GUMBEL_RUNTIME(args.hard, GUMBEL_EXT_SASS_MODE != 0)) {
          perturbed_chunk<V>(args.saved + start, c0, length, saved_a, seed, offset, r, y[j]);
        } else {
          load_chunk<V>(args.saved + start, c0, length, saved_a, y[j], acc_t(0));
        }
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) {
          g[j][i] = acc_t(0);
          y[j][i] = GUMBEL_RUNTIME(args.hard, GUMBEL_EXT_SASS_MODE != 0) ? neg_inf<acc_t>() : acc_t(0);
        }
      }
    }
    if (GUMBEL_RUNTIME(args.hard, GUMBEL_EXT_SASS_MODE != 0)) {
      const acc_t inv_sum = softmax_registers<W>(y, inv_tau);
#pragma unroll
      for (int j = 0; j < J; ++j)
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const bool real = (j * W + lw) * V + i < length;
          y[j][i] = real ? as_stored<scalar_t>(y[j][i] * inv_sum) : acc_t(0);
        }
    }
    acc_t dot = 0;
#pragma unroll
    for (int j = 0; j < J; ++j)
#pragma unroll
      for (int i = 0; i < V; ++i) dot += g[j][i] * y[j][i];
    dot = warp_allreduce<W>(dot, SumOp());
    acc_t tau_sum = 0;
    acc_t out[J][V];
#pragma unroll
    for (int j = 0; j < J; ++j)
#pragma unroll
      for (int i = 0; i < V; ++i) tau_sum += grad_element<kGradTau>(y[j][i], g[j][i], dot, inv_tau, out[j][i]);
    // Misaligned rows store realigned vectors, with the next chunk's words by shuffles.
    const RowAlignment out_a = warp_row_alignment<kAlignedRows, scalar_t>(start, args.grad_logits);
    const bool misaligned = !kAlignedRows && warp_any_misaligned(out_a);
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int c0 = (j * W + lw) * V;
      const NextChunk<scalar_t> next = next_chunk_words<scalar_t, W>(out, j, lw, misaligned, [](acc_t v) { return v; });
      if (valid && c0 < length) store_chunk<V>(args.grad_logits + start, c0, length, out_a, out[j], next, true);
    }
    if constexpr (kGradTau) {
      tau_sum = warp_allreduce<W>(tau_sum, SumOp());
      if (valid && lw == 0) args.grad_tau[r] = -inv_tau * tau_sum;
    }
  }
}

// ------------------------------------------------------------------ block per row
// Shared memory (each optional, decided by what fits; chunk k at k * V, see
// smem_store_chunk): ys, acc_t, holds x and then y; gs, scalar_t, holds the incoming
// gradient. What is not kept is
// read (or regenerated) again in the second pass.
template <typename scalar_t, bool kGradTau>
__global__ void __launch_bounds__(kMaxBlockThreads)
    block_backward_kernel(BackwardArgs<scalar_t> args, int64_t rows, int64_t length, bool keep_y,
                          bool keep_g, Rng rng) {
  // The probe keeps what backward_smem would: nothing for the soft backward.
  keep_y = GUMBEL_RUNTIME(keep_y, GUMBEL_EXT_SASS_KEEP != 0 && GUMBEL_EXT_SASS_MODE != 0);
  keep_g = GUMBEL_RUNTIME(keep_g, GUMBEL_EXT_SASS_KEEP != 0 && GUMBEL_EXT_SASS_MODE != 0);
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = chunk_size<scalar_t>();
  __shared__ __align__(16) unsigned char scratch[kScratchBytes];
  const int64_t chunks = ceil_div(length, V);
  acc_t* ys = keep_y ? reinterpret_cast<acc_t*>(dynamic_smem()) : nullptr;
  scalar_t* gs = keep_g ? reinterpret_cast<scalar_t*>(dynamic_smem() + (keep_y ? chunks * V * sizeof(acc_t) : 0))
                        : nullptr;
  uint64_t seed = 0, offset = 0;
  if (GUMBEL_RUNTIME(args.hard, GUMBEL_EXT_SASS_MODE != 0)) seed_offset(rng, seed, offset);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t start = r * length;
    // 16-byte accesses for this row? (Note [Per-row vector loads]; a misaligned row goes
    // column by column here: its realigned loads and shuffled stores cost more SASS per
    // element than the scalar accesses -- Note [Misaligned rows])
    const bool aligned = row_vectorizable<scalar_t>(start, args.grad, args.saved, args.grad_logits);
    const acc_t inv_tau = row_inv_tau(args.tau_rows, args.inv_tau, r);
    MaxSum<acc_t> st = max_sum_identity<acc_t>();
    if (GUMBEL_RUNTIME(args.hard, GUMBEL_EXT_SASS_MODE != 0)) {
      st = block_stats<V>(args.saved + start, length, aligned, seed, offset, r, exp2_scale(inv_tau), keep_y, ys,
                          scratch);
    }
    const SoftRow<acc_t> soft(st, exp2_scale(inv_tau));
    // y of chunk k; `from_ys` when ys holds y already (second pass).
    auto load_y = [&](int64_t k, acc_t (&y)[V], bool from_ys) {
      if (from_ys) {
        smem_load_chunk<V>(ys, k, y);
        return;
      }
      if (!GUMBEL_RUNTIME(args.hard, GUMBEL_EXT_SASS_MODE != 0)) {
        load_chunk<V>(args.saved + start, k * V, length, aligned, y, acc_t(0));
        return;
      }
      if (keep_y) {
        smem_load_chunk<V>(ys, k, y);  // x, from block_stats
      } else {
        perturbed_chunk<V>(args.saved + start, k * V, length, aligned, seed, offset, r, y);
      }
#pragma unroll
      for (int i = 0; i < V; ++i) y[i] = k * V + i < length ? as_stored<scalar_t>(soft(y[i])) : acc_t(0);
    };
    auto load_g = [&](int64_t k, acc_t (&g)[V], bool from_gs) {
      if (from_gs) {
        smem_load_chunk<V>(gs, k, g);
      } else {
        load_chunk<V>(args.grad + start, k * V, length, aligned, g, acc_t(0));
      }
    };
    acc_t dot = 0;
    for (int64_t k = threadIdx.x; k < chunks; k += blockDim.x) {
      acc_t y[V], g[V];
      load_y(k, y, false);
      load_g(k, g, false);
      if (keep_y) smem_store_chunk<V>(ys, k, y);
      if (keep_g) smem_store_chunk<V>(gs, k, g);
#pragma unroll
      for (int i = 0; i < V; ++i) dot += g[i] * y[i];
    }
    dot = block_allreduce(dot, SumOp(), acc_t(0), scratch);
    acc_t tau_sum = 0;
    for (int64_t k = threadIdx.x; k < chunks; k += blockDim.x) {
      acc_t y[V], g[V], out[V];
      load_y(k, y, keep_y);
      load_g(k, g, keep_g);
#pragma unroll
      for (int i = 0; i < V; ++i) tau_sum += grad_element<kGradTau>(y[i], g[i], dot, inv_tau, out[i]);
      store_chunk<V>(args.grad_logits + start, k * V, length, aligned, out);
    }
    if constexpr (kGradTau) {
      tau_sum = block_allreduce(tau_sum, SumOp(), acc_t(0), scratch);
      if (threadIdx.x == 0) args.grad_tau[r] = -inv_tau * tau_sum;
    }
  }
}

// ------------------------------------------------------------ parallel over inner
// fp64 asks for one block per SM: left to its default, ptxas held the fp64 kernel that
// takes the tau gradient (a double log and exp2 per element) to 80 registers and spilled.
template <typename scalar_t>
constexpr int spatial_backward_min_blocks() {
  return std::is_same_v<scalar_t, double> ? 1 : 0;
}

template <typename scalar_t, bool kGradTau>
__global__ void __launch_bounds__(kSpatialThreads, spatial_backward_min_blocks<scalar_t>())
    spatial_backward_kernel(BackwardArgs<scalar_t> args, Shape shape, bool keep_x, Rng rng) {
  keep_x = GUMBEL_RUNTIME(keep_x, GUMBEL_EXT_SASS_KEEP != 0 && GUMBEL_EXT_SASS_MODE != 0);
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ __align__(16) unsigned char scratch[kScratchBytes];
  acc_t* xs = keep_x ? reinterpret_cast<acc_t*>(dynamic_smem()) : nullptr;
  uint64_t seed = 0, offset = 0;
  if (GUMBEL_RUNTIME(args.hard, GUMBEL_EXT_SASS_MODE != 0)) seed_offset(rng, seed, offset);
  const int64_t length = shape.length, inner = shape.inner;
  for (int64_t o = blockIdx.y; o < shape.outer; o += gridDim.y) {
    for (int64_t i0 = int64_t{blockIdx.x} * blockDim.x; i0 < inner; i0 += int64_t{gridDim.x} * blockDim.x) {
      const int64_t i = i0 + threadIdx.x;
      const bool valid = i < inner;
      const int64_t r = o * inner + i;
      const int64_t start = valid ? o * length * inner + i : 0;
      const acc_t inv_tau = valid ? row_inv_tau(args.tau_rows, args.inv_tau, r) : acc_t(1);
      MaxSum<acc_t> st = max_sum_identity<acc_t>();
      if (GUMBEL_RUNTIME(args.hard, GUMBEL_EXT_SASS_MODE != 0)) {
        st = spatial_stats(args.saved + start, inner, length, valid, seed, offset, r, exp2_scale(inv_tau), keep_x, xs,
                           scratch);
      }
      const SoftRow<acc_t> soft(st, exp2_scale(inv_tau));
      // y and g of quad q (first element at off): 0 past the row.
      auto load = [&](int64_t q, int64_t off, auto whole, acc_t (&y)[4], acc_t (&g)[4]) {
        constexpr bool kWhole = decltype(whole)::value;
        if (GUMBEL_RUNTIME(args.hard, GUMBEL_EXT_SASS_MODE != 0)) {
          spatial_quad_again<kWhole>(args.saved + start + off, inner, q, length, seed, offset, r, keep_x, xs, y);
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const bool real = kWhole || 4 * q + j < length;
          g[j] = real ? static_cast<acc_t>(args.grad[start + off + j * inner]) : acc_t(0);
          if (GUMBEL_RUNTIME(args.hard, GUMBEL_EXT_SASS_MODE != 0)) {
            y[j] = real ? as_stored<scalar_t>(soft(y[j])) : acc_t(0);
          } else {
            y[j] = real ? static_cast<acc_t>(args.saved[start + off + j * inner]) : acc_t(0);
          }
        }
      };
      acc_t dot = 0;
      if (valid) {
        for_each_quad(inner, length, [&](int64_t q, int64_t off, auto whole) {
          acc_t y[4], g[4];
          load(q, off, whole, y, g);
#pragma unroll
          for (int j = 0; j < 4; ++j) dot += g[j] * y[j];
        });
      }
      dot = column_allreduce(dot, SumOp(), scratch);
      acc_t tau_sum = 0;
      if (valid) {
        for_each_quad(inner, length, [&](int64_t q, int64_t off, auto whole) {
          acc_t y[4], g[4], out[4];
          load(q, off, whole, y, g);
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            tau_sum += grad_element<kGradTau>(y[j], g[j], dot, inv_tau, out[j]);
            if (decltype(whole)::value || 4 * q + j < length) {
              args.grad_logits[start + off + j * inner] = static_cast<scalar_t>(out[j]);
            }
          }
        });
      }
      if constexpr (kGradTau) {
        tau_sum = column_allreduce(tau_sum, SumOp(), scratch);
        if (valid && threadIdx.y == 0) args.grad_tau[r] = -inv_tau * tau_sum;
      }
    }
  }
}

}  // namespace cuda
}  // namespace gumbel_ext
