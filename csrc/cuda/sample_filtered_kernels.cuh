// The fused CUDA token sampler behind gumbel_ext::sample_filtered: one block per row,
// temperature, top-k / top-p / min-p, Gumbel-max (Gumbel-top-k for num_samples > 1),
// log-probs. The semantics are the CPU kernel's, Note [Sampler semantics] and
// Note [Per-row noise keys] in csrc/cpu/sample_kernels.h; the launcher is
// sample_filtered.cu. In a header so that tests/emulation runs this code on the CPU.
//
// Note [CUDA sampler passes]
// A row is read several times (the later reads mostly from L2):
//   1. the row max M (NaN-aware);
//   2. top-k (0 < k < V): the k-th largest logit by a radix select (below);
//   3. top-p (p < 1): the boundary e* by the same select, weighted by mass;
//   4. the draw: the argmax of z + g over the kept tokens, with the sum of their e (the
//      log-sum-exp of the processed distribution) in the same pass; for num_samples > 1
//      a radix select of the num_samples-th largest key, then one pass that gathers the
//      winners into shared memory, where they are ordered.
// Plain sampling is passes 1 and 4, as on the CPU.
//
// Note [Radix select]
// block_select finds the largest key t such that the weight of the elements with key >= t
// reaches `need`, 8 bits at a time from the top: each pass histograms the weights of the
// elements that match the digits found so far by their next digit, in shared memory,
// and one warp scans the 256 buckets from the top for the one where the running weight
// crosses `need`. t is then always a key some element has. Keys are unsigned integers
// ordered as the values they encode (order_key). Weights are integers, so the shared
// atomic adds give the same histogram in any order: the select is deterministic.
//   top-k: key = the logit's order key, weight 1, need = k: t = the k-th largest logit.
//   top-p: key = the bits of e (e >= 0, so its bits order it), weight = e in fixed point
//          (e * 2^S truncated, S = mass_shift, chosen so that a row's sum fits in 63
//          bits), need = ceil(p * total mass): t = the boundary e*, the largest e whose
//          mass at or above it reaches p. The CPU sums e in floating point, this in exact
//          fixed point; the two can disagree only when the mass at the boundary is
//          within the sums' rounding (~1e-7 relative) of p times the total.
//   Gumbel-top-k: key = the order key of z + g (0 for tokens the filters remove, below
//          every kept key), weight 1, need = num_samples; ties at the boundary are broken
//          by a second select over the tied columns, lowest first.
//
// Note [CUDA sampler exp]
// Whether a token passes min-p or top-p depends on the bits of e = exp((x - M) / T).
// sampler_exp is the CPU's AVX2 / AVX-512 exp_nonpositive (csrc/cpu/vec_math.h) step for
// step: Cody-Waite reduction, Cephes expf's polynomial, every multiply-add an explicit fma,
// 0 below 2^-126. So the kept set is the CPU's bit for bit. float64 logits use the
// device's exp, as the CPU's double lanes use SLEEF / libm.
//
// Note [CUDA sampler bad rows]
// The CPU raises for a row holding NaN or +inf, for a row of only -inf, and for bad
// per-row filter values. Raising from the device needs a host sync (no CUDA graphs), so
// here such a row is drawn greedily with NaN ranked above +inf (torch.argmax's order),
// and its log-probs are NaN; per-row values out of range are clamped: temperature NaN,
// < 0 or +inf is greedy, top_k < 0 is off, top_p NaN or >= 1 is off and <= 0 keeps the top
// token, min_p NaN or < 0 is 0 and > 1 is 1. A row that keeps fewer tokens than
// num_samples fills the rest with removed tokens, lowest index first, log-prob -inf.
#pragma once

#include "common.cuh"

