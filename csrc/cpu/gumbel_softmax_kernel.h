// The fused CPU kernels, vectorized with at::vec: noise, temperature, softmax / one-hot,
// backward, noise and sample. Compiled once per ISA by isa/kernels_*.cpp (see Note
// [Per-ISA CPU kernels] in kernel_table.h); everything here is in that ISA's namespace.
//
// Two walks over the data, both without copies of the logits:
//   * rows along the last dim (inner == 1): a row is processed in chunks of kChunk
//     columns, one Philox vector call per chunk (NoiseStream::row_block). Rows are spread over
//     threads; when there are too few rows for the cores, each row is split into
//     chunk-aligned column ranges instead (see Note [Splitting a row]).
//   * dim not last (inner > 1): kLanes neighbouring rows (consecutive `inner` indices)
//     are the SIMD lanes, so every load is contiguous and the max / sum reductions are
//     plain per-lane vector ops (NoiseStream::rows_block).
// The math is Note [Per-row softmax math] in gumbel_noise.h; a row whose max is not finite
// comes out NaN. Half types are widened to float on load (acc_t = at::opmath_type).
#pragma once

#ifndef CPU_CAPABILITY
#error "gumbel_softmax_kernel.h is compiled through csrc/cpu/isa/kernels_*.cpp"
#endif

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <type_traits>
#include <vector>

#include "kernel_table.h"
#include "vec_lanes.h"

