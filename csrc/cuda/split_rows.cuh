// Long rows split across several blocks (issue #11): the building blocks of the split
// kernels (split_forward_kernels.cuh, split_backward_kernels.cuh) -- where a block's
// slice of its row lies, what its dynamic shared memory holds, and how the P blocks of
// a row exchange their partial results.
//
// Note [Split rows]
// A row of C >= kSplitMinLength columns is cut into P slices (P a power of two, 2..16)
// on whole chunks (4 columns, 8 for the half types: whole Philox blocks, so the noise
// of every (seed, offset, row, column) is the one of gumbel_noise.h, drawn once). The
// block of slice p keeps its slice's x = logit + noise in shared memory, reduces its
// partial (max, sum of exp2) -- or argmax, or sum g y -- and the P partials are
// exchanged and folded in the fixed order 0, 1, .., P-1, so every block of the row gets
// bit-identical row statistics and every run the same bits. Then each block writes its
// slice from shared memory. Two exchanges:
//   - sm_90: the P blocks form a thread-block cluster; a block reads the others'
//     partials from their shared memory (distributed shared memory) after a cluster
//     barrier (one per exchange, two alternating slot sets), and a last barrier keeps
//     every block (and its shared memory) alive until the others have read it.
//   - sm_80 (no clusters): the partials go through a small global workspace; thread 0
//     of each block publishes its partial with a release add on its row group's counter
//     and waits (acquire) until all P have arrived. Spinning needs every block of a
//     group resident at once: the grid is a cooperative launch of at most occupancy x
//     SMs blocks, and groups of P consecutive blocks loop over the rows.
// Host side (split_rows.cu) chooses P once for the forward AND the backward, so a hard
// backward regenerates y_soft with the soft forward's slices and order (Note
// [Regenerated y_soft]).
#pragma once

#include "rows.cuh"

#if !defined(GUMBEL_EXT_HOST_EMULATION)
#include <cooperative_groups.h>
#endif

