// 16-byte accesses for rows that do not start on a 16-byte boundary, with every chunk
// still on its Philox blocks (Note [Misaligned rows]).
#pragma once

#include "common.cuh"

namespace gumbel_ext {
namespace cuda {

// Note [Misaligned rows]
// A row of one tensor that starts m elements past a 16-byte boundary (an fp32 row of a
// 50257-column tensor: 3 rows in 4; a view at a storage offset) keeps its chunks where
// they are: chunk k is columns kV .. kV+V-1, whole Philox blocks, so every draw is
// computed once and every thread sums the same values in the same order as on an
// aligned row. Only the memory side moves onto the 16-byte grid:
//   - a load takes the aligned 16-byte vectors that cover the chunk (fp32 and the half
//     types: the two around it; the first overlaps the previous chunk, whose thread
//     loads it too -- an L1 hit) and funnels the chunk's bytes out of them: one select
//     per word and byte shift in fp32 (the shift is the row's, known at run time), plus
//     a funnel shift per word for the half types. fp64 rows are misaligned by exactly
//     8 bytes: an 8-byte, a 16-byte and an 8-byte access, no select.
//   - a store writes the aligned vector that starts inside the chunk: its own last m
//     elements and the next chunk's first V - m, which the next chunk's lane hands over
//     by warp shuffles in the warp-per-row kernels (next_chunk_words), and which a
//     one-hot computes itself (one_hot_next). The row's head (before its first 16-byte
//     boundary) and its tail go column by column. fp64 again needs no neighbour: 8 + 16
//     + 8 bytes.
//   - the block-per-row kernels: loads as above for the half types and fp64, and the
//     one-hot stores; the fp32 forward loads (four chunks in flight, two vectors each,
//     spilled under the 64-register cap: block_load_alignment), the soft forward's stores
//     and the whole backward stay column by column. Their next chunk sits in lane + 1
//     but across warps; shuffling within full warps made the backward's misaligned rows
//     cost MORE than the scalar accesses (static SASS per element, fp32: soft 67.2
//     against 30.0, hard on chip 126.7 against 86.2), and warp-uniform loops cost the
//     aligned rows 2..3.5 (62.7 -> 66.2 soft forward on chip, 14.2 -> 16.0 soft
//     backward). The soft forward's shuffled stores spilled (332 B on sm_80).
// Each tensor of a kernel (logits and out; grad, saved and grad_logits) has its own
// shift. The SASS probe's "misaligned rows" entries (scripts/sass_budget.py) count this
// path with the shift a run-time value, as a real row has it; docs/performance.md,
// "Per-row vector loads", has the numbers.
#if defined(GUMBEL_EXT_SASS_MISALIGNED) && GUMBEL_EXT_SASS_MISALIGNED
constexpr bool kProbeMisaligned = true;
#else
constexpr bool kProbeMisaligned = false;
#endif

// Where a row of one tensor sits on the 16-byte grid: `shift` elements past a boundary
// (0: aligned).
struct RowAlignment {
  int shift;
};

// The row `start` elements into the tensor at `base` (null: never accessed, 0).
template <typename scalar_t>
__host__ __device__ __forceinline__ RowAlignment row_alignment(int64_t start, const void* base) {
  const uint32_t bytes = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(base)) +
                         static_cast<uint32_t>(start) * static_cast<uint32_t>(sizeof(scalar_t));
  return {static_cast<int>(bytes % 16 / sizeof(scalar_t))};
}

// The alignment a block-per-row FORWARD kernel loads with: fp32 keeps four chunks in
// flight (chunks_in_flight), and their two vectors each spilled under the 64-register
// cap of 1024-thread blocks (48 B on sm_80), so its misaligned rows load column by
// column (the bool form, row_vectorizable's rule per tensor); the half types (two chunks
// in flight) and fp64 (one) take the RowAlignment.
template <typename scalar_t>
__device__ __forceinline__ auto block_load_alignment(int64_t start, const void* base) {
  const RowAlignment a = row_alignment<scalar_t>(start, base);
  if constexpr (sizeof(scalar_t) == 4) {
    return a.shift == 0;
  } else {
    return a;
  }
}

// 32-bit words of a chunk, and how many of the next chunk's words a realigned store can
// need (the next chunk supplies 16 - shift * sizeof bytes: at most 12 in fp32, 14 in
// the half types).
template <typename scalar_t, int V>
constexpr int chunk_words() {
  return V * static_cast<int>(sizeof(scalar_t)) / 4;
}
template <typename scalar_t>
constexpr int next_words() {
  return sizeof(scalar_t) == 4 ? 3 : 4;
}

// The bits of one element, and back (no memcpy of whole chunks: nvcc copied those
// through local memory).
__device__ __forceinline__ uint32_t element_bits(float v) { return float_bits(v); }
__device__ __forceinline__ float bits_element(uint32_t b, float) { return bits_float(b); }
template <typename H>  // c10::Half, c10::BFloat16: the bits are the public member x
__device__ __forceinline__ uint32_t element_bits(H v) {
  return v.x;
}
template <typename H>
__device__ __forceinline__ H bits_element(uint32_t b, H) {
  return H(static_cast<unsigned short>(b), H::from_bits());
}

// A chunk's elements as 32-bit words (the half types two per word, low first) and back.
template <typename scalar_t, int V, typename acc_t>
__device__ __forceinline__ void to_words(const acc_t (&v)[V], uint32_t (&w)[chunk_words<scalar_t, V>()]) {
  static_assert(sizeof(scalar_t) <= 4, "fp64 rows need no words");
  if constexpr (sizeof(scalar_t) == 4) {
#pragma unroll
    for (int i = 0; i < V; ++i) w[i] = element_bits(static_cast<scalar_t>(v[i]));
  } else {
#pragma unroll
    for (int i = 0; i < V / 2; ++i) {
      w[i] = element_bits(static_cast<scalar_t>(v[2 * i])) | (element_bits(static_cast<scalar_t>(v[2 * i + 1])) << 16);
    }
  }
}

template <typename scalar_t, int V, typename acc_t>
__device__ __forceinline__ void from_words(const uint32_t (&w)[chunk_words<scalar_t, V>()], acc_t (&v)[V]) {
  static_assert(sizeof(scalar_t) <= 4, "fp64 rows need no words");
  if constexpr (sizeof(scalar_t) == 4) {
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = static_cast<acc_t>(bits_element(w[i], scalar_t{}));
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = static_cast<acc_t>(bits_element((w[i / 2] >> (16 * (i % 2))) & 0xffffu, scalar_t{}));
  }
}

// out = bytes `shift_bytes` .. shift_bytes + 16 of the 32 bytes in `cat` (0 < shift_bytes
// < 16, a multiple of the element size): fp32 picks each word among three (two selects on
// predicates set once per row); the half types pick words by shift_bytes / 4 in two
// levels, then funnel-shift by 0 or 16 bits.
template <typename scalar_t>
__device__ __forceinline__ void funnel16(const uint32_t (&cat)[8], int shift_bytes, uint32_t (&out)[4]) {
  const int q = shift_bytes / 4;
  if constexpr (sizeof(scalar_t) == 4) {
#pragma unroll
    for (int w = 0; w < 4; ++w) out[w] = q == 1 ? cat[w + 1] : q == 2 ? cat[w + 2] : cat[w + 3];
  } else {
    static_assert(sizeof(scalar_t) == 2, "fp64 rows need no funnel");
    uint32_t t1[7], t[5];
#pragma unroll
    for (int i = 0; i < 7; ++i) t1[i] = (q & 1) ? cat[i + 1] : cat[i];
#pragma unroll
    for (int i = 0; i < 5; ++i) t[i] = (q & 2) ? t1[i + 2] : t1[i];
    const int bits = (shift_bytes % 4) * 8;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      out[w] = static_cast<uint32_t>(((static_cast<uint64_t>(t[w + 1]) << 32) | t[w]) >> bits);
    }
  }
}

