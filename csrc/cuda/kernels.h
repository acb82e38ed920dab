// The interface between the CUDA ops (ops_cuda.cu: checks, generator, dispatch) and the
// kernel translation units: plain pointers and sizes, so that the kernel files include
// none of ATen's heavy headers and compile quickly.
#pragma once

#include <cuda_runtime_api.h>

#include <ATen/OpMathType.h>
#include <ATen/cuda/PhiloxCudaState.h>

#include <cstddef>
#include <cstdint>

namespace gumbel_ext {
namespace cuda {

// Where a kernel takes its (seed, offset) from: the generator's PhiloxCudaState (eager or
// captured in a CUDA graph, read with at::cuda::philox::unpack), or `replay`, a device
// int64 [2] rng_state. When `record` is set, the kernel writes the pair it used there.
struct Rng {
  at::PhiloxCudaState philox;
  const int64_t* replay = nullptr;
  int64_t* record = nullptr;
};

// Contiguous logits seen as [outer, length, inner]; row r = o * inner + i.
struct Shape {
  int64_t outer = 1;
  int64_t length = 1;
  int64_t inner = 1;
  int64_t rows() const { return outer * inner; }
};

// What a forward kernel writes: the soft sample, the exact one-hot, or (sample with
// num_samples == 1) the index of the one-hot, one int64 per row.
enum class Mode : int { kSoft = 0, kHard = 1, kIndex = 2 };

template <typename scalar_t>
struct ForwardArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* logits = nullptr;
  scalar_t* out = nullptr;        // kSoft, kHard
  int64_t* indices = nullptr;     // kIndex: [rows]
  const acc_t* tau_rows = nullptr;  // per-row temperature, or null: inv_tau
  double inv_tau = 1.0;
  Mode mode = Mode::kSoft;
};

template <typename scalar_t>
struct BackwardArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* grad = nullptr;
  const scalar_t* saved = nullptr;  // the soft output, or the logits when hard
  scalar_t* grad_logits = nullptr;
  acc_t* grad_tau = nullptr;        // [rows] dL/dtau_r, or null
  const acc_t* tau_rows = nullptr;
  double inv_tau = 1.0;
  bool hard = false;
};

template <typename scalar_t>
void forward(const ForwardArgs<scalar_t>& args, const Shape& shape, const Rng& rng,
             cudaStream_t stream);

// rng.replay must be set when args.hard (y_soft is regenerated from it).
template <typename scalar_t>
void backward(const BackwardArgs<scalar_t>& args, const Shape& shape, const Rng& rng,
              cudaStream_t stream);

// The float32 noise of every element, in the logits' layout.
void noise(float* out, const Shape& shape, const Rng& rng, cudaStream_t stream);

// Gumbel-top-k (num_samples = k > 1), for rows [row_begin, row_begin + num_rows):
// perturbed_keys writes x = logits + noise (NaN canonical, -0 as +0) and the column
// indices row-major into keys / cols ([num_rows, length]); sort_keys sorts every row
// descending and stably; gather_topk copies the first k sorted columns of every row.
template <typename scalar_t>
void perturbed_keys(const scalar_t* logits, at::opmath_type<scalar_t>* keys, int32_t* cols,
                    const Shape& shape, int64_t row_begin, int64_t num_rows, const Rng& rng,
                    cudaStream_t stream);

// With temp == nullptr only sets temp_bytes. offsets: [num_rows + 1], offsets[j] = j * length.
template <typename key_t>
void sort_keys(void* temp, size_t& temp_bytes, const key_t* keys_in, key_t* keys_out,
               const int32_t* cols_in, int32_t* cols_out, int64_t num_rows, int64_t length,
               const int64_t* offsets, cudaStream_t stream);

void gather_topk(const int32_t* sorted_cols, int64_t* out, int64_t num_rows, int64_t length,
                 int64_t k, cudaStream_t stream);

}  // namespace cuda
}  // namespace gumbel_ext
