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
// that fp64, fp32 and the half types see the same draws.
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

struct Philox4 {
  uint32_t x, y, z, w;
};

GUMBEL_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

GUMBEL_HD Philox4 philox_round(Philox4 c, uint32_t k0, uint32_t k1) {
  uint32_t hi0, lo0, hi1, lo1;
  mulhilo32(kPhiloxM0, c.x, hi0, lo0);
  mulhilo32(kPhiloxM1, c.z, hi1, lo1);
  return Philox4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
}

// Philox4x32-10 as in Random123 and curand: ten rounds, the key bumped between them.
GUMBEL_HD Philox4 philox4x32_10(Philox4 counter, uint64_t seed) {
  uint32_t k0 = static_cast<uint32_t>(seed);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int i = 0; i < kPhiloxRounds - 1; ++i) {
    counter = philox_round(counter, k0, k1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return philox_round(counter, k0, k1);
}

// The four draws for columns 4*q .. 4*q+3 of row `row` (see Note [Philox counter layout]).
GUMBEL_HD Philox4 philox_block(uint64_t seed, uint64_t offset, uint64_t row, uint64_t q) {
  const uint64_t n = offset / 4 + q;
  return philox4x32_10(
      Philox4{static_cast<uint32_t>(n), static_cast<uint32_t>(n >> 32),
              static_cast<uint32_t>(row), static_cast<uint32_t>(row >> 32)},
      seed);
}

GUMBEL_HD uint32_t philox_lane(const Philox4& b, int lane) {
  return lane == 0 ? b.x : lane == 1 ? b.y : lane == 2 ? b.z : b.w;
}

// See Note [Uniform in (0, 1)].
GUMBEL_HD float bits_to_uniform(uint32_t bits) {
  return (static_cast<float>(bits >> 9) + 0.5f) * 1.1920928955078125e-07f;  // 2^-23
}

GUMBEL_HD float uniform_to_gumbel(float u) {
  return -::logf(-::logf(u));
}

GUMBEL_HD float gumbel_from_bits(uint32_t bits) {
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
