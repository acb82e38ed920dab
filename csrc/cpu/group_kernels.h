// The pipeline for the reduced dim not last (inner > 1): neighbouring rows (consecutive
// inner indices) are the SIMD lanes, so every load is contiguous and the reductions are
// per-lane vector ops; no transposed copy. Per ISA, inside gumbel_ext::cpu::CPU_CAPABILITY.
//
// Note [Lane sets]
// A task takes a set of up to kMaxSetGroups * kLanes neighbouring rows and walks their
// columns in order, each column's lanes (sub-groups of kLanes) one after another: memory
// is read and written in runs of the whole set's width rather than kLanes elements
// `inner` apart, which the prefetchers follow and which avoids the cache-set conflicts of
// a 4 KiB stride (inner = 1024 floats). The set is sized so that its [length, lanes]
// buffer of x / e stays within kSetBytes (L2).
//
// Every operand of a set is a Lanes view: lane j of column c at p[c * stride + j]. The
// output views are the contiguous tensor itself (stride inner); an input view is the tensor
// in place, or a transposed tile of it (Note [Strided inputs] in gumbel_softmax_kernel.h).
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "kernel_table.h"
#include "row_kernels.h"
#include "vec_io.h"

namespace gumbel_ext {
namespace cpu {
namespace CPU_CAPABILITY {

constexpr int kMaxSetGroups = 16;
constexpr int kMaxSetLanes = kMaxSetGroups * kLanes;
constexpr int64_t kSetBytes = 256 * 1024;

// Rows row0 .. row0 + n - 1 of one `outer` slice; in a contiguous tensor, column c of
// lane j is at base + c * inner + j. Lanes go in sub-groups of kLanes (the last one may be
// partial).
struct Group {
  int64_t base;
  int64_t row0;
  int n;
  int groups() const { return (n + kLanes - 1) / kLanes; }
  int lanes_in(int g) const { return std::min(kLanes, n - g * kLanes); }
};

// One operand of a set: sub-group g of column c starts at p + c * stride + g * kLanes.
template <typename T>
struct Lanes {
  T* p;
  int64_t stride;
  T* at(int64_t c, int g) const { return p + c * stride + g * kLanes; }
};

// The set's view of a contiguous [outer, length, inner] tensor.
template <typename T>
Lanes<T> contiguous_lanes(const KernelArgs& a, T* data, const Group& gr) {
  return {data + gr.base, a.inner};
}

// Note [Argmax segments]
// Column indices ride in the acc lanes as idx_t bit patterns (int32 for float), exact only
// below 2^31. Every argmax walks the columns in segments of segment_columns(a) (2^30 unless
// a test sets a smaller one) with indices relative to the segment's start, and combines
// the segments' results in int64 by value, then lowest index: the result is the one a
// single pass would give, for any length. The hard one-hot is then written from that int64
// index (zeros, then the one), so no int32 index ever meets a column number.
inline int64_t segment_columns(const KernelArgs& a) {
  return a.argmax_segment > 0 ? a.argmax_segment : int64_t(1) << 30;
}

// Lanes per set for acc elements of acc_size bytes (Note [Lane sets]).
inline int64_t set_lanes(const KernelArgs& a, int64_t acc_size) {
  const int64_t by_cache = kSetBytes / std::max<int64_t>(1, a.length * kLanes * acc_size);
  const int64_t groups = std::min<int64_t>(std::max<int64_t>(by_cache, 1), kMaxSetGroups);
  return std::min(groups * kLanes, round_up(a.inner, kLanes));
}

inline int64_t group_count(const KernelArgs& a, int64_t lanes) {
  return a.outer * ((a.inner + lanes - 1) / lanes);
}

inline Group group_at(const KernelArgs& a, int64_t lanes, int64_t t) {
  const int64_t per_outer = (a.inner + lanes - 1) / lanes;
  const int64_t o = t / per_outer;
  const int64_t i0 = (t - o * per_outer) * lanes;
  return {o * a.length * a.inner + i0, o * a.inner + i0, static_cast<int>(std::min(lanes, a.inner - i0))};
}

inline int64_t group_grain(const KernelArgs& a, int64_t lanes) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, a.length * lanes));
}

// Per-lane state: kSub acc vectors per sub-group.
template <typename scalar_t>
using LaneVecs = typename Types<scalar_t>::aVec[kMaxSetGroups * Types<scalar_t>::kSub];