namespace gumbel_ext {
namespace cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// Elements a parallel_for task should cover: big enough to amortize the task, small
// enough to keep every core busy on a few thousand rows.
constexpr int64_t kGrainElements = 32768;

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

// --------------------------------------------------------------------- row pieces
// One row of the [outer, length, inner] tensor as the noise sees it.
struct RowNoise {
  const NoiseStream& stream;
  uint64_t row;
};

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

// x = logit + g for columns [c0, c1) into buf (the row's last chunk padded with -inf);
// returns max x (NaN if any x is NaN). c0 is a multiple of kChunk.
template <typename scalar_t, typename acc_t = typename Types<scalar_t>::acc_t>
acc_t perturb_range(const scalar_t* l, int64_t c0, int64_t c1, const RowNoise& rn, acc_t* buf) {
  using T = Types<scalar_t>;
  using aVec = typename T::aVec;
  aVec vmax(-kInf<acc_t>);
  for (int64_t c = c0; c < c1; c += kChunk) {
    fVec g[4];
    rn.stream.row_block(rn.row, static_cast<uint64_t>(c / 4), g);
    aVec gn[T::kVecs], x[T::kVecs];
    noise_to_acc(g, 4, gn);
    load_chunk_n(l + c, c1 - c, scalar_t(-kInf<float>), x);
    for (int k = 0; k < T::kVecs; ++k) {
      x[k] = x[k] + gn[k];
      x[k].store(buf + c + k * T::A);
      vmax = at::vec::maximum(vmax, x[k]);
    }
  }
  return reduce_max(vmax);
}

// Argmax of logit + g over columns [c0, c1), without storing x. c1 - c0 < 2^31.
template <typename scalar_t, typename acc_t = typename Types<scalar_t>::acc_t>
ArgMax<acc_t> argmax_segment(const scalar_t* l, int64_t c0, int64_t c1, const RowNoise& rn) {
  using T = Types<scalar_t>;
  using aVec = typename T::aVec;
  using iVec = typename T::iVec;
  using idx_t = typename T::idx_t;
  // Indices ride in acc vectors as integer bit patterns (blends move bits, no arithmetic).
  aVec best(-kInf<acc_t>), nan_seen(0), best_idx(0);
  iVec idx = iVec::arange(0, 1);
  const iVec step(static_cast<idx_t>(T::A));
  for (int64_t c = c0; c < c1; c += kChunk) {
    fVec g[4];
    rn.stream.row_block(rn.row, static_cast<uint64_t>(c / 4), g);
    aVec gn[T::kVecs], x[T::kVecs];
    noise_to_acc(g, 4, gn);
    load_chunk_n(l + c, c1 - c, scalar_t(-kInf<float>), x);
    for (int k = 0; k < T::kVecs; ++k) {
      x[k] = x[k] + gn[k];
      const aVec take = x[k] > best;  // strict: ties keep the lower index
      best = aVec::blendv(best, x[k], take);
      best_idx = aVec::blendv(best_idx, at::vec::cast<acc_t>(idx), take);
      nan_seen = nan_seen | (x[k] != x[k]);
      idx = idx + step;
    }
  }
  __at_align__ acc_t value[T::A], nan[T::A];
  __at_align__ idx_t index[T::A];
  best.store(value);
  best_idx.store(index);  // the bits back as integers
  nan_seen.store(nan);
  ArgMax<acc_t> r;
  for (int i = 0; i < T::A; ++i) {
    ArgMax<acc_t> lane;
    lane.value = value[i];
    lane.index = c0 + static_cast<int64_t>(index[i]);
    lane.nan = nan[i] != 0;  // all-ones bits (a NaN) or zero
    r = ArgMax<acc_t>::combine(r, lane);
  }
  return r;
}

template <typename scalar_t, typename acc_t = typename Types<scalar_t>::acc_t>
ArgMax<acc_t> argmax_range(const scalar_t* l, int64_t c0, int64_t c1, const RowNoise& rn) {
  constexpr int64_t kSegment = int64_t(1) << 30;  // int32 lane indices stay exact
  ArgMax<acc_t> r;
  for (int64_t s = c0; s < c1; s += kSegment) {
    r = ArgMax<acc_t>::combine(r, argmax_segment(l, s, std::min(c1, s + kSegment), rn));
  }
  return r;
}

// e = exp((x - x_max) * inv_tau) in place over buf[c0, c1); returns sum e.
template <typename acc_t>
acc_t exp_range(acc_t* buf, int64_t c0, int64_t c1, acc_t x_max, acc_t inv_tau) {
  using aVec = Vectorized<acc_t>;
  const aVec m(x_max), it(inv_tau);
  aVec sum(0);
  for (int64_t c = c0; c < c1; c += aVec::size()) {
    const aVec e = exp_nonpositive((aVec::loadu(buf + c) - m) * it);
    e.store(buf + c);
    sum = sum + e;
  }
  return reduce_sum(sum);
}

// out[c0, c1) = buf * scale, rounded to scalar_t.
template <typename scalar_t, typename acc_t>
void scale_store_range(const acc_t* buf, scalar_t* out, int64_t c0, int64_t c1, acc_t scale) {
  using T = Types<scalar_t>;
  using aVec = typename T::aVec;
  const aVec s(scale);
  for (int64_t c = c0; c < c1; c += kChunk) {
    aVec y[T::kVecs];
    for (int k = 0; k < T::kVecs; ++k) y[k] = aVec::loadu(buf + c + k * T::A) * s;
    store_chunk_n(out + c, c1 - c, y);
  }
}

// --------------------------------------------------------------- splitting a row
// Note [Splitting a row]
// With fewer rows than ~4 per core, a row's columns are cut into kChunk-aligned ranges
// handled by different threads: each range returns its max / argmax / partial sum and
// the partials are combined (argmax by value, then lowest index, so the result is the
// single-range one exactly; sums differ from it only in float summation order).
constexpr int64_t kSplitMinLength = 8192;
constexpr int64_t kSplitGrainChunks = std::max<int64_t>(1, 4096 / kChunk);

inline bool split_rows(int64_t rows, int64_t length) {
  const int64_t threads = at::get_num_threads();
  return threads > 1 && length >= kSplitMinLength && rows < 4 * threads;
}

// f(c0, c1) over [0, length), combined with `combine`; across threads when `split`.
template <typename R, typename F, typename C>
R reduce_columns(int64_t length, bool split, R ident, const F& f, const C& combine) {
  if (!split) return f(int64_t(0), length);
  const int64_t chunks = (length + kChunk - 1) / kChunk;
  return at::parallel_reduce(
      int64_t(0), chunks, kSplitGrainChunks, ident,
      [&](int64_t b, int64_t e, R) { return f(b * kChunk, std::min(e * kChunk, length)); }, combine);
}

template <typename F>
void for_columns(int64_t length, bool split, const F& f) {
  if (!split) return f(int64_t(0), length);
  const int64_t chunks = (length + kChunk - 1) / kChunk;
  at::parallel_for(int64_t(0), chunks, kSplitGrainChunks,
                   [&](int64_t b, int64_t e) { f(b * kChunk, std::min(e * kChunk, length)); });
}

template <typename acc_t>
acc_t plus(acc_t a, acc_t b) {
  return a + b;
}

// ------------------------------------------------------------- rows (inner == 1)
template <typename scalar_t>
using acc_of = typename Types<scalar_t>::acc_t;

template <typename acc_t>
acc_t row_inv_tau(const KernelArgs& a, int64_t r) {
  return a.tau_rows ? acc_t(1) / static_cast<const acc_t*>(a.tau_rows)[r] : static_cast<acc_t>(1.0 / a.tau);
}

template <typename scalar_t>
void fill_row(scalar_t* y, int64_t length, scalar_t v, bool split) {
  for_columns(length, split, [&](int64_t c0, int64_t c1) { std::fill(y + c0, y + c1, v); });
}

// Soft forward into buf (x, then e): returns 1 / sum e, or NaN when the row is NaN.
template <typename scalar_t, typename acc_t = acc_of<scalar_t>>
acc_t soft_row(const scalar_t* l, int64_t length, const RowNoise& rn, acc_t inv_tau, acc_t* buf, bool split) {
  const acc_t x_max = reduce_columns(
      length, split, -kInf<acc_t>,
      [&](int64_t c0, int64_t c1) { return perturb_range(l, c0, c1, rn, buf); }, nan_max<acc_t>);
  if (!std::isfinite(x_max)) return kNaN<acc_t>;
  // The padded tail of the last chunk holds -inf: e = 0 there.
  const acc_t sum = reduce_columns(
      length, split, acc_t(0),
      [&](int64_t c0, int64_t c1) { return exp_range(buf, c0, round_up(c1, kChunk), x_max, inv_tau); },
      plus<acc_t>);
  return acc_t(1) / sum;
}

template <typename scalar_t, typename acc_t = acc_of<scalar_t>>
void forward_row(const scalar_t* l, scalar_t* y, int64_t length, const RowNoise& rn, acc_t inv_tau,
                 bool hard, acc_t* buf, bool split) {
  if (hard) {
    // The one-hot needs no exp (Note [Per-row softmax math]).
    const ArgMax<acc_t> am = reduce_columns(
        length, split, ArgMax<acc_t>(),
        [&](int64_t c0, int64_t c1) { return argmax_range(l, c0, c1, rn); }, ArgMax<acc_t>::combine);
    fill_row(y, length, am.finite() ? scalar_t(0) : scalar_t(kNaN<float>), split);
    if (am.finite()) y[am.index] = scalar_t(1);
    return;
  }
  const acc_t inv_sum = soft_row(l, length, rn, inv_tau, buf, split);
  if (inv_sum != inv_sum) return fill_row(y, length, scalar_t(kNaN<float>), split);
  for_columns(length, split, [&](int64_t c0, int64_t c1) { scale_store_range(buf, y, c0, c1, inv_sum); });
}

// dL/dlogit and the row's dL/dtau sum from y (soft output values, `ys(c, y)` loads the
// chunk at column c) and the incoming gradient g.
template <typename scalar_t, typename YS, typename acc_t = acc_of<scalar_t>>
acc_t grad_row(const scalar_t* g, scalar_t* gl, int64_t length, const YS& ys, acc_t inv_tau, bool need_tau,
               bool split) {
  using T = Types<scalar_t>;
  using aVec = typename T::aVec;
  const acc_t dot = reduce_columns(
      length, split, acc_t(0),
      [&](int64_t c0, int64_t c1) {
        aVec acc(0);
        for (int64_t c = c0; c < c1; c += kChunk) {
          aVec gv[T::kVecs], yv[T::kVecs];
          load_chunk_n(g + c, c1 - c, scalar_t(0), gv);
          ys(c, c1 - c, yv);
          for (int k = 0; k < T::kVecs; ++k) acc = acc + gv[k] * yv[k];
        }
        return reduce_sum(acc);
      },
      plus<acc_t>);
  // dL/dz_c = y_c (g_c - dot); dL/dlogit = dL/dz / tau; and
  // dL/dtau = -(1/tau) sum_c z_c dL/dz_c, where z_c may be replaced by log y_c
  // because sum_c dL/dz_c = 0 (the softmax's shift invariance).
  return reduce_columns(
      length, split, acc_t(0),
      [&](int64_t c0, int64_t c1) {
        const aVec d(dot), it(inv_tau), zero(0);
        aVec tau_acc(0);
        for (int64_t c = c0; c < c1; c += kChunk) {
          aVec gv[T::kVecs], yv[T::kVecs], out[T::kVecs];
          load_chunk_n(g + c, c1 - c, scalar_t(0), gv);
          ys(c, c1 - c, yv);
          for (int k = 0; k < T::kVecs; ++k) {
            const aVec dz = yv[k] * (gv[k] - d);
            out[k] = dz * it;
            if (need_tau) tau_acc = tau_acc + aVec::blendv(zero, yv[k].log() * dz, yv[k] > zero);
          }
          store_chunk_n(gl + c, c1 - c, out);
        }
        return reduce_sum(tau_acc);
      },
      plus<acc_t>);
}

template <typename scalar_t, typename acc_t = acc_of<scalar_t>>
acc_t backward_row(const scalar_t* g, const scalar_t* s, scalar_t* gl, int64_t length, const RowNoise& rn,
                   acc_t inv_tau, bool hard, bool need_tau, acc_t* buf, bool split) {
  using T = Types<scalar_t>;
  using aVec = typename T::aVec;
  if (!hard) {
    const auto ys = [&](int64_t c, int64_t n, aVec* y) { load_chunk_n(s + c, n, scalar_t(0), y); };
    return grad_row(g, gl, length, ys, inv_tau, need_tau, split);
  }
  // Regenerate y_soft from the logits and the saved (seed, offset), rounded to the
  // output dtype exactly as the soft forward writes it: straight-through gradients
  // then equal the soft ones bit for bit.
  const acc_t inv_sum = soft_row(s, length, rn, inv_tau, buf, split);
  const int64_t padded = round_up(length, kChunk);
  for_columns(padded, split, [&](int64_t c0, int64_t c1) {
    const aVec sc(inv_sum);
    for (int64_t c = c0; c < c1; c += T::A) round_to<scalar_t>(aVec::loadu(buf + c) * sc).store(buf + c);
  });
  const auto ys = [&](int64_t c, int64_t, aVec* y) {
    for (int k = 0; k < T::kVecs; ++k) y[k] = aVec::loadu(buf + c + k * T::A);
  };
  return grad_row(g, gl, length, ys, inv_tau, need_tau, split);
}

// ---------------------------------------------- lanes of rows (dim not last, inner > 1)
// A group: rows r0 .. r0 + n - 1 (n <= kLanes) of one `outer` slice; column c of lane j
// is at base[c * inner + j].
struct Group {
  int64_t base;  // element offset of (o, c = 0, i0)
  int64_t row0;
  int n;
};

inline Group group_at(const KernelArgs& a, int64_t t) {
  const int64_t per_outer = (a.inner + kLanes - 1) / kLanes;
  const int64_t o = t / per_outer;
  const int64_t i0 = (t - o * per_outer) * kLanes;
  return {o * a.length * a.inner + i0, o * a.inner + i0, static_cast<int>(std::min<int64_t>(kLanes, a.inner - i0))};
}

inline int64_t group_count(const KernelArgs& a) {
  return a.outer * ((a.inner + kLanes - 1) / kLanes);
}

inline int64_t group_grain(const KernelArgs& a) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, a.length * kLanes));
}

