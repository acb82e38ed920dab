// gumbel_ext::keyed_noise on the CPU: any column range of any rows of the noise contract,
// each row under its own key. Per ISA, inside gumbel_ext::cpu::CPU_CAPABILITY.
//
// Note [Keyed noise of a column range]
// A vocabulary-parallel rank owns global columns [col_start, col_start + length) of every
// row and must draw exactly the noise the unsharded op gives those columns (Note [Philox
// counter layout]). The draw walks whole kChunk blocks from the Philox block that holds
// col_start (NoiseStream::row_block, the same vector code the fused ops perturb with, so
// the bits are theirs) and keeps the part inside the range: col_start need not be a
// multiple of 4. Rows x column blocks are the parallel tasks, so a few long rows (decode
// batches) still use every core.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "kernel_table.h"
#include "vec_lanes.h"

namespace gumbel_ext {
namespace cpu {
namespace CPU_CAPABILITY {

inline void keyed_noise(const KeyedNoiseArgs& a, float* out) {
  const int64_t L = a.length;
  if (a.rows == 0 || L == 0) return;
  const int64_t first = a.col_start / 4 * 4;  // the first column of col_start's Philox block
  const int64_t chunks = (a.col_start + L - first + kChunk - 1) / kChunk;
  constexpr int64_t kTaskChunks = std::max<int64_t>(1, 4096 / kChunk);
  const int64_t tasks_per_row = (chunks + kTaskChunks - 1) / kTaskChunks;
  at::parallel_for(int64_t(0), a.rows * tasks_per_row, 1, [&](int64_t b, int64_t e) {
    __at_align__ float block[kChunk];
    for (int64_t t = b; t < e; ++t) {
      const int64_t j = t / tasks_per_row;
      const int64_t ch0 = (t % tasks_per_row) * kTaskChunks, ch1 = std::min(chunks, ch0 + kTaskChunks);
      const NoiseStream ns(static_cast<uint64_t>(a.keys[j]), static_cast<uint64_t>(a.offsets[j]));
      const uint64_t row = static_cast<uint64_t>(a.row_ctr[j]);
      float* o = out + j * L;
      for (int64_t ch = ch0; ch < ch1; ++ch) {
        const int64_t c = first + ch * kChunk;  // global column of block[0]
        fVec g[4];
        ns.row_block(row, static_cast<uint64_t>(c / 4), g);
        for (int k = 0; k < 4; ++k) g[k].store(block + k * kLanes);
        const int64_t lo = std::max(c, a.col_start), hi = std::min(c + kChunk, a.col_start + L);
        std::memcpy(o + (lo - a.col_start), block + (lo - c), static_cast<size_t>(hi - lo) * sizeof(float));
      }
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace gumbel_ext
