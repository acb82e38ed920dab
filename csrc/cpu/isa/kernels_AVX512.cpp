// The AVX-512 copy of the CPU kernels (Note [Per-ISA CPU kernels]); compile with the
// flags of CPU_ISA_FLAGS["AVX512"] in gumbel_ext/_build.py.
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__) || \
    !defined(__AVX512DQ__) || !defined(__FMA__)
#error "kernels_AVX512.cpp must be compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma"
#endif
// GCC 12's AVX-512 headers build undefined vectors as `__m512i __Y = __Y;`, which
// -Wuninitialized reports at every inlined intrinsic (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "../gumbel_softmax_kernel.h"
