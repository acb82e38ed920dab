// Device building blocks shared by the CUDA kernels: the (seed, offset) a kernel uses,
// vectorized row chunks with their noise, and the three row reductions (NaN-propagating
// max, online max+sum, argmax) as warp and block all-reduces.
#pragma once

#include <cuda_runtime.h>

#include <ATen/cuda/PhiloxUtils.cuh>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "../gumbel_noise.h"
#include "kernels.h"

namespace gumbel_ext {
namespace cuda {

// Note [SASS probe]
// scripts/sass_budget.py counts the machine instructions of one mode's steady-state path.
// It compiles the kernels with GUMBEL_EXT_SASS_PROBE defined, which fixes the runtime
// choices below (mode, hard, tau gradient, alignment) so dead paths drop out of the code
// it reads. The real build never defines it: GUMBEL_RUNTIME(value, fixed) is `value`.
#if defined(GUMBEL_EXT_SASS_PROBE)
#define GUMBEL_RUNTIME(value, fixed) (fixed)
#else
#define GUMBEL_RUNTIME(value, fixed) (value)
#endif

constexpr int kWarpSize = 32;
constexpr int kMaxBlockThreads = 1024;
// Threads per block of the kernels parallel over the inner dim (Note [Spatial launch]).
constexpr int kSpatialThreads = 256;
// Grids are capped and kernels loop (grid-stride) past the cap.
constexpr int64_t kMaxGrid = (int64_t{1} << 31) - 1;
constexpr int64_t kMaxGridY = 65535;

// ------------------------------------------------------------------------------ rng
// Every thread reads the pair (broadcast loads when captured or replayed); one thread
// records it for backward.
__device__ __forceinline__ void seed_offset(const Rng& rng, uint64_t& seed, uint64_t& offset) {
  if (rng.replay != nullptr) {
    seed = static_cast<uint64_t>(rng.replay[0]);
    offset = static_cast<uint64_t>(rng.replay[1]);
  } else {
    const auto so = at::cuda::philox::unpack(rng.philox);
    seed = std::get<0>(so);
    offset = std::get<1>(so);
  }
  if (rng.record != nullptr && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0 &&
      threadIdx.y == 0) {
    rng.record[0] = static_cast<int64_t>(seed);
    rng.record[1] = static_cast<int64_t>(offset);
  }
}

// ----------------------------------------------------------------------------- math
__device__ __forceinline__ float acc_log(float x) { return ::logf(x); }
__device__ __forceinline__ double acc_log(double x) { return ::log(x); }

// Note [exp2 softmax]
// The kernels compute e = exp((x - X) / tau) as exp2((x - X) * scale) with scale =
// log2(e) / tau taken once per row: one subtraction, one multiply and one exp2 per
// element. On the device exp2 is ex2.approx.ftz (one MUFU instruction, 2 ulp): results
// below 2^-126 flush to 0, as the CPU kernels' exp_nonpositive does (kExpMinNormal);
// -inf gives 0 and NaN stays NaN. The emulator's copy flushes the same way.
constexpr double kLog2e = 1.4426950408889634;

template <typename acc_t>
__device__ __forceinline__ acc_t exp2_scale(acc_t inv_tau) {
  return inv_tau * static_cast<acc_t>(kLog2e);
}

__device__ __forceinline__ float acc_exp2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return x < -126.0f ? 0.0f : std::exp2(x);
#endif
}
__device__ __forceinline__ double acc_exp2(double x) { return ::exp2(x); }

// max that ignores NaN (one FMNMX): the softmax paths let a NaN reach the sum instead,
// which makes the whole row NaN (see max_sum_add_group).
__device__ __forceinline__ float row_max(float a, float b) { return ::fmaxf(a, b); }
__device__ __forceinline__ double row_max(double a, double b) { return ::fmax(a, b); }

template <typename T>
__device__ __forceinline__ T neg_inf() {
  return static_cast<T>(-INFINITY);
}
template <typename T>
__device__ __forceinline__ T quiet_nan() {
  return static_cast<T>(NAN);
}
template <typename T>
__device__ __forceinline__ bool is_finite(T x) {
  return x - x == T(0);  // false for +-inf and NaN, without relying on isfinite overloads
}

// Chunk: the columns one thread loads at once. A multiple of 4 (one Philox block per 4
// columns, so every draw is computed once) and 16 bytes for fp32 / half types.
template <typename scalar_t>
constexpr int chunk_size() {
  return sizeof(scalar_t) >= 4 ? 4 : 8;
}

template <typename T, int N>
struct alignas(16) Pack {
  T v[N];
};

// Note [Per-row vector loads]
// Each row decides for itself, per tensor: a row whose pointer is 16-byte aligned loads
// and stores its whole chunks with one 16-byte access (two for fp64's 32-byte chunks),
// and only its last, partial chunk column by column. A row m elements past a boundary
// (fp32 rows of a 50257 vocabulary: 3 in 4; a view at a storage offset) keeps 16-byte
// accesses too, with its chunks still on Philox blocks (column 4b): Note [Misaligned
// rows] in misaligned_chunks.cuh. So the noise, the summation order and every output
// bit are the same on every path. The kernels take a RowAlignment per tensor
// (row_alignment); the bool form below (row_vectorizable: every base aligned and the
// row's start a multiple of 16 bytes, else column by column) stays for callers that do
// not need misaligned rows.

__host__ __device__ __forceinline__ bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// Whether the row `start` elements into the tensors at base... may use 16-byte accesses:
// every base 16-byte aligned, and the row's start a multiple of 16 bytes. Bases that
// share a nonzero misalignment (input and output both views at one storage offset) are
// rare and stay scalar; testing the row pointers themselves made the fp64 block backward
// spill.
template <typename scalar_t, typename... P>
__host__ __device__ __forceinline__ bool row_vectorizable(int64_t start, const P*... base) {
  return (aligned16(base) && ...) && (start * int64_t{sizeof(scalar_t)}) % 16 == 0;
}

// The emulator (tests/emulation/simt.h) records the 16-byte accesses (a 32-byte chunk is
// two) and checks their alignment; the real build compiles this away.
#if defined(GUMBEL_EXT_HOST_EMULATION)
#define GUMBEL_VECTOR_ACCESS(p, bytes) ::simt::vector_access(p, bytes)
#else
#define GUMBEL_VECTOR_ACCESS(p, bytes) ((void)0)
#endif

// Loads columns c0 .. c0+V-1 of a contiguous row as acc_t; `aligned` (row_vectorizable)
// says the row pointer is 16-byte aligned: a chunk that lies wholly inside the row is
// then one 16-byte load. Columns >= length read as `fill`.
template <int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_chunk(const scalar_t* __restrict__ row, int64_t c0,
                                           int64_t length, bool aligned, acc_t (&v)[V],
                                           acc_t fill) {
  if (GUMBEL_RUNTIME(aligned && c0 + V <= length, true)) {
    GUMBEL_VECTOR_ACCESS(row + c0, sizeof(Pack<scalar_t, V>));
    const Pack<scalar_t, V> p = *reinterpret_cast<const Pack<scalar_t, V>*>(row + c0);
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = static_cast<acc_t>(p.v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = c0 + i < length ? static_cast<acc_t>(row[c0 + i]) : fill;
  }
}

template <int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_chunk(scalar_t* __restrict__ row, int64_t c0, int64_t length,
                                            bool aligned, const acc_t (&v)[V]) {
  if (GUMBEL_RUNTIME(aligned && c0 + V <= length, true)) {
    GUMBEL_VECTOR_ACCESS(row + c0, sizeof(Pack<scalar_t, V>));
    Pack<scalar_t, V> p;
#pragma unroll
    for (int i = 0; i < V; ++i) p.v[i] = static_cast<scalar_t>(v[i]);
    *reinterpret_cast<Pack<scalar_t, V>*>(row + c0) = p;
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i)
      if (c0 + i < length) row[c0 + i] = static_cast<scalar_t>(v[i]);
  }
}

// A chunk kept in shared memory: chunk k at base + k (one 16- or 32-byte access per
// chunk; a warp's consecutive chunks fill whole wavefronts, so no bank conflict beyond
// the access's width). The index is 32-bit: a row that fits on chip has < 2^31 chunks.
template <int V, typename T, typename U>
__device__ __forceinline__ void smem_store_chunk(T* base, int64_t k, const U (&v)[V]) {
  Pack<T, V> p;
#pragma unroll
  for (int i = 0; i < V; ++i) p.v[i] = static_cast<T>(v[i]);
  reinterpret_cast<Pack<T, V>*>(base)[static_cast<int>(k)] = p;
}

template <int V, typename T, typename U>
__device__ __forceinline__ void smem_load_chunk(const T* base, int64_t k, U (&v)[V]) {
  const Pack<T, V> p = reinterpret_cast<const Pack<T, V>*>(base)[static_cast<int>(k)];
#pragma unroll
  for (int i = 0; i < V; ++i) v[i] = static_cast<U>(p.v[i]);
}

// x += noise for the chunk at c0 of row r (see Note [Philox counter layout]).
template <int V, typename acc_t>
__device__ __forceinline__ void add_noise(acc_t (&x)[V], int64_t c0, uint64_t seed, uint64_t offset,
                                          uint64_t r) {
  static_assert(V % 4 == 0, "a chunk holds whole Philox blocks");
#pragma unroll
  for (int b = 0; b < V / 4; ++b) {
    const Philox4 p = philox_block(seed, offset, r, static_cast<uint64_t>(c0 / 4 + b));
    x[4 * b + 0] += static_cast<acc_t>(gumbel_from_bits(p.x));
    x[4 * b + 1] += static_cast<acc_t>(gumbel_from_bits(p.y));
    x[4 * b + 2] += static_cast<acc_t>(gumbel_from_bits(p.z));
    x[4 * b + 3] += static_cast<acc_t>(gumbel_from_bits(p.w));
  }
}

// x = logit + noise for the chunk at c0 of row r; columns past the row are -inf, so
// they never win a max and add nothing to a sum. `aligned`: a bool (row_vectorizable),
// or the row's RowAlignment (misaligned_chunks.cuh), which also gives misaligned rows
// 16-byte loads; load_chunk's overloads take either.
template <int V, typename scalar_t, typename acc_t, typename Align>
__device__ __forceinline__ void perturbed_chunk(const scalar_t* __restrict__ row, int64_t c0,
                                                int64_t length, Align aligned, uint64_t seed,
                                                uint64_t offset, uint64_t r, acc_t (&x)[V]) {
  load_chunk<V>(row, c0, length, aligned, x, neg_inf<acc_t>());
  add_noise<V>(x, c0, seed, offset, r);
}

// Chunks a block-per-row thread loads before computing any noise: enough 16-byte loads
// in flight per SM to cover the memory latency with 1024-thread blocks.
constexpr int kChunksInFlight = 4;
// The block-per-row passes hold this many: half for the half types' 8-column chunks,
// which take twice the registers (with four, those kernels spilled under the 64-register
// cap of 1024-thread blocks on sm_80), and one for fp64, whose soft pass's double exp2s
// (inlined polynomials with their constants in registers) spilled with two.
template <typename acc_t, int V>
constexpr int chunks_in_flight() {
  return sizeof(acc_t) > 4 ? 1 : sizeof(acc_t) * V > 16 ? kChunksInFlight / 2 : kChunksInFlight;
}

// perturbed_chunk for chunks k0 + u * stride, u < U (those < chunks; the others are all
// -inf), with every load issued before the first Philox block.
template <int U, int V, typename scalar_t, typename acc_t, typename Align>
__device__ __forceinline__ void perturbed_chunks(const scalar_t* __restrict__ row, int64_t k0,
                                                 int64_t stride, int64_t chunks, int64_t length,
                                                 Align aligned, uint64_t seed, uint64_t offset,
                                                 uint64_t r, acc_t (&x)[U][V]) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t k = k0 + u * stride;
    if (k < chunks) {
      load_chunk<V>(row, k * V, length, aligned, x[u], neg_inf<acc_t>());
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) x[u][i] = neg_inf<acc_t>();
    }
  }
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t k = k0 + u * stride;
    if (k < chunks) add_noise<V>(x[u], k * V, seed, offset, r);
  }
}