template <typename acc_t>
void group_inv_tau(const KernelArgs& a, const Group& gr, Vectorized<acc_t>* v) {
  constexpr int A = Vectorized<acc_t>::size();
  __at_align__ acc_t t[kLanes];
  for (int j = 0; j < kLanes; ++j) t[j] = j < gr.n ? row_inv_tau<acc_t>(a, gr.row0 + j) : acc_t(1);
  for (int s = 0; s < kLanes / A; ++s) v[s] = Vectorized<acc_t>::loadu(t + s * A);
}

// Calls f(c, x) for every column c with x = logit + g of the group's lanes (kSub vectors).
template <typename scalar_t, typename F>
void for_perturbed_columns(const KernelArgs& a, const NoiseStream& ns, const scalar_t* l, const Group& gr,
                           const F& f) {
  using T = Types<scalar_t>;
  using aVec = typename T::aVec;
  for (int64_t q = 0; 4 * q < a.length; ++q) {
    fVec g4[4];
    ns.rows_block(static_cast<uint64_t>(gr.row0), static_cast<uint64_t>(q), g4);
    aVec gn[4 * T::kSub];
    noise_to_acc(g4, 4, gn);
    for (int w = 0; w < 4 && 4 * q + w < a.length; ++w) {
      const int64_t c = 4 * q + w;
      aVec x[T::kSub];
      load_lanes(l + gr.base + c * a.inner, gr.n, x);
      for (int s = 0; s < T::kSub; ++s) x[s] = x[s] + gn[w * T::kSub + s];
      f(c, x);
    }
  }
}

