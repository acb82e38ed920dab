// A tiny SIMT emulator: runs the project's CUDA kernels (csrc/cuda/*_kernels.cuh) on the
// CPU, so that their indexing, reductions and special-value handling are executed and
// compared with the CPU ops on a machine without a GPU.
//
// One std::thread per CUDA thread; the blocks of a grid run one after another, so a
// `static` local is exactly a block's __shared__ array. launch_groups runs groups of
// blocks at once instead -- a thread-block cluster, or a cooperative grid -- each block
// with its own dynamic shared memory (kernels run that way keep everything there), with
// the cluster's barrier, its distributed shared memory, and global atomics.
// __syncthreads and the warp shuffles are barriers over the block / the warp: a kernel
// that lets some lanes skip a shuffle or some threads skip a __syncthreads hangs here,
// and the barrier's timeout reports it. What it cannot show: GPU timing, the memory model, and the device libm's
// last-ulp differences (host expf/logf are used).
#pragma once

#include <cuda_runtime.h>  // dim3, uint3; __global__ & co. are defined empty for the host

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace simt {

class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}

  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (broken_) return;
    const uint64_t generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lock, std::chrono::seconds(60), [&] { return generation_ != generation || broken_; })) {
      broken_ = true;  // someone never arrived: a divergent barrier or shuffle
      deadlocks().fetch_add(1);
      cv_.notify_all();
    }
  }

  static std::atomic<int>& deadlocks() {
    static std::atomic<int> count{0};
    return count;
  }

 private:
  const int count_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  bool broken_ = false;
  std::mutex mutex_;
  std::condition_variable cv_;
};

struct Block {
  explicit Block(int threads) : threads(threads), sync(threads), slots(threads) {
    for (int w = 0; w * 32 < threads; ++w) warps.emplace_back(new Barrier(std::min(32, threads - w * 32)));
  }
  int threads;
  Barrier sync;
  std::vector<std::unique_ptr<Barrier>> warps;
  std::vector<uint64_t> slots;
};

inline thread_local Block* t_block = nullptr;
inline thread_local int t_linear = 0;
inline thread_local uint3 t_thread_idx, t_block_idx;
inline thread_local dim3 t_block_dim, t_grid_dim;

inline std::vector<unsigned char>& dynamic_shared() {
  static std::vector<unsigned char> bytes;
  return bytes;
}
// The dynamic shared memory of the calling thread's block.
inline thread_local unsigned char* t_dynamic = nullptr;

// Blocks that run together (launch_groups): a barrier over all their threads, and each
// block's dynamic shared memory, for cluster_map.
struct Cluster {
  Cluster(int blocks, int threads, size_t smem_bytes) : sync(blocks * threads), smem(blocks) {
    // Uninitialized shared memory reads as NaN / garbage, as it may on a GPU.
    for (auto& bytes : smem) bytes.assign(smem_bytes + 16, 0xFF);
  }
  Barrier sync;
  std::vector<std::vector<unsigned char>> smem;
};
inline thread_local Cluster* t_cluster = nullptr;
inline thread_local int t_cluster_rank = 0;

// Runs kernel<<<grid, block, smem>>>(args...) to completion.
template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, Args... args) {
  // Uninitialized shared memory reads as NaN / garbage, as it may on a GPU.
  dynamic_shared().assign(smem + 16, 0xFF);
  const int threads = static_cast<int>(block.x * block.y * block.z);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block ctx(threads);
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (int t = 0; t < threads; ++t) {
          pool.emplace_back([&, t] {
            t_block = &ctx;
            t_dynamic = dynamic_shared().data();
            t_cluster = nullptr;
            t_linear = t;
            t_thread_idx = uint3{static_cast<unsigned>(t % block.x),
                                 static_cast<unsigned>(t / block.x % block.y),
                                 static_cast<unsigned>(t / (block.x * block.y))};
            t_block_idx = uint3{bx, by, bz};
            t_block_dim = block;
            t_grid_dim = grid;
            kernel(args...);
          });
        }
        for (auto& th : pool) th.join();
      }
}

// Runs kernel<<<grid, block, smem>>>(args...) for a 1-D grid whose blocks run `group`
// at a time, all threads of a group concurrently: group = the cluster size for a
// cluster launch (block rank = blockIdx.x % group), or gridDim.x for a cooperative grid
// whose blocks spin-wait for each other. Each block has its own dynamic shared memory.
template <typename... KernelArgs, typename... Args>
void launch_groups(void (*kernel)(KernelArgs...), unsigned grid, dim3 block, size_t smem, unsigned group,
                   Args... args) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  for (unsigned first = 0; first < grid; first += group) {
    const unsigned blocks = std::min(group, grid - first);
    Cluster cluster(static_cast<int>(blocks), threads, smem);
    std::vector<std::unique_ptr<Block>> ctx;
    for (unsigned b = 0; b < blocks; ++b) ctx.emplace_back(new Block(threads));
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(blocks) * threads);
    for (unsigned b = 0; b < blocks; ++b)
      for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, b, t] {
          t_block = ctx[b].get();
          t_dynamic = cluster.smem[b].data();
          t_cluster = &cluster;
          t_cluster_rank = static_cast<int>(b);
          t_linear = t;
          t_thread_idx = uint3{static_cast<unsigned>(t % block.x), static_cast<unsigned>(t / block.x % block.y),
                               static_cast<unsigned>(t / (block.x * block.y))};
          t_block_idx = uint3{first + b, 0, 0};
          t_block_dim = block;
          t_grid_dim = dim3(grid);
          kernel(args...);
        });
      }
    for (auto& th : pool) th.join();
  }
}

