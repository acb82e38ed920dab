// C entry points (for ctypes) that run the CUDA kernels under the SIMT emulator with the
// launch choices of csrc/cuda/forward.cu / backward.cu / noise_topk.cu. Two knobs the
// real launchers do not have: `grid_cap` shrinks grids so that the grid-stride loops
// run, and `smem_budget` decides what the block-per-row kernels keep on chip.
#include "simt.h"

#include "backward_kernels.cuh"
#include "forward_kernels.cuh"
#include "noise_kernels.cuh"
#include "split_backward_kernels.cuh"
#include "split_forward_kernels.cuh"

namespace gumbel_ext {
namespace cuda {
namespace {

enum DType : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

template <typename F>
int with_dtype(int dtype, F&& f) {
  switch (dtype) {
    case kF32: f(float{}); return 0;
    case kF64: f(double{}); return 0;
    case kF16: f(c10::Half{}); return 0;
    case kBF16: f(c10::BFloat16{}); return 0;
    default: return -1;
  }
}

// kind 0: replay rng[0..1]; 1: philox eager (seed, offset) = rng[0..1];
// 2: philox captured (pointers to rng[0] and rng[1], plus intragraph).
Rng make_rng(int kind, int64_t* rng, uint64_t intragraph, int64_t* record) {
  Rng r;
  r.record = record;
  if (kind == 0) {
    r.replay = rng;
  } else if (kind == 1) {
    r.philox = at::PhiloxCudaState(static_cast<uint64_t>(rng[0]), static_cast<uint64_t>(rng[1]));
  } else {
    r.philox = at::PhiloxCudaState(rng, rng + 1, intragraph);
  }
  return r;
}

unsigned capped(int64_t n, int64_t cap) { return static_cast<unsigned>(std::max<int64_t>(1, std::min(n, cap))); }

template <typename F, int L = 0, int kMax = 8>
void with_log2(int l, F&& f) {
  if constexpr (L <= kMax) {
    if (l == L) {
      f(std::integral_constant<int, L>{});
    } else {
      with_log2<F, L + 1, kMax>(l, std::forward<F>(f));
    }
  }
}

// The copy of the warp kernel the last warp-per-row launch took (Note [Warp kernels'
// occupancy]): its __launch_bounds__ minimum of blocks per SM and its rows per block.
struct WarpLaunch {
  int64_t aligned_copy = -1, blocks_per_sm = -1, rows_per_block = -1;
};
WarpLaunch last_warp_launch;

template <typename scalar_t, int L, int kArrays, bool kAlignedRows>
void record_warp_launch() {
  last_warp_launch = {kAlignedRows, warp_row_blocks_per_sm<scalar_t, L, kArrays, kAlignedRows>(), warp_rows_per_block<L>()};
}

int finish() { return simt::Barrier::deadlocks().exchange(0) == 0 ? 0 : -2; }

// The kernels' argument structs from the C entry points' untyped pointers: one place
// for the row kernels and the split kernels alike.
template <typename scalar_t>
ForwardArgs<scalar_t> forward_args(const void* logits, void* out, int64_t* indices, const void* tau_rows,
                                   double inv_tau, int mode) {
  using acc_t = at::opmath_type<scalar_t>;
  ForwardArgs<scalar_t> args;
  args.logits = static_cast<const scalar_t*>(logits);
  args.out = static_cast<scalar_t*>(out);
  args.indices = indices;
  args.tau_rows = static_cast<const acc_t*>(tau_rows);
  args.inv_tau = inv_tau;
  args.mode = static_cast<Mode>(mode);
  return args;
}

template <typename scalar_t>
BackwardArgs<scalar_t> backward_args(const void* grad, const void* saved, void* grad_logits, void* grad_tau,
                                     const void* tau_rows, double inv_tau, int hard) {
  using acc_t = at::opmath_type<scalar_t>;
  BackwardArgs<scalar_t> args;
  args.grad = static_cast<const scalar_t*>(grad);
  args.saved = static_cast<const scalar_t*>(saved);
  args.grad_logits = static_cast<scalar_t*>(grad_logits);
  args.grad_tau = static_cast<acc_t*>(grad_tau);
  args.tau_rows = static_cast<const acc_t*>(tau_rows);
  args.inv_tau = inv_tau;
  args.hard = hard != 0;
  return args;
}

// A split kernel (Note [Split rows]) over `groups` row groups of P blocks: as clusters
// (P blocks at a time, no workspace), or as one cooperative grid whose groups exchange
// through a zeroed workspace, all blocks at once.
template <typename ArgsT>
void launch_split(void (*cluster_kernel)(ArgsT, int64_t, int64_t, SplitShape, SplitWorkspace, Rng),
                  void (*workspace_kernel)(ArgsT, int64_t, int64_t, SplitShape, SplitWorkspace, Rng), bool cluster,
                  int64_t groups, const ArgsT& args, int64_t rows, int64_t length, const SplitShape& s, size_t smem,
                  const Rng& r) {
  const unsigned grid = static_cast<unsigned>(std::max<int64_t>(1, std::min(rows, groups)) * s.parts);
  if (cluster) {
    simt::launch_groups(cluster_kernel, grid, dim3(s.threads), smem, static_cast<unsigned>(s.parts), args, rows,
                        length, s, SplitWorkspace{}, r);
    return;
  }
  const unsigned n = grid / static_cast<unsigned>(s.parts);
  std::vector<unsigned long long> counters(n, 0);
  std::vector<unsigned char> partials(static_cast<size_t>(n) * kSplitSlotSets * kMaxSplit * kSplitSlotBytes, 0xFF);
  SplitWorkspace ws;
  ws.counters = counters.data();
  ws.partials = partials.data();
  simt::launch_groups(workspace_kernel, grid, dim3(s.threads), smem, grid, args, rows, length, s, ws, r);
}

}  // namespace
}  // namespace cuda
}  // namespace gumbel_ext

