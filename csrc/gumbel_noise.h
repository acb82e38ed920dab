// The one source of truth for gumbel_ext's randomness and per-element math.
//
// Every kernel (CPU scalar, CPU vectorized, CUDA) and the pure-PyTorch reference
// (gumbel_ext/reference.py) implement exactly what is written here, so all of them
// draw identical noise for the same (seed, offset).
//
// Note [Philox counter layout]
// Element (row r, column c) -- c is the index along `dim`, r the flattened index over
// all other dims in their order -- takes lane c % 4 of
//     Philox4x32-10(key = seed, counter = {lo(n), hi(n), lo(r), hi(r)}),
//     n = offset / 4 + c / 4.
// This is curand's layout (subsequence = r, offset in units of 32-bit draws), so a
// CUDA kernel reserving `4 * ceil(C / 4)` draws per row with philox_cuda_state()
// never overlaps an earlier call. The noise is a pure function of
// (seed, offset, r, c): it does not depend on memory layout, dtype or device.
//
// Note [Uniform in (0, 1)]
// u = ((bits >> 9) + 0.5) * 2^-23 is exactly representable in float32 and lies in
// [2^-24, 1 - 2^-24]: never 0 or 1, so g = -log(-log(u)) is finite for every bit
// pattern (about -2.81 .. 16.64). Keeping 24 bits instead would round the top value
// to 1.0f and give g = +inf. The noise is computed in float32 for every dtype so
// that fp64, fp32 and the half types see the same draws. The code computes u as
// m * 2^-23 + 2^-24 (m = bits >> 9): every step is exact, so this is the same value,
// and one fused multiply-add on SIMD lanes.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define GUMBEL_HD __host__ __device__ __forceinline__
#else
#define GUMBEL_HD inline
#endif

namespace gumbel_ext {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

// Note [One definition for scalar and SIMD lanes]
// Everything below that touches the noise is a template over the lane type: uint32_t /
// float for the scalar code and CUDA, or SIMD vectors of 32-bit lanes for the vectorized
// CPU kernels (csrc/cpu/vec_lanes.h). An integer lane type U provides +, ^, &, |, ~ and a
// logical >> per 32-bit lane (+, ^, &, | also with a uint32_t operand), mulhilo32 and
// lane_to_float; the float lane type it converts to provides + and * with a float and
// lane_neg_log; all found by argument-dependent lookup. The scalar versions are right
// here. So the Philox round, the key schedule, the counter layout and the u -> Gumbel
// transform are written once, and the CPU vector code cannot drift from CUDA's.
template <typename U>
struct Philox4T {
  U x, y, z, w;
};
using Philox4 = Philox4T<uint32_t>;

// Note [Bit-identical noise]
// Every copy of the draw -- scalar host code, the SIMD lanes of csrc/cpu/vec_lanes.h,
// CUDA and the host emulation of the CUDA kernels -- computes the same float32 bits:
//   - Philox is integer arithmetic. CUDA takes the high word from __umulhi (one IMAD.HI;
//     a 64-bit product costs a widened multiply and moves), the host from a 64-bit
//     product: the same bits.
//   - The uniform is exact in every step (Note [Uniform in (0, 1)]).
//   - Both logs are neg_log_positive() below: integer steps, a 16-entry table, and float
//     steps that are each one correctly rounded operation. Every multiply-add is an
//     explicit fma (__fmaf_rn on the device, std::fma on the host: a vfmadd where the
//     copy is compiled with -mfma, glibc's correctly rounded fma otherwise), and no
//     product feeds an addition anywhere else, so neither nvcc's default --fmad=true nor
//     GCC's -ffp-contract=fast (GNU mode) has anything left to contract. Device code
//     spells the lone multiply and add as __fmul_rn / __fadd_rn, which nvcc never fuses.
// No libm call remains, so the bits do not depend on the host's libm or CUDA's logf.
// tests/test_noise.py compares the bits of every CPU copy with the emulated CUDA code and
// bounds the accuracy over all 2^23 uniforms.
GUMBEL_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  hi = __umulhi(a, b);
  lo = a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
#endif
}

