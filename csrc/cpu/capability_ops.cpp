// Private ops to inspect and switch the per-ISA CPU kernels at run time, so that tests
// and benchmarks can run every compiled copy in one process, and other testing hooks.
#include <torch/library.h>

#include "kernels.h"

TORCH_LIBRARY_FRAGMENT(gumbel_ext, m) {
  m.def("_cpu_capability() -> str", [] { return gumbel_ext::cpu::capability(); });
  m.def("_cpu_capabilities() -> str[]", [] { return gumbel_ext::cpu::capabilities(); });
  m.def("_set_cpu_capability(str capability) -> ()",
        [](std::string capability) { gumbel_ext::cpu::set_capability(capability); });
  m.def("_set_cpu_argmax_segment(int columns) -> int",
        [](int64_t columns) { return gumbel_ext::cpu::set_argmax_segment(columns); });
  m.def("_cpu_vec_math(Tensor x, str fn) -> Tensor",
        [](const at::Tensor& x, std::string fn) { return gumbel_ext::cpu::vec_math(x, fn); });
}
