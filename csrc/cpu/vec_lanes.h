// SIMD lane types for the templates in gumbel_noise.h (Note [One definition for scalar
// and SIMD lanes]) and the two ways the CPU kernels draw noise (NoiseStream):
//   row_block  -- kChunk = 4 * kLanes consecutive columns of one row (reduced dim last),
//   rows_block -- columns 4q .. 4q+3 of kLanes consecutive rows (reduced dim not last).
// Included once per ISA, inside gumbel_ext::cpu::CPU_CAPABILITY. Only lane primitives
// live here: the Philox rounds, key schedule, counter layout and transform are
// gumbel_noise.h's.
#pragma once

#ifndef CPU_CAPABILITY
#error "the CPU kernels are compiled through csrc/cpu/isa/kernels_*.cpp"
#endif

#include <ATen/cpu/vec/vec.h>

#include <cstdint>

#include "../gumbel_noise.h"
#include "vec_math.h"

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace gumbel_ext {
namespace cpu {
namespace CPU_CAPABILITY {

using fVec = at::vec::Vectorized<float>;
constexpr int kLanes = fVec::size();
constexpr int64_t kChunk = 4 * kLanes;  // columns of one row_block

// Note [SIMD Philox]
// A Philox vector call runs kLanes counters, one per 32-bit lane. vpmuludq multiplies the
// even lanes only, so mulhilo32 multiplies the odd lanes after swapping them down and puts
// the four result words back with (masked) shuffles: the multiplies and shifts go to one
// execution port, the shuffles to another, which measured faster than keeping the words
// in 64-bit containers (all multiplies and shifts). For row_block the counters are placed
// in the lanes in an order that makes the 4x4 word transpose (unpacks within 128-bit lanes)
// produce consecutive columns without cross-lane permutes; order and unpack sit together.

// Float lanes: Vectorized<float> wrapped so that lane_neg_log is found by ADL.
struct F32Lanes {
  fVec v;
  friend F32Lanes operator+(const F32Lanes& a, float b) { return {a.v + fVec(b)}; }
  friend F32Lanes operator*(const F32Lanes& a, float b) { return {a.v * fVec(b)}; }
  friend F32Lanes lane_neg_log(const F32Lanes& a) { return {neg_log_positive(a.v)}; }  // vec_math.h
};

#if defined(CPU_CAPABILITY_AVX512)

struct U32Lanes {
  __m512i v;
  static U32Lanes broadcast(uint32_t a) { return {_mm512_set1_epi32(static_cast<int>(a))}; }
  static U32Lanes row_order() { return {_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0)}; }
  // Lane 4l + m holds block 4m + l: see unpack_columns().
  static U32Lanes column_order() {
    return {_mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0)};
  }
  friend U32Lanes operator+(const U32Lanes& a, const U32Lanes& b) { return {_mm512_add_epi32(a.v, b.v)}; }
  friend U32Lanes operator^(const U32Lanes& a, const U32Lanes& b) { return {_mm512_xor_si512(a.v, b.v)}; }
  friend U32Lanes operator&(const U32Lanes& a, const U32Lanes& b) { return {_mm512_and_si512(a.v, b.v)}; }
  friend U32Lanes operator|(const U32Lanes& a, const U32Lanes& b) { return {_mm512_or_si512(a.v, b.v)}; }
  friend U32Lanes operator~(const U32Lanes& a) { return {_mm512_ternarylogic_epi32(a.v, a.v, a.v, 0x55)}; }
  friend U32Lanes operator>>(const U32Lanes& a, int n) { return {_mm512_srli_epi32(a.v, n)}; }
  friend F32Lanes lane_to_float(const U32Lanes& a) { return {fVec(_mm512_cvtepi32_ps(a.v))}; }
  friend void mulhilo32(uint32_t a, const U32Lanes& b, U32Lanes& hi, U32Lanes& lo) {
    const __m512i m = _mm512_set1_epi32(static_cast<int>(a));
    const __m512i even = _mm512_mul_epu32(b.v, m);
    const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(b.v, 32), m);
    hi.v = _mm512_mask_shuffle_epi32(odd, 0x5555, even, _MM_PERM_CDAB);
    lo.v = _mm512_mask_shuffle_epi32(even, 0xAAAA, odd, _MM_PERM_CDAB);
  }
};

