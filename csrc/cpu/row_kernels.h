// The row pipeline for the reduced dim last (inner == 1): a row in chunks of kChunk
// columns, one Philox vector call per chunk; optionally split across threads (Note
// [Splitting a row]). Per ISA, inside gumbel_ext::cpu::CPU_CAPABILITY.
#pragma once

#include <ATen/Parallel.h>

#include "kernel_table.h"
#include "vec_io.h"

namespace gumbel_ext {
namespace cpu {
namespace CPU_CAPABILITY {

// Elements a parallel_for task should cover: big enough to amortize the task, small
// enough to keep every core busy on a few thousand rows.
constexpr int64_t kGrainElements = 32768;

// --------------------------------------------------------------------- row pieces
// One row of the [outer, length, inner] tensor as the noise sees it.
struct RowNoise {
  const NoiseStream& stream;
  uint64_t row;
};

// x = logit + g for the kChunk columns starting at c (-inf past c1): the one place the
// row pipeline meets the noise.
template <typename scalar_t, typename aVec>
inline void perturbed_chunk(const scalar_t* l, int64_t c, int64_t c1, const RowNoise& rn, aVec* x) {
  using T = Types<scalar_t>;
  fVec g[4];
  rn.stream.row_block(rn.row, static_cast<uint64_t>(c / 4), g);
  aVec gn[T::kVecs];
  noise_to_acc(g, 4, gn);
  load_chunk_n(l + c, c1 - c, scalar_t(-kInf<float>), x);
  for (int k = 0; k < T::kVecs; ++k) x[k] = x[k] + gn[k];
}

// x = logit + g for columns [c0, c1) into buf (the row's last chunk padded with -inf);
// returns max x (NaN if any x is NaN). c0 is a multiple of kChunk.
template <typename scalar_t, typename acc_t = typename Types<scalar_t>::acc_t>
acc_t perturb_range(const scalar_t* l, int64_t c0, int64_t c1, const RowNoise& rn, acc_t* buf) {
  using T = Types<scalar_t>;
  using aVec = typename T::aVec;
  aVec vmax(-kInf<acc_t>);
  for (int64_t c = c0; c < c1; c += kChunk) {
    aVec x[T::kVecs];
    perturbed_chunk(l, c, c1, rn, x);
    for (int k = 0; k < T::kVecs; ++k) {
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
    aVec x[T::kVecs];
    perturbed_chunk(l, c, c1, rn, x);
    for (int k = 0; k < T::kVecs; ++k) {
      argmax_step(x[k], at::vec::cast<acc_t>(idx), best, best_idx, nan_seen);
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

// Argmax over [c0, c1) in segments of `segment` columns (Note [Argmax segments] in
// group_kernels.h; a multiple of kChunk).
template <typename scalar_t, typename acc_t = typename Types<scalar_t>::acc_t>
ArgMax<acc_t> argmax_range(const scalar_t* l, int64_t c0, int64_t c1, const RowNoise& rn, int64_t segment) {
  ArgMax<acc_t> r;
  for (int64_t s = c0; s < c1; s += segment) {
    r = ArgMax<acc_t>::combine(r, argmax_segment(l, s, std::min(c1, s + segment), rn));
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
                 bool hard, acc_t* buf, bool split, int64_t segment) {
  if (hard) {
    // The one-hot needs no exp (Note [Per-row softmax math]).
    const ArgMax<acc_t> am = reduce_columns(
        length, split, ArgMax<acc_t>(),
        [&](int64_t c0, int64_t c1) { return argmax_range(l, c0, c1, rn, segment); }, ArgMax<acc_t>::combine);
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

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace gumbel_ext