// Per-lane argmax of the group; index[j] / finite[j] for lane j.
template <typename scalar_t, typename acc_t = acc_of<scalar_t>>
void group_argmax(const KernelArgs& a, const NoiseStream& ns, const scalar_t* l, const Group& gr, ArgMax<acc_t>* out) {
  using T = Types<scalar_t>;
  using aVec = typename T::aVec;
  using iVec = typename T::iVec;
  using idx_t = typename T::idx_t;
  aVec best[T::kSub], nan_seen[T::kSub], best_idx[T::kSub];  // indices as in argmax_segment
  for (int s = 0; s < T::kSub; ++s) {
    best[s] = aVec(-kInf<acc_t>);
    nan_seen[s] = aVec(0);
    best_idx[s] = aVec(0);
  }
  for_perturbed_columns(a, ns, l, gr, [&](int64_t c, const aVec* x) {
    const aVec cv = at::vec::cast<acc_t>(iVec(static_cast<idx_t>(c)));
    for (int s = 0; s < T::kSub; ++s) {
      const aVec take = x[s] > best[s];
      best[s] = aVec::blendv(best[s], x[s], take);
      best_idx[s] = aVec::blendv(best_idx[s], cv, take);
      nan_seen[s] = nan_seen[s] | (x[s] != x[s]);
    }
  });
  __at_align__ acc_t value[kLanes], nan[kLanes];
  __at_align__ idx_t index[kLanes];
  for (int s = 0; s < T::kSub; ++s) {
    best[s].store(value + s * T::A);
    nan_seen[s].store(nan + s * T::A);
    best_idx[s].store(index + s * T::A);
  }
  for (int j = 0; j < gr.n; ++j) out[j] = ArgMax<acc_t>{value[j], static_cast<int64_t>(index[j]), nan[j] != 0};
}

