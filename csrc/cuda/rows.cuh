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
// Note [Warp kernels' occupancy]
// Blocks per SM the warp-per-row kernels are compiled for (__launch_bounds__'s minimum),
// from the acc_t registers a lane holds for its row (x in the forward; y and the gradient,
// kArrays = 2, in the backward). Each kernel has two copies (kAlignedRows):
//   - the general copy serves every row, realigning the 16-byte accesses of misaligned
//     ones (Note [Misaligned rows]). Under 32 row registers: 8 blocks of 128 threads per
//     SM, a 64-register cap, one wave for 4096 rows; none of these spills on sm_80 or
//     sm_90 (scripts/check_cuda_compile.py), given loop_variant below. At 32 and beyond
//     the cap spilled with the realigning code (32..64 B in the forward, 180..312 B in the
//     backward), so those forward kernels ask for 4 blocks (a 128-register cap; left to
//     itself ptxas picked 32 registers for the bf16 rows of 32 chunks and spilled) and
//     those backward kernels for nothing (ptxas picks, e.g., 180 registers for the fp32
//     backward of 1024 columns).
//   - the aligned-rows copy, launched when every row of every tensor starts on a 16-byte
//     boundary (warp_forward_aligned_copy: any contiguous fp32 tensor of a length divisible by 4),
//     has no realigning code, so the forward of 32 row registers -- fp32 rows of 1024
//     columns (4096 x 1000), half rows of 1024 -- fits the 64-register cap: one wave at
//     4096 x 1000 (132 SMs x 8 = 1056 blocks >= 1024). The backward of 32 row registers
//     gets 8 blocks too. At 64 (rows of 1024 columns: y and the gradient, 32 each) the
//     row alone would fill the 64-register cap, so the backward of 4096 x 1000 cannot be
//     one wave with its row in registers: the half types ask for 4 blocks, fp32 for 3
//     (the general copy, left to itself, takes 180 registers: 2 blocks per SM).
// The copies differ only where a launch bound does (warp_rows_copy); their outputs are
// the same bits. Occupancy per dtype: docs/performance.md, "Warp kernels' occupancy".
template <typename scalar_t, int L, int kArrays>
constexpr int warp_row_registers() {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int W = (1 << L) < kWarpSize ? (1 << L) : kWarpSize;
  return kArrays * (1 << L) / W * chunk_size<scalar_t>() * static_cast<int>(sizeof(acc_t) / 4);
}

template <typename scalar_t, int L, int kArrays, bool kAlignedRows>
constexpr int warp_row_blocks_per_sm() {
  constexpr int regs = warp_row_registers<scalar_t, L, kArrays>();
  if constexpr (kAlignedRows) {
    if (regs <= 32) return 8;
    if (regs > 64) return 0;
    // The fp32 backward of 1024 columns spilled under 4's 128-register cap (32..64 B: twice
    // the half types' 16-byte loads in flight); under 3's 168 it takes 141.
    return kArrays == 1 || sizeof(scalar_t) == 2 ? 4 : 3;
  } else {
    return regs < 32 ? 8 : kArrays == 1 ? 4 : 0;
  }
}
static_assert(warp_row_blocks_per_sm<float, 8, 1, true>() == 8, "one wave at 4096 x 1000 (issue #11)");

// Whether rows of 2^L chunks have an aligned-rows copy worth launching: only where its
// launch bound differs from the general copy's.
template <typename scalar_t, int L, int kArrays>
constexpr bool warp_rows_copy() {
  return warp_row_blocks_per_sm<scalar_t, L, kArrays, true>() != warp_row_blocks_per_sm<scalar_t, L, kArrays, false>();
}

// Whether a warp-per-row launch may take the aligned-rows copy (with_warp_rows_copy):
// every row of its tensors aligned, and not the index mode of `sample`. That mode reads
// 4 bytes per element and writes one index per row, so it is bound by instructions, not
// memory (48.5 SASS per element = 1.45 ps on an H200 against 0.93 ps of memory time at
// 4096 x 1000); under the copy's 64-register cap ptxas recomputes the Philox round keys
// per chunk (uniform adds), 55.5 per element, which more warps per SM cannot win back.
// (Every row starts on a 16-byte boundary when row 1, `length` elements in, does:
// row_vectorizable of that start; a null pointer counts as aligned.)
template <typename scalar_t>
bool warp_forward_aligned_copy(const ForwardArgs<scalar_t>& args, int64_t length) {
  return args.mode != Mode::kIndex && row_vectorizable<scalar_t>(length, args.logits, args.out);
}
template <typename scalar_t>
bool warp_backward_aligned_copy(const BackwardArgs<scalar_t>& args, int64_t length) {
  return row_vectorizable<scalar_t>(length, args.grad, args.saved, args.grad_logits);
}