template <typename acc_t>
void group_inv_tau(const KernelArgs& a, const Group& gr, Vectorized<acc_t>* v) {
  constexpr int A = Vectorized<acc_t>::size();
  __at_align__ acc_t t[kMaxSetLanes];
  const int lanes = gr.groups() * kLanes;
  for (int j = 0; j < lanes; ++j) t[j] = j < gr.n ? row_inv_tau<acc_t>(a, gr.row0 + j) : acc_t(1);
  for (int i = 0; i < lanes / A; ++i) v[i] = Vectorized<acc_t>::loadu(t + i * A);
}

// Calls f(c, g, x) for every column c in [c0, c1) (c0 a multiple of 4) and sub-group g,
// x = logit + noise (kSub vectors).
template <typename scalar_t, typename F>
void for_perturbed_columns(const NoiseStream& ns, Lanes<const scalar_t> l, const Group& gr, int64_t c0,
                           int64_t c1, const F& f) {
  using T = Types<scalar_t>;
  using aVec = typename T::aVec;
  for (int64_t q = c0 / 4; 4 * q < c1; ++q) {
    for (int g = 0; g < gr.groups(); ++g) {
      fVec g4[4];
      ns.rows_block(static_cast<uint64_t>(gr.row0 + g * kLanes), static_cast<uint64_t>(q), g4);
      aVec gn[4 * T::kSub];
      noise_to_acc(g4, 4, gn);
      for (int w = 0; w < 4 && 4 * q + w < c1; ++w) {
        const int64_t c = 4 * q + w;
        aVec x[T::kSub];
        load_lanes(l.at(c, g), gr.lanes_in(g), x);
        for (int s = 0; s < T::kSub; ++s) x[s] = x[s] + gn[w * T::kSub + s];
        f(c, g, x);
      }
    }
  }
}

// Per-lane argmax of the set over columns [c0, c1), c1 - c0 < 2^31, combined into out[j]
// for lane j < gr.n.
template <typename scalar_t, typename acc_t = acc_of<scalar_t>>
void group_argmax_segment(const NoiseStream& ns, Lanes<const scalar_t> l, const Group& gr, int64_t c0, int64_t c1,
                          ArgMax<acc_t>* out) {
  using T = Types<scalar_t>;
  using aVec = typename T::aVec;
  using iVec = typename T::iVec;
  using idx_t = typename T::idx_t;
  const int vecs = gr.groups() * T::kSub;
  LaneVecs<scalar_t> best, nan_seen, best_idx;  // indices as in argmax_segment
  for (int i = 0; i < vecs; ++i) {
    best[i] = aVec(-kInf<acc_t>);
    nan_seen[i] = aVec(0);
    best_idx[i] = aVec(0);
  }
  for_perturbed_columns(ns, l, gr, c0, c1, [&](int64_t c, int g, const aVec* x) {
    const aVec cv = at::vec::cast<acc_t>(iVec(static_cast<idx_t>(c - c0)));
    for (int s = 0; s < T::kSub; ++s) {
      const int i = g * T::kSub + s;
      argmax_step(x[s], cv, best[i], best_idx[i], nan_seen[i]);
    }
  });
  __at_align__ acc_t value[kMaxSetLanes], nan[kMaxSetLanes];
  __at_align__ idx_t index[kMaxSetLanes];
  for (int i = 0; i < vecs; ++i) {
    best[i].store(value + i * T::A);
    nan_seen[i].store(nan + i * T::A);
    best_idx[i].store(index + i * T::A);
  }
  for (int j = 0; j < gr.n; ++j) {
    out[j] = ArgMax<acc_t>::combine(out[j], ArgMax<acc_t>{value[j], c0 + static_cast<int64_t>(index[j]), nan[j] != 0});
  }
}

// Per-lane argmax of the set: out[j] for lane j < gr.n (Note [Argmax segments]).
template <typename scalar_t, typename acc_t = acc_of<scalar_t>>
void group_argmax(const KernelArgs& a, const NoiseStream& ns, Lanes<const scalar_t> l, const Group& gr,
                  ArgMax<acc_t>* out) {
  std::fill_n(out, gr.n, ArgMax<acc_t>());
  const int64_t segment = segment_columns(a);
  for (int64_t s = 0; s < a.length; s += segment) {
    group_argmax_segment(ns, l, gr, s, std::min(a.length, s + segment), out);
  }
}

// x / e of column c, sub-group g, in the set's buffer ([length][groups][kSub] vectors).
template <typename aVec>
typename aVec::value_type* set_slot(typename aVec::value_type* buf, const Group& gr, int64_t c, int g) {
  return buf + (c * gr.groups() + g) * kLanes;
}