using namespace gumbel_ext::cuda;

extern "C" {

int emu_forward(int dtype, const void* logits, void* out, int64_t* indices, int mode, int64_t outer,
                int64_t length, int64_t inner, const void* tau_rows, double inv_tau, int rng_kind,
                int64_t* rng, uint64_t intragraph, int64_t* record, int64_t smem_budget, int64_t grid_cap) {
  const Shape shape{outer, length, inner};
  const Rng r = make_rng(rng_kind, rng, intragraph, record);
  const int rc = with_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    constexpr int V = chunk_size<scalar_t>();
    const ForwardArgs<scalar_t> args = forward_args<scalar_t>(logits, out, indices, tau_rows, inv_tau, mode);
    const int64_t rows = shape.rows();
    if (inner > 1) {
      const SpatialLaunch launch = spatial_launch<scalar_t>(args.mode == Mode::kSoft, shape, smem_budget);
      dim3 grid = spatial_grid(shape, launch.block);
      grid.x = capped(grid.x, grid_cap);
      grid.y = capped(grid.y, grid_cap);
      simt::launch(spatial_forward_kernel<scalar_t>, grid, launch.block, launch.bytes, args, shape, launch.keep_x, r);
      return;
    }
    if (length <= kMaxWarpRow) {
      with_log2(ceil_log2(ceil_div(length, V)), [&](auto l) {
        constexpr int L = decltype(l)::value;
        if constexpr ((1 << L) * V <= kMaxWarpRow) {
          constexpr int per_block = warp_rows_per_block<L>();
          with_warp_rows_copy<scalar_t, L, 1>(warp_forward_aligned_copy(args, length), [&](auto copy) {
            record_warp_launch<scalar_t, L, 1, decltype(copy)::value>();
            simt::launch(warp_forward_kernel<scalar_t, L, decltype(copy)::value>,
                         dim3(capped(ceil_div(rows, per_block), grid_cap)), dim3(kWarpRowThreads), 0, args, rows,
                         static_cast<int>(length), r);
          });
        }
      });
      return;
    }
    const int64_t chunks = ceil_div(length, V);
    const ForwardSmem smem = forward_smem<scalar_t>(args.mode, chunks, smem_budget);
    simt::launch(block_forward_kernel<scalar_t>, dim3(capped(rows, grid_cap)), dim3(row_block_threads(chunks)),
                 smem.bytes, args, rows, length, smem.keep_x, r);
  });
  return rc != 0 ? rc : finish();
}

