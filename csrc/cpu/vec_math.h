// Inline float log and exp for the kernels' two hot spots, per ISA. Included by
// vec_lanes.h inside gumbel_ext::cpu::CPU_CAPABILITY.
//
// Note [Vector log and exp]
// The kernels spend most of their time in the noise transform's two logs and the soft
// forward's exp. SLEEF (what at::vec's log() / exp() call) is out of line: every call
// spills the live vector registers, and its 1-ulp logf uses double-float arithmetic.
// These inline versions cover exactly the domains the kernels use, with no special
// cases outside them, and measured 15-25% faster end to end:
//   neg_log_positive(x) = -log(x): the lane copies of gumbel_noise.h's scalar
//     neg_log_positive (Note [Noise log]), operation for operation -- the same table
//     (one vpermps per lookup), the same fmas in the same order -- so every lane's bits
//     equal the scalar, CUDA and emulated bits (Note [Bit-identical noise]).
//   exp_nonpositive(x), x <= 0, -inf or NaN (the softmax's (x - max) / tau):
//     2^n e^r with Cody-Waite reduction and Cephes expf's polynomial; -inf gives exactly 0,
//     NaN stays NaN. At most 2 ulp; results below 2^-126 are 0 (see kExpMinNormal).
// The DEFAULT copy runs the scalar neg_log_positive per lane and at::vec's exp.
// Why not at::vec's SLEEF in the AVX copies, as our habits say: measured side by side
// (benchmarks/cpu_targets.py, AVX-512, 2 threads, same run conditions), SLEEF with a
// denormal guard made the fused forward 1.3-1.7x slower (4096x1000 bf16 2.7 -> 4.8 ms,
// 1024x32000 soft 50 -> 65 ms, fwd+bwd hard 4096x1000 7.2 -> 11.5 ms) and missed targets
// this version meets. tests/test_cpu_isa.py bounds both functions against libm.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include "../gumbel_noise.h"

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace gumbel_ext {
namespace cpu {
namespace CPU_CAPABILITY {

constexpr float kLn2Hi = 0x1.62e4p-1f;  // Cody-Waite: ln 2 = kLn2Hi + kLn2Lo, n * kLn2Hi exact
constexpr float kLn2Lo = 0x1.7f7d1cp-20f;
constexpr float kLog2e = 0x1.715476p+0f;
// log(2^-126): below it exp(x) would be a denormal, which costs a microcode assist per
// vector (20x slower; masked categories and small tau hit it all the time). The kernels
// return 0 there instead: at most 2^-126 off.
constexpr float kExpMinNormal = -87.33654f;

#if defined(CPU_CAPABILITY_AVX512)

// -log1p(r) for |r| < 0.031, from rn = -r: the Horner steps of r + r^2 (-1/2 + r (1/3 +
// r (-1/4 + r / 5))) with every sign flipped, so the result is exactly its negation.
inline __m512 neg_log1p_small(__m512 rn) {
  const __m512 r2 = _mm512_mul_ps(rn, rn);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(kNegLogP5), rn, _mm512_set1_ps(kNegLogP4));
  p = _mm512_fmadd_ps(p, rn, _mm512_set1_ps(kNegLogP3));
  p = _mm512_fmadd_ps(p, rn, _mm512_set1_ps(kNegLogP2));
  return _mm512_fmadd_ps(p, r2, rn);
}

// -log(x), exactly the negation of the log described in Note [Vector log and exp].
inline at::vec::Vectorized<float> neg_log_positive(const at::vec::Vectorized<float>& xv) {
  const __m512 x = xv;
  const __m512i ix = _mm512_castps_si512(x);
  const __m512i tmp = _mm512_sub_epi32(ix, _mm512_set1_epi32(static_cast<int>(kNegLogOffset)));
  const __m512i i = _mm512_srli_epi32(tmp, 19);  // vpermps reads the low 4 bits
  const __m512 k = _mm512_cvtepi32_ps(_mm512_srai_epi32(tmp, 23));
  const __m512 z = _mm512_castsi512_ps(_mm512_sub_epi32(ix, _mm512_and_si512(tmp, _mm512_set1_epi32(static_cast<int>(0xff800000u)))));
  const __m512 invc = _mm512_permutexvar_ps(i, _mm512_load_ps(kNegLogInvC));
  const __m512 neg_logc = _mm512_permutexvar_ps(i, _mm512_load_ps(kNegLogC));
  const __m512 rn = _mm512_fnmadd_ps(z, invc, _mm512_set1_ps(1.0f));  // -(z / c - 1)
  const __m512 neg_y0 = _mm512_fmadd_ps(k, _mm512_set1_ps(kNegLogLn2), neg_logc);
  return _mm512_add_ps(neg_log1p_small(rn), neg_y0);
}

inline __m512 exp_poly(__m512 r) {  // |r| <= ln2 / 2 (Cephes expf)
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500E-4f), r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  return _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
}

inline at::vec::Vectorized<float> exp_nonpositive(const at::vec::Vectorized<float>& xv) {
  // Lanes below kExpMinNormal are 0, without computing them (no denormal assists); NaN
  // compares "not less" and stays NaN.
  const __mmask16 keep = _mm512_cmp_ps_mask(xv, _mm512_set1_ps(kExpMinNormal), _CMP_NLT_UQ);
  const __m512 x = _mm512_max_ps(_mm512_set1_ps(kExpMinNormal), xv);  // NaN stays NaN
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  return _mm512_maskz_scalef_ps(keep, exp_poly(r), n);
}

#elif defined(CPU_CAPABILITY_AVX2)

inline __m256 neg_log1p_small(__m256 rn) {  // see the AVX-512 version
  const __m256 r2 = _mm256_mul_ps(rn, rn);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(kNegLogP5), rn, _mm256_set1_ps(kNegLogP4));
  p = _mm256_fmadd_ps(p, rn, _mm256_set1_ps(kNegLogP3));
  p = _mm256_fmadd_ps(p, rn, _mm256_set1_ps(kNegLogP2));
  return _mm256_fmadd_ps(p, r2, rn);
}

