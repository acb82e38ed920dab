// The differentiable op gumbel_ext::gumbel_softmax: its autograd kernel (a C++
// torch::autograd::Function around the forward and backward ops) and its kernel below
// autograd (the forward op's output). The Python wrapper and the C++ API both call this
// op, so there is one autograd implementation, and it costs a few microseconds a call
// where a Python autograd.Function costs tens (Note [Autograd in C++]).
//
// Note [Autograd in C++]
// Registered at the Autograd key, as torchvision does for its ops. torch.compile traces
// through it: AOTAutograd runs this kernel on fake tensors, so its graphs hold the
// forward and backward ops, which have fake kernels. Soft mode saves the output; hard
// mode saves the logits (alive anyway) and the 16-byte rng_state, and the backward kernel
// regenerates y_soft: nothing of the logits' size is kept. Double backward
// (create_graph=true) differentiates a backward built from differentiable ATen ops, which
// is also the op gumbel_ext::_differentiable_backward (CompositeImplicitAutograd): the
// Python wrapper's autograd.Function for torch.func transforms (which refuse C++ autograd
// Functions) uses it too, so that math exists once.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "op_common.h"
#include "op_handles.h"

namespace gumbel_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The fused backward's math (Note [Per-row softmax math]) in differentiable ATen ops:
// (dL/dlogits, dL/dtau_rows or undefined).
std::tuple<at::Tensor, at::Tensor> differentiable_backward(const at::Tensor& grad,
                                                           const at::Tensor& saved,
                                                           const at::Tensor& rng_state, double tau,
                                                           const at::Tensor& tau_rows, bool hard,
                                                           int64_t dim) {
  const auto acc = saved.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const bool per_row = tau_rows.defined();
  at::Tensor y;
  if (hard) {
    // The noise does not depend on the logits' values: no graph through the noise op.
    const at::Tensor noise = ops::noise().call(saved.detach(), dim, rng_state);
    const at::Tensor x = saved.to(acc).add(noise.to(acc));
    const at::Tensor shifted = x.sub(x.amax(dim, true).detach());
    const at::Tensor e = (per_row ? shifted.div(tau_rows) : shifted.mul(1.0 / tau)).exp();
    // Rounded through the output dtype, as the forward stores y_soft.
    y = e.mul(e.sum(dim, true).reciprocal()).to(saved.scalar_type()).to(acc);
  } else {
    y = saved.to(acc);
  }
  const at::Tensor g = grad.to(acc);
  const at::Tensor dz = y.mul(g.sub(g.mul(y).sum(dim, true)));
  const at::Tensor grad_logits = (per_row ? dz.div(tau_rows) : dz.div(tau)).to(saved.scalar_type());
  at::Tensor grad_tau;
  if (per_row) {
    // d/dtau of softmax(x / tau) is -log(y) * dz / tau per element; y == 0 adds nothing
    // (the where keeps log's derivative at 0 out of the graph).
    const at::Tensor log_y = at::where(y.gt(0), y, at::ones_like(y)).log();
    grad_tau = log_y.mul(dz).sum(dim, true).neg().div(tau_rows);
  }
  return {grad_logits, grad_tau};
}

// The op form: grad_tau_rows is empty (not undefined) without tau_rows.
std::tuple<at::Tensor, at::Tensor> differentiable_backward_op(const at::Tensor& grad, const at::Tensor& saved,
                                                              const at::Tensor& rng_state, double tau,
                                                              const std::optional<at::Tensor>& tau_rows,
                                                              bool hard, int64_t dim) {
  // The same checks as gumbel_softmax_backward: the ATen ops below would broadcast a
  // grad of another shape, and read a tensor of another device.
  check_backward_args(grad, saved, rng_state, tau, tau_rows, dim, /*need_grad_tau=*/false);
  auto [grad_logits, grad_tau] = differentiable_backward(grad, saved, rng_state, tau,
                                                         tau_rows.value_or(at::Tensor()), hard, dim);
  if (!grad_tau.defined()) {
    grad_tau = at::empty({0}, saved.options().dtype(saved.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  }
  return {grad_logits, grad_tau};
}

struct GumbelSoftmaxFunction : public torch::autograd::Function<GumbelSoftmaxFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, double tau,
                            const std::optional<at::Tensor>& tau_rows, bool hard, int64_t dim,
                            std::optional<at::Generator> generator,
                            const std::optional<at::Tensor>& rng_state) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, used] = ops::forward().call(logits, tau, tau_rows, hard, dim, std::move(generator),
                                           rng_state);
    ctx->saved_data["tau"] = tau;
    ctx->saved_data["hard"] = hard;
    ctx->saved_data["dim"] = dim;
    ctx->save_for_backward({hard ? logits : out, used, tau_rows.value_or(at::Tensor())});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& kept = saved[0];
    const at::Tensor& rng_state = saved[1];
    const at::Tensor& tau_rows = saved[2];
    const double tau = ctx->saved_data["tau"].toDouble();
    const bool hard = ctx->saved_data["hard"].toBool();
    const int64_t dim = ctx->saved_data["dim"].toInt();
    // Variable inputs, in order: logits, then tau_rows when given (then rng_state).
    const bool need_tau = tau_rows.defined() && ctx->needs_input_grad(1);
    at::Tensor grad_logits, grad_tau;
    if (at::GradMode::is_enabled()) {  // create_graph=true
      std::tie(grad_logits, grad_tau) =
          differentiable_backward(grad_outputs[0], kept, rng_state, tau, tau_rows, hard, dim);
    } else {
      std::optional<at::Tensor> rows;
      if (tau_rows.defined()) rows = tau_rows;
      std::tie(grad_logits, grad_tau) =
          ops::backward().call(grad_outputs[0], kept, rng_state, tau, rows, hard, dim, need_tau);
    }
    // One entry per forward argument: logits, tau, tau_rows, hard, dim, generator, rng_state.
    return {grad_logits, at::Tensor(), need_tau ? grad_tau : at::Tensor(), at::Tensor(),
            at::Tensor(),  at::Tensor(), at::Tensor()};
  }
};

at::Tensor gumbel_softmax_autograd(const at::Tensor& logits, double tau,
                                   const std::optional<at::Tensor>& tau_rows, bool hard,
                                   int64_t dim, std::optional<at::Generator> generator,
                                   const std::optional<at::Tensor>& rng_state) {
  return GumbelSoftmaxFunction::apply(logits, tau, tau_rows, hard, dim, std::move(generator),
                                      rng_state);
}

// Below autograd (inference mode, or a backend reached directly): the forward's output.
at::Tensor gumbel_softmax_values(const at::Tensor& logits, double tau,
                                 const std::optional<at::Tensor>& tau_rows, bool hard, int64_t dim,
                                 std::optional<at::Generator> generator,
                                 const std::optional<at::Tensor>& rng_state) {
  return std::get<0>(
      ops::forward().call(logits, tau, tau_rows, hard, dim, std::move(generator), rng_state));
}

}  // namespace

TORCH_LIBRARY_IMPL(gumbel_ext, Autograd, m) {
  m.impl("gumbel_softmax", &gumbel_softmax_autograd);
}

TORCH_LIBRARY_IMPL(gumbel_ext, CompositeExplicitAutograd, m) {
  m.impl("gumbel_softmax", &gumbel_softmax_values);
}

TORCH_LIBRARY_IMPL(gumbel_ext, CompositeImplicitAutograd, m) {
  m.impl("_differentiable_backward", &differentiable_backward_op);
}

}  // namespace gumbel_ext
