// The op schemas (one TORCH_LIBRARY for every backend) and their CPU implementations.
// Note [Op contract]
//   gumbel_softmax -> out: the differentiable op the Python and C++ APIs call; its
//     autograd kernel (csrc/autograd.cpp) wraps the forward and backward ops below.
//   gumbel_softmax_forward -> (out, rng_state): out is the soft sample or the exact
//     one-hot; rng_state = int64 [2] (seed, offset) actually used, on the logits' device.
//     Passing rng_state replays that noise instead of drawing from the generator.
//   gumbel_softmax_backward -> (grad_logits, grad_tau_rows): `saved` is the soft output
//     (hard=false) or the logits (hard=true: y_soft is regenerated, nothing N-sized is
//     kept). grad_tau_rows has tau_rows' shape when need_grad_tau, else it is empty.
//   _differentiable_backward: the backward in differentiable ATen ops (double backward,
//     torch.func transforms); grad_tau_rows is empty without tau_rows.
//   gumbel_noise: the float32 noise every element gets for a given rng_state.
//   sample: Gumbel-max / Gumbel-top-k category indices, the same noise as hard=True.
#include <torch/library.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/core/DistributionsHelper.h>

#include <mutex>

#include "cpu/kernels.h"
#include "gumbel_noise.h"
#include "op_common.h"