// The block's dynamic shared memory (the emulation test supplies its own).
#ifndef GUMBEL_EXT_HOST_EMULATION
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char smem[];
  return smem;
}
#endif

// ------------------------------------------------------------------------ reductions
// All combines are commutative bit for bit, so xor-butterfly all-reduces give every lane
// the same result, and the fixed trees make every kernel deterministic.

template <typename acc_t>
__device__ __forceinline__ acc_t nan_max(acc_t a, acc_t b) {
  return (a != a) ? a : (b != b) ? b : (a > b ? a : b);
}

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};

struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return nan_max(a, b); }
};

// Running (max m, sum s of exp((x - m) * inv_tau)) over a set of x (online softmax).
// Only meaningful when the final max is finite; -inf elements add exactly nothing.
template <typename acc_t>
struct MaxSum {
  acc_t m;
  acc_t s;
};

template <typename acc_t>
__device__ __forceinline__ MaxSum<acc_t> max_sum_identity() {
  return {neg_inf<acc_t>(), acc_t(0)};
}

// (max m, sum s of exp2((x - m) * scale)) as the block and spatial kernels keep it (Note
// [exp2 softmax]): a thread folds in a group of G values at a time -- the group's max,
// one rescale of s per group, then one exp2 per element, no per-element branch. A NaN
// x is ignored by the max and makes s NaN; a +inf makes m infinite; either way the row
// comes out NaN (SoftRow in rows.cuh). While m is still -inf (only -inf and NaN so far) the values
// are taken relative to 0, so that a NaN still reaches s and -inf adds 0.
template <int U, int V, typename acc_t>
__device__ __forceinline__ void max_sum_add_group(MaxSum<acc_t>& st, const acc_t (&x)[U][V], acc_t scale) {
  acc_t gm = x[0][0];
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int i = 0; i < V; ++i) gm = row_max(gm, x[u][i]);
  if (gm > st.m) {
    st.s *= acc_exp2((st.m - gm) * scale);
    st.m = gm;
  }
  const acc_t ref = st.m > neg_inf<acc_t>() ? st.m : acc_t(0);
  // The first term starts the sum (0 + e is e for every e >= 0 and NaN: one add fewer).
  acc_t s = acc_exp2((x[0][0] - ref) * scale);
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int i = 0; i < V; ++i)
      if (u + i > 0) s += acc_exp2((x[u][i] - ref) * scale);
  st.s += s;
}

