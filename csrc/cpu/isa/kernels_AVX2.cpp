// The AVX2 copy of the CPU kernels (Note [Per-ISA CPU kernels]); compile with the
// flags of CPU_ISA_FLAGS["AVX2"] in gumbel_ext/_build.py.
#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "kernels_AVX2.cpp must be compiled with -mavx2 -mfma -mf16c"
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "../gumbel_softmax_kernel.h"