int emu_backward(int dtype, const void* grad, const void* saved, void* grad_logits, void* grad_tau,
                 const void* tau_rows, double inv_tau, int hard, int64_t outer, int64_t length,
                 int64_t inner, int64_t* rng_state, int64_t smem_budget, int64_t grid_cap) {
  const Shape shape{outer, length, inner};
  Rng r;
  r.replay = rng_state;
  const int rc = with_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    constexpr int V = chunk_size<scalar_t>();
    const BackwardArgs<scalar_t> args =
        backward_args<scalar_t>(grad, saved, grad_logits, grad_tau, tau_rows, inv_tau, hard);
    const int64_t rows = shape.rows();
    // The tau gradient is a template parameter of the kernels, as in backward.cu.
    auto run = [&](auto grad_tau_tag) {
    constexpr bool kGradTau = decltype(grad_tau_tag)::value;
    if (inner > 1) {
      const SpatialLaunch launch = spatial_launch<scalar_t>(args.hard, shape, smem_budget);
      dim3 grid = spatial_grid(shape, launch.block);
      grid.x = capped(grid.x, grid_cap);
      grid.y = capped(grid.y, grid_cap);
      simt::launch(spatial_backward_kernel<scalar_t, kGradTau>, grid, launch.block, launch.bytes, args, shape,
                   launch.keep_x, r);
      return;
    }
    if (length <= kMaxWarpRow) {
      with_log2(ceil_log2(ceil_div(length, V)), [&](auto l) {
        constexpr int L = decltype(l)::value;
        if constexpr ((1 << L) * V <= kMaxWarpRow) {
          constexpr int per_block = warp_rows_per_block<L>();
          with_warp_rows_copy<scalar_t, L, 2>(warp_backward_aligned_copy(args, length), [&](auto copy) {
            record_warp_launch<scalar_t, L, 2, decltype(copy)::value>();
            simt::launch(warp_backward_kernel<scalar_t, L, kGradTau, decltype(copy)::value>,
                         dim3(capped(ceil_div(rows, per_block), grid_cap)), dim3(kWarpRowThreads), 0, args, rows,
                         static_cast<int>(length), r);
          });
        }
      });
      return;
    }
    const int64_t chunks = ceil_div(length, V);
    const BackwardSmem smem = backward_smem<scalar_t>(args.hard, chunks, smem_budget);
    simt::launch(block_backward_kernel<scalar_t, kGradTau>, dim3(capped(rows, grid_cap)), dim3(row_block_threads(chunks)),
                 smem.bytes, args, rows, length, smem.keep_y, smem.keep_g, r);
    };
    if (args.grad_tau != nullptr) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
  });
  return rc != 0 ? rc : finish();
}

// The spatial kernels' launch (Note [Spatial launch]): out = {blockDim.x, blockDim.y,
// keep_x, dynamic shared memory bytes}.
int emu_spatial_launch(int dtype, int needs_x_twice, int64_t outer, int64_t length, int64_t inner,
                       int64_t smem_budget, int64_t* out) {
  return with_dtype(dtype, [&](auto tag) {
    const SpatialLaunch l = spatial_launch<decltype(tag)>(needs_x_twice != 0, Shape{outer, length, inner}, smem_budget);
    out[0] = l.block.x;
    out[1] = l.block.y;
    out[2] = l.keep_x;
    out[3] = static_cast<int64_t>(l.bytes);
  });
}

int emu_noise(float* out, int64_t outer, int64_t length, int64_t inner, int64_t* rng_state, int64_t grid_cap) {
  Rng r;
  r.replay = rng_state;
  simt::launch(noise_kernel, dim3(capped(grid_cap, grid_cap)), dim3(kElementwiseThreads), 0, out,
               Shape{outer, length, inner}, r);
  return finish();
}

int emu_keys(int dtype, const void* logits, void* keys, int32_t* cols, int64_t outer, int64_t length,
             int64_t inner, int64_t row_begin, int64_t num_rows, int64_t* rng_state, int64_t grid_cap) {
  Rng r;
  r.replay = rng_state;
  const int rc = with_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    simt::launch(keys_kernel<scalar_t>, dim3(capped(grid_cap, grid_cap)), dim3(kElementwiseThreads), 0,
                 static_cast<const scalar_t*>(logits), static_cast<acc_t*>(keys), cols,
                 Shape{outer, length, inner}, row_begin, num_rows, r);
  });
  return rc != 0 ? rc : finish();
}

int emu_gather(const int32_t* sorted_cols, int64_t* out, int64_t num_rows, int64_t length, int64_t k,
               int64_t grid_cap) {
  simt::launch(gather_kernel, dim3(capped(grid_cap, grid_cap)), dim3(kElementwiseThreads), 0, sorted_cols,
               out, num_rows, length, k);
  return finish();
}