// What the stats loops call: float rows fold whole groups; double rows one value at a
// time, because a group's interleaved double exp2s (each an inlined polynomial with
// register-held constants) spilled the fp64 backward kernels. fp64 is not a speed
// target; forward and backward both come here, so their sums stay bit-identical.
template <int U, int V, typename acc_t>
__device__ __forceinline__ void max_sum_add_chunks(MaxSum<acc_t>& st, const acc_t (&x)[U][V], acc_t scale) {
  if constexpr (sizeof(acc_t) > 4) {
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const acc_t one[1][1] = {{x[u][i]}};
        max_sum_add_group(st, one, scale);
      }
  } else {
    max_sum_add_group(st, x, scale);
  }
}

// Combines two threads' (m, s) of max_sum_add_group; s of an empty side (m = -inf) is 0
// or NaN, and is kept as it is so that a NaN is never dropped.
template <typename acc_t>
struct MaxSumExp2Op {
  acc_t scale;
  __device__ __forceinline__ MaxSum<acc_t> operator()(MaxSum<acc_t> a, MaxSum<acc_t> b) const {
    const acc_t m = nan_max(a.m, b.m);
    if (!is_finite(m)) return {m, a.s + b.s};
    const acc_t sa = a.m > neg_inf<acc_t>() ? a.s * acc_exp2((a.m - m) * scale) : a.s;
    const acc_t sb = b.m > neg_inf<acc_t>() ? b.s * acc_exp2((b.m - m) * scale) : b.s;
    return {m, sa + sb};
  }
};