namespace gumbel_ext {
namespace {

std::pair<uint64_t, uint64_t> cpu_seed_offset(const std::optional<at::Generator>& generator,
                                              const std::optional<at::Tensor>& rng_state) {
  if (rng_state.has_value()) {
    const int64_t* s = rng_state->const_data_ptr<int64_t>();
    return {static_cast<uint64_t>(s[0]), static_cast<uint64_t>(s[1])};
  }
  // The CPU generator (mt19937) has no Philox offset: every call takes a fresh 64-bit
  // key from it, under its lock, so calls never share noise and manual_seed reproduces.
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(
      generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return {gen->random64(), 0};
}

// Note [tau_rows values]
// A tau_rows entry that is not finite and > 0 puts the vectorized exp outside its domain
// (x <= 0), where the ISA copies disagree. The public API refuses such a tau; the ops are
// public too, so the CPU ops check the values here: O(rows) reads of host memory. On CUDA
// that check would be a device-to-host sync (and impossible under graph capture), so the
// CUDA ops do not read the values on the host: see row_inv_tau in csrc/cuda/rows.cuh.
void check_tau_rows_values(const std::optional<at::Tensor>& tau_rows) {
  if (!tau_rows.has_value()) return;
  AT_DISPATCH_FLOATING_TYPES(tau_rows->scalar_type(), "check_tau_rows_values", [&] {
    const scalar_t* t = tau_rows->const_data_ptr<scalar_t>();
    const int64_t n = tau_rows->numel();
    bool valid = true;
    for (int64_t r = 0; r < n; ++r) valid &= std::isfinite(t[r]) && t[r] > 0;
    if (valid) return;
    int64_t r = 0;
    while (std::isfinite(t[r]) && t[r] > 0) ++r;
    TORCH_CHECK_VALUE(false, "gumbel_ext: every entry of tau_rows must be finite and > 0, got ",
                      t[r], " at flat index ", r);
  });
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& logits, double tau,
                                               const std::optional<at::Tensor>& tau_rows, bool hard,
                                               int64_t dim, std::optional<at::Generator> generator,
                                               const std::optional<at::Tensor>& rng_state) {
  check_forward_args(logits, tau, tau_rows, dim, generator, rng_state);
  check_tau_rows_values(tau_rows);
  at::Tensor out = empty_output(logits);
  if (logits.numel() == 0) {
    return {out, rng_state ? rng_state->clone() : make_rng_state_cpu(0, 0)};
  }
  const auto [seed, offset] = cpu_seed_offset(generator, rng_state);
  cpu::forward(logits, out, row_layout(logits, dim), dim, seed, offset, tau, tau_rows, hard);
  return {out, make_rng_state_cpu(seed, offset)};
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad, const at::Tensor& saved,
                                                const at::Tensor& rng_state, double tau,
                                                const std::optional<at::Tensor>& tau_rows, bool hard,
                                                int64_t dim, bool need_grad_tau) {
  check_backward_args(grad, saved, rng_state, tau, tau_rows, dim, need_grad_tau);
  check_tau_rows_values(tau_rows);
  at::Tensor grad_logits = empty_output(saved);
  // Per-row dL/dtau in tau_rows' shape; the wrapper reduces it to the user's tau.
  at::Tensor grad_tau = need_grad_tau ? at::zeros_like(*tau_rows)
                                      : at::empty({0}, tau_rows_options(saved));
  if (saved.numel() == 0) return {grad_logits, grad_tau};
  const auto [seed, offset] = cpu_seed_offset(std::nullopt, rng_state);
  at::Tensor grad_tau_out = need_grad_tau ? grad_tau : at::Tensor();
  cpu::backward(grad.to(saved.scalar_type()), saved, grad_logits, grad_tau_out, row_layout(saved, dim), dim,
                seed, offset, tau, tau_rows, hard);
  return {grad_logits, grad_tau};
}

at::Tensor noise_cpu(const at::Tensor& logits, int64_t dim, const at::Tensor& rng_state) {
  check_noise_args(logits, dim, rng_state);
  at::Tensor out = at::empty(logits.sizes(), logits.options().dtype(at::kFloat));
  if (logits.numel() == 0) return out;
  const auto [seed, offset] = cpu_seed_offset(std::nullopt, rng_state);
  cpu::noise(out, row_layout(logits, dim), seed, offset);
  return out;
}

at::Tensor sample_cpu(const at::Tensor& logits, int64_t num_samples, int64_t dim,
                      std::optional<at::Generator> generator,
                      const std::optional<at::Tensor>& rng_state) {
  check_sample_args(logits, num_samples, dim, generator, rng_state);
  const RowLayout layout = row_layout(logits, dim);
  if (layout.rows() == 0) {
    return at::empty(sample_shape(logits, dim, num_samples), logits.options().dtype(at::kLong));
  }
  at::Tensor rows_k = at::empty({layout.rows(), num_samples}, logits.options().dtype(at::kLong));
  const auto [seed, offset] = cpu_seed_offset(generator, rng_state);
  cpu::sample(logits, rows_k, layout, dim, seed, offset, num_samples);
  return sample_from_rows(rows_k, logits, dim, layout, num_samples);
}

}  // namespace

TORCH_LIBRARY(gumbel_ext, m) {
  m.def("gumbel_softmax(Tensor logits, float tau, Tensor? tau_rows, bool hard, int dim, "
        "Generator? generator=None, Tensor? rng_state=None) -> Tensor",
        {at::Tag::nondeterministic_seeded});
  m.def("gumbel_softmax_forward(Tensor logits, float tau, Tensor? tau_rows, bool hard, int dim, "
        "Generator? generator=None, Tensor? rng_state=None) -> (Tensor, Tensor)",
        {at::Tag::nondeterministic_seeded});
  m.def("_differentiable_backward(Tensor grad, Tensor saved, Tensor rng_state, float tau, "
        "Tensor? tau_rows, bool hard, int dim) -> (Tensor, Tensor)");
  m.def("gumbel_softmax_backward(Tensor grad, Tensor saved, Tensor rng_state, float tau, "
        "Tensor? tau_rows, bool hard, int dim, bool need_grad_tau) -> (Tensor, Tensor)");
  m.def("gumbel_noise(Tensor logits, int dim, Tensor rng_state) -> Tensor");
  m.def("sample(Tensor logits, int num_samples, int dim, Generator? generator=None, "
        "Tensor? rng_state=None) -> Tensor",
        {at::Tag::nondeterministic_seeded});
}

TORCH_LIBRARY_IMPL(gumbel_ext, CPU, m) {
  m.impl("gumbel_softmax_forward", &forward_cpu);
  m.impl("gumbel_softmax_backward", &backward_cpu);
  m.impl("gumbel_noise", &noise_cpu);
  m.impl("sample", &sample_cpu);
}

}  // namespace gumbel_ext