// Exact for v < 2^24, the only values the uniform transform converts.
GUMBEL_HD float lane_to_float(uint32_t v) {
  return static_cast<float>(v);
}

GUMBEL_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

GUMBEL_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

GUMBEL_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

GUMBEL_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint32_t>(__float_as_int(x));
#else
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}

GUMBEL_HD float bits_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(static_cast<int>(b));
#else
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
#endif
}

// Note [Noise log]
// neg_log_positive(x) = -log(x) for a positive normal float x; the transform's inputs are
// u in [2^-24, 1 - 2^-24] and -log(u) in [5.9e-8, 16.7], and it only ever negates its
// logs, so the sign is folded into the coefficients. x = 2^k z with z in [0.699, 1.398)
// split into 16 intervals of equal width; log z = log c + log1p(z / c - 1) with 1/c and
// log c from a 16-entry table and a degree-5 Taylor polynomial (|z / c - 1| < 0.031, the
// first dropped term is below 0.1 ulp). The interval around 1 has c = 1 exactly, so
// log stays accurate relative to its result near x = 1, where -log(u) is tiny. At most
// 1.8 ulp from the exact log; the composition -log(-log u) is bounded in
// tests/test_noise.py. No special cases: the inputs are never 0, negative, denormal,
// infinite or NaN.
//
// Interval i covers float bits [0x3f330000 + (i << 19), 0x3f330000 + ((i + 1) << 19));
// c is its midpoint (1.0 for i = 9), 1/c is rounded to float, -log c is computed in
// double and rounded to float. One list, expanded into two arrays (SIMD permutes read
// them); the device reads them through the wider table of Note [Noise log by exponent].
#define GUMBEL_NEG_LOG_TABLE(X)                                                            \
  X(0x1.661ec6p+0f, 0x1.57bf74p-2f) X(0x1.571ed4p+0f, 0x1.2bef08p-2f)                      \
  X(0x1.49539ep+0f, 0x1.01eae4p-2f) X(0x1.3c995ap+0f, 0x1.b31d84p-3f)                      \
  X(0x1.30d19p+0f, 0x1.6574ecp-3f) X(0x1.25e228p+0f, 0x1.1aa2bep-3f)                       \
  X(0x1.1bb4a4p+0f, 0x1.a4e764p-4f) X(0x1.12358ep+0f, 0x1.1973b6p-4f)                      \
  X(0x1.0953f4p+0f, 0x1.252f4p-5f) X(1.0f, 0.0f)                                           \
  X(0x1.e573acp-1f, -0x1.b42dep-5f) X(0x1.ca4b3p-1f, -0x1.c5e54cp-4f)                      \
  X(0x1.b20364p-1f, -0x1.526e5ep-3f) X(0x1.9c2d14p-1f, -0x1.bc286cp-3f)                    \
  X(0x1.886e6p-1f, -0x1.1058bep-2f) X(0x1.767dcep-1f, -0x1.40430ap-2f)
#define GUMBEL_FIRST_(a, b) a,
#define GUMBEL_SECOND_(a, b) b,

alignas(64) constexpr float kNegLogInvC[16] = {GUMBEL_NEG_LOG_TABLE(GUMBEL_FIRST_)};
alignas(64) constexpr float kNegLogC[16] = {GUMBEL_NEG_LOG_TABLE(GUMBEL_SECOND_)};  // -log c
constexpr uint32_t kNegLogOffset = 0x3f330000u;  // the bits of the first interval's start
constexpr float kNegLogLn2 = -0x1.62e43p-1f;      // -log 2
// The Taylor coefficients of -log1p(r) = -r + r^2 / 2 - r^3 / 3 + r^4 / 4 - r^5 / 5 in
// rn = -r: rn + rn^2 (1/2 + rn (1/3 + rn (1/4 + rn / 5))).
constexpr float kNegLogP5 = 0.2f, kNegLogP4 = 0.25f, kNegLogP3 = 1.0f / 3.0f, kNegLogP2 = 0.5f;