namespace gumbel_ext {
namespace cuda {

// Rows at least this long may be split; shorter rows fit a block's registers and
// shared memory and are cheap already.
constexpr int64_t kSplitMinLength = 8192;
// Slice size the split aims at: x of a 64 KiB slice (16k fp32 columns) leaves room for
// three blocks per SM (228 KiB), so one block's loads overlap another's stores.
constexpr int64_t kSplitSliceBytes = 64 * 1024;
// Most threads of a split block, and the blocks per SM the kernels are compiled for
// (__launch_bounds__: 80 registers at most): three 256-thread blocks with 64 KiB slices
// share an SM.
constexpr int kSplitThreads = 256;
constexpr int kSplitBlocksPerSM = 3;
// P is at most 8 with clusters (the portable cluster size; a non-portable 16 would
// depend on how a GPC's SMs are laid out), 16 with the workspace exchange.
constexpr int kMaxPortableSplit = 8;
constexpr int kMaxSplit = 16;
// Exchange slots: 16 bytes each (MaxSum / ArgMax of double), two per kind of exchange
// sequence (see SplitExchange), kMaxSplit wide.
constexpr int kSplitSlotBytes = 16;
constexpr int kSplitSlotSets = 2;

// Dynamic shared memory of a split block: the block reduction's scratch, the exchange
// slots, then (when the kernel keeps it) x of the slice, chunk k - first at xs + (k - first) * V.
// Everything lives in dynamic shared memory -- no __shared__ array -- so that the
// emulator can give each of a cluster's concurrent blocks its own copy.
constexpr size_t kSplitSlotsOffset = kScratchBytes;
constexpr size_t kSplitXsOffset = kSplitSlotsOffset + size_t{kSplitSlotSets} * kMaxSplit * kSplitSlotBytes;

// The split of a row: P slices of `slice_chunks` chunks (the last one shorter, or
// even empty) and the threads of each block.
struct SplitShape {
  int parts = 0;
  int threads = 0;
  int64_t slice_chunks = 0;
};

// The sm_80 exchange's global memory: counters[g] (zeroed before the launch) counts the
// partials published by row group g; partials[g][set][p] holds them.
struct SplitWorkspace {
  unsigned long long* counters = nullptr;
  unsigned char* partials = nullptr;
};

// ------------------------------------------------------- device primitives
// The cluster and atomic operations the exchanges use, in one place so that the emulator
// (tests/emulation/simt.h) can stand in for them.
#if defined(GUMBEL_EXT_HOST_EMULATION)
inline void split_cluster_sync() { ::simt::cluster_sync(); }
inline int split_cluster_rank() { return ::simt::cluster_rank(); }
template <typename T>
inline const T* split_cluster_map(const T* p, int rank) {
  return static_cast<const T*>(::simt::cluster_map(p, rank));
}
inline void split_publish(unsigned long long* counter) { ::simt::atomic_add_release(counter, 1); }
inline unsigned long long split_load_acquire(const unsigned long long* counter) {
  return ::simt::load_acquire(counter);
}
inline void split_backoff() { ::simt::backoff(); }
#else
// Cluster barrier with release / acquire semantics at cluster scope: shared-memory
// writes before it are visible to every block of the cluster after it.
__device__ __forceinline__ void split_cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().sync();
#else
  __trap();  // the cluster kernels are launched on sm_90 and later only
#endif
}
__device__ __forceinline__ int split_cluster_rank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return static_cast<int>(cooperative_groups::this_cluster().block_rank());
#else
  return 0;
#endif
}
template <typename T>
__device__ __forceinline__ const T* split_cluster_map(const T* p, int rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().map_shared_rank(const_cast<T*>(p), rank);
#else
  return p;
#endif
}
// Release: this thread's earlier writes (its partial) are visible to whoever acquires
// the counter value it produced. GPU scope: the row's blocks may run on any SM.
__device__ __forceinline__ void split_publish(unsigned long long* counter) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
  asm volatile("red.release.gpu.add.u64 [%0], 1;" : : "l"(counter) : "memory");
#else
  __threadfence();  // pre-Volta: a fence, then a plain atomic
  atomicAdd(counter, 1ull);
#endif
}
__device__ __forceinline__ unsigned long long split_load_acquire(const unsigned long long* counter) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
  unsigned long long v;
  asm volatile("ld.acquire.gpu.u64 %0, [%1];" : "=l"(v) : "l"(counter) : "memory");
  return v;
#else
  const unsigned long long v = *static_cast<const volatile unsigned long long*>(counter);
  __threadfence();
  return v;
#endif
}
__device__ __forceinline__ void split_backoff() {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
  __nanosleep(64);
#endif
}
#endif

// ------------------------------------------------------------------ exchange
// all_reduce(mine, op): every block of the row passes its block-reduced partial (the
// same in all its threads) and every thread gets op folded over the P partials in the
// order 0 .. P-1; finish() once, by every thread, before the kernel returns. The two exchanges have one
// interface so that the kernels are written once.
template <bool kCluster>
struct SplitExchange;

template <>
struct SplitExchange<true> {
  int parts, part;
  unsigned char* slots;
  unsigned sequence = 0;  // exchanges done: each uses slot set sequence % 2

  __device__ __forceinline__ SplitExchange(int parts_, unsigned char* smem, const SplitWorkspace&)
      : parts(parts_), part(split_cluster_rank()), slots(smem + kSplitSlotsOffset) {}

  __device__ __forceinline__ int64_t first_row() const { return blockIdx.x / parts; }
  __device__ __forceinline__ int64_t row_stride() const { return gridDim.x / parts; }

