// The fused CPU kernels, vectorized with at::vec: noise, temperature, softmax / one-hot,
// backward, noise and sample. Compiled once per ISA by isa/kernels_*.cpp (see Note
// [Per-ISA CPU kernels] in kernel_table.h); everything here is in that ISA's namespace.
//
// Two walks over the data, both without copies of the logits:
//   * rows along the last dim (inner == 1), row_kernels.h: a row is processed in chunks of
//     kChunk columns, one Philox vector call per chunk (NoiseStream::row_block). Rows are
//     spread over threads; when there are too few rows for the cores, each row is split
//     into chunk-aligned column ranges instead (see Note [Splitting a row]).
//   * dim not last (inner > 1), group_kernels.h: kLanes neighbouring rows (consecutive
//     `inner` indices) are the SIMD lanes, so every load is contiguous and the max / sum
//     reductions are plain per-lane vector ops (NoiseStream::rows_block).
// Layers: vec_math.h (inline log / exp) < vec_lanes.h (SIMD Philox) < vec_io.h (loads,
// stores, reductions) < row_kernels.h, group_kernels.h < this file (entry points, table).
// The math is Note [Per-row softmax math] in gumbel_noise.h; a row whose max is not finite
// comes out NaN. Half types are widened to float on load (acc_t = at::opmath_type).
#pragma once

#ifndef CPU_CAPABILITY
#error "the CPU kernels are compiled through csrc/cpu/isa/kernels_*.cpp"
#endif

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <memory>
#include <numeric>
#include <vector>

#include "group_kernels.h"
#include "kernel_table.h"
#include "row_kernels.h"
#include "vec_io.h"

namespace gumbel_ext {
namespace cpu {
namespace CPU_CAPABILITY {

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