#undef GUMBEL_FIRST_
#undef GUMBEL_SECOND_

// The integer steps of the host copies: table index i, exponent k (as float, exact) and
// the reduced argument z (see Note [Noise log]).
GUMBEL_HD void neg_log_reduce(float x, uint32_t& i, float& k, float& z) {
  const uint32_t ix = float_bits(x);
  const uint32_t tmp = ix - kNegLogOffset;
  i = (tmp >> 19) & 15u;
  k = static_cast<float>(static_cast<int32_t>(tmp) >> 23);  // arithmetic shift
  z = bits_float(ix - (tmp & 0xff800000u));
}

// The float steps after the reduction, shared by both forms below: rn = -(z / c - 1),
// neg_y0 = -(k log 2 + log c).
GUMBEL_HD float neg_log_tail(float rn, float neg_y0) {
  const float r2 = mul_rn(rn, rn);
  float p = fma_rn(kNegLogP5, rn, kNegLogP4);
  p = fma_rn(p, rn, kNegLogP3);
  p = fma_rn(p, rn, kNegLogP2);
  return add_rn(fma_rn(p, r2, rn), neg_y0);
}

// Note [Noise log by exponent]
// The device form of neg_log_positive, bit for bit the same function: one table row per
// (k, i) holds
//   - inv_c * 2^-k, so that rn = fma(-x, inv_c 2^-k, 1) = fma(-z, inv_c, 1): x = z 2^k,
//     and scaling by a power of two is exact, so the fma sees the same exact product;
//   - fma(k, -log 2, -log c) itself: computed in double, where k log 2 (at most 30
//     bits) plus -log c is exact, then rounded once to float -- the fma's one rounding.
// That drops the exponent's conversion, its fma and z's two integer steps (7 of the
// draw's SASS instructions per log pair, scripts/sass_budget.py), and the index is one
// arithmetic shift: (x's bits - offset) >> 19 = 16 k + i. The rows cover k in
// [kNegLogMinK, kNegLogMaxK], x in [0.699 * 2^-32, 1.398 * 2^7): the transform's inputs
// (k in [-24, 4]) with room to spare; outside it the index leaves the table. The
// emulator (tests/emulation) compiles this form too, so tests/test_noise.py compares the
// AVX copies' fma form with it over every uniform and the outer log's whole domain.
constexpr int kNegLogMinK = -32, kNegLogMaxK = 7;
constexpr int kNegLogRows = (kNegLogMaxK - kNegLogMinK + 1) * 16;

struct alignas(8) NegLogRow {
  float inv_c_scaled;  // inv_c * 2^-k
  float neg_y0;        // fma(k, -log 2, -log c)
};

struct NegLogByExponent {
  NegLogRow row[kNegLogRows];
};

constexpr float exact_pow2f(int e) {
  float v = 1.0f;
  for (; e > 0; --e) v *= 2.0f;
  for (; e < 0; ++e) v *= 0.5f;
  return v;
}

constexpr NegLogByExponent make_neg_log_by_exponent() {
  NegLogByExponent t{};
  for (int k = kNegLogMinK; k <= kNegLogMaxK; ++k) {
    for (int i = 0; i < 16; ++i) {
      NegLogRow& e = t.row[(k - kNegLogMinK) * 16 + i];
      e.inv_c_scaled = kNegLogInvC[i] * exact_pow2f(-k);
      e.neg_y0 = static_cast<float>(static_cast<double>(k) * static_cast<double>(kNegLogLn2) +
                                    static_cast<double>(kNegLogC[i]));
    }
  }
  return t;
}

#if defined(__CUDA_ARCH__) || defined(GUMBEL_EXT_HOST_EMULATION)
#define GUMBEL_NEG_LOG_BY_EXPONENT 1
#endif

