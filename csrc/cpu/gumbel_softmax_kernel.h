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

#include <array>
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

// Runs group(gr, buf) for every lane set of an inner > 1 problem (Note [Lane sets]).
template <typename acc_t, typename F>
void for_groups(const KernelArgs& a, bool need_buffer, const F& group) {
  const int64_t lanes = set_lanes(a, sizeof(acc_t));
  at::parallel_for(int64_t(0), group_count(a, lanes), group_grain(a, lanes), [&](int64_t b, int64_t e) {
    auto buf = make_buffer<acc_t>(need_buffer ? a.length * lanes : 0);
    for (int64_t t = b; t < e; ++t) group(group_at(a, lanes, t), buf.get());
  });
}

// Note [Short rows]
// A row shorter than kShortRow would use few of a row_block's 4 * kLanes draws (a
// 10-category row: 10 of 64). kLanes such rows are transposed into a [length, kLanes] tile
// instead and run through the group kernels (rows as lanes), which draw only the blocks
// they need; the tile is small and stays in L1.
constexpr int64_t kShortRow = kChunk / 2;

inline bool short_rows(const KernelArgs& a) {
  return a.inner == 1 && a.length <= kShortRow;
}

// tile[c * kLanes + j] = rows[j * length + c] for the first n rows, and back.
template <typename T>
void to_tile(const T* rows, int64_t length, int n, T* tile) {
  for (int j = 0; j < n; ++j)
    for (int64_t c = 0; c < length; ++c) tile[c * kLanes + j] = rows[j * length + c];
}

template <typename T>
void from_tile(const T* tile, int64_t length, int n, T* rows) {
  for (int j = 0; j < n; ++j)
    for (int64_t c = 0; c < length; ++c) rows[j * length + c] = tile[c * kLanes + j];
}

// Runs group(tile_args, gr, buf) for every kLanes rows of a short-row problem; the group
// is gr.row0 .. gr.row0 + gr.n - 1, its tile starts at offset 0 (tile_args.inner = kLanes).
template <typename acc_t, typename F>
void for_short_rows(const KernelArgs& a, bool need_buffer, const F& group) {
  KernelArgs ta = a;
  ta.outer = 1;
  ta.inner = kLanes;
  const int64_t groups = (a.outer + kLanes - 1) / kLanes;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / (std::max<int64_t>(a.length, 1) * kLanes));
  at::parallel_for(int64_t(0), groups, grain, [&](int64_t b, int64_t e) {
    auto buf = make_buffer<acc_t>(need_buffer ? a.length * kLanes : 0);
    for (int64_t t = b; t < e; ++t) {
      const int64_t r0 = t * kLanes;
      group(ta, Group{0, r0, static_cast<int>(std::min<int64_t>(kLanes, a.outer - r0))}, buf.get());
    }
  });
}

template <typename scalar_t>
using Tile = std::array<scalar_t, kShortRow * kLanes>;

template <typename scalar_t>
void forward_typed(const KernelArgs& a, const scalar_t* l, scalar_t* y, bool hard) {
  using acc_t = acc_of<scalar_t>;
  const NoiseStream ns(a.seed, a.offset);
  if (short_rows(a)) {
    for_short_rows<acc_t>(a, !hard, [&](const KernelArgs& ta, const Group& gr, acc_t* buf) {
      Tile<scalar_t> in, out;
      to_tile(l + gr.row0 * a.length, a.length, gr.n, in.data());
      group_forward(ta, ns, in.data(), out.data(), gr, hard, buf);
      from_tile(out.data(), a.length, gr.n, y + gr.row0 * a.length);
    });
  } else if (a.inner == 1) {
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
  if (short_rows(a)) {
    for_short_rows<acc_t>(a, hard, [&](const KernelArgs& ta, const Group& gr, acc_t* buf) {
      Tile<scalar_t> gt_in, s_in, out;
      to_tile(g + gr.row0 * a.length, a.length, gr.n, gt_in.data());
      to_tile(s + gr.row0 * a.length, a.length, gr.n, s_in.data());
      group_backward(ta, ns, gt_in.data(), s_in.data(), out.data(), gt, gr, hard, buf);
      from_tile(out.data(), a.length, gr.n, gl + gr.row0 * a.length);
    });
  } else if (a.inner == 1) {
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
  if (short_rows(a)) {
    for_short_rows<float>(a, false, [&](const KernelArgs& ta, const Group& gr, float*) {
      Tile<float> tile;
      group_noise(ta, ns, tile.data(), gr);
      from_tile(tile.data(), a.length, gr.n, out + gr.row0 * a.length);
    });
    return;
  }
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
  for_groups<float>(a, false, [&](const Group& gr, float*) { group_noise(a, ns, out, gr); });
}

template <typename scalar_t>
void sample_typed(const KernelArgs& a, const scalar_t* l, int64_t* idx, int64_t k) {
  using acc_t = acc_of<scalar_t>;
  const NoiseStream ns(a.seed, a.offset);
  if (short_rows(a)) {
    for_short_rows<acc_t>(a, k > 1, [&](const KernelArgs& ta, const Group& gr, acc_t* buf) {
      Tile<scalar_t> in;
      to_tile(l + gr.row0 * a.length, a.length, gr.n, in.data());
      group_sample(ta, ns, in.data(), idx, gr, k, buf);
    });
    return;
  }
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
  for_groups<acc_t>(a, k > 1, [&](const Group& gr, acc_t* buf) { group_sample(a, ns, l, idx, gr, k, buf); });
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
    (fn == 0 ? neg_log_positive(v).neg() : exp_nonpositive(v)).store(y + i, m);
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
