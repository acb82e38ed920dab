// The noise op, and Gumbel-top-k (sample with num_samples > 1): perturbed keys, a stable
// descending segmented radix sort per row (cub), and the first k columns of every row.
// Gumbel-max (num_samples == 1) is a forward mode, see forward.cu.
//
// cub::DeviceSegmentedRadixSort, not cub::DeviceSegmentedSort: the latter copies its
// segment-size groups to the host and synchronizes the stream when there are many
// segments, which breaks CUDA graph capture. The radix sort is stream-ordered throughout
// (one block per row) and stable, so equal keys keep ascending column order.
#include <cub/device/device_segmented_radix_sort.cuh>

#include <limits>

#include "noise_kernels.cuh"

namespace gumbel_ext {
namespace cuda {
namespace {

inline unsigned elementwise_blocks(int64_t n) {
  // Enough blocks to fill any current GPU; the kernels loop past the cap.
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, kElementwiseThreads), 65536)));
}

}  // namespace

void noise(float* out, const Shape& shape, const Rng& rng, cudaStream_t stream) {
  const int64_t total = shape.outer * ceil_div(shape.length, 4) * shape.inner;
  if (total == 0) return;
  noise_kernel<<<elementwise_blocks(total), kElementwiseThreads, 0, stream>>>(out, shape, rng);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void perturbed_keys(const scalar_t* logits, at::opmath_type<scalar_t>* keys, int32_t* cols,
                    const Shape& shape, int64_t row_begin, int64_t num_rows, const Rng& rng,
                    cudaStream_t stream) {
  const int64_t total = num_rows * ceil_div(shape.length, 4);
  if (total == 0) return;
  keys_kernel<scalar_t><<<elementwise_blocks(total), kElementwiseThreads, 0, stream>>>(
      logits, keys, cols, shape, row_begin, num_rows, rng);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename key_t>
void sort_keys(void* temp, size_t& temp_bytes, const key_t* keys_in, key_t* keys_out,
               const int32_t* cols_in, int32_t* cols_out, int64_t num_rows, int64_t length,
               const int64_t* offsets, cudaStream_t stream) {
  // Stable, so equal keys keep ascending column order: ties go to the lowest index.
  TORCH_INTERNAL_ASSERT(num_rows * length <= std::numeric_limits<int>::max(),
                        "gumbel_ext: top-k batch too large for cub's int item count");
  C10_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
      temp, temp_bytes, keys_in, keys_out, cols_in, cols_out, static_cast<int>(num_rows * length),
      static_cast<int>(num_rows), offsets, offsets + 1, 0, static_cast<int>(sizeof(key_t) * 8), stream));
  if (temp != nullptr) C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void gather_topk(const int32_t* sorted_cols, int64_t* out, int64_t num_rows, int64_t length,
                 int64_t k, cudaStream_t stream) {
  if (num_rows * k == 0) return;
  gather_kernel<<<elementwise_blocks(num_rows * k), kElementwiseThreads, 0, stream>>>(
      sorted_cols, out, num_rows, length, k);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void perturbed_keys<float>(const float*, float*, int32_t*, const Shape&, int64_t, int64_t,
                                    const Rng&, cudaStream_t);
template void perturbed_keys<double>(const double*, double*, int32_t*, const Shape&, int64_t, int64_t,
                                     const Rng&, cudaStream_t);
template void perturbed_keys<c10::Half>(const c10::Half*, float*, int32_t*, const Shape&, int64_t,
                                        int64_t, const Rng&, cudaStream_t);
template void perturbed_keys<c10::BFloat16>(const c10::BFloat16*, float*, int32_t*, const Shape&, int64_t,
                                            int64_t, const Rng&, cudaStream_t);
template void sort_keys<float>(void*, size_t&, const float*, float*, const int32_t*, int32_t*, int64_t,
                               int64_t, const int64_t*, cudaStream_t);
template void sort_keys<double>(void*, size_t&, const double*, double*, const int32_t*, int32_t*, int64_t,
                                int64_t, const int64_t*, cudaStream_t);

}  // namespace cuda
}  // namespace gumbel_ext