  // Exchange number n (counted over all rows) uses set n % 2: a block's slot of that set
  // is its own shared memory at slots + (n % 2) * 16, which the others read through the
  // cluster right after this exchange's barrier. The set is written again at exchange
  // n + 2, after exchange n + 1's barrier, which every block passes only once it has
  // read set n % 2: no block overwrites a partial still being read, with one barrier
  // per exchange.
  template <typename T, typename Op>
  __device__ __forceinline__ T all_reduce(T mine, const Op& op) {
    static_assert(sizeof(T) <= kSplitSlotBytes, "exchange slot");
    T* own = reinterpret_cast<T*>(slots + (sequence++ % kSplitSlotSets) * kSplitSlotBytes);
    if (threadIdx.x == 0) *own = mine;
    split_cluster_sync();
    T acc = *split_cluster_map(own, 0);
    for (int q = 1; q < parts; ++q) acc = op(acc, *split_cluster_map(own, q));
    return acc;
  }

  // A block may not exit while another still reads its shared memory: one last cluster
  // barrier, by every thread of every block of the cluster.
  __device__ __forceinline__ void finish() { split_cluster_sync(); }
};

template <>
struct SplitExchange<false> {
  int parts, part;
  unsigned char* slots;
  SplitWorkspace ws;
  int64_t group;
  unsigned sequence = 0;

  __device__ __forceinline__ SplitExchange(int parts_, unsigned char* smem, const SplitWorkspace& ws_)
      : parts(parts_), part(static_cast<int>(blockIdx.x % parts_)), slots(smem + kSplitSlotsOffset), ws(ws_),
        group(blockIdx.x / parts_) {}

  __device__ __forceinline__ int64_t first_row() const { return group; }
  __device__ __forceinline__ int64_t row_stride() const { return gridDim.x / parts; }

  // Exchange number n of this group publishes into set n % 2 and waits for the counter
  // to reach (n + 1) * P. A block writes set s again at exchange n + 2, after passing
  // exchange n + 1, which every block of the group reached only after thread 0 had
  // copied set s out: two sets suffice. Thread 0 copies all P partials into the block's
  // shared slots, so the other threads read only what a __syncthreads orders after its
  // acquire.
  template <typename T, typename Op>
  __device__ __forceinline__ T all_reduce(T mine, const Op& op) {
    static_assert(sizeof(T) <= kSplitSlotBytes, "exchange slot");
    const unsigned n = sequence++;
    unsigned char* set = ws.partials + ((group * kSplitSlotSets + n % kSplitSlotSets) * kMaxSplit) * kSplitSlotBytes;
    unsigned char* local = slots + (n % kSplitSlotSets) * kMaxSplit * kSplitSlotBytes;
    if (threadIdx.x == 0) {
      *reinterpret_cast<T*>(set + part * kSplitSlotBytes) = mine;
      split_publish(ws.counters + group);
      const unsigned long long target = (static_cast<unsigned long long>(n) + 1) * static_cast<unsigned>(parts);
      while (split_load_acquire(ws.counters + group) < target) split_backoff();
      for (int q = 0; q < parts; ++q) {
        *reinterpret_cast<T*>(local + q * kSplitSlotBytes) = *reinterpret_cast<const T*>(set + q * kSplitSlotBytes);
      }
    }
    __syncthreads();
    T acc = *reinterpret_cast<const T*>(local);
    for (int q = 1; q < parts; ++q) acc = op(acc, *reinterpret_cast<const T*>(local + q * kSplitSlotBytes));
    return acc;
  }

  // Nothing of this block is read by others: it may simply exit.
  __device__ __forceinline__ void finish() {}
};

// The chunks [first, end) of slice `part`.
struct Slice {
  int64_t first, end;
  __device__ __forceinline__ Slice(const SplitShape& s, int part, int64_t chunks)
      : first(std::min(chunks, part * s.slice_chunks)), end(std::min(chunks, (part + 1) * s.slice_chunks)) {}
};

