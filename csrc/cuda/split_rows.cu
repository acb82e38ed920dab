// Launchers of the split-row kernels (Note [Split rows] in split_rows.cuh): a cluster
// launch on devices with thread-block clusters (sm_90 and later), else a cooperative
// launch with a global exchange workspace (sm_80). Both are capturable in CUDA graphs
// (the workspace's counters are zeroed by a memset on the stream).
#include <c10/cuda/CUDACachingAllocator.h>

#include "launch_settings.h"
#include "split_backward_kernels.cuh"
#include "split_forward_kernels.cuh"
#include "split_rows.h"

namespace gumbel_ext {
namespace cuda {
namespace {

struct SplitDeviceInfo {
  SplitDevice caps;
  bool clusters = false;
};

// GUMBEL_EXT_SPLIT, read once per process: unset or "auto" splits as choose_split says;
// "off" never splits (the block-per-row kernels, for A/B measurements); "workspace" uses
// the sm_80 exchange on every device, so that one sm_90 GPU tests both exchanges.
enum class SplitSetting { kAuto, kOff, kWorkspace };  // in env_choice's order below

SplitSetting split_setting() {
  static const SplitSetting setting =
      static_cast<SplitSetting>(env_choice("GUMBEL_EXT_SPLIT", {"auto", "off", "workspace"}));
  return setting;
}

// Per device, read once: SMs, the shared memory opt-in, and whether clusters exist.
// Clusters stay at the portable size 8 (a non-portable 16 depends on how a GPC's SMs
// are laid out); the workspace exchange allows 16.
const SplitDeviceInfo& split_device() {
  static SplitDeviceInfo cache[C10_COMPILE_TIME_MAX_GPUS];
  static std::atomic<bool> ready[C10_COMPILE_TIME_MAX_GPUS] = {};
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  if (!ready[device].load(std::memory_order_acquire)) {
    SplitDeviceInfo info;
    int sms = 0, major = 0, cluster_launch = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&cluster_launch, cudaDevAttrClusterLaunch, device));
    info.clusters = major >= 9 && cluster_launch != 0 && split_setting() == SplitSetting::kAuto;
    info.caps.sms = sms;
    info.caps.smem_bytes = max_block_smem();
    info.caps.max_parts = split_setting() == SplitSetting::kOff ? 0 : info.clusters ? kMaxPortableSplit : kMaxSplit;
    cache[device] = info;  // the same values whichever thread writes them
    ready[device].store(true, std::memory_order_release);
  }
  return cache[device];
}

template <typename ArgsT>
using SplitKernel = void (*)(ArgsT, int64_t, int64_t, SplitShape, SplitWorkspace, Rng);

template <typename ArgsT>
void launch_ex(SplitKernel<ArgsT> kernel, int64_t blocks, const SplitShape& s, size_t smem,
               cudaLaunchAttribute attr, cudaStream_t stream, const ArgsT& args, int64_t rows,
               int64_t length, const SplitWorkspace& ws, const Rng& rng) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(static_cast<unsigned>(s.threads));
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = &attr;
  config.numAttrs = 1;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args, rows, length, s, ws, rng));
}

