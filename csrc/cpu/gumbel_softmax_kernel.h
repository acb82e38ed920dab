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
//
// Note [Strided inputs]
// Inputs are read where they lie when the dims around `dim` collapse to three strides
// (Strides in kernel_table.h) with the reduced dim or the inner dims adjacent in memory:
// channels_last(_3d) with dim=1, transposed and permuted views, sliced rows, expanded
// tensors. The logical [outer, length, inner] shape alone picks the walk below, so a
// strided call does exactly the arithmetic of the contiguous one, bit for bit:
//   * rows (inner == 1) and short rows: row r starts at r * outer;
//   * lane sets whose lanes are adjacent (inner stride 1): read in place, column stride
//     `length` (a contiguous tensor: inner);
//   * lane sets over rows that are contiguous (length stride 1, e.g. channels_last with
//     dim=1): the set's rows are transposed into a [length, lanes] tile, block by block
//     (at::vec::transpose_mxn), which the set then reads: one more pass through L1/L2
//     instead of a strided copy of the whole tensor in memory.
//   * except for what needs only argmaxes or x = logit + noise values (the hard forward,
//     sample): those are exact whichever walk computes them (the noise of an element
//     depends on its row and column only), so such rows take the rows walk where they lie,
//     as logical rows o * inner + i (strided_rows), and skip the tile.
// Outputs are contiguous, as torch.softmax's and its backward's are on CPU.
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
#include "keyed_noise_kernel.h"
#include "kernel_table.h"
#include "row_kernels.h"
#include "sample_kernels.h"
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

// Runs group(gr, buf, tiles) for every lane set of an inner > 1 problem (Note [Lane
// sets]); tiles: room for `tiles` transposed inputs of the set (Note [Strided inputs]).
template <typename acc_t, typename scalar_t, typename F>
void for_groups(const KernelArgs& a, bool need_buffer, int tiles, const F& group) {
  const int64_t lanes = set_lanes(a, sizeof(acc_t) + tiles * sizeof(scalar_t));
  at::parallel_for(int64_t(0), group_count(a, lanes), group_grain(a, lanes), [&](int64_t b, int64_t e) {
    auto buf = make_buffer<acc_t>(need_buffer ? a.length * lanes : 0);
    auto tile = make_buffer<scalar_t>(tiles * a.length * lanes);
    for (int64_t t = b; t < e; ++t) group(group_at(a, lanes, t), buf.get(), tile.get());
  });
}

// One block of a transpose: AVX2 has a fast 8x8 float one; the others are fast where
// at::vec has them (AVX-512) and plain loops elsewhere.
template <typename T>
inline void transpose_block(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int m, int n) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float> && kLanes == 8) {
    if (m == 8 && n == 8) return at::vec::transpose_mxn<float, 8, 8>(src, ld_src, dst, ld_dst);
  }
#endif
  at::vec::transpose_mxn<T>(src, ld_src, dst, ld_dst, m, n);
}

// tile[c * width + j] = rows[j * row_stride + c] for rows j < n, columns c < length.
template <typename T>
void transpose_rows(const T* rows, int64_t row_stride, int n, int64_t length, T* tile, int64_t width) {
  for (int64_t c = 0; c < length; c += kLanes) {
    const int cols = static_cast<int>(std::min<int64_t>(kLanes, length - c));
    for (int j = 0; j < n; j += kLanes) {
      transpose_block(rows + j * row_stride + c, row_stride, tile + c * width + j, width, std::min(kLanes, n - j),
                      cols);
    }
  }
}

inline int tiles_for(const Strides& s) {
  return s.inner == 1 ? 0 : 1;
}