#if defined(__CUDACC__)
__device__ const NegLogByExponent kNegLogByExponentDevice = make_neg_log_by_exponent();
#endif
#if defined(GUMBEL_NEG_LOG_BY_EXPONENT) && !defined(__CUDA_ARCH__)
constexpr NegLogByExponent kNegLogByExponentHost = make_neg_log_by_exponent();
#endif

GUMBEL_HD float neg_log_positive(float x) {
#if defined(GUMBEL_NEG_LOG_BY_EXPONENT)
  // 16 k + i (see Note [Noise log by exponent]); arithmetic shift.
  const int32_t ki = static_cast<int32_t>(float_bits(x) - kNegLogOffset) >> 19;
#if defined(__CUDA_ARCH__)
  const NegLogRow* rows = kNegLogByExponentDevice.row - 16 * kNegLogMinK;
  const float2 e = __ldg(reinterpret_cast<const float2*>(rows + ki));  // one 8-byte load
  return neg_log_tail(fma_rn(-x, e.x, 1.0f), e.y);
#else
  const NegLogRow e = kNegLogByExponentHost.row[ki - 16 * kNegLogMinK];
  return neg_log_tail(fma_rn(-x, e.inv_c_scaled, 1.0f), e.neg_y0);
#endif
#else
  uint32_t i;
  float k, z;
  neg_log_reduce(x, i, k, z);
  const float inv_c = kNegLogInvC[i], neg_log_c = kNegLogC[i];
  const float rn = fma_rn(-z, inv_c, 1.0f);  // -(z / c - 1)
  return neg_log_tail(rn, fma_rn(k, kNegLogLn2, neg_log_c));
#endif
}

// -log(x): the transform only ever negates its logs.
GUMBEL_HD float lane_neg_log(float x) {
  return neg_log_positive(x);
}

// The key of round i (Random123 / curand schedule): the seed's halves, bumped by W0 and
// W1 once per round, modulo 2^32.
GUMBEL_HD uint32_t philox_key0(uint64_t seed, int round) {
  return static_cast<uint32_t>(seed) + static_cast<uint32_t>(round) * kPhiloxW0;
}

GUMBEL_HD uint32_t philox_key1(uint64_t seed, int round) {
  return static_cast<uint32_t>(seed >> 32) + static_cast<uint32_t>(round) * kPhiloxW1;
}

// One round; the key is the same for every lane, so it stays scalar.
template <typename U>
GUMBEL_HD Philox4T<U> philox_round(const Philox4T<U>& c, uint32_t k0, uint32_t k1) {
  U hi0, lo0, hi1, lo1;
  mulhilo32(kPhiloxM0, c.x, hi0, lo0);
  mulhilo32(kPhiloxM1, c.z, hi1, lo1);
  return Philox4T<U>{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
}

// Philox4x32-10 as in Random123 and curand: ten rounds, the key bumped between them.
template <typename U>
GUMBEL_HD Philox4T<U> philox4x32_10(Philox4T<U> counter, uint64_t seed) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int i = 0; i < kPhiloxRounds; ++i) {
    counter = philox_round(counter, philox_key0(seed, i), philox_key1(seed, i));
  }
  return counter;
}

// The low and high 32-bit words of base + d (per lane, d < 2^32), modulo 2^64.
template <typename U>
GUMBEL_HD void add_split_u64(uint64_t base, U d, U& lo, U& hi) {
  const uint32_t b = static_cast<uint32_t>(base);
  lo = d + b;
  // The carry out of the low word (a full adder's carry), branch-free for SIMD lanes.
  const U carry = ((d & b) | ((d | b) & ~lo)) >> 31;
  hi = carry + static_cast<uint32_t>(base >> 32);
}

// The counter of Philox block q + dq of row `row + drow` (see Note [Philox counter
// layout]); the scalar kernels pass dq = drow = 0, SIMD kernels a lane index in one.
template <typename U>
GUMBEL_HD Philox4T<U> philox_counter(uint64_t offset, uint64_t q, U dq, uint64_t row, U drow) {
  Philox4T<U> c;
  add_split_u64(offset / 4 + q, dq, c.x, c.y);
  add_split_u64(row, drow, c.z, c.w);
  return c;
}

