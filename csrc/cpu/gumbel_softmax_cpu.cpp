// Fused CPU kernels: noise, temperature, softmax / one-hot, backward -- one pass over
// each row's logits, parallel over rows. The per-row loops are written against the
// shared math in gumbel_noise.h; rows are walked with a stride so that a reduced dim
// that is not last needs no transposed copy.
#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "../gumbel_noise.h"

namespace gumbel_ext {
namespace cpu {
namespace {

// Elements a parallel_for chunk should cover: big enough to amortize the task, small
// enough to keep both cores busy on a few thousand rows.
constexpr int64_t kGrainElements = 32768;

int64_t row_grain(int64_t length) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(length, 1));
}

// Row r of a [outer, length, inner] tensor starts here; its elements are `inner` apart.
inline int64_t row_start(const RowLayout& layout, int64_t r) {
  const int64_t o = r / layout.inner;
  const int64_t i = r - o * layout.inner;
  return o * layout.length * layout.inner + i;
}

template <typename acc_t>
acc_t row_inv_tau(const acc_t* tau_rows, double tau, int64_t r) {
  return tau_rows ? acc_t(1) / tau_rows[r] : static_cast<acc_t>(1.0 / tau);
}

// x_c = logit_c + g_c for the whole row into buf; returns the argmax (X, index).
template <typename scalar_t, typename acc_t>
void perturbed_row(const scalar_t* l, int64_t stride, int64_t length, uint64_t seed,
                   uint64_t offset, uint64_t r, acc_t* buf, acc_t& x_max, int64_t& arg) {
  x_max = -std::numeric_limits<acc_t>::infinity();
  arg = 0;
  for (int64_t q = 0; q * 4 < length; ++q) {
    const Philox4 b = philox_block(seed, offset, r, static_cast<uint64_t>(q));
    const uint32_t lanes[4] = {b.x, b.y, b.z, b.w};
    const int64_t n = std::min<int64_t>(4, length - 4 * q);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t c = 4 * q + j;
      const acc_t x = static_cast<acc_t>(l[c * stride]) + static_cast<acc_t>(gumbel_from_bits(lanes[j]));
      if (buf) buf[c] = x;
      update_argmax(x, c, x_max, arg);
    }
  }
}

// Row sums run over up to millions of terms: a float accumulator would lose digits as
// the sum outgrows each term (5% error at 2^24 terms), so sums are kept in double.
using sum_t = double;

// buf holds x on entry and e = exp((x - X) / tau) on exit; returns 1 / sum(e).
template <typename acc_t>
acc_t exp_row(acc_t* buf, int64_t length, acc_t x_max, acc_t inv_tau) {
  sum_t sum = 0;
  for (int64_t c = 0; c < length; ++c) {
    const acc_t e = std::exp(scaled_exponent(buf[c], x_max, inv_tau));
    buf[c] = e;
    sum += e;
  }
  return static_cast<acc_t>(1.0 / sum);
}

template <typename scalar_t>
void forward_typed(const at::Tensor& logits, at::Tensor& out, const RowLayout& layout,
                   uint64_t seed, uint64_t offset, double tau, const std::optional<at::Tensor>& tau_rows,
                   bool hard) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* l = logits.const_data_ptr<scalar_t>();
  scalar_t* y = out.mutable_data_ptr<scalar_t>();
  const acc_t* taus = tau_rows ? tau_rows->const_data_ptr<acc_t>() : nullptr;
  const int64_t length = layout.length, stride = layout.inner;
  at::parallel_for(0, layout.rows(), row_grain(length), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(hard ? 0 : length);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t start = row_start(layout, r);
      const scalar_t* lr = l + start;
      scalar_t* yr = y + start;
      acc_t x_max;
      int64_t arg;
      perturbed_row(lr, stride, length, seed, offset, r, hard ? nullptr : buf.data(), x_max, arg);
      if (hard) {
        // See Note [Per-row softmax math]: a row whose max is not finite is NaN, as soft.
        const bool finite = std::isfinite(x_max);
        const scalar_t fill = finite ? scalar_t(0) : scalar_t(std::numeric_limits<acc_t>::quiet_NaN());
        for (int64_t c = 0; c < length; ++c) yr[c * stride] = fill;
        if (finite) yr[arg * stride] = scalar_t(1);
        continue;
      }
      const acc_t inv_sum = exp_row(buf.data(), length, x_max, row_inv_tau(taus, tau, r));
      for (int64_t c = 0; c < length; ++c) yr[c * stride] = static_cast<scalar_t>(buf[c] * inv_sum);
    }
  });
}