// Argmax with torch.argmax's order: NaN above everything, ties to the lowest index.
template <typename acc_t>
struct ArgMax {
  acc_t v;
  int64_t i;
};

template <typename acc_t>
__device__ __forceinline__ ArgMax<acc_t> argmax_identity() {
  return {neg_inf<acc_t>(), INT64_MAX};
}

struct ArgMaxOp {
  template <typename acc_t>
  __device__ __forceinline__ ArgMax<acc_t> operator()(ArgMax<acc_t> a, ArgMax<acc_t> b) const {
    const bool a_nan = a.v != a.v, b_nan = b.v != b.v;
    bool take_b;
    if (a_nan || b_nan) {
      take_b = a_nan ? (b_nan && b.i < a.i) : true;
    } else {
      take_b = b.v > a.v || (b.v == a.v && b.i < a.i);
    }
    return take_b ? b : a;
  }
};

// A thread's running argmax over its own columns, visited in increasing order: a strict
// > keeps the lowest index among equal values, a NaN beats every number and the first
// NaN stays (torch.argmax's order, as ArgMaxOp). Start it at {-inf, the thread's first
// column}: an all -inf run then reports its lowest column, as ArgMaxOp would; ArgMaxOp
// combines the threads. Two compares and two selects per element.
template <typename acc_t, typename index_t>
__device__ __forceinline__ void argmax_step(acc_t& best, index_t& best_index, acc_t x, index_t c) {
  const bool take = !(x <= best) && best == best;
  best = take ? x : best;
  best_index = take ? c : best_index;
}