namespace gumbel_ext {
namespace cuda {

// Blocks of up to 512 threads, one per SM at least: without the 1, ptxas capped the
// float64 kernel at 64 registers and spilled.
constexpr int kSamplerMaxThreads = 512;
// The most num_samples the kernel gathers in shared memory; more go to the reference.
constexpr int64_t kSamplerMaxDrawn = 1024;

template <typename scalar_t>
struct SampleFilteredArgs {
  const scalar_t* logits = nullptr;  // [rows, length], contiguous
  int64_t rows = 0, length = 0, num_samples = 1;
  double temperature = 1.0, top_p = 1.0, min_p = 0.0;
  int64_t top_k = 0;
  // Per-row values (device pointers, [rows]) or null: the scalars above.
  const double* temperature_rows = nullptr;
  const double* top_p_rows = nullptr;
  const double* min_p_rows = nullptr;
  const int64_t* top_k_rows = nullptr;
  const int64_t* seeds = nullptr;    // with offsets: Note [Per-row noise keys]
  const int64_t* offsets = nullptr;
  int64_t* indices = nullptr;        // [rows, num_samples]
  float* logprobs = nullptr;         // [rows, num_samples] or null
  int mass_shift = 32;               // S of Note [Radix select]
};

// Threads per row: about eight elements each, 64 .. kSamplerMaxThreads.
inline int sampler_block_threads(int64_t length) {
  int t = 64;
  while (t < kSamplerMaxThreads && int64_t{t} * 8 < length) t *= 2;
  return t;
}

// S with length * 2^S < 2^63 (every e <= 1).
inline int sampler_mass_shift(int64_t length) {
  int bits = 0;
  while ((int64_t{1} << bits) < length + 1) ++bits;
  return 62 - bits;
}

inline size_t sampler_dynamic_smem(int64_t num_samples, size_t key_bytes, size_t acc_bytes) {
  return num_samples > 1 ? static_cast<size_t>(num_samples) * (key_bytes + sizeof(int64_t) + acc_bytes) : 0;
}

// ------------------------------------------------------------------ keys and exp
constexpr float kSamplerLn2Hi = 0x1.62e4p-1f;  // csrc/cpu/vec_math.h's constants
constexpr float kSamplerLn2Lo = 0x1.7f7d1cp-20f;
constexpr float kSamplerLog2e = 0x1.715476p+0f;
constexpr float kSamplerExpMin = -87.33654f;

// See Note [CUDA sampler exp]; x <= 0 or -inf (never NaN here).
__host__ __device__ __forceinline__ float sampler_exp(float x) {
  if (!(x >= kSamplerExpMin)) return 0.0f;
  const float n = rintf(mul_rn(x, kSamplerLog2e));
  float r = fma_rn(-n, kSamplerLn2Hi, x);
  r = fma_rn(-n, kSamplerLn2Lo, r);
  float p = fma_rn(1.9875691500E-4f, r, 1.3981999507E-3f);
  p = fma_rn(p, r, 8.3334519073E-3f);
  p = fma_rn(p, r, 4.1665795894E-2f);
  p = fma_rn(p, r, 1.6666665459E-1f);
  p = fma_rn(p, r, 5.0000001201E-1f);
  p = fma_rn(p, mul_rn(r, r), add_rn(r, 1.0f));
  const uint32_t scale = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;  // 2^n, n >= -126
  return mul_rn(p, bits_float(scale));
}
__host__ __device__ __forceinline__ double sampler_exp(double x) { return ::exp(x); }

// Low bits of a logit's order key that block_select may skip: a half type widened to float
// has 13 (float16) or 16 (bfloat16) zero mantissa bits (-0 and NaN are canonical), so its
// key's low bits are all zero (values >= +0) or all ones (negative values).
template <typename scalar_t>
constexpr int zero_key_bits() {
  return std::is_same_v<scalar_t, c10::BFloat16> ? 16 : std::is_same_v<scalar_t, c10::Half> ? 8 : 0;
}

template <typename acc_t>
struct KeyOf;
template <>
struct KeyOf<float> {
  using type = uint32_t;
};
template <>
struct KeyOf<double> {
  using type = uint64_t;
};

__host__ __device__ __forceinline__ uint64_t double_bits(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}
__host__ __device__ __forceinline__ double bits_double(uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(b));
#else
  double x;
  std::memcpy(&x, &b, sizeof x);
  return x;
#endif
}
__host__ __device__ __forceinline__ uint32_t raw_bits(float x) { return float_bits(x); }
__host__ __device__ __forceinline__ uint64_t raw_bits(double x) { return double_bits(x); }
__host__ __device__ __forceinline__ float from_bits(uint32_t b) { return bits_float(b); }
__host__ __device__ __forceinline__ double from_bits(uint64_t b) { return bits_double(b); }

// An unsigned key ordered as the value: -0 as +0, every NaN as the positive quiet NaN
// (above +inf, torch.argmax's order).
template <typename acc_t>
__host__ __device__ __forceinline__ typename KeyOf<acc_t>::type order_key(acc_t v) {
  using key_t = typename KeyOf<acc_t>::type;
  constexpr key_t sign = key_t(1) << (sizeof(key_t) * 8 - 1);
  v = v != v ? static_cast<acc_t>(NAN) : (v == acc_t(0) ? acc_t(0) : v);
  const key_t b = raw_bits(v);
  return (b & sign) ? key_t(~b) : key_t(b | sign);
}

// ------------------------------------------------------------------ radix select
struct SelectSmem {
  unsigned long long hist[256];
  unsigned long long lane_sum[32];
  unsigned long long prefix, above, at, total;
  int found;
};

template <typename key_t>
struct Selected {
  key_t key;               // t
  unsigned long long above;  // weight of keys > t
  unsigned long long at;     // weight of keys == t
  unsigned long long total;  // weight of every participating element
  bool found;              // false: the weights never reach need (t is then 0)
};

// See Note [Radix select]. elem(c, key, weight) -> false for a column that does not take
// part. The low `low_bits` bits (a multiple of 8) of every key are all zero for values
// >= +0 and all ones for negative ones, and take no pass: the order keys of half-type
// logits (16 for bfloat16, 8 for float16). Every thread of the block must call it.
template <typename key_t, typename Elem>
__device__ __forceinline__ Selected<key_t> block_select(int64_t length, unsigned long long need, const Elem& elem,
                                                        SelectSmem& s, int low_bits = 0) {
  constexpr int kBits = sizeof(key_t) * 8;
  const int lane = threadIdx.x % kWarpSize;
  key_t prefix = 0;
  unsigned long long above = 0, total = 0;
  for (int shift = kBits - 8; shift >= low_bits; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) s.hist[b] = 0;
    if (threadIdx.x == 0) s.found = 0;
    __syncthreads();
    const key_t high = shift + 8 >= kBits ? key_t(0) : key_t(~key_t(0) << (shift + 8));
    for (int64_t c = threadIdx.x; c < length; c += blockDim.x) {
      key_t key;
      unsigned long long w;
      if (elem(c, key, w) && (key & high) == prefix && w != 0) {
        atomicAdd(&s.hist[static_cast<int>((key >> shift) & 0xff)], w);
      }
    }
    __syncthreads();
    // Warp 0: lane l sums buckets 255 - 8l .. 248 - 8l (lane 0 holds the top ones).
    if (threadIdx.x < kWarpSize) {
      unsigned long long sum = 0;
      for (int j = 0; j < 8; ++j) sum += s.hist[255 - 8 * lane - j];
      s.lane_sum[lane] = sum;
    }
    __syncthreads();
    if (threadIdx.x < kWarpSize) {
      unsigned long long before = above, all = 0;
      for (int l = 0; l < kWarpSize; ++l) {
        if (l < lane) before += s.lane_sum[l];
        all += s.lane_sum[l];
      }
      if (threadIdx.x == 0) s.total = all;
      // At most one lane's buckets cross need: it scans them from the top.
      if (before < need && before + s.lane_sum[lane] >= need) {
        for (int j = 0; j < 8; ++j) {
          const int b = 255 - 8 * lane - j;
          if (before + s.hist[b] >= need) {
            s.prefix = static_cast<unsigned long long>(b);
            s.above = before;
            s.at = s.hist[b];
            s.found = 1;
            break;
          }
          before += s.hist[b];
        }
      }
    }
    __syncthreads();
    if (shift == kBits - 8) total = s.total;
    const bool found = s.found != 0;
    const key_t digit = static_cast<key_t>(s.prefix);
    const unsigned long long new_above = s.above, at = s.at;
    __syncthreads();  // everyone has read s before the next pass writes it
    if (!found) break;
    prefix |= digit << shift;
    above = new_above;
    if (shift == low_bits) {
      // The skipped bits: zero in the keys of values >= +0, ones in those of negative
      // values (order_key flips them).
      if (low_bits != 0 && !(prefix >> (kBits - 1))) prefix |= (key_t(1) << low_bits) - 1;
      return {prefix, above, at, total, true};
    }
  }
  return {key_t(0), 0ull, 0ull, total, false};
}

