// The split-row launchers (split_rows.cu, Note [Split rows] in split_rows.cuh), called
// by forward.cu and backward.cu before they fall back to one block per row.
#pragma once

#include "kernels.h"

namespace gumbel_ext {
namespace cuda {

// Each returns false, launching nothing, when rows of this length are not split on the
// current device (choose_split); both decide alike for the same shape.
template <typename scalar_t>
bool split_forward(const ForwardArgs<scalar_t>& args, int64_t rows, int64_t length, const Rng& rng,
                   cudaStream_t stream);

template <typename scalar_t>
bool split_backward(const BackwardArgs<scalar_t>& args, int64_t rows, int64_t length, const Rng& rng,
                    cudaStream_t stream);

}  // namespace cuda
}  // namespace gumbel_ext