template <typename T>
__device__ __forceinline__ T shfl_xor(T v, int mask, int width) {
  return __shfl_xor_sync(0xffffffffu, v, mask, width);
}
template <typename acc_t>
__device__ __forceinline__ MaxSum<acc_t> shfl_xor(MaxSum<acc_t> v, int mask, int width) {
  return {shfl_xor(v.m, mask, width), shfl_xor(v.s, mask, width)};
}
template <typename acc_t>
__device__ __forceinline__ ArgMax<acc_t> shfl_xor(ArgMax<acc_t> v, int mask, int width) {
  return {shfl_xor(v.v, mask, width),
          static_cast<int64_t>(shfl_xor(static_cast<long long>(v.i), mask, width))};
}

// All-reduce over groups of W consecutive lanes; the whole warp must take part.
template <int W, typename T, typename Op>
__device__ __forceinline__ T warp_allreduce(T v, const Op& op) {
#pragma unroll
  for (int m = W / 2; m > 0; m /= 2) v = op(v, shfl_xor(v, m, W));
  return v;
}

// Shared scratch big enough for any reduction in these kernels (32 values of <= 16 B, or
// a 256-thread 2-D block).
constexpr int kScratchBytes = 256 * 16;

// All-reduce over a 1-D block (blockDim.x a multiple of 32, <= 1024); every thread gets
// the result. `scratch` holds kScratchBytes.
template <typename T, typename Op>
__device__ __forceinline__ T block_allreduce(T v, const Op& op, T identity, void* scratch) {
  static_assert(sizeof(T) <= 16, "scratch slot");
  T* slots = static_cast<T*>(scratch);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  v = warp_allreduce<kWarpSize>(v, op);
  __syncthreads();  // the previous use of scratch is over
  if (lane == 0) slots[warp] = v;
  __syncthreads();
  v = lane < warps ? slots[lane] : identity;
  return warp_allreduce<kWarpSize>(v, op);
}

