// Vector helpers of the CPU kernels: acc types, loads and stores of any dtype as acc
// vectors (whole chunks of a row, or one element of kLanes neighbouring rows), and the
// small reductions. Per ISA, inside gumbel_ext::cpu::CPU_CAPABILITY.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "vec_lanes.h"

namespace gumbel_ext {
namespace cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

template <typename scalar_t>
constexpr bool is_reduced_v = std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>;

template <typename scalar_t>
struct Types {
  using acc_t = at::opmath_type<scalar_t>;
  using aVec = Vectorized<acc_t>;
  // Column indices for argmax, one integer lane per acc lane.
  using idx_t = std::conditional_t<std::is_same_v<acc_t, double>, int64_t, int32_t>;
  using iVec = Vectorized<idx_t>;
  static constexpr int A = aVec::size();
  static constexpr int kVecs = kChunk / A;  // acc vectors per chunk
  static constexpr int kSub = kLanes / A;   // acc vectors per set of kLanes rows
  static_assert(iVec::size() == A, "one index lane per value lane");
};

template <typename acc_t>
constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
template <typename acc_t>
constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();

inline int64_t round_up(int64_t n, int64_t m) {
  return (n + m - 1) / m * m;
}

// ------------------------------------------------------------------ loads and stores
// kChunk consecutive elements <-> kVecs acc vectors.
template <typename scalar_t, typename aVec>
inline void load_chunk(const scalar_t* p, aVec* v) {
  constexpr int A = aVec::size(), n = kChunk / A;
  if constexpr (is_reduced_v<scalar_t>) {
    for (int k = 0; k < n; k += 2) at::vec::load_to_float(p + k * A, v[k], v[k + 1]);
  } else {
    for (int k = 0; k < n; ++k) v[k] = aVec::loadu(p + k * A);
  }
}

template <typename scalar_t, typename aVec>
inline void store_chunk(scalar_t* p, const aVec* v) {
  constexpr int A = aVec::size(), n = kChunk / A;
  if constexpr (is_reduced_v<scalar_t>) {
    for (int k = 0; k < n; k += 2) at::vec::convert_from_float<scalar_t>(v[k], v[k + 1]).store(p + k * A);
  } else {
    for (int k = 0; k < n; ++k) v[k].store(p + k * A);
  }
}

// The first n (< kChunk) elements, the rest `fill`; and the matching partial store.
template <typename scalar_t, typename aVec>
inline void load_chunk_tail(const scalar_t* p, int64_t n, scalar_t fill, aVec* v) {
  scalar_t tmp[kChunk];
  std::fill_n(tmp, kChunk, fill);
  std::copy_n(p, n, tmp);
  load_chunk(tmp, v);
}

template <typename scalar_t, typename aVec>
inline void store_chunk_tail(scalar_t* p, int64_t n, const aVec* v) {
  scalar_t tmp[kChunk];
  store_chunk(tmp, v);
  std::copy_n(tmp, n, p);
}

template <typename scalar_t, typename aVec>
inline void load_chunk_n(const scalar_t* p, int64_t n, scalar_t fill, aVec* v) {
  if (n >= kChunk) {
    load_chunk(p, v);
  } else {
    load_chunk_tail(p, n, fill, v);
  }
}

template <typename scalar_t, typename aVec>
inline void store_chunk_n(scalar_t* p, int64_t n, const aVec* v) {
  if (n >= kChunk) {
    store_chunk(p, v);
  } else {
    store_chunk_tail(p, n, v);
  }
}

// kLanes consecutive elements (the first n of them valid, n <= kLanes) <-> kSub acc vectors.
template <typename scalar_t, typename aVec>
inline void load_lanes(const scalar_t* p, int n, aVec* v) {
  constexpr int A = aVec::size(), sub = kLanes / A;
  if (n < kLanes) {
    scalar_t tmp[kLanes];
    std::fill_n(tmp, kLanes, scalar_t(0));
    std::copy_n(p, n, tmp);
    load_lanes(tmp, kLanes, v);
  } else if constexpr (is_reduced_v<scalar_t>) {
    at::vec::load_to_float(p, v[0]);
  } else {
    for (int s = 0; s < sub; ++s) v[s] = aVec::loadu(p + s * A);
  }
}

template <typename scalar_t, typename aVec>
inline void store_lanes(scalar_t* p, int n, const aVec* v) {
  constexpr int A = aVec::size(), sub = kLanes / A;
  if (n < kLanes) {
    scalar_t tmp[kLanes];
    store_lanes(tmp, kLanes, v);
    std::copy_n(tmp, n, p);
  } else if constexpr (is_reduced_v<scalar_t>) {
    at::vec::convert_from_float<scalar_t>(v[0], v[0]).store(p, kLanes);
  } else {
    for (int s = 0; s < sub; ++s) v[s].store(p + s * A);
  }
}

// Float noise vectors -> acc vectors (a copy for float, widened for double).
inline void noise_to_acc(const fVec* g, int n, fVec* out) {
  std::copy_n(g, n, out);
}

inline void noise_to_acc(const fVec* g, int n, Vectorized<double>* out) {
  constexpr int D = Vectorized<double>::size();
  for (int i = 0; i < n; ++i) {
    __at_align__ float f[kLanes];
    __at_align__ double d[kLanes];
    g[i].store(f);
    for (int j = 0; j < kLanes; ++j) d[j] = static_cast<double>(f[j]);
    for (int s = 0; s < kLanes / D; ++s) out[i * (kLanes / D) + s] = Vectorized<double>::loadu(d + s * D);
  }
}

// y -> acc(scalar_t(y)): the rounding the soft forward applies when it writes y.
template <typename scalar_t, typename aVec>
inline aVec round_to(aVec y) {
  if constexpr (is_reduced_v<scalar_t>) {
    return std::get<0>(at::vec::convert_to_float<scalar_t>(at::vec::convert_from_float<scalar_t>(y, y)));
  } else {
    return y;
  }
}

template <typename acc_t>
inline acc_t reduce_sum(const Vectorized<acc_t>& v) {
  __at_align__ acc_t a[Vectorized<acc_t>::size()];
  v.store(a);
  acc_t s = 0;
  for (int i = 0; i < Vectorized<acc_t>::size(); ++i) s += a[i];
  return s;
}

template <typename acc_t>
inline acc_t nan_max(acc_t a, acc_t b) {
  return (a != a || b != b) ? kNaN<acc_t> : std::max(a, b);
}

template <typename acc_t>
inline acc_t reduce_max(const Vectorized<acc_t>& v) {
  __at_align__ acc_t a[Vectorized<acc_t>::size()];
  v.store(a);
  acc_t m = -kInf<acc_t>;
  for (int i = 0; i < Vectorized<acc_t>::size(); ++i) m = nan_max(m, a[i]);
  return m;
}

// The lowest-index maximum of x over some columns; `nan` when any x was NaN.
template <typename acc_t>
struct ArgMax {
  acc_t value = -kInf<acc_t>;
  int64_t index = 0;
  bool nan = false;
  static ArgMax combine(const ArgMax& a, const ArgMax& b) {
    ArgMax r = (b.value > a.value || (b.value == a.value && b.index < a.index)) ? b : a;
    r.nan = a.nan || b.nan;
    return r;
  }
  // Not finite: the whole row is NaN (Note [Per-row softmax math]).
  bool finite() const { return !nan && std::isfinite(value); }
};

// One step of a per-lane running argmax: lanes where x > best (strict, so ties keep the
// lower index; never for NaN) take x and idx; nan_seen collects the NaN lanes (all-ones).
// idx holds integer column indices as bits.
template <typename aVec>
inline void argmax_step(const aVec& x, const aVec& idx, aVec& best, aVec& best_idx, aVec& nan_seen) {
  const aVec take = x > best;
  best = aVec::blendv(best, x, take);
  best_idx = aVec::blendv(best_idx, idx, take);
  nan_seen = nan_seen | (x != x);
}

#if defined(CPU_CAPABILITY_AVX512)
// The same on mask registers: at::vec's comparisons return vectors, which its blendv turns
// back into masks, three extra instructions per step.
template <>
inline void argmax_step(const fVec& x, const fVec& idx, fVec& best, fVec& best_idx, fVec& nan_seen) {
  const __mmask16 take = _mm512_cmp_ps_mask(x, best, _CMP_GT_OQ);
  best = _mm512_mask_mov_ps(best, take, x);
  best_idx = _mm512_mask_mov_ps(best_idx, take, idx);
  nan_seen = _mm512_mask_mov_ps(nan_seen, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q),
                                _mm512_castsi512_ps(_mm512_set1_epi32(-1)));
}
#endif

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace gumbel_ext
