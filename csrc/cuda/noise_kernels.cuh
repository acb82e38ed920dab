// Element-wise kernels of the noise op and of Gumbel-top-k (perturbed sort keys, the
// first k sorted columns). In a header so that the CPU emulation test runs this code.
#pragma once

#include "common.cuh"

namespace gumbel_ext {
namespace cuda {

constexpr int kElementwiseThreads = 256;

// Thread t covers the 4-column block q of row r = o * inner + i, with i fastest so that
// neighbouring threads touch neighbouring addresses when the reduced dim is not last.
static __global__ void __launch_bounds__(kElementwiseThreads) noise_kernel(float* out, Shape shape, Rng rng) {
  uint64_t seed, offset;
  seed_offset(rng, seed, offset);
  const int64_t length = shape.length, inner = shape.inner;
  const int64_t quads = ceil_div(length, 4);
  const int64_t total = shape.outer * quads * inner;
  for (int64_t t = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; t < total;
       t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = t % inner, rest = t / inner;
    const int64_t q = rest % quads, o = rest / quads;
    const Philox4 p = philox_block(seed, offset, static_cast<uint64_t>(o * inner + i), static_cast<uint64_t>(q));
    const uint32_t bits[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t c = 4 * q + j;
      if (c < length) out[(o * length + c) * inner + i] = gumbel_from_bits(bits[j]);
    }
  }
}

// Sort keys: x = logit + noise with every NaN made the same positive quiet NaN (a radix
// sort then puts it above +inf, as torch.sort does) and -0 made +0 (equal to +0, as
// comparisons see it).
template <typename acc_t>
__device__ __forceinline__ acc_t sort_key(acc_t x) {
  return x != x ? quiet_nan<acc_t>() : (x == acc_t(0) ? acc_t(0) : x);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kElementwiseThreads)
    keys_kernel(const scalar_t* __restrict__ logits, at::opmath_type<scalar_t>* __restrict__ keys,
                int32_t* __restrict__ cols, Shape shape, int64_t row_begin, int64_t num_rows, Rng rng) {
  using acc_t = at::opmath_type<scalar_t>;
  uint64_t seed, offset;
  seed_offset(rng, seed, offset);
  const int64_t length = shape.length, inner = shape.inner;
  const int64_t quads = ceil_div(length, 4);
  const int64_t total = num_rows * quads;
  for (int64_t t = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; t < total;
       t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t local = t / quads, q = t % quads;
    const int64_t r = row_begin + local;
    const int64_t o = r / inner, i = r % inner;
    const Philox4 p = philox_block(seed, offset, static_cast<uint64_t>(r), static_cast<uint64_t>(q));
    const uint32_t bits[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t c = 4 * q + j;
      if (c >= length) break;
      const acc_t x = static_cast<acc_t>(logits[(o * length + c) * inner + i]) +
                      static_cast<acc_t>(gumbel_from_bits(bits[j]));
      keys[local * length + c] = sort_key(x);
      cols[local * length + c] = static_cast<int32_t>(c);
    }
  }
}

static __global__ void __launch_bounds__(kElementwiseThreads)
    gather_kernel(const int32_t* __restrict__ sorted_cols, int64_t* __restrict__ out, int64_t num_rows,
                  int64_t length, int64_t k) {
  const int64_t total = num_rows * k;
  for (int64_t t = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; t < total;
       t += int64_t{gridDim.x} * blockDim.x) {
    out[t] = sorted_cols[(t / k) * length + t % k];
  }
}

}  // namespace cuda
}  // namespace gumbel_ext