// Soft forward of the group into buf ([length][kSub] acc vectors, e); returns 1 / sum
// per lane in inv_sum (a non-finite max gives NaN lanes through the arithmetic).
template <typename scalar_t, typename aVec = typename Types<scalar_t>::aVec>
void group_soft(const KernelArgs& a, const NoiseStream& ns, const scalar_t* l, const Group& gr, typename aVec::value_type* buf,
                aVec* inv_sum) {
  using T = Types<scalar_t>;
  aVec x_max[T::kSub], inv_tau[T::kSub], sum[T::kSub];
  for (int s = 0; s < T::kSub; ++s) {
    x_max[s] = aVec(-kInf<acc_of<scalar_t>>);
    sum[s] = aVec(0);
  }
  group_inv_tau(a, gr, inv_tau);
  for_perturbed_columns(a, ns, l, gr, [&](int64_t c, const aVec* x) {
    for (int s = 0; s < T::kSub; ++s) {
      x[s].store(buf + (c * T::kSub + s) * T::A);
      x_max[s] = at::vec::maximum(x_max[s], x[s]);
    }
  });
  for (int64_t c = 0; c < a.length; ++c) {
    for (int s = 0; s < T::kSub; ++s) {
      auto* p = buf + (c * T::kSub + s) * T::A;
      const aVec e = exp_nonpositive((aVec::loadu(p) - x_max[s]) * inv_tau[s]);
      e.store(p);
      sum[s] = sum[s] + e;
    }
  }
  for (int s = 0; s < T::kSub; ++s) inv_sum[s] = aVec(1) / sum[s];
}

template <typename scalar_t, typename acc_t = acc_of<scalar_t>>
void group_forward(const KernelArgs& a, const NoiseStream& ns, const scalar_t* l, scalar_t* y, const Group& gr, bool hard, acc_t* buf) {
  using T = Types<scalar_t>;
  using aVec = typename T::aVec;
  if (hard) {
    ArgMax<acc_t> am[kLanes];
    group_argmax(a, ns, l, gr, am);
    for (int64_t c = 0; c < a.length; ++c) {
      scalar_t* yc = y + gr.base + c * a.inner;
      for (int j = 0; j < gr.n; ++j) {
        yc[j] = !am[j].finite() ? scalar_t(kNaN<float>) : am[j].index == c ? scalar_t(1) : scalar_t(0);
      }
    }
    return;
  }
  aVec inv_sum[T::kSub];
  group_soft(a, ns, l, gr, buf, inv_sum);
  for (int64_t c = 0; c < a.length; ++c) {
    aVec v[T::kSub];
    for (int s = 0; s < T::kSub; ++s) v[s] = aVec::loadu(buf + (c * T::kSub + s) * T::A) * inv_sum[s];
    store_lanes(y + gr.base + c * a.inner, gr.n, v);
  }
}