// The set's view of an input (Note [Strided inputs]): in place when its lanes are
// adjacent, else its rows transposed into `tile`.
template <typename scalar_t>
Lanes<const scalar_t> input_lanes(const KernelArgs& a, const scalar_t* data, const Strides& s, const Group& gr,
                                  scalar_t* tile) {
  const int64_t o = gr.row0 / a.inner, i0 = gr.row0 - o * a.inner;
  const scalar_t* p = data + o * s.outer + i0 * s.inner;
  if (s.inner == 1) return {p, s.length};
  const int64_t width = round_up(gr.n, kLanes);
  transpose_rows(p, s.inner, gr.n, a.length, tile, width);
  return {tile, width};
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

// tile[c * kLanes + j] = rows[j * row_stride + c] for the first n rows, and back
// (from_tile: rows `length` apart). A full set's whole 8x8 blocks go through
// transpose_block (AVX2's 8x8 float transpose); the rest element by element, which for so
// few columns is cheaper than at::vec's generic transpose. Element by element throughout,
// these copies cost as much as the argmax of a 10-category row (a 256x10 hard forward +
// backward transposes five times per set).
template <typename T>
void to_tile(const T* rows, int64_t row_stride, int64_t length, int n, T* tile) {
  int64_t c0 = 0;
  if (n == kLanes) {
    for (; c0 + kLanes <= length; c0 += kLanes)
      transpose_block(rows + c0, row_stride, tile + c0 * kLanes, kLanes, kLanes, kLanes);
  }
  for (int j = 0; j < n; ++j)
    for (int64_t c = c0; c < length; ++c) tile[c * kLanes + j] = rows[j * row_stride + c];
}

template <typename T>
void from_tile(const T* tile, int64_t length, int n, T* rows) {
  int64_t c0 = 0;
  if (n == kLanes) {
    for (; c0 + kLanes <= length; c0 += kLanes)
      transpose_block(tile + c0 * kLanes, kLanes, rows + c0, length, kLanes, kLanes);
  }
  for (int j = 0; j < n; ++j)
    for (int64_t c = c0; c < length; ++c) rows[j * length + c] = tile[c * kLanes + j];
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

// Rows that are contiguous in memory while the logical walk is lane sets (inner > 1,
// length stride 1): the problem as inner == 1 rows, and where row r starts.
inline bool strided_rows(const KernelArgs& a, const Strides& s) {
  return a.inner > 1 && s.length == 1 && s.inner != 1;
}

inline KernelArgs as_rows(const KernelArgs& a) {
  KernelArgs r = a;
  r.outer = a.outer * a.inner;
  r.inner = 1;
  return r;
}

template <typename scalar_t>
const scalar_t* row_start(const KernelArgs& a, const scalar_t* data, const Strides& s, int64_t r) {
  if (a.inner == 1) return data + r * s.outer;
  const int64_t o = r / a.inner;
  return data + o * s.outer + (r - o * a.inner) * s.inner;
}

// The hard forward of strided_rows: each task zeroes its rows' outputs (a run of rows at
// every column of an `outer` slice), then writes each row's one (or NaNs) at stride inner.
// One parallel region, as the lane-set walk has.
template <typename scalar_t>
void one_hot_strided_rows(const KernelArgs& a, const NoiseStream& ns, const scalar_t* l, const Strides& ls,
                          scalar_t* y) {
  using acc_t = acc_of<scalar_t>;
  const int64_t segment = segment_columns(a);
  at::parallel_for(int64_t(0), a.outer * a.inner, row_grain(a.length), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e;) {
      const int64_t o = r / a.inner, i = r - o * a.inner, n = std::min(e - r, a.inner - i);
      scalar_t* yo = y + o * a.length * a.inner + i;
      for (int64_t c = 0; c < a.length; ++c) std::fill_n(yo + c * a.inner, n, scalar_t(0));
      r += n;
    }
    for (int64_t r = b; r < e; ++r) {
      const ArgMax<acc_t> am = argmax_range(row_start(a, l, ls, r), 0, a.length, RowNoise{ns, static_cast<uint64_t>(r)},
                                            segment);
      const int64_t o = r / a.inner;
      scalar_t* yr = y + o * a.length * a.inner + (r - o * a.inner);
      if (am.finite()) {
        yr[am.index * a.inner] = scalar_t(1);
      } else {
        for (int64_t c = 0; c < a.length; ++c) yr[c * a.inner] = scalar_t(kNaN<float>);
      }
    }
  });
}

