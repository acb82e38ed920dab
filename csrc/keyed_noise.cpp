// gumbel_ext::keyed_noise(keys, offsets, row_ctr, col_start, length) -> float32 [R, length]:
// row j is the noise contract's row row_ctr[j] under key keys[j] and counter start
// offsets[j] (Note [Philox counter layout]), global columns col_start .. col_start +
// length - 1; bit for bit the noise the fused ops perturb those elements with. It is what
// a vocabulary-parallel rank draws for its slice (gumbel_ext/distributed/), and the noise
// of gumbel_softmax(seeds=, offsets=). Keys and counters are read as uint64 (a negative
// seed is its two's complement, as sample(seeds=) reads it); offsets must be >= 0 and a
// multiple of 4 is what every op reserves (Note [Per-row noise keys]).
#include <torch/library.h>

#include "cpu/kernels.h"
#include "keyed_noise_op.h"

namespace gumbel_ext {
namespace {

at::Tensor keyed_noise_cpu(const at::Tensor& keys, const at::Tensor& offsets, const at::Tensor& row_ctr,
                           int64_t col_start, int64_t length) {
  check_keyed_noise_args(keys, offsets, row_ctr, col_start, length);
  const at::Tensor k = keys.contiguous(), o = offsets.contiguous(), r = row_ctr.contiguous();
  const int64_t rows = k.numel();
  const int64_t* op = o.const_data_ptr<int64_t>();
  for (int64_t j = 0; j < rows; ++j) {
    TORCH_CHECK_VALUE(op[j] >= 0, "gumbel_ext.keyed_noise: offsets must be >= 0, got ", op[j], " in row ", j);
  }
  at::Tensor out = at::empty({rows, length}, keys.options().dtype(at::kFloat));
  cpu::KeyedNoiseArgs a{rows, col_start, length, k.const_data_ptr<int64_t>(), op, r.const_data_ptr<int64_t>()};
  cpu::keyed_noise(a, out.mutable_data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gumbel_ext, m) {
  m.def("keyed_noise(Tensor keys, Tensor offsets, Tensor row_ctr, int col_start, int length) -> Tensor");
}

TORCH_LIBRARY_IMPL(gumbel_ext, CPU, m) {
  m.impl("keyed_noise", &keyed_noise_cpu);
}

}  // namespace gumbel_ext
