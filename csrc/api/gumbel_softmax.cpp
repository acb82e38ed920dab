// The C++ API (csrc/gumbel_softmax.h): thin calls of the registered ops through the
// dispatcher. Autograd comes with the op (csrc/autograd.cpp), the same kernel the Python
// API uses. Compiled by CMake only (the Python builds glob csrc/*.cpp and csrc/cpu/*.cpp,
// not csrc/api/), into the same library as ops.cpp, so any caller of these functions
// also loads the registrations.
#include "../gumbel_softmax.h"

#include "../op_handles.h"

namespace gumbel_ext {

at::Tensor gumbel_softmax(const at::Tensor& logits, double tau, bool hard, int64_t dim,
                          std::optional<at::Generator> generator) {
  // The op checks the arguments before anything runs, in functional.py's order (dtype,
  // dim, tau, generator), and every op takes an unwrapped dim.
  return ops::gumbel_softmax().call(logits, tau, std::nullopt, hard, dim, std::move(generator),
                                    std::nullopt);
}

at::Tensor sample(const at::Tensor& logits, int64_t num_samples, int64_t dim,
                  std::optional<at::Generator> generator) {
  // The op checks num_samples with or without rows, as functional.py does.
  return ops::sample().call(logits.detach(), num_samples, dim, std::move(generator), std::nullopt);
}

}  // namespace gumbel_ext