// ------------------------------------------------------------------ the kernel
template <typename acc_t>
struct RowParams {
  bool greedy, top_k, top_p, need_e, bad;
  acc_t temperature, min_p;
  double top_p_value;
  int64_t k;
  uint64_t key, offset, ctr;
};

template <typename scalar_t>
__device__ __forceinline__ RowParams<at::opmath_type<scalar_t>> row_params(const SampleFilteredArgs<scalar_t>& a,
                                                                           int64_t r, uint64_t seed,
                                                                           uint64_t offset) {
  using acc_t = at::opmath_type<scalar_t>;
  RowParams<acc_t> p;
  const double T = a.temperature_rows ? a.temperature_rows[r] : a.temperature;
  double tp = a.top_p_rows ? a.top_p_rows[r] : a.top_p;
  double mp = a.min_p_rows ? a.min_p_rows[r] : a.min_p;
  const int64_t k = a.top_k_rows ? a.top_k_rows[r] : a.top_k;
  // Out-of-range values: Note [CUDA sampler bad rows].
  if (!(mp >= 0)) mp = 0;
  if (mp > 1) mp = 1;
  p.greedy = !(T > 0 && T < static_cast<double>(INFINITY));
  p.temperature = static_cast<acc_t>(T);
  p.k = k;
  p.top_k = k > 0 && k < a.length;
  p.top_p = tp == tp && tp < 1;
  p.top_p_value = tp > 0 ? tp : 0;
  p.min_p = static_cast<acc_t>(mp);
  p.need_e = p.top_p || mp > 0 || a.logprobs != nullptr;
  p.bad = false;
  if (a.seeds != nullptr) {
    p.key = static_cast<uint64_t>(a.seeds[r]);
    p.offset = static_cast<uint64_t>(a.offsets[r]);
    p.ctr = 0;
  } else {
    p.key = seed;
    p.offset = offset;
    p.ctr = static_cast<uint64_t>(r);
  }
  return p;
}