// Words x, y, z, w of the blocks in column_order() -> 4 vectors of consecutive columns.
inline void unpack_columns(const Philox4T<U32Lanes>& b, U32Lanes out[4]) {
  const __m512i xy_lo = _mm512_unpacklo_epi32(b.x.v, b.y.v), xy_hi = _mm512_unpackhi_epi32(b.x.v, b.y.v);
  const __m512i zw_lo = _mm512_unpacklo_epi32(b.z.v, b.w.v), zw_hi = _mm512_unpackhi_epi32(b.z.v, b.w.v);
  out[0].v = _mm512_unpacklo_epi64(xy_lo, zw_lo);
  out[1].v = _mm512_unpackhi_epi64(xy_lo, zw_lo);
  out[2].v = _mm512_unpacklo_epi64(xy_hi, zw_hi);
  out[3].v = _mm512_unpackhi_epi64(xy_hi, zw_hi);
}

#elif defined(CPU_CAPABILITY_AVX2)

struct U32Lanes {
  __m256i v;
  static U32Lanes broadcast(uint32_t a) { return {_mm256_set1_epi32(static_cast<int>(a))}; }
  static U32Lanes row_order() { return {_mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0)}; }
  // Lane 4l + m holds block 2m + l: see unpack_columns().
  static U32Lanes column_order() { return {_mm256_set_epi32(7, 5, 3, 1, 6, 4, 2, 0)}; }
  friend U32Lanes operator+(const U32Lanes& a, const U32Lanes& b) { return {_mm256_add_epi32(a.v, b.v)}; }
  friend U32Lanes operator^(const U32Lanes& a, const U32Lanes& b) { return {_mm256_xor_si256(a.v, b.v)}; }
  friend U32Lanes operator&(const U32Lanes& a, const U32Lanes& b) { return {_mm256_and_si256(a.v, b.v)}; }
  friend U32Lanes operator|(const U32Lanes& a, const U32Lanes& b) { return {_mm256_or_si256(a.v, b.v)}; }
  friend U32Lanes operator~(const U32Lanes& a) { return {_mm256_xor_si256(a.v, _mm256_set1_epi32(-1))}; }
  friend U32Lanes operator>>(const U32Lanes& a, int n) { return {_mm256_srli_epi32(a.v, n)}; }
  friend F32Lanes lane_to_float(const U32Lanes& a) { return {fVec(_mm256_cvtepi32_ps(a.v))}; }
  friend void mulhilo32(uint32_t a, const U32Lanes& b, U32Lanes& hi, U32Lanes& lo) {
    const __m256i m = _mm256_set1_epi32(static_cast<int>(a));
    const __m256i even = _mm256_mul_epu32(b.v, m);
    const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(b.v, 32), m);
    hi.v = _mm256_blend_epi32(_mm256_shuffle_epi32(even, 0xB1), odd, 0xAA);
    lo.v = _mm256_blend_epi32(even, _mm256_shuffle_epi32(odd, 0xB1), 0xAA);
  }
};

inline void unpack_columns(const Philox4T<U32Lanes>& b, U32Lanes out[4]) {
  const __m256i xy_lo = _mm256_unpacklo_epi32(b.x.v, b.y.v), xy_hi = _mm256_unpackhi_epi32(b.x.v, b.y.v);
  const __m256i zw_lo = _mm256_unpacklo_epi32(b.z.v, b.w.v), zw_hi = _mm256_unpackhi_epi32(b.z.v, b.w.v);
  out[0].v = _mm256_unpacklo_epi64(xy_lo, zw_lo);
  out[1].v = _mm256_unpackhi_epi64(xy_lo, zw_lo);
  out[2].v = _mm256_unpacklo_epi64(xy_hi, zw_hi);
  out[3].v = _mm256_unpackhi_epi64(xy_hi, zw_hi);
}

#else  // DEFAULT: plain arrays, vectorized by the compiler with the baseline ISA.