// The kLanes-row tile of a short-row set ([length, kLanes], see to_tile).
template <typename scalar_t>
Lanes<const scalar_t> tile_lanes(const scalar_t* tile) {
  return {tile, kLanes};
}

template <typename scalar_t>
void forward_typed(const KernelArgs& a, const scalar_t* l, const Strides& ls, scalar_t* y, bool hard) {
  using acc_t = acc_of<scalar_t>;
  const NoiseStream ns(a.seed, a.offset);
  if (short_rows(a)) {
    for_short_rows<acc_t>(a, !hard, [&](const KernelArgs& ta, const Group& gr, acc_t* buf) {
      Tile<scalar_t> in, out;
      to_tile(l + gr.row0 * ls.outer, ls.outer, a.length, gr.n, in.data());
      group_forward(ta, ns, tile_lanes(in.data()), Lanes<scalar_t>{out.data(), kLanes}, gr, hard, buf);
      from_tile(out.data(), a.length, gr.n, y + gr.row0 * a.length);
    });
  } else if (a.inner == 1) {
    const int64_t segment = segment_columns(a);
    for_rows<acc_t>(a, !hard, [&](int64_t r, acc_t* buf, bool split) {
      forward_row(l + r * ls.outer, y + r * a.length, a.length, RowNoise{ns, static_cast<uint64_t>(r)},
                  row_inv_tau<acc_t>(a, r), hard, buf, split, segment);
    });
  } else if (hard && strided_rows(a, ls)) {
    one_hot_strided_rows(a, ns, l, ls, y);
  } else {
    for_groups<acc_t, scalar_t>(a, !hard, tiles_for(ls), [&](const Group& gr, acc_t* buf, scalar_t* tile) {
      group_forward(a, ns, input_lanes(a, l, ls, gr, tile), contiguous_lanes(a, y, gr), gr, hard, buf);
    });
  }
}

template <typename scalar_t>
void backward_typed(const KernelArgs& a, const scalar_t* g, const Strides& gs, const scalar_t* s, const Strides& ss,
                    scalar_t* gl, void* grad_tau, bool hard) {
  using acc_t = acc_of<scalar_t>;
  acc_t* gt = static_cast<acc_t*>(grad_tau);
  const NoiseStream ns(a.seed, a.offset);
  if (short_rows(a)) {
    for_short_rows<acc_t>(a, hard, [&](const KernelArgs& ta, const Group& gr, acc_t* buf) {
      Tile<scalar_t> gt_in, s_in, out;
      to_tile(g + gr.row0 * gs.outer, gs.outer, a.length, gr.n, gt_in.data());
      to_tile(s + gr.row0 * ss.outer, ss.outer, a.length, gr.n, s_in.data());
      group_backward(ta, ns, tile_lanes(gt_in.data()), tile_lanes(s_in.data()), Lanes<scalar_t>{out.data(), kLanes},
                     gt, gr, hard, buf);
      from_tile(out.data(), a.length, gr.n, gl + gr.row0 * a.length);
    });
  } else if (a.inner == 1) {
    for_rows<acc_t>(a, hard, [&](int64_t r, acc_t* buf, bool split) {
      const acc_t inv_tau = row_inv_tau<acc_t>(a, r);
      const acc_t tau_sum = backward_row(g + r * gs.outer, s + r * ss.outer, gl + r * a.length, a.length,
                                         RowNoise{ns, static_cast<uint64_t>(r)}, inv_tau, hard,
                                         gt != nullptr, buf, split);
      if (gt) gt[r] = -inv_tau * tau_sum;
    });
  } else {
    const int gtiles = tiles_for(gs);
    for_groups<acc_t, scalar_t>(a, hard, gtiles + tiles_for(ss), [&](const Group& gr, acc_t* buf, scalar_t* tile) {
      scalar_t* s_tile = gtiles ? tile + a.length * round_up(gr.n, kLanes) : tile;
      group_backward(a, ns, input_lanes(a, g, gs, gr, tile), input_lanes(a, s, ss, gr, s_tile),
                     contiguous_lanes(a, gl, gr), gt, gr, hard, buf);
    });
  }
}