template <typename T, int N>
__device__ __forceinline__ void load_vector(const T* p, T (&v)[N]) {
  static_assert(sizeof(T) * N == 16, "one 16-byte access");
  GUMBEL_VECTOR_ACCESS(p, 16);
  const Pack<T, N> pack = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = pack.v[i];
}

template <typename T, int N>
__device__ __forceinline__ void store_vector(T* p, const T (&v)[N]) {
  static_assert(sizeof(T) * N == 16, "one 16-byte access");
  GUMBEL_VECTOR_ACCESS(p, 16);
  Pack<T, N> pack;
#pragma unroll
  for (int i = 0; i < N; ++i) pack.v[i] = v[i];
  *reinterpret_cast<Pack<T, N>*>(p) = pack;
}

// load_chunk for a row at alignment `a`: an aligned row as load_chunk(aligned = true), a
// misaligned one as Note [Misaligned rows] says; the row's first chunk and chunks whose
// vectors would leave the row go column by column. Columns >= length read as `fill`.
template <int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_chunk(const scalar_t* __restrict__ row, int64_t c0, int64_t length,
                                           RowAlignment a, acc_t (&v)[V], acc_t fill) {
  if (GUMBEL_RUNTIME(a.shift == 0, !kProbeMisaligned)) {
    load_chunk<V>(row, c0, length, true, v, fill);
    return;
  }
  if constexpr (sizeof(scalar_t) == 8) {
    static_assert(V == 4, "fp64 chunk: 8 + 16 + 8 bytes");
    // (one path with per-column tests: a separate tail path spilled the fp64 backward)
    v[0] = c0 < length ? static_cast<acc_t>(row[c0]) : fill;
    if (GUMBEL_RUNTIME(c0 + 3 <= length, true)) {
      scalar_t mid[2];
      load_vector(row + c0 + 1, mid);
      v[1] = static_cast<acc_t>(mid[0]);
      v[2] = static_cast<acc_t>(mid[1]);
    } else {
      v[1] = c0 + 1 < length ? static_cast<acc_t>(row[c0 + 1]) : fill;
      v[2] = fill;  // c0 + 2 >= length here
    }
    v[3] = c0 + 3 < length ? static_cast<acc_t>(row[c0 + 3]) : fill;
    return;
  } else {
    static_assert(V * sizeof(scalar_t) == 16, "one 16-byte vector per chunk");
    // The vectors at c0 - shift and c0 - shift + V, both inside the row.
    if (GUMBEL_RUNTIME(c0 > 0 && c0 - a.shift + 2 * V <= length, true)) {
      uint32_t cat[8], lo[4], hi[4], out[4];
      // (row - shift is the same for every chunk of the row: one address per row.)
      const uint32_t* p = reinterpret_cast<const uint32_t*>((row - a.shift) + c0);
      load_vector(p, lo);
      load_vector(p + 4, hi);
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        cat[w] = lo[w];
        cat[w + 4] = hi[w];
      }
      funnel16<scalar_t>(cat, a.shift * static_cast<int>(sizeof(scalar_t)), out);
      from_words<scalar_t, V>(out, v);
      return;
    }
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = c0 + i < length ? static_cast<acc_t>(row[c0 + i]) : fill;
  }
}

