// The CUDA launch knobs read from the environment, once per process: GUMBEL_EXT_SPLIT
// (split_rows.cu) and GUMBEL_EXT_ALIGNED_ROWS (forward.cu, backward.cu), for A/B
// measurements on a GPU (docs/api.md; benchmarks/launch_ab.py times them).
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>

namespace gumbel_ext {
namespace cuda {

// The index of environment variable `name`'s value among `choices`: 0 (the first
// choice, the default) when it is unset or empty; any other value is an error.
inline int env_choice(const char* name, std::initializer_list<const char*> choices) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return 0;
  int i = 0;
  std::string names;
  for (const char* c : choices) {
    if (std::strcmp(v, c) == 0) return i;
    names += (i++ == 0 ? "" : ", ") + std::string(c);
  }
  TORCH_CHECK(false, name, " must be one of ", names, "; got '", v, "'");
}

// GUMBEL_EXT_ALIGNED_ROWS: "auto" (default) lets the warp-per-row launchers take the
// aligned-rows copy of their kernels wherever every row is 16-byte aligned (Note [Warp
// kernels' occupancy] in rows.cuh); "off" always runs the general copy (4 blocks per SM
// for the fp32 rows of 1024 columns instead of 8). Both give the same bits.
inline bool aligned_rows_copy_enabled() {
  static const bool enabled = env_choice("GUMBEL_EXT_ALIGNED_ROWS", {"auto", "off"}) == 0;
  return enabled;
}

}  // namespace cuda
}  // namespace gumbel_ext