// The cluster API of csrc/cuda/split_rows.cuh: a barrier over every thread of the
// cluster (it orders all memory, as the real one's release / acquire does), and the
// address of the same shared-memory byte in block `rank`.
inline void cluster_sync() { t_cluster->sync.wait(); }
inline int cluster_rank() { return t_cluster_rank; }
inline const void* cluster_map(const void* p, int rank) {
  const unsigned char* own = t_cluster->smem[t_cluster_rank].data();
  return t_cluster->smem[rank].data() + (static_cast<const unsigned char*>(p) - own);
}
// Global atomics of the workspace exchange, with the C++ memory model's release /
// acquire (the device's red.release.gpu / ld.acquire.gpu).
inline void atomic_add_release(unsigned long long* p, unsigned long long v) {
  __atomic_fetch_add(p, v, __ATOMIC_RELEASE);
}
inline unsigned long long load_acquire(const unsigned long long* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
inline void backoff() { std::this_thread::yield(); }

// The kernels' 16-byte global accesses (Note [Per-row vector loads]), counted, with
// those at an address that is not 16-byte aligned -- a fault on a GPU, silently fine on
// the host -- counted apart.
// The addresses are kept too, so that a test can check which of a row's 16-byte
// vectors went through one access (Note [Misaligned rows]).
struct VectorAccesses {
  std::atomic<int64_t> aligned{0}, misaligned{0};
  std::mutex mutex;
  std::vector<uintptr_t> addresses;
};
inline VectorAccesses& vector_accesses() {
  static VectorAccesses counts;
  return counts;
}
// One access of `bytes` (16, or 32: two 16-byte accesses on the GPU) at p.
inline void vector_access(const void* p, size_t bytes = 16) {
  VectorAccesses& counts = vector_accesses();
  for (size_t at = 0; at < bytes; at += 16) {
    const uintptr_t address = reinterpret_cast<uintptr_t>(p) + at;
    (address % 16 == 0 ? counts.aligned : counts.misaligned).fetch_add(1);
    std::lock_guard<std::mutex> lock(counts.mutex);
    counts.addresses.push_back(address);
  }
}

}  // namespace simt

#define threadIdx (::simt::t_thread_idx)
#define blockIdx (::simt::t_block_idx)
#define blockDim (::simt::t_block_dim)
#define gridDim (::simt::t_grid_dim)
#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)

inline void __syncthreads() { simt::t_block->sync.wait(); }

namespace simt {
// A warp shuffle: every lane of the warp posts `value`, then takes lane src_of(lane)'s
// (or keeps its own when src_of says -1 or names a lane past the block).
template <typename T, typename Src>
T shuffle(T value, Src src_of) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of at most 8 bytes");
  Block& b = *t_block;
  const int lane = t_linear % 32, warp = t_linear / 32;
  uint64_t mine = 0;
  std::memcpy(&mine, &value, sizeof(T));
  b.slots[t_linear] = mine;
  b.warps[warp]->wait();
  const int src = src_of(lane);
  T result = value;
  if (src >= 0 && warp * 32 + src < b.threads) {
    const uint64_t theirs = b.slots[warp * 32 + src];
    std::memcpy(&result, &theirs, sizeof(T));
  }
  b.warps[warp]->wait();
  return result;
}
}  // namespace simt

// Every lane of the warp must call it (the kernels use the full mask).
template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T value, int lane_mask, int width) {
  return simt::shuffle(value, [&](int lane) {
    const int src = lane ^ lane_mask;
    return src / width == lane / width ? src : -1;
  });
}

// Lane srcLane % width of the caller's group of `width` lanes; every lane of the warp
// must call it.
template <typename T>
T __shfl_sync(unsigned /*mask*/, T value, int src_lane, int width) {
  return simt::shuffle(value, [&](int lane) { return lane / width * width + src_lane % width; });
}

// Whether `predicate` holds on any lane of the warp; every lane must call it.
inline int __any_sync(unsigned /*mask*/, int predicate) {
  simt::Block& b = *simt::t_block;
  const int warp = simt::t_linear / 32;
  b.slots[simt::t_linear] = predicate != 0;
  b.warps[warp]->wait();
  bool any = false;
  for (int l = warp * 32; l < std::min(warp * 32 + 32, b.threads); ++l) any = any || b.slots[l] != 0;
  b.warps[warp]->wait();
  return any;
}

#define GUMBEL_EXT_HOST_EMULATION 1
inline unsigned char* dynamic_smem() { return simt::t_dynamic; }
