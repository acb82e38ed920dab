// The fused CPU token sampler behind gumbel_ext::sample_filtered: temperature, top-k,
// top-p, min-p, per-row seeds, log-probs. Per ISA, inside gumbel_ext::cpu::CPU_CAPABILITY
// (included by gumbel_softmax_kernel.h). Rows arrive contiguous along the last dim.
//
// Note [Sampler semantics]
// For a row x (acc_t) with M = max x and temperature T > 0:
//   z_c = (x_c - M) / T, e_c = exp(z_c)        (e_max = 1 exactly)
//   top-k  (0 < k < V):  keep x_c >= x_(k), the k-th largest logit -- ties at the boundary
//                        are all kept, so more than k tokens may survive.
//   top-p  (p < 1):      over the top-k survivors, sorted by e descending, n = the first
//                        count whose cumulative e reaches p * sum(e); keep e_c >= e_(n)
//                        (ties with the boundary token kept).
//   min-p  (m > 0):      keep e_c >= m, i.e. p_c >= m * p_max: the ratio to the max does
//                        not change under renormalization, so this is the same before or
//                        after the other filters. The max token always survives.
//   draw:                argmax over kept c of z_c + g_c (lowest index on ties); for
//                        num_samples > 1 the num_samples largest (Gumbel-top-k).
//   logprob:             z_i - log(sum over kept of e_c).
// T == 0 is greedy: the lowest-index argmax of x (top num_samples for num_samples > 1), no
// noise, filters ignored, logprob = x_i - M - log(sum exp(x - M)) (softmax at T = 1).
// z uses a division, not a multiply by 1/T, so that z + g cannot be contracted into an fma
// and the reference (gumbel_ext/reference.py) performs the same float operations (its
// noise and exp may still differ in the last bit, as the CPU copies do: CHANGELOG.md).
//
// Note [Per-row noise keys]
// Row r's noise is element (row ctr, column c) of the noise contract (Note [Philox counter
// layout]) with key K and counter start O:
//   seeds given:   K = seeds[r], O = offsets[r], row ctr = 0 -- independent of r, so a
//                  row's draw does not depend on its batch or its position in it.
//   seeds absent:  K = one seed drawn from the generator, O = 0, row ctr = r: the noise
//                  today's sample() and gumbel_softmax(hard=True) use.
// A row of V columns consumes 4 * ceil(V / 4) counters (32-bit draws) from O; O is used
// as O / 4 Philox blocks, so callers advance offsets by multiples of that.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernel_table.h"
#include "vec_io.h"