// All-reduce over threadIdx.y of a 2-D block (blockDim.y a power of two,
// blockDim.x * blockDim.y <= 256): a fixed tree in shared memory.
template <typename T, typename Op>
__device__ __forceinline__ T column_allreduce(T v, const Op& op, void* scratch) {
  static_assert(sizeof(T) <= 16, "scratch slot");
  T* slots = static_cast<T*>(scratch);
  const int tx = threadIdx.x, ty = threadIdx.y, bx = blockDim.x;
  __syncthreads();
  slots[ty * bx + tx] = v;
  __syncthreads();
  for (int s = blockDim.y / 2; s > 0; s /= 2) {
    if (ty < s) slots[ty * bx + tx] = op(slots[ty * bx + tx], slots[(ty + s) * bx + tx]);
    __syncthreads();
  }
  return slots[tx];
}

// ---------------------------------------------------------------------------- host
__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int ceil_log2(int64_t n) {
  int l = 0;
  while ((int64_t{1} << l) < n) ++l;
  return l;
}

// Threads of the block-per-row kernels for a row of `chunks` chunks: about four chunks
// per thread, 128 .. 1024. Forward and backward use the same count, so a regenerated
// y_soft sums in the same order as the forward's.
inline int row_block_threads(int64_t chunks) {
  int t = 128;
  while (t < kMaxBlockThreads && int64_t{t} * 4 < chunks) t *= 2;
  return t;
}

// Note [Spatial launch]
// The kernels parallel over the inner dim (dim not last) run 2-D blocks of <= 256
// threads: x over inner (coalesced), y splitting the row's 4-column Philox blocks
// (quads). blockDim.y sets the summation order of a row, so it depends only on the row
// length and the dtype -- never on the mode or on the shared memory a device offers:
// the soft forward, the soft backward and the hard backward (which regenerates y_soft,
// Note [Regenerated y_soft]) all split a row the same way, whatever each keeps on chip.
// blockDim.x (columns per block) is free, and sized so that the block's x fits in
// shared memory when the kernel needs x twice (soft forward, hard backward): the widest
// power of two <= 32 whose copy fits in kSpatialKeepBytes (four blocks per SM); if even
// the floor -- 32 bytes of logits, one whole sector per row of the tile -- does not fit
// there, the floor with whatever the device lets one block opt in to (fewer blocks per
// SM: 227 KiB on sm_90 holds fp32 and fp64 rows up to 7136 columns, fp16 and bf16 rows
// up to 3568); only rows longer than that draw their noise a second time
// (docs/performance.md, "Spatial kernels").
constexpr int kSpatialKeepBytes = 48 * 1024;

// The narrowest blockDim.x that keeps whole 32-byte sectors: 8 fp32, 4 fp64, 16 fp16/bf16
// columns (fewer when inner is smaller).
template <typename scalar_t>
inline int spatial_min_columns(const Shape& shape) {
  const int widest = 1 << std::min(ceil_log2(shape.inner), 5);
  return std::min(widest, static_cast<int>(32 / sizeof(scalar_t)));
}

struct SpatialLaunch {
  dim3 block;
  bool keep_x;  // x stays in dynamic shared memory between the two passes
  size_t bytes;  // dynamic shared memory
};

