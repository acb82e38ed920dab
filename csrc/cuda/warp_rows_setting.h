// GUMBEL_EXT_ALIGNED_ROWS: whether the warp-per-row launchers (forward.cu, backward.cu)
// may take the aligned-rows copy of their kernels (Note [Warp kernels' occupancy] in
// rows.cuh). For A/B measurements on a GPU: both copies give the same bits.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace gumbel_ext {
namespace cuda {

// Read once per process: unset or "auto" takes the aligned-rows copy wherever every row
// is 16-byte aligned; "off" always runs the general copy (4 blocks per SM for the fp32
// rows of 1024 columns instead of 8).
inline bool aligned_rows_copy_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("GUMBEL_EXT_ALIGNED_ROWS");
    if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return true;
    TORCH_CHECK(std::strcmp(v, "off") == 0, "GUMBEL_EXT_ALIGNED_ROWS must be auto or off, got '", v, "'");
    return false;
  }();
  return enabled;
}

}  // namespace cuda
}  // namespace gumbel_ext