namespace gumbel_ext {
namespace cpu {
namespace CPU_CAPABILITY {

// A comparator of this ISA's own type: the std algorithms instantiated with it carry this
// namespace in their symbol names, so no copy shares or clones one compiled for another
// ISA (Note [Per-ISA CPU kernels]; tests/test_cpu_isa.py checks the machine code).
struct Descending {
  template <typename T>
  bool operator()(T a, T b) const {
    return a > b;
  }
};

// The parameters of row r.
struct SampleRow {
  double temperature, top_p, min_p;
  int64_t top_k;
  uint64_t key, offset, row_ctr;
};

inline SampleRow sample_row_params(const SampleArgs& a, int64_t r) {
  SampleRow p;
  p.temperature = a.temperature_rows ? a.temperature_rows[r] : a.temperature;
  p.top_p = a.top_p_rows ? a.top_p_rows[r] : a.top_p;
  p.min_p = a.min_p_rows ? a.min_p_rows[r] : a.min_p;
  p.top_k = a.top_k_rows ? a.top_k_rows[r] : a.top_k;
  TORCH_CHECK_VALUE(p.temperature >= 0 && std::isfinite(p.temperature),
                    "gumbel_ext.sample: temperature must be finite and >= 0, got ", p.temperature, " in row ", r);
  TORCH_CHECK_VALUE(p.top_k >= 0, "gumbel_ext.sample: top_k must be >= 0, got ", p.top_k, " in row ", r);
  TORCH_CHECK_VALUE(p.top_p > 0 && p.top_p <= 1, "gumbel_ext.sample: top_p must be in (0, 1], got ", p.top_p,
                    " in row ", r);
  TORCH_CHECK_VALUE(p.min_p >= 0 && p.min_p <= 1, "gumbel_ext.sample: min_p must be in [0, 1], got ", p.min_p,
                    " in row ", r);
  if (a.seeds) {
    TORCH_CHECK_VALUE(a.offsets[r] >= 0, "gumbel_ext.sample: offsets must be >= 0, got ", a.offsets[r], " in row ", r);
    p.key = static_cast<uint64_t>(a.seeds[r]);
    p.offset = static_cast<uint64_t>(a.offsets[r]);
    p.row_ctr = 0;
  } else {
    p.key = a.seed;
    p.offset = 0;
    p.row_ctr = static_cast<uint64_t>(r);
  }
  return p;
}

// max x over columns [0, n) of x, and whether a NaN or +inf is among them.
template <typename scalar_t, typename acc_t = typename Types<scalar_t>::acc_t>
acc_t segment_max(const scalar_t* x, int64_t n, bool& bad) {
  using T = Types<scalar_t>;
  using aVec = typename T::aVec;
  aVec vmax(-kInf<acc_t>), nan(0);
  for (int64_t c = 0; c < n; c += kChunk) {
    aVec v[T::kVecs];
    load_chunk_n(x + c, n - c, scalar_t(-kInf<float>), v);
    for (int k = 0; k < T::kVecs; ++k) {
      vmax = at::vec::maximum(vmax, v[k]);
      nan = nan | (v[k] != v[k]);
    }
  }
  const acc_t m = reduce_max(vmax);
  bad = !(reduce_max(nan) == 0 && m == m && m != kInf<acc_t>);
  return m;
}

// The row's max M, after the checks sample() makes: raises for NaN / +inf / all -inf.
template <typename acc_t>
acc_t checked_row_max(acc_t m, bool bad, int64_t r) {
  TORCH_CHECK_VALUE(!bad, "gumbel_ext.sample: row ", r, " of the logits holds NaN or +inf");
  TORCH_CHECK_VALUE(std::isfinite(m), "gumbel_ext.sample: row ", r, " has no finite logit to draw from (all -inf)");
  return m;
}

// Calls f(c, v) for every column c < V whose logit passes keep(vector) (a lane mask), in
// column order; v is the logit in acc_t. The vector test skips most chunks whole.
template <typename scalar_t, typename Keep, typename F>
void for_passing(const scalar_t* x, int64_t V, const Keep& keep, const F& f) {
  using T = Types<scalar_t>;
  using aVec = typename T::aVec;
  using acc_t = typename T::acc_t;
  constexpr int all_lanes = (1 << T::A) - 1;
  __at_align__ acc_t vals[T::A];
  for (int64_t c = 0; c < V; c += kChunk) {
    aVec v[T::kVecs];
    load_chunk_n(x + c, V - c, scalar_t(-kInf<float>), v);
    for (int k = 0; k < T::kVecs; ++k) {
      const int zero = keep(v[k]).zero_mask() & all_lanes;  // lanes that fail
      if (zero == all_lanes) continue;
      v[k].store(vals);
      for (int i = 0; i < T::A; ++i) {
        const int64_t col = c + k * T::A + i;
        if (!(zero >> i & 1) && col < V) f(col, vals[i]);
      }
    }
  }
}

// Note [Top-k by a shrinking candidate buffer]
// The k-th largest logit without sorting the row: one pass keeps a buffer holding every
// value above a running threshold (and, at the start, everything). When the buffer fills,
// nth_element cuts it to its k largest and the k-th becomes the threshold; later values
// enter only if strictly above it. So the buffer always holds every value above the
// threshold plus k values >= it, and its k-th largest at the end is the row's. On random
// rows almost nothing passes after the first cut: the pass costs one compare per element.
template <typename scalar_t, typename acc_t = typename Types<scalar_t>::acc_t>
acc_t kth_largest(const scalar_t* x, int64_t V, int64_t k, std::vector<acc_t>& buf) {
  const size_t cap = static_cast<size_t>(std::max<int64_t>(4 * k, 4096));
  buf.clear();
  acc_t thr = -kInf<acc_t>;
  bool cut = false;
  const auto shrink = [&] {
    std::nth_element(buf.begin(), buf.begin() + (k - 1), buf.end(), Descending());
    buf.resize(k);
    thr = buf[k - 1];
    cut = true;
  };
  using aVec = typename Types<scalar_t>::aVec;
  for_passing(
      x, V, [&](const aVec& v) { return cut ? (v > aVec(thr)) : (v >= aVec(thr)); },
      [&](int64_t, acc_t v) {
        if (cut && !(v > thr)) return;  // thr rose inside this vector
        buf.push_back(v);
        if (buf.size() >= cap) shrink();
      });
  std::nth_element(buf.begin(), buf.begin() + (k - 1), buf.end(), Descending());
  return buf[k - 1];
}

// Note [Top-p by pivot rounds]
// The top-p boundary e* = the largest value v with sum(e >= v) >= target, found like
// quickselect weighted by e: each round partitions the live range around a pivot into
// (> v | == v | < v) and keeps the side that holds the boundary, adding the mass it
// leaves above. Expected O(V) work, no sort. w is scratch (reordered).
template <typename acc_t>
acc_t top_p_threshold(acc_t* w, int64_t n, double target) {
  double above = 0;
  int64_t lo = 0, hi = n;
  uint64_t rng = 0x9E3779B97F4A7C15ull;
  while (hi - lo > 32) {
    auto pick = [&] {
      rng = rng * 6364136223846793005ull + 1442695040888963407ull;
      return w[lo + static_cast<int64_t>((rng >> 33) % static_cast<uint64_t>(hi - lo))];
    };
    acc_t a = pick(), b = pick(), c = pick();
    const acc_t pivot = std::max(std::min(a, b), std::min(std::max(a, b), c));  // median of 3
    acc_t* gt_end = std::partition(w + lo, w + hi, [&](acc_t v) { return v > pivot; });
    acc_t* eq_end = std::partition(gt_end, w + hi, [&](acc_t v) { return v == pivot; });
    double gt = 0;
    for (acc_t* p = w + lo; p < gt_end; ++p) gt += *p;
    const double eq = static_cast<double>(pivot) * static_cast<double>(eq_end - gt_end);
    if (above + gt >= target) {
      hi = gt_end - w;
    } else if (above + gt + eq >= target) {
      return pivot;
    } else {
      above += gt + eq;
      lo = eq_end - w;
    }
  }
  std::sort(w + lo, w + hi, Descending());
  for (int64_t i = lo; i < hi; ++i) {
    above += w[i];
    if (above >= target) return w[i];
  }
  // Rounding left the target out of reach (only ever by an ulp of the sum): keep all.
  return hi > lo ? w[hi - 1] : acc_t(0);
}

// Note [Top-p over a whole row by a histogram]
// For a whole vocabulary the pivot rounds' partitions are slow (branchy, several passes).
// e >= 0, so its bit pattern orders it: one pass adds each e into a bucket of the top
// bits (exponent and 3 mantissa bits, ~1000 buckets over [0, 1] in float), a scan from the
// top finds the bucket where the mass crosses the target, and only that bucket's values
// go through the pivot rounds. e is read, not reordered.
template <typename acc_t>
acc_t top_p_threshold_hist(const acc_t* e, int64_t n, double target, std::vector<double>& hist,
                           std::vector<acc_t>& bucket_values) {
  using bits_t = std::conditional_t<std::is_same_v<acc_t, float>, uint32_t, uint64_t>;
  constexpr int shift = std::is_same_v<acc_t, float> ? 20 : 49;
  const auto key = [](acc_t v) {
    bits_t b;
    std::memcpy(&b, &v, sizeof(b));
    return static_cast<int64_t>(b >> shift);
  };
  const int64_t buckets = key(acc_t(1)) + 1;  // e <= 1
  hist.assign(buckets, 0.0);
  for (int64_t i = 0; i < n; ++i) hist[key(e[i])] += e[i];
  double above = 0;
  int64_t b = buckets - 1;
  for (; b >= 0; --b) {
    if (above + hist[b] >= target) break;
    above += hist[b];
  }
  if (b < 0) return acc_t(0);  // rounding: keep everything
  bucket_values.clear();
  for (int64_t i = 0; i < n; ++i) {
    if (key(e[i]) == b) bucket_values.push_back(e[i]);
  }
  return top_p_threshold(bucket_values.data(), static_cast<int64_t>(bucket_values.size()), target - above);
}

// Greedy row: the num_samples largest logits (lowest index on ties), logprobs at T = 1.
template <typename scalar_t, typename acc_t = typename Types<scalar_t>::acc_t>
void greedy_row(const scalar_t* x, int64_t V, acc_t M, int64_t ns, int64_t* idx, float* lp) {
  if (ns == 1) {
    int64_t best = 0;
    while (static_cast<acc_t>(x[best]) != M) ++best;
    idx[0] = best;
  } else {
    std::vector<int64_t> order(V);
    for (int64_t c = 0; c < V; ++c) order[c] = c;
    std::partial_sort(order.begin(), order.begin() + ns, order.end(), [&](int64_t i, int64_t j) {
      const acc_t a = x[i], b = x[j];
      return a > b || (a == b && i < j);
    });
    std::copy_n(order.begin(), ns, idx);
  }
  if (!lp) return;
  using aVec = Vectorized<acc_t>;
  double sum = 0;
  for (int64_t c = 0; c < V; c += kChunk) {
    aVec v[Types<scalar_t>::kVecs];
    load_chunk_n(x + c, V - c, scalar_t(-kInf<float>), v);
    aVec s(0);
    for (auto& vk : v) s = s + exp_nonpositive(vk - aVec(M));
    sum += reduce_sum(s);
  }
  const double log_sum = std::log(sum);
  for (int64_t j = 0; j < ns; ++j) lp[j] = static_cast<float>(static_cast<double>(static_cast<acc_t>(x[idx[j]]) - M) - log_sum);
}

// One kept token on its way to the draw.
template <typename acc_t>
struct Kept {
  acc_t z, e, key;  // key = z + g
  int64_t c;
};

// Raises unless at least ns tokens survive, then writes the ns largest keys (lowest index
// on ties) and their logprobs.
template <typename acc_t>
void draw_from(std::vector<Kept<acc_t>>& kept, double sum_e, int64_t ns, int64_t r, int64_t* idx, float* lp) {
  TORCH_CHECK_VALUE(static_cast<int64_t>(kept.size()) >= ns, "gumbel_ext.sample: num_samples=", ns, " exceeds the ",
                    kept.size(), " tokens row ", r, " keeps after filtering (sampling without replacement)");
  auto better = [](const Kept<acc_t>& a, const Kept<acc_t>& b) {
    return a.key > b.key || (a.key == b.key && a.c < b.c);
  };
  if (ns == 1) {
    idx[0] = std::min_element(kept.begin(), kept.end(), better)->c;
  } else {
    std::partial_sort(kept.begin(), kept.begin() + ns, kept.end(), better);
  }
  if (!lp && ns == 1) return;
  const double log_sum = std::log(sum_e);
  if (ns == 1) {
    const auto& t = *std::min_element(kept.begin(), kept.end(), better);
    lp[0] = static_cast<float>(static_cast<double>(t.z) - log_sum);
    return;
  }
  for (int64_t j = 0; j < ns; ++j) {
    idx[j] = kept[j].c;
    if (lp) lp[j] = static_cast<float>(static_cast<double>(kept[j].z) - log_sum);
  }
}

// Scratch reused across the rows (or the segments) of one thread.
template <typename acc_t>
struct SamplerScratch {
  std::vector<acc_t> values;
  std::vector<int64_t> cols;
  std::vector<acc_t> e;
  std::vector<Kept<acc_t>> kept;
  std::vector<double> hist;
  ArgMax<acc_t> best;
};

// The noise of columns [base, base + kChunk) of a row, in column order.
inline void noise_chunk(const NoiseStream& ns, uint64_t row_ctr, int64_t base, float* out) {
  fVec g[4];
  ns.row_block(row_ctr, static_cast<uint64_t>(base / 4), g);
  for (int k = 0; k < 4; ++k) g[k].store(out + k * kLanes);
}

// Note [One row across threads]
// Decode batches have fewer rows than threads (1 x 128256, 4 x 128256): such a row is cut
// into segments of whole kSumBlock-column blocks, and every pass over the row runs its
// segments in parallel. Each result is combined so that it equals the one-segment result
// bit for bit, so the draws do not depend on the thread count:
//   - maxima and the argmax (lowest index on ties) are exact;
//   - float partial sums are flushed per block of 16 chunks, as the one-segment loop does,
//     kept per block, and added into the double total in block order;
//   - top-k's k-th largest logit is exact: the largest of the segments' own k-th largest
//     bounds it from below, and the values above that bound from every segment hold it;
//   - top-p's histogram buckets each hold values of one binade with 3 leading mantissa
//     bits fixed, whose double sums are exact in any order (fewer than 2^29 values);
//   - survivor lists are concatenated in column order.
// float64 rows stay in one segment: their bucket sums would round.
constexpr int64_t kSumBlock = 16 * kChunk;
inline int64_t sampler_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
// Whether a loop over chunks ending at column `end` flushed its partial sum at its last
// chunk (the 16th of a block); if not, the partial of the last block is still pending.
inline bool flushed_at(int64_t end) { return ((end - 1) / kChunk) % 16 == 15; }
constexpr int64_t kMinSegment = 16 * kSumBlock;  // columns worth a task of their own

struct Segments {
  int64_t count = 1, length = 0;  // length: columns per segment, a multiple of kSumBlock