// The next chunk's first words (next_words) as a realigned store needs them, and
// whether they came: `have` is false where the next chunk's lane is not reachable.
template <typename scalar_t>
struct NextChunk {
  uint32_t w[next_words<scalar_t>()];
  bool have;
};

// Whether any lane of the warp stores a misaligned row: the one vote a warp-per-row
// kernel needs before next_chunk_words (the probe fixes it).
__device__ __forceinline__ bool warp_any_misaligned(RowAlignment a) {
  return GUMBEL_RUNTIME(__any_sync(0xffffffffu, a.shift != 0), kProbeMisaligned);
}

// For chunk j of a warp-per-row kernel (lane lw of W holds chunks j * W + lw): the first
// words of chunk j * W + lw + 1, from lane lw + 1, or for the last lane from lane 0's
// chunk of j + 1; the values stored are f(y). The whole warp must call it, one j at a
// time right before that chunk's store (all J at once kept too many words live: the
// warp backward spilled). `misaligned` must be the same on every lane of the warp; false
// skips the shuffles (aligned rows need no neighbour).
template <typename scalar_t, int W, int J, int V, typename acc_t, typename F>
__device__ __forceinline__ NextChunk<scalar_t> next_chunk_words(const acc_t (&y)[J][V], int j, int lw,
                                                                bool misaligned, const F& f) {
  NextChunk<scalar_t> next{};
  next.have = misaligned && (lw + 1 < W || j + 1 < J);
  if constexpr (sizeof(scalar_t) <= 4) {  // fp64 stores need no neighbour
    if (!GUMBEL_RUNTIME(misaligned, kProbeMisaligned)) return next;
    const bool ahead = j + 1 < J && lw == 0;  // lane 0 sends its chunk of j + 1
    acc_t v[V];
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = f(ahead ? y[j + 1 < J ? j + 1 : j][i] : y[j][i]);
    uint32_t own[chunk_words<scalar_t, V>()];
    to_words<scalar_t, V>(v, own);
#pragma unroll
    for (int w = 0; w < next_words<scalar_t>(); ++w) next.w[w] = __shfl_sync(0xffffffffu, own[w], lw + 1, W);
  }
  return next;
}

