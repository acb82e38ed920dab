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

#include <cstdint>
#include <cmath>

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

GUMBEL_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Exact for v < 2^24, the only values the uniform transform converts.
GUMBEL_HD float lane_to_float(uint32_t v) {
  return static_cast<float>(v);
}

// -log(x): the transform only ever negates its logs, and SIMD lanes fold the sign into
// the log's coefficients.
GUMBEL_HD float lane_neg_log(float x) {
  return -::logf(x);
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
