// The pipeline for the reduced dim not last (inner > 1): kLanes neighbouring rows (inner
// indices) are the SIMD lanes, so every load is contiguous and the reductions are per-lane
// vector ops; no transposed copy. Per ISA, inside gumbel_ext::cpu::CPU_CAPABILITY.
#pragma once

#include <c10/util/Exception.h>

#include <numeric>
#include <vector>

#include "kernel_table.h"
#include "row_kernels.h"
#include "vec_io.h"

namespace gumbel_ext {
namespace cpu {
namespace CPU_CAPABILITY {

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
    using iVec = typename T::iVec;
    using idx_t = typename T::idx_t;
    ArgMax<acc_t> am[kLanes];
    group_argmax(a, ns, l, gr, am);
    // Lane j is 1 at column target[j] and `fill` elsewhere (NaN rows: no target).
    __at_align__ idx_t target[kLanes];
    __at_align__ acc_t fill[kLanes];
    for (int j = 0; j < kLanes; ++j) {
      const bool finite = j < gr.n && am[j].finite();
      target[j] = finite ? static_cast<idx_t>(am[j].index) : idx_t(-1);
      fill[j] = finite || j >= gr.n ? acc_t(0) : kNaN<acc_t>;
    }
    iVec tv[T::kSub];
    aVec fv[T::kSub];
    for (int s = 0; s < T::kSub; ++s) {
      tv[s] = iVec::loadu(target + s * T::A);
      fv[s] = aVec::loadu(fill + s * T::A);
    }
    const aVec one(1);
    for (int64_t c = 0; c < a.length; ++c) {
      const iVec cv(static_cast<idx_t>(c));
      aVec v[T::kSub];
      for (int s = 0; s < T::kSub; ++s) v[s] = aVec::blendv(fv[s], one, at::vec::cast<acc_t>(tv[s] == cv));
      store_lanes(y + gr.base + c * a.inner, gr.n, v);
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
void group_sample(const KernelArgs& a, const NoiseStream& ns, const scalar_t* l, int64_t* idx, const Group& gr,
                  int64_t k, acc_of<scalar_t>* buf) {
  using acc_t = acc_of<scalar_t>;
  using aVec = typename Types<scalar_t>::aVec;
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
}

inline void group_noise(const KernelArgs& a, const NoiseStream& ns, float* out, const Group& gr) {
  for (int64_t q = 0; 4 * q < a.length; ++q) {
    fVec g4[4];
    ns.rows_block(static_cast<uint64_t>(gr.row0), static_cast<uint64_t>(q), g4);
    for (int w = 0; w < 4 && 4 * q + w < a.length; ++w) store_lanes(out + gr.base + (4 * q + w) * a.inner, gr.n, &g4[w]);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace gumbel_ext