// Calls f(std::bool_constant<kAlignedRows>) with the copy of a warp kernel for rows of
// 2^L chunks that these rows take: the aligned-rows copy where one exists and `aligned`
// (warp_forward_aligned_copy, warp_backward_aligned_copy) holds, else the general copy. The launchers and the emulation
// harness choose through it.
template <typename scalar_t, int L, int kArrays, typename F>
void with_warp_rows_copy(bool aligned, F&& f) {
  if constexpr (warp_rows_copy<scalar_t, L, kArrays>()) {
    if (aligned) {
      f(std::true_type{});
      return;
    }
  }
  f(std::false_type{});
}

// The alignment a warp kernel uses for the row `start` elements into the tensor at
// `base`: known to be 0 in the aligned-rows copy, so no realigning code is compiled in.
template <bool kAlignedRows, typename scalar_t>
__device__ __forceinline__ RowAlignment warp_row_alignment(int64_t start, const void* base) {
  if constexpr (kAlignedRows) {
    return RowAlignment{0};
  } else {
    return row_alignment<scalar_t>(start, base);
  }
}

// `v`, as a value ptxas must recompute in every iteration of the loop it is used in.
// Given the lane's column as a loop invariant, ptxas hoisted each chunk's Philox counter
// words and first products out of the warp kernels' rows loop -- three registers per
// chunk, for a loop that nearly always runs once -- and spilled them under the 64-register
// cap of 8 blocks per SM.
__device__ __forceinline__ int loop_variant(int v) {
#if defined(__CUDA_ARCH__)
  asm volatile("" : "+r"(v));
#endif
  return v;
}

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

// ---- block per row: thread t holds chunks k = t, t + T, ...; with `keep`, `xs` (shared
// memory, chunk k at xs + k * V: smem_store_chunk) keeps x for a second pass (a bool, not
// a null test of xs, which rebuilt the generic shared address in every iteration). `scale` = exp2_scale(inv_tau).
// `aligned`: a bool (Note [Per-row vector loads]) or a RowAlignment (Note [Misaligned rows]).
template <int V, typename scalar_t, typename acc_t, typename Align>
__device__ __forceinline__ MaxSum<acc_t> block_stats(const scalar_t* __restrict__ row,
                                                     int64_t length, Align aligned, uint64_t seed,
                                                     uint64_t offset, uint64_t r, acc_t scale,
                                                     bool keep, acc_t* xs, void* scratch) {
  constexpr int U = chunks_in_flight<acc_t, V>();
  const int64_t chunks = ceil_div(length, V);
  MaxSum<acc_t> st = max_sum_identity<acc_t>();
  // Chunks k = t, t + T, t + 2T, ... in this order (U at a time, one group of U * V).
  for (int64_t k0 = threadIdx.x; k0 < chunks; k0 += U * int64_t{blockDim.x}) {
    acc_t x[U][V];
    perturbed_chunks<U>(row, k0, blockDim.x, chunks, length, aligned, seed, offset, r, x);
    if (keep) {
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

// ---- block per row, one-hot and index modes: the block's argmax of x over chunks
// [first, end) of row r (a whole row, or a split row's slice: Note [Split rows]), thread t
// taking chunks first + t, first + t + T, ... (U at a time), combined by ArgMaxOp.
// Columns past the row hold -inf and never win a strict >; a thread starts at {-inf, its
// first column}, so an empty range reports {-inf, its first column}, which loses every
// tie to the ranges before it.
template <int V, typename scalar_t, typename Align>
__device__ __forceinline__ ArgMax<at::opmath_type<scalar_t>> block_argmax(const scalar_t* __restrict__ row,
                                                                          int64_t first, int64_t end,
                                                                          int64_t length, Align aligned,
                                                                          uint64_t seed, uint64_t offset,
                                                                          uint64_t r, void* scratch) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int U = chunks_in_flight<acc_t, V>();
  acc_t best_v = neg_inf<acc_t>();
  int64_t best_c = (first + threadIdx.x) * V;
  for (int64_t k0 = first + threadIdx.x; k0 < end; k0 += U * int64_t{blockDim.x}) {
    acc_t x[U][V];
    perturbed_chunks<U>(row, k0, blockDim.x, end, length, aligned, seed, offset, r, x);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c0 = (k0 + u * int64_t{blockDim.x}) * V;
#pragma unroll
      for (int i = 0; i < V; ++i) argmax_step(best_v, best_c, x[u][i], c0 + i);
    }
  }
  return block_allreduce(ArgMax<acc_t>{best_v, best_c}, ArgMaxOp(), argmax_identity<acc_t>(), scratch);
}

// ---- spatial: thread (tx, ty) walks the 4-column blocks (quads) q = ty, ty + by, ...
// of row r, whose column c sits at row[c * inner] (Note [Spatial launch] in common.cuh).

// Visits this thread's quads in increasing order: f(q, off, whole) with off = 4 q inner,
// the quad's first element relative to the row's, and `whole` a std::bool_constant, true
// for the quads that lie inside the row (no check per column) and false for the row's
// last, partial quad. The offset advances by one 64-bit add per quad and each column's
// address is one more (no multiply per element).
template <typename F>
__device__ __forceinline__ void for_each_quad(int64_t inner, int64_t length, F&& f) {
  const int64_t whole = length / 4;
  const int64_t step = 4 * int64_t{blockDim.y} * inner;
  int64_t q = threadIdx.y;
  int64_t off = 4 * q * inner;
  for (; q < whole; q += blockDim.y, off += step) f(q, off, std::true_type{});
  if (4 * q < length) f(q, off, std::false_type{});
}

// x = logit + noise of quad q, whose first element is at p; columns past the row are -inf.
template <bool kWhole, typename scalar_t, typename acc_t>
__device__ __forceinline__ void perturbed_quad(const scalar_t* __restrict__ p, int64_t inner, int64_t q,
                                               int64_t length, uint64_t seed, uint64_t offset, uint64_t r,
                                               acc_t (&x)[4]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    x[j] = kWhole || 4 * q + j < length ? static_cast<acc_t>(p[j * inner]) : neg_inf<acc_t>();
  }
  const Philox4 b = philox_block(seed, offset, r, static_cast<uint64_t>(q));
  const uint32_t bits[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) x[j] += static_cast<acc_t>(gumbel_from_bits(bits[j]));
}

