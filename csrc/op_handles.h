// Typed dispatcher handles of the ops in ops.cpp, for C++ code that calls them through
// the dispatcher (the autograd kernel, the C++ API). The signatures are those of the
// backend kernels; the dispatcher checks them against the schemas on first use.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

namespace gumbel_ext {
namespace ops {

using GumbelSoftmaxFn = at::Tensor(const at::Tensor&, double, const std::optional<at::Tensor>&,
                                   bool, int64_t, std::optional<at::Generator>,
                                   const std::optional<at::Tensor>&);
using ForwardFn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, double, const std::optional<at::Tensor>&, bool, int64_t,
    std::optional<at::Generator>, const std::optional<at::Tensor>&);
using BackwardFn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
    const std::optional<at::Tensor>&, bool, int64_t, bool);
using NoiseFn = at::Tensor(const at::Tensor&, int64_t, const at::Tensor&);
using SampleFn = at::Tensor(const at::Tensor&, int64_t, int64_t, std::optional<at::Generator>,
                            const std::optional<at::Tensor>&);

using SampleFilteredFn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, int64_t, int64_t, double, const std::optional<at::Tensor>&, int64_t,
    const std::optional<at::Tensor>&, double, const std::optional<at::Tensor>&, double,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool,
    std::optional<at::Generator>);

template <typename Fn>
c10::TypedOperatorHandle<Fn> find(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

inline const c10::TypedOperatorHandle<GumbelSoftmaxFn>& gumbel_softmax() {
  static const auto op = find<GumbelSoftmaxFn>("gumbel_ext::gumbel_softmax");
  return op;
}

inline const c10::TypedOperatorHandle<ForwardFn>& forward() {
  static const auto op = find<ForwardFn>("gumbel_ext::gumbel_softmax_forward");
  return op;
}

inline const c10::TypedOperatorHandle<BackwardFn>& backward() {
  static const auto op = find<BackwardFn>("gumbel_ext::gumbel_softmax_backward");
  return op;
}

inline const c10::TypedOperatorHandle<NoiseFn>& noise() {
  static const auto op = find<NoiseFn>("gumbel_ext::gumbel_noise");
  return op;
}

inline const c10::TypedOperatorHandle<SampleFn>& sample() {
  static const auto op = find<SampleFn>("gumbel_ext::sample");
  return op;
}

inline const c10::TypedOperatorHandle<SampleFilteredFn>& sample_filtered() {
  static const auto op = find<SampleFilteredFn>("gumbel_ext::sample_filtered");
  return op;
}

}  // namespace ops
}  // namespace gumbel_ext