template <typename scalar_t, typename acc_t = acc_of<scalar_t>>
void group_backward(const KernelArgs& a, const NoiseStream& ns, const scalar_t* g, const scalar_t* saved, scalar_t* gl, acc_t* gt,
                    const Group& gr, bool hard, acc_t* buf) {
  using T = Types<scalar_t>;
  using aVec = typename T::aVec;
  aVec inv_sum[T::kSub];
  if (hard) group_soft(a, ns, saved, gr, buf, inv_sum);  // see backward_row
  const auto load_y = [&](int64_t c, aVec* y) {
    if (hard) {
      for (int s = 0; s < T::kSub; ++s)
        y[s] = round_to<scalar_t>(aVec::loadu(buf + (c * T::kSub + s) * T::A) * inv_sum[s]);
    } else {
      load_lanes(saved + gr.base + c * a.inner, gr.n, y);
    }
  };
  aVec dot[T::kSub], inv_tau[T::kSub], tau_acc[T::kSub];
  for (int s = 0; s < T::kSub; ++s) {
    dot[s] = aVec(0);
    tau_acc[s] = aVec(0);
  }
  group_inv_tau(a, gr, inv_tau);
  for (int64_t c = 0; c < a.length; ++c) {
    aVec gv[T::kSub], yv[T::kSub];
    load_lanes(g + gr.base + c * a.inner, gr.n, gv);
    load_y(c, yv);
    for (int s = 0; s < T::kSub; ++s) dot[s] = dot[s] + gv[s] * yv[s];
  }
  const aVec zero(0);
  for (int64_t c = 0; c < a.length; ++c) {
    aVec gv[T::kSub], yv[T::kSub], out[T::kSub];
    load_lanes(g + gr.base + c * a.inner, gr.n, gv);
    load_y(c, yv);
    for (int s = 0; s < T::kSub; ++s) {
      const aVec dz = yv[s] * (gv[s] - dot[s]);
      out[s] = dz * inv_tau[s];
      if (gt) tau_acc[s] = tau_acc[s] + aVec::blendv(zero, yv[s].log() * dz, yv[s] > zero);
    }
    store_lanes(gl + gr.base + c * a.inner, gr.n, out);
  }
  if (gt) {
    __at_align__ acc_t ts[kLanes], it[kLanes];
    for (int s = 0; s < T::kSub; ++s) {
      tau_acc[s].store(ts + s * T::A);
      inv_tau[s].store(it + s * T::A);
    }
    for (int j = 0; j < gr.n; ++j) gt[gr.row0 + j] = -it[j] * ts[j];
  }
}

// ---------------------------------------------------------------- the entry points
template <typename acc_t>
std::unique_ptr<acc_t[]> make_buffer(int64_t n) {
  return std::unique_ptr<acc_t[]>(n > 0 ? new acc_t[n] : nullptr);
}

inline int64_t row_grain(int64_t length) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(length, 1));
}

// Runs row(r, buf, split) for every row of an inner == 1 problem (Note [Splitting a row]).
template <typename acc_t, typename F>
void for_rows(const KernelArgs& a, bool need_buffer, const F& row) {
  const int64_t rows = a.outer, length = a.length;
  const int64_t buf_size = need_buffer ? round_up(length, kChunk) : 0;
  if (split_rows(rows, length)) {
    auto buf = make_buffer<acc_t>(buf_size);
    for (int64_t r = 0; r < rows; ++r) row(r, buf.get(), true);
    return;
  }
  at::parallel_for(int64_t(0), rows, row_grain(length), [&](int64_t b, int64_t e) {
    auto buf = make_buffer<acc_t>(buf_size);
    for (int64_t r = b; r < e; ++r) row(r, buf.get(), false);
  });
}

template <typename acc_t, typename F>
void for_groups(const KernelArgs& a, bool need_buffer, const F& group) {
  at::parallel_for(int64_t(0), group_count(a), group_grain(a), [&](int64_t b, int64_t e) {
    auto buf = make_buffer<acc_t>(need_buffer ? a.length * kLanes : 0);
    for (int64_t t = b; t < e; ++t) group(group_at(a, t), buf.get());
  });
}