// A 16-entry table lookup from two 8-entry permutes: bit 3 of i picks the half.
inline __m256 lookup16(__m256i i, __m256 lo, __m256 hi) {
  const __m256 upper = _mm256_castsi256_ps(_mm256_slli_epi32(i, 28));  // bit 3 -> sign bit
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, i), _mm256_permutevar8x32_ps(hi, i), upper);
}

inline at::vec::Vectorized<float> neg_log_positive(const at::vec::Vectorized<float>& xv) {
  const __m256 x = xv;
  const __m256i ix = _mm256_castps_si256(x);
  const __m256i tmp = _mm256_sub_epi32(ix, _mm256_set1_epi32(static_cast<int>(kNegLogOffset)));
  const __m256i i = _mm256_srli_epi32(tmp, 19);
  const __m256 k = _mm256_cvtepi32_ps(_mm256_srai_epi32(tmp, 23));
  const __m256 z = _mm256_castsi256_ps(_mm256_sub_epi32(ix, _mm256_and_si256(tmp, _mm256_set1_epi32(static_cast<int>(0xff800000u)))));
  const __m256 invc = lookup16(i, _mm256_load_ps(kNegLogInvC), _mm256_load_ps(kNegLogInvC + 8));
  const __m256 neg_logc = lookup16(i, _mm256_load_ps(kNegLogC), _mm256_load_ps(kNegLogC + 8));
  const __m256 rn = _mm256_fnmadd_ps(z, invc, _mm256_set1_ps(1.0f));
  const __m256 neg_y0 = _mm256_fmadd_ps(k, _mm256_set1_ps(kNegLogLn2), neg_logc);
  return _mm256_add_ps(neg_log1p_small(rn), neg_y0);
}

inline __m256 exp_poly(__m256 r) {
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500E-4f), r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  return _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
}

inline at::vec::Vectorized<float> exp_nonpositive(const at::vec::Vectorized<float>& xv) {
  const __m256 x = _mm256_max_ps(_mm256_set1_ps(kExpMinNormal), xv);  // NaN stays NaN
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  // Lanes below kExpMinNormal get n = -127, whose scale 2^n built from the bits is +0:
  // exactly 0, without a denormal product.
  n = _mm256_blendv_ps(n, _mm256_set1_ps(-127.0f), _mm256_cmp_ps(xv, _mm256_set1_ps(kExpMinNormal), _CMP_LT_OQ));
  const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  return _mm256_mul_ps(exp_poly(r), scale);
}

#else

// The scalar neg_log_positive of gumbel_noise.h per lane: its fmas are calls to glibc's
// correctly rounded fma (no -mfma in this copy), so the bits are the AVX copies'.
inline at::vec::Vectorized<float> neg_log_positive(const at::vec::Vectorized<float>& x) {
  return x.map(gumbel_ext::neg_log_positive);
}

inline at::vec::Vectorized<float> exp_nonpositive(const at::vec::Vectorized<float>& x) {
  return x.exp();
}

#endif

// Double lanes (float64 logits) keep SLEEF's / libm's exp.
inline at::vec::Vectorized<double> exp_nonpositive(const at::vec::Vectorized<double>& x) {
  return x.exp();
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace gumbel_ext
