// The C++ API (csrc/gumbel_softmax.h): a torch::autograd::Function whose forward and
// backward call only the registered ops through the dispatcher -- the C++ twin of
// _GumbelSoftmaxFunction in gumbel_ext/functional.py. Compiled by CMake only (the
// Python builds glob csrc/*.cpp and csrc/cpu/*.cpp, not csrc/api/), into the same
// library as ops.cpp, so any caller of these functions also loads the registrations.
#include "../gumbel_softmax.h"

// Light includes on purpose (not ATen/ATen.h): this file is in every CMake build, and
// Tensor methods are all it needs.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include <tuple>

namespace gumbel_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The C++ signatures of the CPU kernels in ops.cpp; the dispatcher checks them (and
// every backend's kernel must be registered with the same ones).
using ForwardFn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, double, const std::optional<at::Tensor>&, bool, int64_t,
    std::optional<at::Generator>, const std::optional<at::Tensor>&);
using BackwardFn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
    const std::optional<at::Tensor>&, bool, int64_t, bool);
using NoiseFn = at::Tensor(const at::Tensor&, int64_t, const at::Tensor&);
using SampleFn = at::Tensor(const at::Tensor&, int64_t, int64_t, std::optional<at::Generator>,
                            const std::optional<at::Tensor>&);

template <typename Fn>
c10::TypedOperatorHandle<Fn> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

const c10::TypedOperatorHandle<ForwardFn>& forward_op() {
  static const auto op = find_op<ForwardFn>("gumbel_ext::gumbel_softmax_forward");
  return op;
}

const c10::TypedOperatorHandle<BackwardFn>& backward_op() {
  static const auto op = find_op<BackwardFn>("gumbel_ext::gumbel_softmax_backward");
  return op;
}

const c10::TypedOperatorHandle<NoiseFn>& noise_op() {
  static const auto op = find_op<NoiseFn>("gumbel_ext::gumbel_noise");
  return op;
}

const c10::TypedOperatorHandle<SampleFn>& sample_op() {
  static const auto op = find_op<SampleFn>("gumbel_ext::sample");
  return op;
}

// The fused backward's math in differentiable ATen ops, for double backward
// (_differentiable_backward in functional.py; Note [Per-row softmax math]).
at::Tensor differentiable_backward(const at::Tensor& grad, const at::Tensor& saved,
                                   const at::Tensor& rng_state, double tau, bool hard,
                                   int64_t dim) {
  const auto acc = saved.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor y;
  if (hard) {
    // The noise does not depend on the logits' values: no graph through the noise op.
    const at::Tensor noise = noise_op().call(saved.detach(), dim, rng_state);
    const at::Tensor x = saved.to(acc).add(noise.to(acc));
    const at::Tensor e = x.sub(x.amax(dim, true).detach()).mul(1.0 / tau).exp();
    y = e.mul(e.sum(dim, true).reciprocal()).to(saved.scalar_type()).to(acc);
  } else {
    y = saved.to(acc);
  }
  const at::Tensor g = grad.to(acc);
  const at::Tensor dz = y.mul(g.sub(g.mul(y).sum(dim, true)));
  return dz.div(tau).to(saved.scalar_type());
}

// Soft mode saves the output; hard mode saves the logits (alive anyway) and the 16-byte
// rng_state, and the backward kernel regenerates y_soft: nothing N-sized is kept.
struct GumbelSoftmaxFunction : public torch::autograd::Function<GumbelSoftmaxFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, double tau,
                            bool hard, int64_t dim, std::optional<at::Generator> generator) {
    auto [out, rng_state] = forward_op().call(logits, tau, std::nullopt, hard, dim,
                                              std::move(generator), std::nullopt);
    ctx->saved_data["tau"] = tau;
    ctx->saved_data["hard"] = hard;
    ctx->saved_data["dim"] = dim;
    ctx->save_for_backward({hard ? logits : out, rng_state});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const double tau = ctx->saved_data["tau"].toDouble();
    const bool hard = ctx->saved_data["hard"].toBool();
    const int64_t dim = ctx->saved_data["dim"].toInt();
    at::Tensor grad_logits;
    if (at::GradMode::is_enabled()) {  // create_graph=true
      grad_logits = differentiable_backward(grad_outputs[0], saved[0], saved[1], tau, hard, dim);
    } else {
      grad_logits = std::get<0>(backward_op().call(grad_outputs[0], saved[0], saved[1], tau,
                                                   std::nullopt, hard, dim, false));
    }
    // One entry per forward argument: logits, tau, hard, dim, generator.
    return {grad_logits, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor gumbel_softmax(const at::Tensor& logits, double tau, bool hard, int64_t dim,
                          std::optional<at::Generator> generator) {
  // The op checks the arguments before anything runs, in functional.py's order (dtype,
  // dim, tau, generator), and every op takes an unwrapped dim.
  return GumbelSoftmaxFunction::apply(logits, tau, hard, dim, std::move(generator));
}

at::Tensor sample(const at::Tensor& logits, int64_t num_samples, int64_t dim,
                  std::optional<at::Generator> generator) {
  at::Tensor out =
      sample_op().call(logits.detach(), num_samples, dim, std::move(generator), std::nullopt);
  // The op skips the count check when there is nothing to sample; functional.py does not.
  TORCH_CHECK_VALUE(num_samples >= 1, "gumbel_ext.sample: num_samples must be >= 1, got ",
                    num_samples);
  return out;
}

}  // namespace gumbel_ext