// Soft forward of the set into buf (e); returns 1 / sum per lane in inv_sum (a non-finite
// max gives NaN lanes through the arithmetic).
template <typename scalar_t, typename aVec = typename Types<scalar_t>::aVec>
void group_soft(const KernelArgs& a, const NoiseStream& ns, Lanes<const scalar_t> l, const Group& gr,
                typename aVec::value_type* buf, aVec* inv_sum) {
  using T = Types<scalar_t>;
  const int vecs = gr.groups() * T::kSub;
  LaneVecs<scalar_t> x_max, inv_tau, sum;
  for (int i = 0; i < vecs; ++i) {
    x_max[i] = aVec(-kInf<acc_of<scalar_t>>);
    sum[i] = aVec(0);
  }
  group_inv_tau(a, gr, inv_tau);
  for_perturbed_columns(ns, l, gr, 0, a.length, [&](int64_t c, int g, const aVec* x) {
    for (int s = 0; s < T::kSub; ++s) {
      x[s].store(set_slot<aVec>(buf, gr, c, g) + s * T::A);
      x_max[g * T::kSub + s] = at::vec::maximum(x_max[g * T::kSub + s], x[s]);
    }
  });
  for (int64_t c = 0; c < a.length; ++c) {
    auto* p = set_slot<aVec>(buf, gr, c, 0);  // the column's vecs are consecutive
    for (int i = 0; i < vecs; ++i) {
      const aVec e = exp_nonpositive((aVec::loadu(p + i * T::A) - x_max[i]) * inv_tau[i]);
      e.store(p + i * T::A);
      sum[i] = sum[i] + e;
    }
  }
  for (int i = 0; i < vecs; ++i) inv_sum[i] = aVec(1) / sum[i];
}

template <typename scalar_t, typename acc_t = acc_of<scalar_t>>
void group_forward(const KernelArgs& a, const NoiseStream& ns, Lanes<const scalar_t> l, Lanes<scalar_t> y,
                   const Group& gr, bool hard, acc_t* buf) {
  using T = Types<scalar_t>;
  using aVec = typename T::aVec;
  if (hard) {
    ArgMax<acc_t> am[kMaxSetLanes];
    group_argmax(a, ns, l, gr, am);
    // Lane j is `fill` everywhere (0, or NaN for a row with no finite max), then 1 at its
    // int64 argmax (Note [Argmax segments]).
    __at_align__ acc_t fill[kMaxSetLanes];
    const int lanes = gr.groups() * kLanes;
    for (int j = 0; j < lanes; ++j) fill[j] = j >= gr.n || am[j].finite() ? acc_t(0) : kNaN<acc_t>;
    for (int64_t c = 0; c < a.length; ++c) {
      for (int g = 0; g < gr.groups(); ++g) {
        aVec v[T::kSub];
        for (int s = 0; s < T::kSub; ++s) v[s] = aVec::loadu(fill + g * kLanes + s * T::A);
        store_lanes(y.at(c, g), gr.lanes_in(g), v);
      }
    }
    for (int j = 0; j < gr.n; ++j) {
      if (am[j].finite()) y.p[am[j].index * y.stride + j] = scalar_t(1);
    }
    return;
  }
  LaneVecs<scalar_t> inv_sum;
  group_soft(a, ns, l, gr, buf, inv_sum);
  for (int64_t c = 0; c < a.length; ++c) {
    for (int g = 0; g < gr.groups(); ++g) {
      aVec v[T::kSub];
      for (int s = 0; s < T::kSub; ++s)
        v[s] = aVec::loadu(set_slot<aVec>(buf, gr, c, g) + s * T::A) * inv_sum[g * T::kSub + s];
      store_lanes(y.at(c, g), gr.lanes_in(g), v);
    }
  }
}

