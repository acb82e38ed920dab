// The CPU entry points of kernels.h: unpack the tensors (in place where the kernels can
// read their layout, Note [Strided inputs]) and call the per-ISA copy of the kernels
// picked at run time (Note [Per-ISA CPU kernels] in kernel_table.h). Compiled with the
// baseline flags.
#include "kernels.h"

#include <c10/util/Exception.h>
#include <cpuinfo.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>

#include "kernel_table.h"

namespace gumbel_ext {
namespace cpu {

namespace DEFAULT {
extern const KernelTable kKernels;
}
#if defined(__GNUC__) && defined(__x86_64__)
#define GUMBEL_EXT_X86_ISAS 1
// Weak: absent (null) when a build leaves the copy out.
namespace AVX2 {
extern const KernelTable kKernels __attribute__((weak));
}
namespace AVX512 {
extern const KernelTable kKernels __attribute__((weak));
}
#endif

namespace {

enum class Capability { kDefault = 0, kAVX2 = 1, kAVX512 = 2 };
constexpr Capability kAll[] = {Capability::kDefault, Capability::kAVX2, Capability::kAVX512};
constexpr const char* kEnvVar = "GUMBEL_EXT_CPU_CAPABILITY";

const char* name_of(Capability c) {
  return c == Capability::kDefault ? "default" : c == Capability::kAVX2 ? "avx2" : "avx512";
}

const KernelTable* compiled(Capability c) {
  switch (c) {
    case Capability::kDefault: return &DEFAULT::kKernels;
#ifdef GUMBEL_EXT_X86_ISAS
    case Capability::kAVX2: return &AVX2::kKernels;
    case Capability::kAVX512: return &AVX512::kKernels;
#endif
    default: return nullptr;
  }
}

// The -m flags each copy is compiled with, as cpuinfo sees them (it also checks that the
// OS saves the wider registers).
bool cpu_supports(Capability c) {
  if (c == Capability::kDefault) return true;
  if (!cpuinfo_initialize()) return false;
  const bool avx2 = cpuinfo_has_x86_avx2() && cpuinfo_has_x86_fma3() && cpuinfo_has_x86_f16c();
  if (c == Capability::kAVX2) return avx2;
  return avx2 && cpuinfo_has_x86_avx512f() && cpuinfo_has_x86_avx512bw() && cpuinfo_has_x86_avx512vl() &&
         cpuinfo_has_x86_avx512dq();
}

bool available(Capability c) {
  return compiled(c) != nullptr && cpu_supports(c);
}

// The best available capability no wider than `limit`.
Capability best_up_to(Capability limit) {
  Capability best = Capability::kDefault;
  for (Capability c : kAll) {
    if (c <= limit && available(c)) best = c;
  }
  return best;
}

Capability parse(const std::string& text, const char* what) {
  std::string lower(text);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char ch) { return std::tolower(ch); });
  for (Capability c : kAll) {
    if (lower == name_of(c)) return c;
  }
  TORCH_CHECK_VALUE(false, "gumbel_ext: ", what, " must be one of default, avx2, avx512; got '", text, "'");
}

// The environment variable forces a copy; an unavailable one falls back with a warning.
const KernelTable* initial_table() {
  const char* env = std::getenv(kEnvVar);
  if (env == nullptr || *env == '\0') return compiled(best_up_to(Capability::kAVX512));
  const Capability requested = parse(env, kEnvVar);
  if (available(requested)) return compiled(requested);
  const Capability fallback = best_up_to(requested);
  TORCH_WARN(kEnvVar, "=", env, ": the ", name_of(requested), " kernels are ",
             compiled(requested) ? "not supported by this CPU" : "not compiled into this build",
             "; using ", name_of(fallback), " instead");
  return compiled(fallback);
}

std::atomic<const KernelTable*> g_active{nullptr};

const KernelTable& active() {
  const KernelTable* t = g_active.load(std::memory_order_acquire);
  if (t == nullptr) {
    t = initial_table();
    g_active.store(t, std::memory_order_release);
  }
  return *t;
}

std::atomic<int64_t> g_argmax_segment{0};

KernelArgs make_args(const at::Tensor& t, const RowLayout& layout, uint64_t seed, uint64_t offset, double tau,
                     const std::optional<at::Tensor>& tau_rows) {
  return KernelArgs{t.scalar_type(), layout.outer, layout.length, layout.inner, seed, offset, tau,
                    tau_rows ? tau_rows->const_data_ptr() : nullptr, g_argmax_segment.load()};
}

// The stride of dims [begin, end) of t collapsed into one, or -1 when they do not collapse
// (size-1 dims are skipped; a collapsed dim of size 1 gets 0).
int64_t collapsed_stride(const at::Tensor& t, int64_t begin, int64_t end) {
  int64_t stride = 0, inner_extent = -1;  // inner_extent: stride * size of the dims so far
  for (int64_t d = end - 1; d >= begin; --d) {
    if (t.size(d) == 1) continue;
    if (inner_extent < 0) {
      stride = t.stride(d);
    } else if (t.stride(d) != inner_extent) {
      return -1;
    }
    inner_extent = t.stride(d) * t.size(d);
  }
  return stride;
}

// t's strides as [outer, length, inner] (Strides), when its dims collapse so and the
// kernels read that layout in place.
std::optional<Strides> strides_of(const at::Tensor& t, const KernelArgs& a, int64_t dim) {
  if (t.dim() == 0) return Strides{1, 1, 1};
  const int64_t d = c10::maybe_wrap_dim(dim, t.dim());
  Strides s{collapsed_stride(t, 0, d), t.size(d) == 1 ? 1 : t.stride(d), collapsed_stride(t, d + 1, t.dim())};
  if (s.outer < 0 || s.inner < 0) return std::nullopt;
  if (a.inner == 1) s.inner = 1;  // unused by the row walks
  if (!readable_in_place(a, s)) return std::nullopt;
  return s;
}

// t itself when the kernels can read it in place (Note [Strided inputs]), else a
// contiguous copy; with its strides.
std::pair<at::Tensor, Strides> kernel_input(const at::Tensor& t, const KernelArgs& a, int64_t dim) {
  if (!t.is_contiguous()) {
    if (const auto s = strides_of(t, a, dim)) return {t, *s};
  }
  return {t.contiguous(), contiguous_strides(a)};
}

}  // namespace

