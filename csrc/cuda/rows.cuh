// Per-row statistics of the three strategies, shared by the forward and the backward
// kernels. Note [Regenerated y_soft]: a hard backward rebuilds y_soft with exactly the
// code, launch shape and summation order of the soft forward of the same strategy, then
// rounds it through the output dtype, so straight-through gradients equal the soft ones
// bit for bit.
#pragma once

#include "misaligned_chunks.cuh"

namespace gumbel_ext {
namespace cuda {

// Threads per block of the warp-per-row kernels.
constexpr int kWarpRowThreads = 128;
// Blocks per SM the warp-per-row forward kernels are compiled for, which gives ptxas an
// explicit register cap (128): left to itself it picked 32 registers for the bf16 rows of
// 32 chunks and spilled; with 8 (one wave at 4096 x 1000, cap 64) rows of 1024 spill.
// The backward keeps the plain bound: its rows hold y and grad in registers.
constexpr int kWarpRowBlocksPerSM = 4;
// Rows up to this length are held in registers, one warp (or part of one) per row.
constexpr int kMaxWarpRow = 1024;
// Rows one kWarpRowThreads block of the warp-per-row kernels covers when a row has 2^L
// chunks (W = min(2^L, 32) lanes each): the launchers and tests/emulation/harness.cpp
// size their grids with it.
template <int L>
constexpr int warp_rows_per_block() {
  constexpr int W = (1 << L) < kWarpSize ? (1 << L) : kWarpSize;
  return kWarpRowThreads / kWarpSize * (kWarpSize / W);
}

// Threads per block of the kernels parallel over the inner dim.
constexpr int kSpatialThreads = 256;

// Note [tau_rows values] (csrc/ops.cpp): the CUDA ops cannot refuse a tau_rows entry that
// is not finite and > 0 without a device sync, so such a row gets 1/tau = NaN: its soft
// output and its gradients are NaN, as for a NaN logit (a hard one-hot does not depend on
// tau).
template <typename acc_t>
__device__ __forceinline__ acc_t row_inv_tau(const acc_t* tau_rows, double inv_tau, int64_t r) {
  if (GUMBEL_RUNTIME(tau_rows == nullptr, true)) return static_cast<acc_t>(inv_tau);  // the probe: a float tau
  const acc_t t = tau_rows[r];
  return t > acc_t(0) && is_finite(t) ? acc_t(1) / t : quiet_nan<acc_t>();
}

// One row of a block or spatial kernel: y_c = exp2((x_c - X) * scale) / S, or NaN
// everywhere when X is not finite (see Note [Per-row softmax math]); the NaN goes into
// inv_sum once per row, not into a select per element.
template <typename acc_t>
struct SoftRow {
  acc_t x_max;
  acc_t scale;
  acc_t inv_sum;

  __device__ __forceinline__ SoftRow(MaxSum<acc_t> st, acc_t scale_)
      : x_max(st.m), scale(scale_), inv_sum(is_finite(st.m) ? acc_t(1) / st.s : quiet_nan<acc_t>()) {}