// The split kernels with P = parts and at most max_threads threads per block; cluster:
// the sm_90 exchange, else the sm_80 workspace one; groups: row groups in the grid.
int emu_split_forward(int dtype, const void* logits, void* out, int64_t* indices, int mode, int64_t rows,
                      int64_t length, const void* tau_rows, double inv_tau, int64_t* rng_state, int parts,
                      int max_threads, int cluster, int64_t groups) {
  Rng r;
  r.replay = rng_state;
  const int rc = with_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    const ForwardArgs<scalar_t> args = forward_args<scalar_t>(logits, out, indices, tau_rows, inv_tau, mode);
    const SplitShape s = split_shape<scalar_t>(parts, length, max_threads);
    launch_split<ForwardArgs<scalar_t>>(split_forward_kernel<scalar_t, true>, split_forward_kernel<scalar_t, false>,
                                        cluster != 0, groups, args, rows, length, s,
                                        split_smem<scalar_t>(s, args.mode == Mode::kSoft), r);
  });
  return rc != 0 ? rc : finish();
}

int emu_split_backward(int dtype, const void* grad, const void* saved, void* grad_logits, void* grad_tau,
                       const void* tau_rows, double inv_tau, int hard, int64_t rows, int64_t length,
                       int64_t* rng_state, int parts, int max_threads, int cluster, int64_t groups) {
  Rng r;
  r.replay = rng_state;
  const int rc = with_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    const BackwardArgs<scalar_t> args =
        backward_args<scalar_t>(grad, saved, grad_logits, grad_tau, tau_rows, inv_tau, hard);
    const SplitShape s = split_shape<scalar_t>(parts, length, max_threads);
    const size_t smem = split_smem<scalar_t>(s, args.hard);
    if (args.grad_tau != nullptr) {
      launch_split<BackwardArgs<scalar_t>>(split_backward_kernel<scalar_t, true, true>,
                                           split_backward_kernel<scalar_t, true, false>, cluster != 0, groups, args,
                                           rows, length, s, smem, r);
    } else {
      launch_split<BackwardArgs<scalar_t>>(split_backward_kernel<scalar_t, false, true>,
                                           split_backward_kernel<scalar_t, false, false>, cluster != 0, groups, args,
                                           rows, length, s, smem, r);
    }
  });
  return rc != 0 ? rc : finish();
}

// choose_split for a device of `sms` SMs, `smem` bytes of opt-in shared memory and
// P <= max_parts: out = {P, threads, slice_chunks, shared-memory bytes with x}.
int emu_choose_split(int dtype, int64_t rows, int64_t length, int sms, int64_t smem, int max_parts, int64_t* out) {
  return with_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    SplitDevice dev;
    dev.sms = sms;
    dev.smem_bytes = smem;
    dev.max_parts = max_parts;
    const SplitShape s = choose_split<scalar_t>(rows, length, dev);
    out[0] = s.parts;
    out[1] = s.threads;
    out[2] = s.slice_chunks;
    out[3] = s.parts != 0 ? static_cast<int64_t>(split_smem<scalar_t>(s, true)) : 0;
  });
}

// The device code's scalar noise (gumbel_noise.h, as CUDA compiles it) at arbitrary
// (row, column), 64-bit counters included, and its log alone.
void emu_noise_at(uint64_t seed, uint64_t offset, const int64_t* rows, const int64_t* cols, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = gumbel_ext::gumbel_noise(seed, offset, static_cast<uint64_t>(rows[i]), static_cast<uint64_t>(cols[i]));
  }
}

void emu_neg_log(const float* x, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gumbel_ext::neg_log_positive(x[i]);
}

// The last warp-per-row launch: out = {aligned-rows copy (0 or 1), blocks per SM of its
// launch bound (0: none), rows per block}.
void emu_last_warp_launch(int64_t* out) {
  out[0] = last_warp_launch.aligned_copy;
  out[1] = last_warp_launch.blocks_per_sm;
  out[2] = last_warp_launch.rows_per_block;
}

// How many 16-byte accesses emu_vector_accesses has to report.
int64_t emu_vector_access_count() {
  std::lock_guard<std::mutex> lock(simt::vector_accesses().mutex);
  return static_cast<int64_t>(simt::vector_accesses().addresses.size());
}

// The 16-byte accesses since the last call: counts[0] aligned, counts[1] misaligned,
// counts[2] addresses, of which the first `capacity` go to `addresses`.
void emu_vector_accesses(int64_t* counts, int64_t* addresses, int64_t capacity) {
  simt::VectorAccesses& v = simt::vector_accesses();
  counts[0] = v.aligned.exchange(0);
  counts[1] = v.misaligned.exchange(0);
  std::lock_guard<std::mutex> lock(v.mutex);
  counts[2] = static_cast<int64_t>(v.addresses.size());
  for (int64_t i = 0; i < capacity && i < counts[2]; ++i) addresses[i] = static_cast<int64_t>(v.addresses[i]);
  v.addresses.clear();
}

}  // extern "C"