template <typename scalar_t>
void forward_typed(const KernelArgs& a, const scalar_t* l, scalar_t* y, bool hard) {
  using acc_t = acc_of<scalar_t>;
  const NoiseStream ns(a.seed, a.offset);
  if (a.inner == 1) {
    for_rows<acc_t>(a, !hard, [&](int64_t r, acc_t* buf, bool split) {
      const int64_t start = r * a.length;
      forward_row(l + start, y + start, a.length, RowNoise{ns, static_cast<uint64_t>(r)},
                  row_inv_tau<acc_t>(a, r), hard, buf, split);
    });
  } else {
    for_groups<acc_t>(a, !hard, [&](const Group& gr, acc_t* buf) { group_forward(a, ns, l, y, gr, hard, buf); });
  }
}

template <typename scalar_t>
void backward_typed(const KernelArgs& a, const scalar_t* g, const scalar_t* s, scalar_t* gl, void* grad_tau,
                    bool hard) {
  using acc_t = acc_of<scalar_t>;
  acc_t* gt = static_cast<acc_t*>(grad_tau);
  const NoiseStream ns(a.seed, a.offset);
  if (a.inner == 1) {
    for_rows<acc_t>(a, hard, [&](int64_t r, acc_t* buf, bool split) {
      const int64_t start = r * a.length;
      const acc_t inv_tau = row_inv_tau<acc_t>(a, r);
      const acc_t tau_sum = backward_row(g + start, s + start, gl + start, a.length,
                                         RowNoise{ns, static_cast<uint64_t>(r)}, inv_tau, hard,
                                         gt != nullptr, buf, split);
      if (gt) gt[r] = -inv_tau * tau_sum;
    });
  } else {
    for_groups<acc_t>(a, hard, [&](const Group& gr, acc_t* buf) { group_backward(a, ns, g, s, gl, gt, gr, hard, buf); });
  }
}

inline void noise_kernel(const KernelArgs& a, float* out) {
  const NoiseStream ns(a.seed, a.offset);
  if (a.inner == 1) {
    for_rows<float>(a, false, [&](int64_t r, float*, bool split) {
      float* o = out + r * a.length;
      for_columns(a.length, split, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; c += kChunk) {
          fVec g[4];
          ns.row_block(static_cast<uint64_t>(r), static_cast<uint64_t>(c / 4), g);
          store_chunk_n(o + c, c1 - c, g);
        }
      });
    });
    return;
  }
  for_groups<float>(a, false, [&](const Group& gr, float*) {
    for (int64_t q = 0; 4 * q < a.length; ++q) {
      fVec g4[4];
      ns.rows_block(static_cast<uint64_t>(gr.row0), static_cast<uint64_t>(q), g4);
      for (int w = 0; w < 4 && 4 * q + w < a.length; ++w) store_lanes(out + gr.base + (4 * q + w) * a.inner, gr.n, &g4[w]);
    }
  });
}

template <typename acc_t>
void check_sample_row(const ArgMax<acc_t>& am, int64_t r) {
  TORCH_CHECK_VALUE(!am.nan && am.value != kInf<acc_t>, "gumbel_ext.sample: row ", r,
                    " of the logits holds NaN or +inf");
}

// Gumbel-top-k of one row's x (length values): the k largest, largest first, ties to the
// lowest index; -inf logits are never drawn.
template <typename acc_t>
void top_k(const acc_t* x, int64_t length, int64_t k, int64_t r, std::vector<int64_t>& order, int64_t* out) {
  const int64_t finite = std::count_if(x, x + length, [](acc_t v) { return std::isfinite(v); });
  TORCH_CHECK_VALUE(finite >= k, "gumbel_ext.sample: num_samples=", k, " exceeds the ", finite,
                    " finite logits of row ", r, " (sampling without replacement)");
  order.resize(length);
  std::iota(order.begin(), order.end(), int64_t(0));
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int64_t i, int64_t j) { return x[i] > x[j] || (x[i] == x[j] && i < j); });
  std::copy(order.begin(), order.begin() + k, out);
}

