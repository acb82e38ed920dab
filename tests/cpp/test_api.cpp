// The C++ API (gumbel_ext/gumbel_softmax.h) against the op contract, built and run by
// CMake/ctest as a libtorch user would: only the public header and the library.
#include <gumbel_ext/gumbel_softmax.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>
#include <functional>
#include <iostream>
#include <limits>
#include <string>

namespace {

int failures = 0;
int checks = 0;

void check(bool ok, const std::string& what, int line) {
  ++checks;
  if (!ok) {
    ++failures;
    std::cerr << "FAIL (test_api.cpp:" << line << "): " << what << "\n";
  }
}
#define EXPECT(cond) check((cond), #cond, __LINE__)

// `fn` must throw E (a c10::Error subclass) whose message contains `needle`.
template <typename E>
void check_throws(const std::function<void()>& fn, const std::string& needle, int line) {
  std::string got;
  try {
    fn();
    got = "no exception";
  } catch (const E& e) {
    const std::string msg = e.what_without_backtrace();
    if (msg.find(needle) != std::string::npos) return check(true, "", line);
    got = "message without '" + needle + "': " + msg;
  } catch (const std::exception& e) {
    got = std::string("another exception type: ") + e.what();
  }
  check(false, got, line);
}
#define EXPECT_THROWS(E, stmt, needle) check_throws<E>([&] { stmt; }, needle, __LINE__)

at::Generator seeded(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

bool close(const at::Tensor& a, const at::Tensor& b, double rtol, double atol) {
  return a.sizes() == b.sizes() && at::allclose(a, b, rtol, atol);
}

// dL/dlogits of L = sum(g * y) for y = softmax((logits + noise) / tau) along dim.
at::Tensor analytic_grad(const at::Tensor& y, const at::Tensor& g, double tau, int64_t dim) {
  return y * (g - (g * y).sum(dim, true)) / tau;
}

void test_registered() {
  // The TORCH_LIBRARY blocks ran when the program started (the library is a load-time
  // dependency), before anything here called into it.
  auto& d = c10::Dispatcher::singleton();
  EXPECT(d.findSchema({"gumbel_ext::gumbel_softmax_forward", ""}).has_value());
  // The differentiable op the API calls, with its autograd kernel (csrc/autograd.cpp).
  const auto op = d.findSchema({"gumbel_ext::gumbel_softmax", ""});
  EXPECT(op.has_value() && op->hasKernelForDispatchKey(c10::DispatchKey::Autograd));
  EXPECT(d.findSchema({"gumbel_ext::sample", ""}).has_value());
}

void test_soft_and_hard() {
  const at::Tensor x = at::randn({64, 37}, seeded(0));
  const at::Tensor y = gumbel_ext::gumbel_softmax(x, 0.5, false, -1, seeded(1));
  EXPECT(y.sizes() == x.sizes() && y.scalar_type() == at::kFloat);
  EXPECT((y >= 0).all().item<bool>());
  EXPECT(close(y.sum(-1), at::ones({64}), 0, 1e-5));

  const at::Tensor hard = gumbel_ext::gumbel_softmax(x, 0.5, true, -1, seeded(1));
  EXPECT(((hard == 0) | (hard == 1)).all().item<bool>());
  EXPECT((hard.sum(-1) == 1).all().item<bool>());
  // Same generator state: the exact one-hot of the soft sample's argmax.
  EXPECT(hard.equal(at::zeros_like(y).scatter_(-1, y.argmax(-1, true), 1.0)));

  const at::Tensor x3 = at::randn({5, 9, 3}, seeded(2)).to(at::kDouble);
  const at::Tensor y3 = gumbel_ext::gumbel_softmax(x3, 2.0, false, 1);
  EXPECT(y3.scalar_type() == at::kDouble && close(y3.sum(1), at::ones({5, 3}, at::kDouble), 0, 1e-12));

  // A 0-dim tensor gives 1.0 like F.gumbel_softmax; empty tensors stay empty.
  EXPECT(gumbel_ext::gumbel_softmax(at::scalar_tensor(3.0)).item<double>() == 1.0);
  EXPECT(gumbel_ext::gumbel_softmax(at::empty({0, 5})).sizes() == at::IntArrayRef({0, 5}));
  // Masked (-inf) categories get exactly 0 and are never picked.
  at::Tensor masked = at::randn({200, 6}, seeded(3));
  masked.select(1, 2).fill_(-std::numeric_limits<float>::infinity());
  EXPECT((gumbel_ext::gumbel_softmax(masked).select(1, 2) == 0).all().item<bool>());
  EXPECT((gumbel_ext::gumbel_softmax(masked, 1.0, true).select(1, 2) == 0).all().item<bool>());
}

void test_reproducible() {
  const at::Tensor x = at::randn({16, 20}, seeded(4));
  const at::Tensor a = gumbel_ext::gumbel_softmax(x, 1.0, false, -1, seeded(7));
  EXPECT(a.equal(gumbel_ext::gumbel_softmax(x, 1.0, false, -1, seeded(7))));
  EXPECT(!a.equal(gumbel_ext::gumbel_softmax(x, 1.0, false, -1, seeded(8))));
  at::Generator gen = seeded(7);
  const at::Tensor first = gumbel_ext::gumbel_softmax(x, 1.0, false, -1, gen);
  EXPECT(first.equal(a));
  EXPECT(!gumbel_ext::gumbel_softmax(x, 1.0, false, -1, gen).equal(first));  // gen advanced
  at::manual_seed(3);  // the default generator
  const at::Tensor d = gumbel_ext::gumbel_softmax(x);
  at::manual_seed(3);
  EXPECT(d.equal(gumbel_ext::gumbel_softmax(x)));
}

void test_gradients() {
  const double tau = 0.7;
  const at::Tensor x0 = at::randn({8, 13}, seeded(5)).to(at::kDouble);
  const at::Tensor g = at::randn({8, 13}, seeded(6)).to(at::kDouble);

  const at::Tensor x = x0.clone().requires_grad_();
  const at::Tensor y = gumbel_ext::gumbel_softmax(x, tau, false, -1, seeded(9));
  y.backward(g);
  const at::Tensor expected = analytic_grad(y.detach(), g, tau, -1);
  EXPECT(close(x.grad(), expected, 1e-10, 1e-12));

  // Straight-through: hard gets the soft sample's gradient for the same noise.
  const at::Tensor xh = x0.clone().requires_grad_();
  gumbel_ext::gumbel_softmax(xh, tau, true, -1, seeded(9)).backward(g);
  EXPECT(close(xh.grad(), expected, 1e-10, 1e-12));

  // float32, reduced dim not last.
  const at::Tensor xf = at::randn({4, 6, 5}, seeded(10)).requires_grad_();
  const at::Tensor gf = at::randn({4, 6, 5}, seeded(11));
  const at::Tensor yf = gumbel_ext::gumbel_softmax(xf, 1.5, false, 1, seeded(12));
  yf.backward(gf);
  EXPECT(close(xf.grad(), analytic_grad(yf.detach(), gf, 1.5, 1), 1e-4, 1e-6));

  // Empty and 0-dim logits: backward works and gives a zero gradient of the same shape.
  for (const at::Tensor& e : {at::empty({0, 5}), at::scalar_tensor(2.0)}) {
    const at::Tensor xe = e.clone().requires_grad_();
    gumbel_ext::gumbel_softmax(xe, 1.0, true).sum().backward();
    EXPECT(xe.grad().sizes() == e.sizes() && (xe.grad() == 0).all().item<bool>());
  }

  // Double backward: the Hessian-vector product of L = sum(g * y) against central
  // differences of the (already checked) first-order gradient, noise pinned by the seed.
  const at::Tensor u = at::randn({8, 13}, seeded(13)).to(at::kDouble);
  auto first_grad = [&](const at::Tensor& at_x, bool create_graph) {
    const at::Tensor out = gumbel_ext::gumbel_softmax(at_x, tau, false, -1, seeded(9));
    return torch::autograd::grad({(out * g).sum()}, {at_x}, {}, create_graph, create_graph)[0];
  };
  const at::Tensor xd = x0.clone().requires_grad_();
  const at::Tensor hvp =
      torch::autograd::grad({(first_grad(xd, true) * u).sum()}, {xd})[0];
  const double h = 1e-5;
  const at::Tensor fd = (first_grad((x0 + h * u).requires_grad_(), false) -
                         first_grad((x0 - h * u).requires_grad_(), false)) / (2 * h);
  EXPECT(close(hvp, fd, 1e-5, 1e-7));
}

void test_sample() {
  const at::Tensor x = at::randn({6, 50}, seeded(14));
  const at::Tensor s = gumbel_ext::sample(x, 1, -1, seeded(15));
  EXPECT(s.sizes() == at::IntArrayRef({6}) && s.scalar_type() == at::kLong);
  EXPECT(((s >= 0) & (s < 50)).all().item<bool>());
  // The same noise as hard=true.
  EXPECT(s.equal(gumbel_ext::gumbel_softmax(x, 1.0, true, -1, seeded(15)).argmax(-1)));

  const at::Tensor top = gumbel_ext::sample(x, 5);
  EXPECT(top.sizes() == at::IntArrayRef({6, 5}));
  const at::Tensor sorted = std::get<0>(top.sort(-1));
  EXPECT((sorted.narrow(1, 1, 4) != sorted.narrow(1, 0, 4)).all().item<bool>());  // distinct
  EXPECT(gumbel_ext::sample(x, 1, 0).sizes() == at::IntArrayRef({50}));
  EXPECT(gumbel_ext::sample(x, 3, 0).sizes() == at::IntArrayRef({3, 50}));
}

void test_sampler() {
  const at::Tensor x = at::randn({6, 50}, seeded(16)) * 3;
  gumbel_ext::SamplerOptions o;
  o.temperature = 0.7;
  o.top_k = 10;
  o.top_p = 0.9;
  o.seeds = at::arange(6, at::kLong) * 7919 + 13;
  o.return_logprobs = true;
  const auto [idx, lp] = gumbel_ext::sample(x, o);
  EXPECT(idx.sizes() == at::IntArrayRef({6}) && lp.sizes() == at::IntArrayRef({6}));
  EXPECT(lp.scalar_type() == at::kFloat && (lp <= 0).all().item<bool>());
  // Inside the top 10 of each row.
  const at::Tensor kth = std::get<0>(x.topk(10, -1)).select(1, 9);
  EXPECT((x.gather(1, idx.unsqueeze(1)).squeeze(1) >= kth).all().item<bool>());
  // Batch invariant: a row alone draws what it draws in the batch.
  gumbel_ext::SamplerOptions one = o;
  one.seeds = o.seeds->narrow(0, 2, 1);
  EXPECT(std::get<0>(gumbel_ext::sample(x.narrow(0, 2, 1), one)).equal(idx.narrow(0, 2, 1)));
  // Per-row temperature with greedy rows: the argmax, and log-probs at T = 1.
  gumbel_ext::SamplerOptions greedy;
  greedy.temperature_rows = at::zeros({6});
  greedy.return_logprobs = true;
  const auto [g_idx, g_lp] = gumbel_ext::sample(x, greedy);
  EXPECT(g_idx.equal(x.argmax(-1)));
  EXPECT(close(g_lp, x.log_softmax(-1).gather(1, g_idx.unsqueeze(1)).squeeze(1), 1e-5, 1e-5));
  EXPECT(std::get<1>(gumbel_ext::sample(x, gumbel_ext::SamplerOptions{})).numel() == 0);
  gumbel_ext::SamplerOptions three;  // top_p would keep fewer than 3 tokens of a row
  three.top_k = 10;
  three.seeds = o.seeds;
  const at::Tensor top3 = std::get<0>(gumbel_ext::sample(x, three, 3));
  EXPECT(top3.sizes() == at::IntArrayRef({6, 3}));
  EXPECT((x.gather(1, top3) >= kth.unsqueeze(1)).all().item<bool>());
  gumbel_ext::SamplerOptions bad;
  bad.top_p = 0.0;
  EXPECT_THROWS(c10::ValueError, gumbel_ext::sample(x, bad), "top_p");
  bad = {};
  bad.offsets = at::zeros({6}, at::kLong);
  EXPECT_THROWS(c10::ValueError, gumbel_ext::sample(x, bad), "offsets given without seeds");
  bad = {};
  bad.top_k_rows = at::zeros({5}, at::kLong);
  EXPECT_THROWS(c10::ValueError, gumbel_ext::sample(x, bad), "one value per row");
}

void test_bad_input() {
  const at::Tensor x = at::randn({4, 10});
  EXPECT_THROWS(c10::TypeError, gumbel_ext::gumbel_softmax(at::ones({4, 10}, at::kLong)),
               "floating point");
  EXPECT_THROWS(c10::ValueError, gumbel_ext::gumbel_softmax(x, 0.0), "tau");
  EXPECT_THROWS(c10::ValueError, gumbel_ext::gumbel_softmax(x, std::nan("")), "tau");
  EXPECT_THROWS(c10::IndexError, gumbel_ext::gumbel_softmax(x, 1.0, false, 2),
               "Dimension out of range");
  EXPECT_THROWS(c10::TypeError, gumbel_ext::sample(at::ones({4, 10}, at::kInt)), "floating point");
  EXPECT_THROWS(c10::ValueError, gumbel_ext::sample(x, 11), "exceeds the 10 categories");
  EXPECT_THROWS(c10::ValueError, gumbel_ext::sample(x, 0), "num_samples");
  // No row to sample: num_samples is still checked (-1 used to reach at::empty).
  const at::Tensor no_rows = at::zeros({0, 10});
  EXPECT_THROWS(c10::ValueError, gumbel_ext::sample(no_rows, 0), "num_samples must be >= 1");
  EXPECT_THROWS(c10::ValueError, gumbel_ext::sample(no_rows, -1), "num_samples must be >= 1");
  EXPECT_THROWS(c10::ValueError, gumbel_ext::sample(no_rows, 11), "exceeds the 10 categories");
  EXPECT(gumbel_ext::sample(no_rows, 3).sizes() == at::IntArrayRef({0, 3}));
}

// Runs only where a CUDA kernel is registered and a device is present (a GPU box).
void test_cuda() {
  const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("gumbel_ext::gumbel_softmax_forward", "");
  if (!at::hasCUDA() || !op.hasKernelForDispatchKey(c10::DispatchKey::CUDA)) {
    std::cout << "test_api: no CUDA kernel or no CUDA device; CUDA checks skipped\n";
    return;
  }
  const at::Tensor x = at::randn({64, 37}, seeded(20)).cuda().requires_grad_();
  at::manual_seed(21);
  const at::Tensor y = gumbel_ext::gumbel_softmax(x, 0.5);
  at::manual_seed(21);
  const at::Tensor hard = gumbel_ext::gumbel_softmax(x, 0.5, true);
  EXPECT(y.is_cuda() && close(y.sum(-1).cpu(), at::ones({64}), 0, 1e-5));
  EXPECT(hard.detach().equal(at::zeros_like(y).scatter_(-1, y.argmax(-1, true), 1.0)));
  const at::Tensor g = at::randn({64, 37}, seeded(22)).cuda();
  hard.backward(g);
  EXPECT(close(x.grad(), analytic_grad(y.detach(), g, 0.5, -1), 1e-4, 1e-6));
  EXPECT_THROWS(c10::ValueError, gumbel_ext::gumbel_softmax(x, 1.0, false, -1, seeded(1)),
                "generator");
}

}  // namespace

int main() {
  test_registered();
  test_soft_and_hard();
  test_reproducible();
  test_gradients();
  test_sample();
  test_sampler();
  test_bad_input();
  test_cuda();
  std::cout << "test_api: " << (checks - failures) << "/" << checks << " checks passed\n";
  return failures == 0 ? 0 : 1;
}