// `needs_x_twice`: the soft forward and the hard backward; `smem_bytes`: what one block
// may use in all (the device's opt-in maximum; the emulator passes smaller budgets to
// reach every path). The launchers and tests/emulation/harness.cpp both decide here.
template <typename scalar_t>
inline SpatialLaunch spatial_launch(bool needs_x_twice, const Shape& shape, int64_t smem_bytes) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t quads = ceil_div(shape.length, 4);
  const int min_bx = spatial_min_columns<scalar_t>(shape);
  const int by = 1 << std::min(ceil_log2(quads), ceil_log2(kSpatialThreads / min_bx));
  const int max_bx = std::min(1 << std::min(ceil_log2(shape.inner), 5), kSpatialThreads / by);
  const auto x_bytes = [&](int bx) { return quads * bx * 4 * static_cast<int64_t>(sizeof(acc_t)); };
  if (needs_x_twice) {
    for (int bx = max_bx; bx >= min_bx; bx /= 2) {
      if (x_bytes(bx) <= kSpatialKeepBytes && x_bytes(bx) + kScratchBytes <= smem_bytes) {
        return {dim3(bx, by), true, static_cast<size_t>(x_bytes(bx))};
      }
    }
    if (x_bytes(min_bx) + kScratchBytes <= smem_bytes) {
      return {dim3(min_bx, by), true, static_cast<size_t>(x_bytes(min_bx))};
    }
  }
  return {dim3(max_bx, by), false, 0};
}

inline dim3 spatial_grid(const Shape& shape, dim3 block) {
  return dim3(static_cast<unsigned>(std::min(ceil_div(shape.inner, block.x), kMaxGrid)),
              static_cast<unsigned>(std::min(shape.outer, kMaxGridY)));
}

// The most shared memory (static + dynamic) a block of the current device may opt in to.
inline int max_block_smem() {
  static std::atomic<int> cache[C10_COMPILE_TIME_MAX_GPUS] = {};
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int bytes = cache[device].load(std::memory_order_relaxed);
  if (bytes == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    cache[device].store(bytes, std::memory_order_relaxed);
  }
  return bytes;
}

// What the block-per-row kernels keep in dynamic shared memory for rows of `chunks`
// chunks, given `smem_bytes` a block may use in all (the device's opt-in maximum; the
// emulator passes smaller budgets to reach the regenerating paths). The launchers and
// tests/emulation/harness.cpp both decide through these.
struct ForwardSmem {
  bool keep_x;  // the soft forward keeps x on chip; otherwise its second pass regenerates it
  size_t bytes;
};

template <typename scalar_t>
inline ForwardSmem forward_smem(Mode mode, int64_t chunks, int64_t smem_bytes) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t x_bytes = chunks * chunk_size<scalar_t>() * static_cast<int64_t>(sizeof(acc_t));
  const bool keep_x = mode == Mode::kSoft && x_bytes + kScratchBytes <= smem_bytes;
  return {keep_x, keep_x ? static_cast<size_t>(x_bytes) : 0};
}

struct BackwardSmem {
  bool keep_y, keep_g;  // y_soft (acc_t) and grad (scalar_t) stay on chip
  size_t bytes;
};

// The soft backward keeps nothing: it reads y and g from global memory in both passes
// (the second read of a row hits L2), which takes fewer instructions per element than a
// shared-memory copy (a store, a load and a conversion) -- the copy cost 42.8 SASS per
// element against 14.2 (scripts/sass_budget.py). The hard backward keeps y, which it
// would otherwise regenerate noise and all.
template <typename scalar_t>
inline BackwardSmem backward_smem(bool hard, int64_t chunks, int64_t smem_bytes) {
  using acc_t = at::opmath_type<scalar_t>;
  if (!hard) return {false, false, 0};
  const int64_t budget = smem_bytes - kScratchBytes;
  const int64_t y_bytes = chunks * chunk_size<scalar_t>() * static_cast<int64_t>(sizeof(acc_t));
  const int64_t g_bytes = chunks * chunk_size<scalar_t>() * static_cast<int64_t>(sizeof(scalar_t));
  const bool keep_y = y_bytes <= budget;
  const bool keep_g = (keep_y ? y_bytes : 0) + g_bytes <= budget;
  return {keep_y, keep_g, static_cast<size_t>((keep_y ? y_bytes : 0) + (keep_g ? g_bytes : 0))};
}

// Kernels launched with more than the default 48 KiB of dynamic shared memory opt in.
template <typename Kernel>
inline void allow_dynamic_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  }
}

}  // namespace cuda
}  // namespace gumbel_ext
