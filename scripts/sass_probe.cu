// The kernels scripts/sass_budget.py reads (Note [SASS probe] in csrc/cuda/common.cuh):
// the float32 instantiations of every strategy at the target shapes, compiled once per
// mode with the runtime choices fixed, and one loop of noise draws.
#include "backward_kernels.cuh"
#include "forward_kernels.cuh"
#include "split_backward_kernels.cuh"
#include "split_forward_kernels.cuh"

namespace gumbel_ext {
namespace cuda {

// Four draws per iteration, summed so that nothing is dead; the budget script divides
// the loop by 4.
__global__ void noise_probe(float* out, uint64_t seed, uint64_t offset, uint64_t row, int64_t blocks) {
  float acc = 0.0f;
  for (int64_t q = threadIdx.x + int64_t{blockIdx.x} * blockDim.x; q < blocks; q += int64_t{gridDim.x} * blockDim.x) {
    const Philox4 p = philox_block(seed, offset, row, static_cast<uint64_t>(q));
    acc += gumbel_from_bits(p.x) + gumbel_from_bits(p.y) + gumbel_from_bits(p.z) + gumbel_from_bits(p.w);
  }
  out[threadIdx.x + blockIdx.x * blockDim.x] = acc;
}

// 4096 x 1000: 250 chunks of 4, padded to 2^8. The warp kernels in both copies (Note
// [Warp kernels' occupancy]): aligned rows of 1000 columns run the aligned-rows copy,
// sample and the misaligned probes the general one.
template __global__ void warp_forward_kernel<float, 8, true>(ForwardArgs<float>, int64_t, int, Rng);
template __global__ void warp_forward_kernel<float, 8, false>(ForwardArgs<float>, int64_t, int, Rng);
template __global__ void block_forward_kernel<float>(ForwardArgs<float>, int64_t, int64_t, bool, Rng);
template __global__ void spatial_forward_kernel<float>(ForwardArgs<float>, Shape, bool, Rng);
template __global__ void warp_backward_kernel<float, 8, false, true>(BackwardArgs<float>, int64_t, int, Rng);
template __global__ void warp_backward_kernel<float, 8, false, false>(BackwardArgs<float>, int64_t, int, Rng);
template __global__ void block_backward_kernel<float, false>(BackwardArgs<float>, int64_t, int64_t, bool, bool, Rng);
template __global__ void spatial_backward_kernel<float, false>(BackwardArgs<float>, Shape, bool, Rng);
// Rows split across a cluster (Note [Split rows]); the sm_80 workspace variant differs
// only in its exchange, outside the per-element loops.
template __global__ void split_forward_kernel<float, true>(ForwardArgs<float>, int64_t, int64_t, SplitShape,
                                                           SplitWorkspace, Rng);
template __global__ void split_backward_kernel<float, false, true>(BackwardArgs<float>, int64_t, int64_t,
                                                                   SplitShape, SplitWorkspace, Rng);

}  // namespace cuda
}  // namespace gumbel_ext