// Clusters: one cluster of P blocks per row (grid-stride past the grid cap). Workspace:
// as many groups of P blocks as can be resident at once, zeroed counters, cooperative.
template <typename ArgsT>
void launch_split(SplitKernel<ArgsT> cluster_kernel, SplitKernel<ArgsT> workspace_kernel, const ArgsT& args,
                  int64_t rows, int64_t length, const SplitShape& s, size_t smem, const Rng& rng,
                  cudaStream_t stream) {
  const SplitDeviceInfo& dev = split_device();
  cudaLaunchAttribute attr = {};
  if (dev.clusters) {
    allow_dynamic_smem(cluster_kernel, smem);
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = static_cast<unsigned>(s.parts);
    attr.val.clusterDim.y = 1;
    attr.val.clusterDim.z = 1;
    const int64_t groups = std::min(rows, kMaxGrid / s.parts);
    launch_ex(cluster_kernel, groups * s.parts, s, smem, attr, stream, args, rows, length, SplitWorkspace{}, rng);
    return;
  }
  allow_dynamic_smem(workspace_kernel, smem);
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, reinterpret_cast<const void*>(workspace_kernel), s.threads, smem));
  const int64_t groups = std::min(rows, int64_t{per_sm} * dev.caps.sms / s.parts);
  TORCH_INTERNAL_ASSERT(groups > 0, "gumbel_ext: a split row's blocks cannot be resident at once");
  const size_t counter_bytes = static_cast<size_t>(ceil_div(groups * 8, 16) * 16);
  const size_t partial_bytes = static_cast<size_t>(groups) * kSplitSlotSets * kMaxSplit * kSplitSlotBytes;
  // Freed when this returns: the caching allocator hands the block to later work on this
  // stream only, which runs after the kernel.
  const c10::DataPtr buffer = c10::cuda::CUDACachingAllocator::get()->allocate(counter_bytes + partial_bytes);
  SplitWorkspace ws;
  ws.counters = static_cast<unsigned long long*>(buffer.get());
  ws.partials = static_cast<unsigned char*>(buffer.get()) + counter_bytes;
  C10_CUDA_CHECK(cudaMemsetAsync(ws.counters, 0, counter_bytes, stream));
  attr.id = cudaLaunchAttributeCooperative;
  attr.val.cooperative = 1;
  launch_ex(workspace_kernel, groups * s.parts, s, smem, attr, stream, args, rows, length, ws, rng);
}

}  // namespace

template <typename scalar_t>
bool split_forward(const ForwardArgs<scalar_t>& args, int64_t rows, int64_t length, const Rng& rng,
                   cudaStream_t stream) {
  const SplitShape s = choose_split<scalar_t>(rows, length, split_device().caps);
  if (s.parts == 0) return false;
  launch_split<ForwardArgs<scalar_t>>(split_forward_kernel<scalar_t, true>, split_forward_kernel<scalar_t, false>,
                                      args, rows, length, s, split_smem<scalar_t>(s, args.mode == Mode::kSoft),
                                      rng, stream);
  return true;
}

template <typename scalar_t>
bool split_backward(const BackwardArgs<scalar_t>& args, int64_t rows, int64_t length, const Rng& rng,
                    cudaStream_t stream) {
  const SplitShape s = choose_split<scalar_t>(rows, length, split_device().caps);
  if (s.parts == 0) return false;
  const size_t smem = split_smem<scalar_t>(s, args.hard);
  if (args.grad_tau != nullptr) {
    launch_split<BackwardArgs<scalar_t>>(split_backward_kernel<scalar_t, true, true>,
                                         split_backward_kernel<scalar_t, true, false>, args, rows, length, s, smem,
                                         rng, stream);
  } else {
    launch_split<BackwardArgs<scalar_t>>(split_backward_kernel<scalar_t, false, true>,
                                         split_backward_kernel<scalar_t, false, false>, args, rows, length, s, smem,
                                         rng, stream);
  }
  return true;
}

#define GUMBEL_EXT_SPLIT_INSTANTIATE(T)                                                                    \
  template bool split_forward<T>(const ForwardArgs<T>&, int64_t, int64_t, const Rng&, cudaStream_t);   \
  template bool split_backward<T>(const BackwardArgs<T>&, int64_t, int64_t, const Rng&, cudaStream_t);
GUMBEL_EXT_SPLIT_INSTANTIATE(float)
GUMBEL_EXT_SPLIT_INSTANTIATE(double)
GUMBEL_EXT_SPLIT_INSTANTIATE(c10::Half)
GUMBEL_EXT_SPLIT_INSTANTIATE(c10::BFloat16)
#undef GUMBEL_EXT_SPLIT_INSTANTIATE

}  // namespace cuda
}  // namespace gumbel_ext