// The four draws for columns 4*q .. 4*q+3 of row `row` (see Note [Philox counter layout]).
GUMBEL_HD Philox4 philox_block(uint64_t seed, uint64_t offset, uint64_t row, uint64_t q) {
  return philox4x32_10(philox_counter(offset, q, 0u, row, 0u), seed);
}

GUMBEL_HD uint32_t philox_lane(const Philox4& b, int lane) {
  return lane == 0 ? b.x : lane == 1 ? b.y : lane == 2 ? b.z : b.w;
}

// See Note [Uniform in (0, 1)].
template <typename U>
GUMBEL_HD auto bits_to_uniform(U bits) {
  return lane_to_float(bits >> 9) * 1.1920928955078125e-07f + 5.9604644775390625e-08f;  // 2^-23, 2^-24
}

#if defined(GUMBEL_NEG_LOG_BY_EXPONENT)
// The device form of the same uniform: 1 + m 2^-23 has the bits 0x3f800000 | m, and
// subtracting 1 - 2^-24 gives m 2^-23 + 2^-24 exactly (at most 24 significant bits), so
// one correctly rounded add returns it. A shift-add and an add instead of a shift, an
// integer-to-float conversion (a quarter-rate instruction) and an fma.
GUMBEL_HD float bits_to_uniform(uint32_t bits) {
  return add_rn(bits_float((bits >> 9) | 0x3f800000u), -0x1.fffffep-1f);
}
#endif

template <typename F>
GUMBEL_HD F uniform_to_gumbel(F u) {
  return lane_neg_log(lane_neg_log(u));  // -log(-log(u))
}

template <typename U>
GUMBEL_HD auto gumbel_from_bits(U bits) {
  return uniform_to_gumbel(bits_to_uniform(bits));
}

// The Gumbel draw for one element; kernels that walk a row use philox_block once per
// four columns instead.
GUMBEL_HD float gumbel_noise(uint64_t seed, uint64_t offset, uint64_t row, uint64_t col) {
  return gumbel_from_bits(philox_lane(philox_block(seed, offset, row, col / 4),
                                      static_cast<int>(col % 4)));
}

// Draws a call reserves per row: whole Philox blocks, so the offset stays a multiple of 4.
GUMBEL_HD uint64_t philox_increment(uint64_t row_length) {
  return 4 * ((row_length + 3) / 4);
}

// Note [Per-row softmax math]
// With x_c = logit_c + g_c (accumulated in acc_t: float for half types and float, double
// for double) and X = max_c x_c:
//     e_c = exp((x_c - X) * inv_tau),  S = sum_c e_c,  y_c = e_c * (1 / S).
// Subtracting X *before* scaling by 1/tau keeps tiny tau and huge logits finite: the
// exponent is always <= 0. A -inf logit gives e_c = 0 exactly. A NaN anywhere in the
// row, a +inf, or a row of only -inf makes every output NaN, as torch.softmax does --
// exactly the rows whose X is not finite.
// hard=True writes the one-hot of the lowest c maximizing x_c (the Gumbel-max sample;
// tau > 0 does not change the argmax), so the hard forward needs no exp at all, and
// sample() returns the same index. It is the argmax of the soft output for the same
// noise; where rounding y to a half dtype merges near-ties, it is the one of the merged
// entries whose unrounded value is largest.
template <typename acc_t>
GUMBEL_HD acc_t scaled_exponent(acc_t x, acc_t x_max, acc_t inv_tau) {
  return (x - x_max) * inv_tau;
}

// NaN-propagating running max with the lowest index on ties, as torch.argmax.
template <typename acc_t>
GUMBEL_HD void update_argmax(acc_t x, int64_t c, acc_t& best, int64_t& best_index) {
  const bool x_nan = x != x;
  const bool best_nan = best != best;
  if (!best_nan && (x_nan || x > best)) {
    best = x;
    best_index = c;
  }
}

}  // namespace gumbel_ext