// The Gumbel noise of column c of the row (one Philox block per call; the draw pass
// reuses a block across its four columns).
__device__ __forceinline__ float sampler_noise(uint64_t key, uint64_t offset, uint64_t ctr, int64_t c) {
  return gumbel_noise(key, offset, ctr, static_cast<uint64_t>(c));
}

template <typename acc_t>
struct Drawn {
  typename KeyOf<acc_t>::type* keys;
  int64_t* cols;
  acc_t* z;
};

// Writes the n gathered elements (n = num_samples) in the order of the draw, key
// descending and column ascending, with their log-probs z - log_sum.
template <typename key_t, typename acc_t>
__device__ __forceinline__ void write_drawn(const Drawn<acc_t>& d, int n, int64_t* idx, float* lp, double log_sum) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const key_t ki = d.keys[i];
    const int64_t ci = d.cols[i];
    int rank = 0;
    for (int j = 0; j < n; ++j) {
      rank += d.keys[j] > ki || (d.keys[j] == ki && d.cols[j] < ci);
    }
    idx[rank] = ci;
    if (lp) lp[rank] = static_cast<float>(static_cast<double>(d.z[i]) - log_sum);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kSamplerMaxThreads, 1)
    sample_filtered_kernel(SampleFilteredArgs<scalar_t> a, Rng rng) {
  using acc_t = at::opmath_type<scalar_t>;
  using key_t = typename KeyOf<acc_t>::type;
  __shared__ __align__(16) unsigned char scratch[kScratchBytes];
  __shared__ SelectSmem sel;
  __shared__ int drawn_count;
  uint64_t gen_seed = 0, gen_offset = 0;
  if (a.seeds == nullptr) seed_offset(rng, gen_seed, gen_offset);
  const int64_t V = a.length, ns = a.num_samples;
  unsigned char* dyn = dynamic_smem();
  // Widest first, so every array is aligned.
  Drawn<acc_t> drawn{reinterpret_cast<key_t*>(dyn + ns * (sizeof(int64_t) + sizeof(acc_t))),
                     reinterpret_cast<int64_t*>(dyn), reinterpret_cast<acc_t*>(dyn + ns * sizeof(int64_t))};
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    const scalar_t* x = a.logits + r * V;
    int64_t* idx = a.indices + r * ns;
    float* lp = a.logprobs ? a.logprobs + r * ns : nullptr;
    RowParams<acc_t> p = row_params(a, r, gen_seed, gen_offset);

    // 1. The row max, NaN-aware.
    acc_t m = neg_inf<acc_t>();
    for (int64_t c = threadIdx.x; c < V; c += blockDim.x) m = nan_max(m, static_cast<acc_t>(x[c]));
    const acc_t M = block_allreduce(m, MaxOp(), neg_inf<acc_t>(), scratch);
    p.bad = !is_finite(M);
    const auto xv = [&](int64_t c) { return static_cast<acc_t>(x[c]); };

    if (p.greedy || p.bad) {
      // Greedy (or Note [CUDA sampler bad rows]): the largest logits, lowest index on ties;
      // log-probs under softmax(x) at T = 1.
      acc_t s = 0;
      ArgMax<acc_t> best = argmax_identity<acc_t>();
      for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
        const acc_t v = xv(c);
        if (!p.bad) s += sampler_exp(v - M);
        if (ns == 1) best = ArgMaxOp()(best, ArgMax<acc_t>{v, c});
      }
      const acc_t sum = block_allreduce(s, SumOp(), acc_t(0), scratch);
      const double log_sum = p.bad ? static_cast<double>(NAN) : ::log(static_cast<double>(sum));
      if (ns == 1) {
        best = block_allreduce(best, ArgMaxOp(), argmax_identity<acc_t>(), scratch);
        if (threadIdx.x == 0) {
          idx[0] = best.i;
          if (lp) lp[0] = static_cast<float>(static_cast<double>(xv(best.i) - M) - log_sum);
        }
        continue;
      }
      const Selected<key_t> t = block_select<key_t>(V, static_cast<unsigned long long>(ns), [&](int64_t c, key_t& k,
                                                                                             unsigned long long& w) {
        k = order_key(xv(c));
        w = 1;
        return true;
      }, sel, p.bad ? 0 : zero_key_bits<scalar_t>());
      // Ties at the boundary: the lowest columns among them.
      key_t col_t = 0;
      const bool tie_break = t.above + t.at > static_cast<unsigned long long>(ns);
      if (tie_break) {
        col_t = block_select<key_t>(V, static_cast<unsigned long long>(ns) - t.above,
                                    [&](int64_t c, key_t& k, unsigned long long& w) {
                                      k = ~static_cast<key_t>(c);
                                      w = 1;
                                      return order_key(xv(c)) == t.key;
                                    }, sel).key;
      }
      if (threadIdx.x == 0) drawn_count = 0;
      __syncthreads();
      for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
        const key_t k = order_key(xv(c));
        if (k > t.key || (k == t.key && (!tie_break || ~static_cast<key_t>(c) >= col_t))) {
          const int slot = atomicAdd(&drawn_count, 1);
          drawn.keys[slot] = k;
          drawn.cols[slot] = c;
          drawn.z[slot] = xv(c) - M;
        }
      }
      __syncthreads();
      write_drawn<key_t>(drawn, static_cast<int>(ns), idx, lp, log_sum);
      __syncthreads();
      continue;
    }

    const acc_t T = p.temperature;
    const auto z_of = [&](acc_t v) { return (v - M) / T; };  // a division, as the CPU
    // 2. top-k: the k-th largest logit's key; kept_k(c) = key(x_c) >= it.
    key_t kth = 0;
    if (p.top_k) {
      kth = block_select<key_t>(V, static_cast<unsigned long long>(p.k), [&](int64_t c, key_t& k,
                                                                             unsigned long long& w) {
        k = order_key(xv(c));
        w = 1;
        return true;
      }, sel, zero_key_bits<scalar_t>()).key;
    }
    const auto kept_k = [&](acc_t v) { return !p.top_k || order_key(v) >= kth; };
    // 3. top-p over the top-k survivors: the boundary e*.
    acc_t e_min = p.min_p;
    if (p.top_p) {
      const double scale = static_cast<double>(1ull << a.mass_shift);
      const auto mass = [&](int64_t c, key_t& k, unsigned long long& w) {
        const acc_t v = xv(c);
        if (!kept_k(v)) return false;
        const acc_t e = sampler_exp(z_of(v));
        k = raw_bits(e);
        w = static_cast<unsigned long long>(static_cast<double>(e) * scale);
        return true;
      };
      // The total mass first (the first pass of a select with need = all of it).
      unsigned long long tot = 0;
      for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
        key_t k;
        unsigned long long w;
        if (mass(c, k, w)) tot += w;
      }
      tot = block_allreduce(tot, SumOp(), 0ull, scratch);
      double need = ::ceil(p.top_p_value * static_cast<double>(tot));
      need = need < 1 ? 1 : need;
      const Selected<key_t> t = block_select<key_t>(V, static_cast<unsigned long long>(need), mass, sel);
      // Rounding can leave the target out of reach (never in exact fixed point): keep all.
      const acc_t e_star = t.found ? from_bits(t.key) : acc_t(0);
      e_min = e_star > e_min ? e_star : e_min;
    }
    const auto kept = [&](acc_t v, acc_t& z, acc_t& e) {
      z = z_of(v);
      e = p.need_e ? sampler_exp(z) : acc_t(0);
      return kept_k(v) && (!p.need_e || e >= e_min);
    };

    // 4. The draw, with the sum of the kept e.
    if (ns == 1) {
      acc_t s = 0;
      ArgMax<acc_t> best = argmax_identity<acc_t>();
      for (int64_t q = threadIdx.x; q * 4 < V; q += blockDim.x) {
        const Philox4 g4 = philox_block(p.key, p.offset, p.ctr, static_cast<uint64_t>(q));
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t c = 4 * q + j;
          acc_t z, e;
          if (c >= V || !kept(xv(c), z, e)) continue;
          s += e;
          const acc_t g = static_cast<acc_t>(gumbel_from_bits(philox_lane(g4, j)));
          best = ArgMaxOp()(best, ArgMax<acc_t>{z + g, c});
        }
      }
      const acc_t sum = block_allreduce(s, SumOp(), acc_t(0), scratch);
      best = block_allreduce(best, ArgMaxOp(), argmax_identity<acc_t>(), scratch);
      if (threadIdx.x == 0) {
        idx[0] = best.i;
        if (lp) lp[0] = static_cast<float>(static_cast<double>(z_of(xv(best.i))) - ::log(static_cast<double>(sum)));
      }
      continue;
    }
    // Gumbel-top-k: removed tokens rank below every kept one (key 0).
    const auto draw_key = [&](int64_t c, acc_t& z, acc_t& e) -> key_t {
      if (!kept(xv(c), z, e)) return key_t(0);
      return order_key(z + static_cast<acc_t>(sampler_noise(p.key, p.offset, p.ctr, c)));  // never 0
    };
    const Selected<key_t> t = block_select<key_t>(V, static_cast<unsigned long long>(ns), [&](int64_t c, key_t& k,
                                                                                           unsigned long long& w) {
      acc_t z, e;
      k = draw_key(c, z, e);
      w = 1;
      return true;
    }, sel);
    key_t col_t = 0;
    const bool tie_break = t.above + t.at > static_cast<unsigned long long>(ns);
    if (tie_break) {
      col_t = block_select<key_t>(V, static_cast<unsigned long long>(ns) - t.above,
                                  [&](int64_t c, key_t& k, unsigned long long& w) {
                                    acc_t z, e;
                                    k = ~static_cast<key_t>(c);
                                    w = 1;
                                    return draw_key(c, z, e) == t.key;
                                  }, sel).key;
    }
    if (threadIdx.x == 0) drawn_count = 0;
    __syncthreads();
    acc_t s = 0;
    for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
      acc_t z, e;
      const key_t k = draw_key(c, z, e);
      if (k != 0) s += e;
      if (k > t.key || (k == t.key && (!tie_break || ~static_cast<key_t>(c) >= col_t))) {
        const int slot = atomicAdd(&drawn_count, 1);
        drawn.keys[slot] = k;
        drawn.cols[slot] = c;
        drawn.z[slot] = k != 0 ? z : neg_inf<acc_t>();
      }
    }
    const acc_t sum = block_allreduce(s, SumOp(), acc_t(0), scratch);
    write_drawn<key_t>(drawn, static_cast<int>(ns), idx, lp, ::log(static_cast<double>(sum)));
    __syncthreads();
  }
}

}  // namespace cuda
}  // namespace gumbel_ext