template <typename scalar_t>
void backward_typed(const at::Tensor& grad, const at::Tensor& saved, at::Tensor& grad_logits,
                    at::Tensor& grad_tau, const RowLayout& layout, uint64_t seed, uint64_t offset,
                    double tau, const std::optional<at::Tensor>& tau_rows, bool hard) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const scalar_t* s = saved.const_data_ptr<scalar_t>();
  scalar_t* gl = grad_logits.mutable_data_ptr<scalar_t>();
  acc_t* gt = grad_tau.defined() ? grad_tau.mutable_data_ptr<acc_t>() : nullptr;
  const acc_t* taus = tau_rows ? tau_rows->const_data_ptr<acc_t>() : nullptr;
  const int64_t length = layout.length, stride = layout.inner;
  at::parallel_for(0, layout.rows(), row_grain(length), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> y(length);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t start = row_start(layout, r);
      const acc_t inv_tau = row_inv_tau(taus, tau, r);
      if (hard) {
        // Regenerate y_soft from the logits and the saved (seed, offset), rounded to the
        // output dtype exactly as the soft forward writes it: straight-through gradients
        // then equal the soft ones bit for bit.
        acc_t x_max;
        int64_t arg;
        perturbed_row(s + start, stride, length, seed, offset, r, y.data(), x_max, arg);
        const acc_t inv_sum = exp_row(y.data(), length, x_max, inv_tau);
        for (int64_t c = 0; c < length; ++c)
          y[c] = static_cast<acc_t>(static_cast<scalar_t>(y[c] * inv_sum));
      } else {
        for (int64_t c = 0; c < length; ++c) y[c] = static_cast<acc_t>(s[start + c * stride]);
      }
      const scalar_t* gr = g + start;
      sum_t dot_sum = 0;
      for (int64_t c = 0; c < length; ++c) dot_sum += static_cast<acc_t>(gr[c * stride]) * y[c];
      const acc_t dot = static_cast<acc_t>(dot_sum);
      // dL/dz_c = y_c (g_c - dot); dL/dlogit = dL/dz / tau; and
      // dL/dtau = -(1/tau) sum_c z_c dL/dz_c, where z_c may be replaced by log y_c
      // because sum_c dL/dz_c = 0 (the softmax's shift invariance).
      sum_t tau_sum = 0;
      for (int64_t c = 0; c < length; ++c) {
        const acc_t dz = y[c] * (static_cast<acc_t>(gr[c * stride]) - dot);
        gl[start + c * stride] = static_cast<scalar_t>(dz * inv_tau);
        if (gt && y[c] > 0) tau_sum += std::log(y[c]) * dz;
      }
      if (gt) gt[r] = -inv_tau * static_cast<acc_t>(tau_sum);
    }
  });
}

void noise_rows(float* out, const RowLayout& layout, uint64_t seed, uint64_t offset) {
  const int64_t length = layout.length, stride = layout.inner;
  at::parallel_for(0, layout.rows(), row_grain(length), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* o = out + row_start(layout, r);
      for (int64_t c = 0; c < length; ++c) o[c * stride] = gumbel_noise(seed, offset, r, c);
    }
  });
}

template <typename scalar_t>
void sample_typed(const at::Tensor& logits, at::Tensor& out, const RowLayout& layout,
                  uint64_t seed, uint64_t offset, int64_t k) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* l = logits.const_data_ptr<scalar_t>();
  int64_t* idx = out.mutable_data_ptr<int64_t>();
  const int64_t length = layout.length, stride = layout.inner;
  at::parallel_for(0, layout.rows(), row_grain(length), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> x(k > 1 ? length : 0);
    std::vector<int64_t> order(k > 1 ? length : 0);
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* lr = l + row_start(layout, r);
      acc_t x_max;
      int64_t arg;
      perturbed_row(lr, stride, length, seed, offset, r, k > 1 ? x.data() : nullptr, x_max, arg);
      TORCH_CHECK_VALUE(!std::isnan(x_max) && x_max != std::numeric_limits<acc_t>::infinity(),
                        "gumbel_ext.sample: row ", r, " of the logits holds NaN or +inf");
      if (k == 1) {
        TORCH_CHECK_VALUE(std::isfinite(x_max), "gumbel_ext.sample: row ", r,
                          " has no finite logit to draw from (all -inf)");
        idx[r] = arg;
        continue;
      }
      // Gumbel-top-k: the k largest perturbed logits, largest first, ties to the lowest
      // index; -inf logits are never drawn.
      const int64_t finite = std::count_if(x.begin(), x.end(), [](acc_t v) { return std::isfinite(v); });
      TORCH_CHECK_VALUE(finite >= k, "gumbel_ext.sample: num_samples=", k, " exceeds the ", finite,
                        " finite logits of row ", r, " (sampling without replacement)");
      std::iota(order.begin(), order.end(), int64_t(0));
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
        return x[a] > x[b] || (x[a] == x[b] && a < b);
      });
      std::copy(order.begin(), order.begin() + k, idx + r * k);
    }
  });
}

}  // namespace

void forward(const at::Tensor& logits, at::Tensor& out, const RowLayout& layout, uint64_t seed,
             uint64_t offset, double tau, const std::optional<at::Tensor>& tau_rows, bool hard) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_softmax_forward_cpu", [&] {
    forward_typed<scalar_t>(logits, out, layout, seed, offset, tau, tau_rows, hard);
  });
}

void backward(const at::Tensor& grad, const at::Tensor& saved, at::Tensor& grad_logits,
              at::Tensor& grad_tau, const RowLayout& layout, uint64_t seed, uint64_t offset,
              double tau, const std::optional<at::Tensor>& tau_rows, bool hard) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, saved.scalar_type(), "gumbel_softmax_backward_cpu", [&] {
    backward_typed<scalar_t>(grad, saved, grad_logits, grad_tau, layout, seed, offset, tau, tau_rows, hard);
  });
}

void noise(at::Tensor& out, const RowLayout& layout, uint64_t seed, uint64_t offset) {
  noise_rows(out.mutable_data_ptr<float>(), layout, seed, offset);
}

void sample(const at::Tensor& logits, at::Tensor& out, const RowLayout& layout, uint64_t seed,
            uint64_t offset, int64_t num_samples) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_sample_cpu", [&] {
    sample_typed<scalar_t>(logits, out, layout, seed, offset, num_samples);
  });
}

}  // namespace cpu
}  // namespace gumbel_ext