// The row's (max, sum) in one pass that draws each noise value once. With `keep_x`
// (SpatialLaunch::keep_x), `xs` (dynamic shared memory) keeps x for the second pass, quad
// q of the block's column tx at chunk q * blockDim.x + tx. (A bool, not a null test of
// xs: that test rebuilt the generic address of shared memory on every quad.)
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ MaxSum<acc_t> spatial_stats(const scalar_t* __restrict__ row,
                                                       int64_t inner, int64_t length, bool valid,
                                                       uint64_t seed, uint64_t offset, uint64_t r,
                                                       acc_t scale, bool keep_x, acc_t* xs,
                                                       void* scratch) {
  MaxSum<acc_t> st = max_sum_identity<acc_t>();
  if (valid) {
    for_each_quad(inner, length, [&](int64_t q, int64_t off, auto whole) {
      acc_t x[1][4];
      perturbed_quad<decltype(whole)::value>(row + off, inner, q, length, seed, offset, r, x[0]);
      if (keep_x) smem_store_chunk<4>(xs, q * blockDim.x + threadIdx.x, x[0]);
      max_sum_add_chunks(st, x, scale);
    });
  }
  return column_allreduce(st, MaxSumExp2Op<acc_t>{scale}, scratch);
}

// x of quad q in the second pass: from xs when spatial_stats kept it, else drawn again
// (rows too long for any shared memory, Note [Spatial launch]).
template <bool kWhole, typename scalar_t, typename acc_t>
__device__ __forceinline__ void spatial_quad_again(const scalar_t* __restrict__ p, int64_t inner,
                                                   int64_t q, int64_t length, uint64_t seed,
                                                   uint64_t offset, uint64_t r, bool keep_x,
                                                   const acc_t* xs, acc_t (&x)[4]) {
  if (keep_x) {
    smem_load_chunk<4>(xs, q * blockDim.x + threadIdx.x, x);
  } else {
    perturbed_quad<kWhole>(p, inner, q, length, seed, offset, r, x);
  }
}

}  // namespace cuda
}  // namespace gumbel_ext