inline void noise_kernel(const KernelArgs& a, float* out) {
  const NoiseStream ns(a.seed, a.offset);
  if (short_rows(a)) {
    for_short_rows<float>(a, false, [&](const KernelArgs& ta, const Group& gr, float*) {
      Tile<float> tile;
      group_noise(ta, ns, Lanes<float>{tile.data(), kLanes}, gr);
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
  for_groups<float, float>(a, false, 0, [&](const Group& gr, float*, float*) {
    group_noise(a, ns, contiguous_lanes(a, out, gr), gr);
  });
}

template <typename scalar_t>
void sample_typed(const KernelArgs& a, const scalar_t* l, const Strides& ls, int64_t* idx, int64_t k) {
  using acc_t = acc_of<scalar_t>;
  const NoiseStream ns(a.seed, a.offset);
  if (short_rows(a)) {
    for_short_rows<acc_t>(a, k > 1, [&](const KernelArgs& ta, const Group& gr, acc_t* buf) {
      Tile<scalar_t> in;
      to_tile(l + gr.row0 * ls.outer, ls.outer, a.length, gr.n, in.data());
      group_sample(ta, ns, tile_lanes(in.data()), idx, gr, k, buf);
    });
    return;
  }
  if (a.inner == 1 || strided_rows(a, ls)) {
    const int64_t segment = segment_columns(a);
    for_rows<acc_t>(as_rows(a), k > 1, [&](int64_t r, acc_t* buf, bool split) {
      const scalar_t* lr = row_start(a, l, ls, r);
      const RowNoise rn{ns, static_cast<uint64_t>(r)};
      if (k == 1) {
        const ArgMax<acc_t> am = reduce_columns(
            a.length, split, ArgMax<acc_t>(),
            [&](int64_t c0, int64_t c1) { return argmax_range(lr, c0, c1, rn, segment); }, ArgMax<acc_t>::combine);
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
  for_groups<acc_t, scalar_t>(a, k > 1, tiles_for(ls), [&](const Group& gr, acc_t* buf, scalar_t* tile) {
    group_sample(a, ns, input_lanes(a, l, ls, gr, tile), idx, gr, k, buf);
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

inline void forward(const KernelArgs& a, const void* logits, const Strides& ls, void* out, bool hard) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    forward_typed(a, static_cast<const scalar_t*>(logits), ls, static_cast<scalar_t*>(out), hard);
  });
}

inline void backward(const KernelArgs& a, const void* grad, const Strides& gs, const void* saved,
                     const Strides& ss, void* grad_logits, void* grad_tau, bool hard) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    backward_typed(a, static_cast<const scalar_t*>(grad), gs, static_cast<const scalar_t*>(saved), ss,
                   static_cast<scalar_t*>(grad_logits), grad_tau, hard);
  });
}

inline void sample(const KernelArgs& a, const void* logits, const Strides& ls, int64_t* out, int64_t k) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    sample_typed(a, static_cast<const scalar_t*>(logits), ls, out, k);
  });
}

inline void vec_math(const float* x, float* y, int64_t n, int fn) {
  for (int64_t i = 0; i < n; i += kLanes) {
    const int m = static_cast<int>(std::min<int64_t>(kLanes, n - i));
    const fVec v = fVec::loadu(x + i, m);
    (fn == 0 ? neg_log_positive(v).neg() : exp_nonpositive(v)).store(y + i, m);
  }
}

inline void sample_filtered(const SampleArgs& a, const void* logits, int64_t* out, float* logprobs) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    sample_filtered_typed(a, static_cast<const scalar_t*>(logits), out, logprobs);
  });
}

#define GUMBEL_EXT_STRINGIFY_(x) #x
#define GUMBEL_EXT_STRINGIFY(x) GUMBEL_EXT_STRINGIFY_(x)

// Constant-initialized: no code runs at load time (see Note [Per-ISA CPU kernels]).
extern const KernelTable kKernels;
const KernelTable kKernels = {GUMBEL_EXT_STRINGIFY(CPU_CAPABILITY), &forward, &backward, &noise_kernel, &sample,
                               &vec_math, &sample_filtered, &keyed_noise};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace gumbel_ext
