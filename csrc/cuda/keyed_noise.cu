// gumbel_ext::keyed_noise on CUDA (schema and CPU implementation in csrc/keyed_noise.cpp).
// One thread per Philox block (4 columns) of the global range: the draw is gumbel_noise.h's
// philox_block + gumbel_from_bits, the same bits as every other copy (Note [Bit-identical
// noise]). Keys, offsets and row counters are read on the device: no host sync, so a
// CUDA graph may capture it (offsets are not checked for >= 0 here, as sample() does not
// check them on CUDA either).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "../gumbel_noise.h"
#include "../keyed_noise_op.h"

namespace gumbel_ext {
namespace {

constexpr int kKeyedNoiseThreads = 256;

__global__ void __launch_bounds__(kKeyedNoiseThreads)
    keyed_noise_kernel(float* out, const int64_t* keys, const int64_t* offsets, const int64_t* row_ctr, int64_t rows,
                       int64_t col_start, int64_t length) {
  const int64_t q_first = col_start / 4;
  const int64_t quads = (col_start + length + 3) / 4 - q_first;  // Philox blocks per row
  const int64_t total = rows * quads;
  for (int64_t t = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; t < total; t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t j = t / quads, q = q_first + t % quads;
    const Philox4 p = philox_block(static_cast<uint64_t>(keys[j]), static_cast<uint64_t>(offsets[j]),
                                   static_cast<uint64_t>(row_ctr[j]), static_cast<uint64_t>(q));
    const uint32_t bits[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int64_t c = 4 * q + w - col_start;  // local column
      if (c >= 0 && c < length) out[j * length + c] = gumbel_from_bits(bits[w]);
    }
  }
}

at::Tensor keyed_noise_cuda(const at::Tensor& keys, const at::Tensor& offsets, const at::Tensor& row_ctr,
                            int64_t col_start, int64_t length) {
  check_keyed_noise_args(keys, offsets, row_ctr, col_start, length);
  const c10::cuda::CUDAGuard guard(keys.device());
  const at::Tensor k = keys.contiguous(), o = offsets.contiguous(), r = row_ctr.contiguous();
  const int64_t rows = k.numel();
  at::Tensor out = at::empty({rows, length}, keys.options().dtype(at::kFloat));
  const int64_t total = rows * ((col_start + length + 3) / 4 - col_start / 4);
  if (rows == 0 || length == 0) return out;
  const int64_t blocks = std::min<int64_t>((total + kKeyedNoiseThreads - 1) / kKeyedNoiseThreads, 65536);
  keyed_noise_kernel<<<static_cast<unsigned>(blocks), kKeyedNoiseThreads, 0,
                       c10::cuda::getCurrentCUDAStream(keys.device().index()).stream()>>>(
      out.mutable_data_ptr<float>(), k.const_data_ptr<int64_t>(), o.const_data_ptr<int64_t>(),
      r.const_data_ptr<int64_t>(), rows, col_start, length);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gumbel_ext, CUDA, m) {
  m.impl("keyed_noise", &keyed_noise_cuda);
}

}  // namespace gumbel_ext
