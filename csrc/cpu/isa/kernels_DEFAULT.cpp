// The baseline copy of the CPU kernels: no ISA flags (Note [Per-ISA CPU kernels]).
// Link it before the AVX2 and AVX512 copies.
#define CPU_CAPABILITY DEFAULT
#include "../gumbel_softmax_kernel.h"