template <typename scalar_t, typename acc_t = acc_of<scalar_t>>
void group_backward(const KernelArgs& a, const NoiseStream& ns, Lanes<const scalar_t> g, Lanes<const scalar_t> saved,
                    Lanes<scalar_t> gl, acc_t* gt, const Group& gr, bool hard, acc_t* buf) {
  using T = Types<scalar_t>;
  using aVec = typename T::aVec;
  LaneVecs<scalar_t> inv_sum, dot, inv_tau, tau_acc;
  if (hard) group_soft(a, ns, saved, gr, buf, inv_sum);  // see backward_row
  const auto load_y = [&](int64_t c, int sg, aVec* y) {
    if (hard) {
      for (int s = 0; s < T::kSub; ++s)
        y[s] = round_to<scalar_t>(aVec::loadu(set_slot<aVec>(buf, gr, c, sg) + s * T::A) * inv_sum[sg * T::kSub + s]);
    } else {
      load_lanes(saved.at(c, sg), gr.lanes_in(sg), y);
    }
  };
  const int vecs = gr.groups() * T::kSub;
  for (int i = 0; i < vecs; ++i) {
    dot[i] = aVec(0);
    tau_acc[i] = aVec(0);
  }
  group_inv_tau(a, gr, inv_tau);
  for (int64_t c = 0; c < a.length; ++c) {
    for (int sg = 0; sg < gr.groups(); ++sg) {
      aVec gv[T::kSub], yv[T::kSub];
      load_lanes(g.at(c, sg), gr.lanes_in(sg), gv);
      load_y(c, sg, yv);
      for (int s = 0; s < T::kSub; ++s) dot[sg * T::kSub + s] = dot[sg * T::kSub + s] + gv[s] * yv[s];
    }
  }
  // See grad_row for the formulas.
  const aVec zero(0);
  for (int64_t c = 0; c < a.length; ++c) {
    for (int sg = 0; sg < gr.groups(); ++sg) {
      aVec gv[T::kSub], yv[T::kSub], out[T::kSub];
      load_lanes(g.at(c, sg), gr.lanes_in(sg), gv);
      load_y(c, sg, yv);
      for (int s = 0; s < T::kSub; ++s) {
        const int i = sg * T::kSub + s;
        const aVec dz = yv[s] * (gv[s] - dot[i]);
        out[s] = dz * inv_tau[i];
        if (gt) tau_acc[i] = tau_acc[i] + aVec::blendv(zero, yv[s].log() * dz, yv[s] > zero);
      }
      store_lanes(gl.at(c, sg), gr.lanes_in(sg), out);
    }
  }
  if (gt) {
    __at_align__ acc_t ts[kMaxSetLanes], it[kMaxSetLanes];
    for (int i = 0; i < vecs; ++i) {
      tau_acc[i].store(ts + i * T::A);
      inv_tau[i].store(it + i * T::A);
    }
    for (int j = 0; j < gr.n; ++j) gt[gr.row0 + j] = -it[j] * ts[j];
  }
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
void group_sample(const KernelArgs& a, const NoiseStream& ns, Lanes<const scalar_t> l, int64_t* idx, const Group& gr,
                  int64_t k, acc_of<scalar_t>* buf) {
  using acc_t = acc_of<scalar_t>;
  using aVec = typename Types<scalar_t>::aVec;
  if (k == 1) {
    ArgMax<acc_t> am[kMaxSetLanes];
    group_argmax(a, ns, l, gr, am);
    for (int j = 0; j < gr.n; ++j) {
      check_sample_row(am[j], gr.row0 + j);
      TORCH_CHECK_VALUE(std::isfinite(am[j].value), "gumbel_ext.sample: row ", gr.row0 + j,
                        " has no finite logit to draw from (all -inf)");
      idx[gr.row0 + j] = am[j].index;
    }
    return;
  }
  for_perturbed_columns(ns, l, gr, 0, a.length, [&](int64_t c, int g, const aVec* x) {
    for (int s = 0; s < Types<scalar_t>::kSub; ++s) x[s].store(set_slot<aVec>(buf, gr, c, g) + s * aVec::size());
  });
  // Lane j of column c sits at buf[c * width + j].
  const int64_t width = static_cast<int64_t>(gr.groups()) * kLanes;
  std::vector<acc_t> row(a.length);
  std::vector<int64_t> order;
  for (int j = 0; j < gr.n; ++j) {
    ArgMax<acc_t> am;
    for (int64_t c = 0; c < a.length; ++c) {
      row[c] = buf[c * width + j];
      am.value = nan_max(am.value, row[c]);
    }
    am.nan = am.value != am.value;
    check_sample_row(am, gr.row0 + j);
    top_k(row.data(), a.length, k, gr.row0 + j, order, idx + (gr.row0 + j) * k);
  }
}

inline void group_noise(const KernelArgs& a, const NoiseStream& ns, Lanes<float> out, const Group& gr) {
  for (int64_t q = 0; 4 * q < a.length; ++q) {
    for (int g = 0; g < gr.groups(); ++g) {
      fVec g4[4];
      ns.rows_block(static_cast<uint64_t>(gr.row0 + g * kLanes), static_cast<uint64_t>(q), g4);
      for (int w = 0; w < 4 && 4 * q + w < a.length; ++w) {
        store_lanes(out.at(4 * q + w, g), gr.lanes_in(g), &g4[w]);
      }
    }
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace gumbel_ext