// block_stats (rows.cuh) over one slice: thread t takes chunks first + t, first + t + T,
// ..., U at a time, keeps x in xs (relative to the slice) and returns the block's
// partial (max, sum of exp2).
template <int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ MaxSum<acc_t> slice_stats(const scalar_t* __restrict__ row, int64_t length,
                                                     const Slice& sl, bool aligned, uint64_t seed,
                                                     uint64_t offset, uint64_t r, acc_t scale, acc_t* xs,
                                                     void* scratch) {
  constexpr int U = chunks_in_flight<acc_t, V>();
  MaxSum<acc_t> st = max_sum_identity<acc_t>();
  for (int64_t k0 = sl.first + threadIdx.x; k0 < sl.end; k0 += U * int64_t{blockDim.x}) {
    acc_t x[U][V];
    perturbed_chunks<U>(row, k0, blockDim.x, sl.end, length, aligned, seed, offset, r, x);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t k = k0 + u * int64_t{blockDim.x};
      if (k >= sl.end) break;
      smem_store_chunk<V>(xs, k - sl.first, x[u]);
    }
    max_sum_add_chunks(st, x, scale);
  }
  return block_allreduce(st, MaxSumExp2Op<acc_t>{scale}, max_sum_identity<acc_t>(), scratch);
}

}  // namespace cuda
}  // namespace gumbel_ext

namespace gumbel_ext {
namespace cuda {

// ---------------------------------------------------------------------- host
// What a device offers the split: its SMs, the shared memory a block may opt in to, and
// the largest P its exchange allows.
struct SplitDevice {
  int sms = 0;
  int64_t smem_bytes = 0;
  int max_parts = 0;
};

// P slices of a row of `length` columns; threads: about eight chunks each, 128 ..
// max_threads (the emulation tests pass fewer). The kernels accept any multiple of 32.
template <typename scalar_t>
inline SplitShape split_shape(int parts, int64_t length, int max_threads = kSplitThreads) {
  const int64_t slice = ceil_div(ceil_div(length, chunk_size<scalar_t>()), parts);
  int threads = std::min(128, max_threads);
  while (threads < max_threads && int64_t{threads} * 8 < slice) threads *= 2;
  SplitShape s;
  s.parts = parts;
  s.threads = threads;
  s.slice_chunks = slice;
  return s;
}

// Dynamic shared memory of a split block, with or without the slice's x.
template <typename scalar_t>
inline size_t split_smem(const SplitShape& s, bool keep_x) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t x_bytes = s.slice_chunks * chunk_size<scalar_t>() * static_cast<int64_t>(sizeof(acc_t));
  return kSplitXsOffset + (keep_x ? static_cast<size_t>(x_bytes) : 0);
}

// Whether and how to split rows of `length` columns: parts = 0 means "do not" (the
// block-per-row kernels take them). P, a power of two, is the larger of
//   - the fewest slices whose x fits kSplitSliceBytes (several blocks per SM), and
//   - the fewest that give 2 x SMs blocks in all (64 rows of 128k fill 132 SMs),
// capped at dev.max_parts. Rows shorter than kSplitMinLength, rows whose P would be 1,
// and rows whose slice at the largest P does not fit on chip are not split.
// forward.cu and backward.cu both decide here: a hard backward must regenerate y_soft
// with the soft forward's split (Note [Regenerated y_soft]).
template <typename scalar_t>
inline SplitShape choose_split(int64_t rows, int64_t length, const SplitDevice& dev) {
  using acc_t = at::opmath_type<scalar_t>;
  if (length < kSplitMinLength || dev.max_parts < 2) return {};
  const int64_t x_bytes = ceil_div(length, chunk_size<scalar_t>()) * chunk_size<scalar_t>() *
                          static_cast<int64_t>(sizeof(acc_t));
  int parts = 1;
  while (parts < dev.max_parts && ceil_div(x_bytes, parts) > kSplitSliceBytes) parts *= 2;
  while (parts < dev.max_parts && rows * parts < 2 * int64_t{dev.sms}) parts *= 2;
  if (parts < 2) return {};
  const SplitShape s = split_shape<scalar_t>(parts, length);
  if (static_cast<int64_t>(split_smem<scalar_t>(s, true)) > dev.smem_bytes) return {};
  return s;
}

}  // namespace cuda
}  // namespace gumbel_ext