  // f(segment, begin, end) for every segment, in parallel when there are several.
  template <typename F>
  void run(int64_t V, const F& f) const {
    if (count == 1) return f(int64_t(0), int64_t(0), V);
    at::parallel_for(int64_t(0), count, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) f(i, i * length, std::min(V, (i + 1) * length));
    });
  }
};

inline Segments segments_for(int64_t V, int64_t wanted) {
  Segments s;
  s.count = std::max<int64_t>(1, std::min(wanted, V / kMinSegment));
  s.length = round_up(sampler_ceil_div(V, s.count), kSumBlock);
  s.count = sampler_ceil_div(V, s.length);
  return s;
}

// The double total of per-block float partial sums, in block order.
template <typename acc_t>
double sum_blocks(const std::vector<acc_t>& partials) {
  double total = 0;
  for (const acc_t p : partials) total += p;
  return total;
}

// The k-th largest logit of the row (see Note [One row across threads]).
template <typename scalar_t, typename acc_t>
acc_t kth_largest_split(const scalar_t* x, int64_t V, int64_t k, const Segments& sg,
                        std::vector<SamplerScratch<acc_t>>& seg, std::vector<acc_t>& buf) {
  using aVec = typename Types<scalar_t>::aVec;
  if (sg.count == 1) return kth_largest(x, V, k, buf);
  std::vector<acc_t> bound(sg.count, -kInf<acc_t>);
  sg.run(V, [&](int64_t i, int64_t c0, int64_t c1) {
    if (c1 - c0 > k) bound[i] = kth_largest(x + c0, c1 - c0, k, seg[i].values);
  });
  const acc_t low = *std::max_element(bound.begin(), bound.end());
  sg.run(V, [&](int64_t i, int64_t c0, int64_t c1) {
    seg[i].values.clear();
    for_passing(x + c0, c1 - c0, [&](const aVec& v) { return v >= aVec(low); },
                [&](int64_t, acc_t v) { seg[i].values.push_back(v); });
  });
  buf.clear();
  for (const auto& sc : seg) buf.insert(buf.end(), sc.values.begin(), sc.values.end());
  std::nth_element(buf.begin(), buf.begin() + (k - 1), buf.end(), Descending());
  return buf[k - 1];
}

// top_p_threshold_hist over segments (see Note [One row across threads]).
template <typename acc_t>
acc_t top_p_threshold_split(const acc_t* e, int64_t n, double target, const Segments& sg, SamplerScratch<acc_t>& s,
                            std::vector<SamplerScratch<acc_t>>& seg) {
  // float64 rows are never split (their bucket sums would round).
  if (sg.count == 1 || !std::is_same_v<acc_t, float>) return top_p_threshold_hist(e, n, target, s.hist, s.values);
  const auto key = [](acc_t v) {
    using bits_t = std::conditional_t<std::is_same_v<acc_t, float>, uint32_t, uint64_t>;
    bits_t b;
    std::memcpy(&b, &v, sizeof(b));
    return static_cast<int64_t>(b >> 20);  // (float only, as top_p_threshold_hist's key)
  };
  const int64_t buckets = key(acc_t(1)) + 1;
  sg.run(n, [&](int64_t i, int64_t c0, int64_t c1) {
    auto& h = seg[i].hist;
    h.assign(buckets, 0.0);
    for (int64_t j = c0; j < c1; ++j) h[key(e[j])] += e[j];
  });
  s.hist.assign(buckets, 0.0);
  for (const auto& sc : seg) {
    for (int64_t b = 0; b < buckets; ++b) s.hist[b] += sc.hist[b];  // exact: see the Note
  }
  double above = 0;
  int64_t b = buckets - 1;
  for (; b >= 0; --b) {
    if (above + s.hist[b] >= target) break;
    above += s.hist[b];
  }
  if (b < 0) return acc_t(0);  // rounding: keep everything
  sg.run(n, [&](int64_t i, int64_t c0, int64_t c1) {
    seg[i].values.clear();
    for (int64_t j = c0; j < c1; ++j) {
      if (key(e[j]) == b) seg[i].values.push_back(e[j]);
    }
  });
  s.values.clear();
  for (const auto& sc : seg) s.values.insert(s.values.end(), sc.values.begin(), sc.values.end());
  return top_p_threshold(s.values.data(), static_cast<int64_t>(s.values.size()), target - above);
}

template <typename scalar_t, typename acc_t = typename Types<scalar_t>::acc_t>
void sample_filtered_row(const SampleArgs& a, const scalar_t* x, int64_t r, SamplerScratch<acc_t>& s,
                         std::vector<SamplerScratch<acc_t>>& seg, const Segments& sg, int64_t* idx, float* lp) {
  using T = Types<scalar_t>;
  using aVec = typename T::aVec;
  const int64_t V = a.length, ns_out = a.num_samples;
  const SampleRow p = sample_row_params(a, r);
  std::vector<acc_t> seg_max(sg.count);
  std::vector<char> seg_bad(sg.count);
  sg.run(V, [&](int64_t i, int64_t c0, int64_t c1) {
    bool bad;
    seg_max[i] = segment_max(x + c0, c1 - c0, bad);
    seg_bad[i] = bad;
  });
  const acc_t M = checked_row_max(*std::max_element(seg_max.begin(), seg_max.end()),
                                  std::find(seg_bad.begin(), seg_bad.end(), 1) != seg_bad.end(), r);
  if (p.temperature == 0) return greedy_row(x, V, M, ns_out, idx, lp);
  const acc_t temp = static_cast<acc_t>(p.temperature);
  const NoiseStream noise(p.key, p.offset);
  const bool top_k = p.top_k > 0 && p.top_k < V, top_p = p.top_p < 1;
  const acc_t min_p = static_cast<acc_t>(p.min_p);
  s.kept.clear();
  double sum_e = 0;
  if (top_k) {
    // A short list of survivors: the filters and the draw work on it alone.
    const acc_t kth = kth_largest_split(x, V, p.top_k, sg, seg, s.values);
    sg.run(V, [&](int64_t i, int64_t c0, int64_t c1) {
      auto& sc = sg.count == 1 ? s : seg[i];
      sc.cols.clear();
      sc.values.clear();
      for_passing(x + c0, c1 - c0, [&](const aVec& v) { return v >= aVec(kth); }, [&](int64_t c, acc_t v) {
        sc.cols.push_back(c0 + c);
        sc.values.push_back(v);
      });
    });
    if (sg.count > 1) {
      s.cols.clear();
      s.values.clear();
      for (const auto& sc : seg) {
        s.cols.insert(s.cols.end(), sc.cols.begin(), sc.cols.end());
        s.values.insert(s.values.end(), sc.values.begin(), sc.values.end());
      }
    }
    const int64_t n = static_cast<int64_t>(s.cols.size());
    s.e.resize(round_up(n, aVec::size()));
    for (int64_t i = 0; i < n; ++i) s.e[i] = (s.values[i] - M) / temp;
    std::fill(s.e.begin() + n, s.e.end(), -kInf<acc_t>);
    for (int64_t i = 0; i < n; i += aVec::size()) exp_nonpositive(aVec::loadu(&s.e[i])).store(&s.e[i]);
    acc_t e_min = min_p;
    if (top_p) {
      double total = 0;
      for (int64_t i = 0; i < n; ++i) total += s.e[i];
      std::vector<acc_t> w(s.e.begin(), s.e.begin() + n);
      e_min = std::max(e_min, top_p_threshold(w.data(), n, p.top_p * total));
    }
    __at_align__ float g[kChunk];
    int64_t g_base = -1;
    for (int64_t i = 0; i < n; ++i) {
      if (!(s.e[i] >= e_min)) continue;
      const int64_t c = s.cols[i];
      if (c / kChunk * kChunk != g_base) {
        g_base = c / kChunk * kChunk;
        noise_chunk(noise, p.row_ctr, g_base, g);
      }
      const acc_t z = (s.values[i] - M) / temp;
      s.kept.push_back({z, s.e[i], z + static_cast<acc_t>(g[c - g_base]), c});
      sum_e += s.e[i];
    }
    return draw_from(s.kept, sum_e, ns_out, r, idx, lp);
  }
  // The whole row: e only when a filter or the logprobs need it. Float partial sums are
  // flushed per kSumBlock columns into `blocks` (Note [One row across threads]).
  std::vector<acc_t> blocks(sampler_ceil_div(V, kSumBlock), acc_t(0));
  acc_t e_min = min_p;
  const bool need_e = top_p || min_p > 0 || lp;
  if (top_p) {
    // e of the row, padded with zeros to whole chunks for the draw pass below.
    s.e.assign(round_up(V, kChunk), acc_t(0));
    sg.run(V, [&](int64_t, int64_t c0, int64_t c1) {
      aVec part(0);
      for (int64_t c = c0; c < c1; c += kChunk) {
        aVec v[T::kVecs];
        load_chunk_n(x + c, V - c, scalar_t(-kInf<float>), v);
        for (int k = 0; k < T::kVecs; ++k) {
          const int64_t col = c + k * T::A;
          if (col >= V) break;
          const aVec e = exp_nonpositive((v[k] - aVec(M)) / aVec(temp));
          e.store(&s.e[col], static_cast<int>(std::min<int64_t>(T::A, V - col)));
          part = part + e;
        }
        if ((c / kChunk) % 16 == 15) blocks[c / kSumBlock] = reduce_sum(part), part = aVec(0);
      }
      if (!flushed_at(c1)) blocks[(c1 - 1) / kSumBlock] = reduce_sum(part);
    });
    const double target = p.top_p * sum_blocks(blocks);
    e_min = std::max(e_min, top_p_threshold_split(s.e.data(), V, target, sg, s, seg));
  }
  // One vectorized pass: keys of the kept tokens, their e sum, the best (or all for
  // num_samples > 1).
  const bool many = ns_out > 1;
  std::fill(blocks.begin(), blocks.end(), acc_t(0));
  sg.run(V, [&](int64_t i, int64_t c0, int64_t c1) {
    auto& sc = sg.count == 1 ? s : seg[i];
    sc.kept.clear();
    using iVec = typename T::iVec;
    using idx_t = typename T::idx_t;
    aVec best(-kInf<acc_t>), best_idx(0), unused(0), sum(0);
    iVec col_idx = iVec::arange(static_cast<idx_t>(c0), 1);
    const iVec step(static_cast<idx_t>(T::A));
    __at_align__ acc_t zs[T::A], es[T::A], keys[T::A];
    for (int64_t c = c0; c < c1; c += kChunk) {
      aVec v[T::kVecs], g[T::kVecs];
      fVec gf[4];
      noise.row_block(p.row_ctr, static_cast<uint64_t>(c / 4), gf);
      noise_to_acc(gf, 4, g);
      load_chunk_n(x + c, V - c, scalar_t(-kInf<float>), v);
      for (int k = 0; k < T::kVecs; ++k) {
        const aVec z = (v[k] - aVec(M)) / aVec(temp);
        aVec key = z + g[k];
        if (need_e) {
          // The stored e are the same function of the same inputs: identical bits.
          const aVec e = top_p ? aVec::loadu(&s.e[c + k * T::A]) : exp_nonpositive(z);
          const aVec keep = e >= aVec(e_min);
          key = aVec::blendv(aVec(-kInf<acc_t>), key, keep);
          sum = sum + (e & keep);
          if (many) {
            z.store(zs);
            e.store(es);
          }
        } else if (many) {
          z.store(zs);
        }
        if (many) {
          key.store(keys);
          for (int j = 0; j < T::A; ++j) {
            const int64_t col = c + k * T::A + j;
            if (col < V && keys[j] != -kInf<acc_t>) sc.kept.push_back({zs[j], need_e ? es[j] : acc_t(0), keys[j], col});
          }
        } else {
          argmax_step(key, at::vec::cast<acc_t>(col_idx), best, best_idx, unused);
        }
        col_idx = col_idx + step;
      }
      if ((c / kChunk) % 16 == 15) blocks[c / kSumBlock] = reduce_sum(sum), sum = aVec(0);
    }
    if (!flushed_at(c1)) blocks[(c1 - 1) / kSumBlock] = reduce_sum(sum);
    if (many) return;
    __at_align__ acc_t value[T::A];
    __at_align__ idx_t index[T::A];
    best.store(value);
    best_idx.store(index);
    ArgMax<acc_t> am;
    for (int j = 0; j < T::A; ++j) {
      ArgMax<acc_t> lane;
      lane.value = value[j];
      lane.index = static_cast<int64_t>(index[j]);
      am = ArgMax<acc_t>::combine(am, lane);
    }
    sc.best = am;
  });
  sum_e = sum_blocks(blocks);
  if (many) {
    if (sg.count > 1) {
      for (const auto& sc : seg) s.kept.insert(s.kept.end(), sc.kept.begin(), sc.kept.end());
    }
    return draw_from(s.kept, sum_e, ns_out, r, idx, lp);
  }
  ArgMax<acc_t> am = s.best;
  if (sg.count > 1) {
    am = seg[0].best;
    for (int64_t i = 1; i < sg.count; ++i) am = ArgMax<acc_t>::combine(am, seg[i].best);
  }
  idx[0] = am.index;
  if (lp) lp[0] = static_cast<float>(static_cast<double>((static_cast<acc_t>(x[am.index]) - M) / temp) - std::log(sum_e));
}

template <typename scalar_t>
void sample_filtered_typed(const SampleArgs& a, const scalar_t* l, int64_t* idx, float* lp) {
  using acc_t = typename Types<scalar_t>::acc_t;
  const int64_t threads = at::get_num_threads();
  if (a.rows < threads && std::is_same_v<acc_t, float> && !at::in_parallel_region()) {
    // Fewer rows than threads: one row at a time, across the threads (Note [One row
    // across threads]).
    const Segments sg = segments_for(a.length, threads);
    if (sg.count > 1) {
      SamplerScratch<acc_t> scratch;
      std::vector<SamplerScratch<acc_t>> seg(sg.count);
      for (int64_t r = 0; r < a.rows; ++r) {
        sample_filtered_row(a, l + r * a.length, r, scratch, seg, sg, idx + r * a.num_samples,
                            lp ? lp + r * a.num_samples : nullptr);
      }
      return;
    }
  }
  // Rows are heavy (a vocabulary each) and uneven (filters): one row per task.
  at::parallel_for(int64_t(0), a.rows, 1, [&](int64_t b, int64_t e) {
    SamplerScratch<acc_t> scratch;
    std::vector<SamplerScratch<acc_t>> none;
    const Segments one = segments_for(a.length, 1);
    for (int64_t r = b; r < e; ++r) {
      sample_filtered_row(a, l + r * a.length, r, scratch, none, one, idx + r * a.num_samples,
                          lp ? lp + r * a.num_samples : nullptr);
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace gumbel_ext