std::string capability() {
  return name_of(parse(active().name, "capability"));
}

std::vector<std::string> capabilities() {
  std::vector<std::string> names;
  for (Capability c : kAll) {
    if (available(c)) names.emplace_back(name_of(c));
  }
  return names;
}

void set_capability(const std::string& name) {
  const Capability c = parse(name, "capability");
  TORCH_CHECK_VALUE(available(c), "gumbel_ext: the ", name_of(c), " CPU kernels are ",
                    compiled(c) ? "not supported by this CPU" : "not compiled into this build");
  g_active.store(compiled(c), std::memory_order_release);
}

at::Tensor vec_math(const at::Tensor& x, const std::string& fn) {
  TORCH_CHECK_VALUE(fn == "log" || fn == "exp", "gumbel_ext: fn must be 'log' or 'exp', got '", fn, "'");
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat && x.device().is_cpu(), "gumbel_ext: x must be a float32 CPU tensor");
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  active().vec_math(in.const_data_ptr<float>(), out.mutable_data_ptr<float>(), in.numel(), fn == "log" ? 0 : 1);
  return out;
}

void forward(const at::Tensor& logits, at::Tensor& out, const RowLayout& layout, int64_t dim, uint64_t seed,
             uint64_t offset, double tau, const std::optional<at::Tensor>& tau_rows, bool hard) {
  const KernelArgs a = make_args(logits, layout, seed, offset, tau, tau_rows);
  const auto [l, ls] = kernel_input(logits, a, dim);
  active().forward(a, l.const_data_ptr(), ls, out.mutable_data_ptr(), hard);
}

void backward(const at::Tensor& grad, const at::Tensor& saved, at::Tensor& grad_logits, at::Tensor& grad_tau,
              const RowLayout& layout, int64_t dim, uint64_t seed, uint64_t offset, double tau,
              const std::optional<at::Tensor>& tau_rows, bool hard) {
  const KernelArgs a = make_args(saved, layout, seed, offset, tau, tau_rows);
  const auto [g, gs] = kernel_input(grad, a, dim);
  const auto [s, ss] = kernel_input(saved, a, dim);
  active().backward(a, g.const_data_ptr(), gs, s.const_data_ptr(), ss, grad_logits.mutable_data_ptr(),
                    grad_tau.defined() ? grad_tau.mutable_data_ptr() : nullptr, hard);
}

void noise(at::Tensor& out, const RowLayout& layout, uint64_t seed, uint64_t offset) {
  active().noise(make_args(out, layout, seed, offset, 1.0, std::nullopt), out.mutable_data_ptr<float>());
}

void sample(const at::Tensor& logits, at::Tensor& out, const RowLayout& layout, int64_t dim, uint64_t seed,
            uint64_t offset, int64_t num_samples) {
  const KernelArgs a = make_args(logits, layout, seed, offset, 1.0, std::nullopt);
  const auto [l, ls] = kernel_input(logits, a, dim);
  active().sample(a, l.const_data_ptr(), ls, out.mutable_data_ptr<int64_t>(), num_samples);
}

int64_t set_argmax_segment(int64_t columns) {
  // A multiple of every copy's kChunk (64 columns at most, AVX-512).
  TORCH_CHECK_VALUE(columns == 0 || (columns > 0 && columns % 64 == 0 && columns <= (int64_t(1) << 30)),
                    "gumbel_ext: columns must be 0 (the default) or a positive multiple of 64 up to 2^30, got ",
                    columns);
  return g_argmax_segment.exchange(columns);
}

void sample_filtered(const SampleArgs& a, const void* logits, int64_t* out, float* logprobs) {
  active().sample_filtered(a, logits, out, logprobs);
}

void keyed_noise(const KeyedNoiseArgs& a, float* out) {
  active().keyed_noise(a, out);
}

}  // namespace cpu
}  // namespace gumbel_ext