  __device__ __forceinline__ acc_t operator()(acc_t x) const { return acc_exp2((x - x_max) * scale) * inv_sum; }
};

// ---- warp per row: the row in registers, lane `lw` of W holds chunks j * W + lw.
// x (perturbed logits, -inf past the row) becomes e = exp((x - X) * inv_tau); returns
// 1 / sum(e). The max first (ignoring NaN), then one exp2 per element with log2(e)
// folded into the scale (Note [exp2 softmax]), no branch: -inf gives e = 0, and a NaN
// x, a +inf X (inf - inf) or an all -inf row (-inf - -inf) makes the sum NaN, so every
// output of that row is NaN.
template <int W, int J, int V, typename acc_t>
__device__ __forceinline__ acc_t softmax_registers(acc_t (&x)[J][V], acc_t inv_tau) {
  acc_t x_max = neg_inf<acc_t>();
#pragma unroll
  for (int j = 0; j < J; ++j)
#pragma unroll
    for (int i = 0; i < V; ++i) x_max = row_max(x_max, x[j][i]);
  x_max = warp_allreduce<W>(x_max, MaxOp());
  const acc_t scale = exp2_scale(inv_tau);
  acc_t sum = 0;
#pragma unroll
  for (int j = 0; j < J; ++j)
#pragma unroll
    for (int i = 0; i < V; ++i) {
      x[j][i] = acc_exp2((x[j][i] - x_max) * scale);
      sum += x[j][i];
    }
  sum = warp_allreduce<W>(sum, SumOp());
  return acc_t(1) / sum;
}

// ---- block per row: thread t holds chunks k = t, t + T, ...; `xs` (optional, shared
// memory, chunk k at xs + k * V: smem_store_chunk) keeps x for a second pass. `scale` = exp2_scale(inv_tau).
template <int V, typename scalar_t, typename acc_t, typename Align>
__device__ __forceinline__ MaxSum<acc_t> block_stats(const scalar_t* __restrict__ row,
                                                     int64_t length, Align aligned, uint64_t seed,
                                                     uint64_t offset, uint64_t r, acc_t scale,
                                                     acc_t* xs, void* scratch) {
  constexpr int U = chunks_in_flight<acc_t, V>();
  const int64_t chunks = ceil_div(length, V);
  MaxSum<acc_t> st = max_sum_identity<acc_t>();
  // Chunks k = t, t + T, t + 2T, ... in this order (U at a time, one group of U * V).
  for (int64_t k0 = threadIdx.x; k0 < chunks; k0 += U * int64_t{blockDim.x}) {
    acc_t x[U][V];
    perturbed_chunks<U>(row, k0, blockDim.x, chunks, length, aligned, seed, offset, r, x);
    if (xs != nullptr) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t k = k0 + u * int64_t{blockDim.x};
        if (k >= chunks) break;
        smem_store_chunk<V>(xs, k, x[u]);
      }
    }
    max_sum_add_chunks(st, x, scale);
  }
  return block_allreduce(st, MaxSumExp2Op<acc_t>{scale}, max_sum_identity<acc_t>(), scratch);
}

// ---- spatial: thread (tx, ty) walks 4-column blocks q = ty, ty + by, ... of row r,
// whose elements are `inner` apart.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void perturbed_quad(const scalar_t* __restrict__ row, int64_t inner,
                                               int64_t q, int64_t length, uint64_t seed,
                                               uint64_t offset, uint64_t r, acc_t (&x)[4]) {
  const Philox4 p = philox_block(seed, offset, r, static_cast<uint64_t>(q));
  const uint32_t bits[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t c = 4 * q + j;
    x[j] = c < length ? static_cast<acc_t>(row[c * inner]) + static_cast<acc_t>(gumbel_from_bits(bits[j]))
                      : neg_inf<acc_t>();
  }
}

// `xs` (optional: dynamic shared memory sized by spatial_smem) keeps x for the second
// pass, quad q of the block's column tx at chunk q * blockDim.x + tx, so that pass draws
// no noise again.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ MaxSum<acc_t> spatial_stats(const scalar_t* __restrict__ row,
                                                       int64_t inner, int64_t length, bool valid,
                                                       uint64_t seed, uint64_t offset, uint64_t r,
                                                       acc_t scale, acc_t* xs, void* scratch) {
  MaxSum<acc_t> st = max_sum_identity<acc_t>();
  if (valid) {
    const int64_t quads = ceil_div(length, 4);
    for (int64_t q = threadIdx.y; q < quads; q += blockDim.y) {
      acc_t x[1][4];
      perturbed_quad(row, inner, q, length, seed, offset, r, x[0]);
      if (xs != nullptr) smem_store_chunk<4>(xs, q * blockDim.x + threadIdx.x, x[0]);
      max_sum_add_chunks(st, x, scale);
    }
  }
  return column_allreduce(st, MaxSumExp2Op<acc_t>{scale}, scratch);
}

// x of quad q in the second pass: from xs when spatial_stats kept it, else drawn again.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void spatial_quad_again(const scalar_t* __restrict__ row, int64_t inner,
                                                   int64_t q, int64_t length, uint64_t seed,
                                                   uint64_t offset, uint64_t r, bool keep_x,
                                                   const acc_t* xs, acc_t (&x)[4]) {
  if (keep_x) {
    smem_load_chunk<4>(xs, q * blockDim.x + threadIdx.x, x);
  } else {
    perturbed_quad(row, inner, q, length, seed, offset, r, x);
  }
}

}  // namespace cuda
}  // namespace gumbel_ext