struct U32Lanes {
  uint32_t v[kLanes];
  template <typename Op>
  static U32Lanes map(const Op& op) {
    U32Lanes r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = op(i);
    return r;
  }
  static U32Lanes broadcast(uint32_t a) { return map([&](int) { return a; }); }
  static U32Lanes row_order() { return map([](int i) { return static_cast<uint32_t>(i); }); }
  static U32Lanes column_order() { return row_order(); }
  friend U32Lanes operator+(const U32Lanes& a, const U32Lanes& b) { return map([&](int i) { return a.v[i] + b.v[i]; }); }
  friend U32Lanes operator^(const U32Lanes& a, const U32Lanes& b) { return map([&](int i) { return a.v[i] ^ b.v[i]; }); }
  friend U32Lanes operator&(const U32Lanes& a, const U32Lanes& b) { return map([&](int i) { return a.v[i] & b.v[i]; }); }
  friend U32Lanes operator|(const U32Lanes& a, const U32Lanes& b) { return map([&](int i) { return a.v[i] | b.v[i]; }); }
  friend U32Lanes operator~(const U32Lanes& a) { return map([&](int i) { return ~a.v[i]; }); }
  friend U32Lanes operator>>(const U32Lanes& a, int n) { return map([&](int i) { return a.v[i] >> n; }); }
  friend F32Lanes lane_to_float(const U32Lanes& a) {
    __at_align__ float f[kLanes];
    for (int i = 0; i < kLanes; ++i) f[i] = gumbel_ext::lane_to_float(a.v[i]);
    return {fVec::loadu(f)};
  }
  friend void mulhilo32(uint32_t m, const U32Lanes& b, U32Lanes& hi, U32Lanes& lo) {
    for (int i = 0; i < kLanes; ++i) gumbel_ext::mulhilo32(m, b.v[i], hi.v[i], lo.v[i]);
  }
};

// Block q0 + i sits in lane i: its four words go to columns 4i .. 4i+3.
inline void unpack_columns(const Philox4T<U32Lanes>& b, U32Lanes out[4]) {
  for (int i = 0; i < kLanes; ++i) {
    const uint32_t words[4] = {b.x.v[i], b.y.v[i], b.z.v[i], b.w.v[i]};
    for (int w = 0; w < 4; ++w) out[(4 * i + w) / kLanes].v[(4 * i + w) % kLanes] = words[w];
  }
}

#endif

// Scalar operands, broadcast to every lane.
inline U32Lanes operator+(const U32Lanes& a, uint32_t b) { return a + U32Lanes::broadcast(b); }
inline U32Lanes operator^(const U32Lanes& a, uint32_t b) { return a ^ U32Lanes::broadcast(b); }
inline U32Lanes operator&(const U32Lanes& a, uint32_t b) { return a & U32Lanes::broadcast(b); }
inline U32Lanes operator|(const U32Lanes& a, uint32_t b) { return a | U32Lanes::broadcast(b); }

static_assert(sizeof(U32Lanes) == sizeof(fVec), "one 32-bit lane per float lane");

// The noise of one call (seed, offset).
class NoiseStream {
 public:
  NoiseStream(uint64_t seed, uint64_t offset) : seed_(seed), offset_(offset) {}

  // Columns [4 * q0, 4 * q0 + kChunk) of `row`, in order (out[k]: kLanes columns each).
  void row_block(uint64_t row, uint64_t q0, fVec out[4]) const {
    U32Lanes bits[4];
    const auto counter = philox_counter(offset_, q0, U32Lanes::column_order(), row, U32Lanes::broadcast(0));
    unpack_columns(philox4x32_10(counter, seed_), bits);
    for (int k = 0; k < 4; ++k) out[k] = gumbel_from_bits(bits[k]).v;
  }

  // Columns 4q .. 4q+3 (out[0..3]) of rows row0 .. row0 + kLanes - 1 (the lanes).
  void rows_block(uint64_t row0, uint64_t q, fVec out[4]) const {
    const auto counter = philox_counter(offset_, q, U32Lanes::broadcast(0), row0, U32Lanes::row_order());
    const Philox4T<U32Lanes> bits = philox4x32_10(counter, seed_);
    out[0] = gumbel_from_bits(bits.x).v;
    out[1] = gumbel_from_bits(bits.y).v;
    out[2] = gumbel_from_bits(bits.z).v;
    out[3] = gumbel_from_bits(bits.w).v;
  }

 private:
  uint64_t seed_, offset_;
};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace gumbel_ext