// store_chunk for a row at alignment `a`. A misaligned chunk writes its head (the columns
// before its first 16-byte boundary) column by column only when the previous chunk's
// lane could not (`prev_has` false: the previous chunk's lane did not get this one's
// words), and the vector that starts inside it when `next` came; else its own columns of
// that vector one by one. Columns >= length are never written.
template <int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_chunk(scalar_t* __restrict__ row, int64_t c0, int64_t length,
                                            RowAlignment a, const acc_t (&v)[V],
                                            const NextChunk<scalar_t>& next, bool prev_has) {
  if (GUMBEL_RUNTIME(a.shift == 0, !kProbeMisaligned)) {
    store_chunk<V>(row, c0, length, true, v);
    return;
  }
  if constexpr (sizeof(scalar_t) == 8) {
    static_assert(V == 4, "fp64 chunk: 8 + 16 + 8 bytes");
    if (GUMBEL_RUNTIME(c0 + V <= length, true)) {
      const scalar_t mid[2] = {static_cast<scalar_t>(v[1]), static_cast<scalar_t>(v[2])};
      row[c0] = static_cast<scalar_t>(v[0]);
      store_vector(row + c0 + 1, mid);
      row[c0 + 3] = static_cast<scalar_t>(v[3]);
      return;
    }
#pragma unroll
    for (int i = 0; i < V; ++i)
      if (c0 + i < length) row[c0 + i] = static_cast<scalar_t>(v[i]);
  } else {
    static_assert(V * sizeof(scalar_t) == 16, "one 16-byte vector per chunk");
    const int head = V - a.shift;  // columns c0 .. c0 + head - 1 lie before the boundary
    // The previous chunk's vector holds the head when it got it and lies in the row.
    const bool head_done = GUMBEL_RUNTIME(prev_has && c0 > 0 && c0 + head <= length, true);
    const bool vector = GUMBEL_RUNTIME(next.have && c0 + head + V <= length, true);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const bool mine = i < head ? !head_done : !vector;
      if (mine && c0 + i < length) row[c0 + i] = static_cast<scalar_t>(v[i]);
    }
    if (vector) {
      uint32_t own[4], cat[8], out[4];
      to_words<scalar_t, V>(v, own);
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        cat[w] = own[w];
        cat[4 + w] = w < next_words<scalar_t>() ? next.w[w] : 0u;
      }
      funnel16<scalar_t>(cat, head * static_cast<int>(sizeof(scalar_t)), out);
      store_vector(reinterpret_cast<uint32_t*>((row - a.shift) + (c0 + V)), out);
    }
  }
}

// A store with no neighbour: the row's misaligned chunks go column by column, except
// fp64's middle 16 bytes.
template <int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_chunk(scalar_t* __restrict__ row, int64_t c0, int64_t length,
                                            RowAlignment a, const acc_t (&v)[V]) {
  if (GUMBEL_RUNTIME(a.shift == 0, !kProbeMisaligned)) {
    store_chunk<V>(row, c0, length, true, v);
    return;
  }
  if constexpr (sizeof(scalar_t) == 8) {
    NextChunk<scalar_t> none{};
    none.have = false;
    store_chunk<V>(row, c0, length, a, v, none, false);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i)
      if (c0 + i < length) row[c0 + i] = static_cast<scalar_t>(v[i]);
  }
}

}  // namespace cuda
}  // namespace gumbel_ext