template <typename scalar_t>
void sample_typed(const KernelArgs& a, const scalar_t* l, int64_t* idx, int64_t k) {
  using acc_t = acc_of<scalar_t>;
  using aVec = typename Types<scalar_t>::aVec;
  const NoiseStream ns(a.seed, a.offset);
  if (a.inner == 1) {
    for_rows<acc_t>(a, k > 1, [&](int64_t r, acc_t* buf, bool split) {
      const scalar_t* lr = l + r * a.length;
      const RowNoise rn{ns, static_cast<uint64_t>(r)};
      if (k == 1) {
        const ArgMax<acc_t> am = reduce_columns(
            a.length, split, ArgMax<acc_t>(),
            [&](int64_t c0, int64_t c1) { return argmax_range(lr, c0, c1, rn); }, ArgMax<acc_t>::combine);
        check_sample_row(am, r);
        TORCH_CHECK_VALUE(std::isfinite(am.value), "gumbel_ext.sample: row ", r,
                          " has no finite logit to draw from (all -inf)");
        idx[r] = am.index;
        return;
      }
      ArgMax<acc_t> am;
      am.value = reduce_columns(
          a.length, split, -kInf<acc_t>,
          [&](int64_t c0, int64_t c1) { return perturb_range(lr, c0, c1, rn, buf); }, nan_max<acc_t>);
      am.nan = am.value != am.value;
      check_sample_row(am, r);
      std::vector<int64_t> order;
      top_k(buf, a.length, k, r, order, idx + r * k);
    });
    return;
  }
  for_groups<acc_t>(a, k > 1, [&](const Group& gr, acc_t* buf) {
    if (k == 1) {
      ArgMax<acc_t> am[kLanes];
      group_argmax(a, ns, l, gr, am);
      for (int j = 0; j < gr.n; ++j) {
        check_sample_row(am[j], gr.row0 + j);
        TORCH_CHECK_VALUE(std::isfinite(am[j].value), "gumbel_ext.sample: row ", gr.row0 + j,
                          " has no finite logit to draw from (all -inf)");
        idx[gr.row0 + j] = am[j].index;
      }
      return;
    }
    constexpr int kSub = Types<scalar_t>::kSub;
    for_perturbed_columns(a, ns, l, gr, [&](int64_t c, const aVec* x) {
      for (int s = 0; s < kSub; ++s) x[s].store(buf + (c * kSub + s) * aVec::size());
    });
    std::vector<acc_t> row(a.length);
    std::vector<int64_t> order;
    for (int j = 0; j < gr.n; ++j) {
      ArgMax<acc_t> am;
      for (int64_t c = 0; c < a.length; ++c) {
        row[c] = buf[c * kLanes + j];
        am.value = nan_max(am.value, row[c]);
      }
      am.nan = am.value != am.value;
      check_sample_row(am, gr.row0 + j);
      top_k(row.data(), a.length, k, gr.row0 + j, order, idx + (gr.row0 + j) * k);
    }
  });
}

// The dtypes the ops accept (AT_DISPATCH_FLOATING_TYPES_AND2(Half, BFloat16) without ATen).
template <typename F>
void dispatch_dtype(c10::ScalarType t, const F& f) {
  switch (t) {
    case c10::ScalarType::Float: return f(float());
    case c10::ScalarType::Double: return f(double());
    case c10::ScalarType::Half: return f(c10::Half());
    case c10::ScalarType::BFloat16: return f(c10::BFloat16());
    default: TORCH_CHECK(false, "gumbel_ext: unsupported dtype ", t);
  }
}

inline void forward(const KernelArgs& a, const void* logits, void* out, bool hard) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    forward_typed(a, static_cast<const scalar_t*>(logits), static_cast<scalar_t*>(out), hard);
  });
}

inline void backward(const KernelArgs& a, const void* grad, const void* saved, void* grad_logits, void* grad_tau,
                     bool hard) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    backward_typed(a, static_cast<const scalar_t*>(grad), static_cast<const scalar_t*>(saved),
                   static_cast<scalar_t*>(grad_logits), grad_tau, hard);
  });
}

inline void sample(const KernelArgs& a, const void* logits, int64_t* out, int64_t k) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    sample_typed(a, static_cast<const scalar_t*>(logits), out, k);
  });
}

inline void vec_math(const float* x, float* y, int64_t n, int fn) {
  for (int64_t i = 0; i < n; i += kLanes) {
    const int m = static_cast<int>(std::min<int64_t>(kLanes, n - i));
    const fVec v = fVec::loadu(x + i, m);
    (fn == 0 ? log_positive(v) : exp_nonpositive(v)).store(y + i, m);
  }
}

#define GUMBEL_EXT_STRINGIFY_(x) #x
#define GUMBEL_EXT_STRINGIFY(x) GUMBEL_EXT_STRINGIFY_(x)

// Constant-initialized: no code runs at load time (see Note [Per-ISA CPU kernels]).
extern const KernelTable kKernels;
const KernelTable kKernels = {GUMBEL_EXT_STRINGIFY(CPU_CAPABILITY), &forward, &backward, &noise_kernel, &sample,
                               &vec_math};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace gumbel_ext
