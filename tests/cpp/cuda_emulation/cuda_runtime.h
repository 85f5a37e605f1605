// The CUDA that csrc/soft_ce/cuda/ uses, emulated on the host, so that the C++ tests run the CUDA row kernels'
// own text (row_kernel.cuh) where no GPU is lent: this folder comes first on the test's include path, so
// row_device.cuh's <cuda_runtime.h> is this file.
//
// A launch runs the grid's blocks one after another on one std::thread per thread of a block:
// __syncthreads is a barrier of the block, __shfl_xor_sync an exchange through a barrier of the warp,
// __shared__ variables are statics (one block runs at a time), atomicAdd is std::atomic_ref. A kernel that
// lets some threads of a block skip a __syncthreads, or some lanes of a warp skip a shuffle, goes wrong here
// as on a GPU: wrong results, or a hang that ctest's timeout ends. What it cannot show is what depends on the
// hardware: timing, the memory model of a warp without its barriers, the sm_90 code paths and the device's
// approximate exp2 (row_passes.h).
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidConfiguration = 9, cudaErrorAssert = 710 };

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

using std::isfinite;  // CUDA's math functions are global

namespace cuda_emulation {

constexpr int kWarp = 32;

// The barriers and the shuffle slots of the block that runs.
struct Block {
  explicit Block(int threads) : all(threads), slots(threads) {
    for (int w = 0; w < threads / kWarp; ++w) warps.push_back(std::make_unique<std::barrier<>>(kWarp));
  }
  std::barrier<> all;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<std::uint64_t> slots;  // one value per thread, for __shfl_xor_sync
};
inline Block* block = nullptr;

// A device-side assert: thrown in the thread, it ends the thread's kernel.
struct DeviceAssert : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The first device-side assert of the last launch that had one: its message and the block that fired it.
inline std::string assert_message;
inline std::int64_t assert_block = -1;

// launch(kernel, blocks, threads, args...), as row_kernel.cuh's launches take it: one std::thread per thread of
// a block, running the blocks in turn with a barrier between them (a block's shared memory is the next one's).
// Returns cudaErrorAssert after a device-side assert; the blocks after it do not run, as a failed kernel is
// abandoned.
struct Launch {
  template <typename... Params, typename... Args>
  cudaError_t operator()(void (*kernel)(Params...), std::int64_t blocks, int threads, const Args&... args) const {
    if (threads < kWarp || threads > 1024 || threads % kWarp != 0 || blocks < 1) {
      return cudaErrorInvalidConfiguration;  // the emulated warps are whole
    }
    blockDim = {static_cast<unsigned>(threads)};
    gridDim = {static_cast<unsigned>(blocks)};
    Block state(threads);
    block = &state;
    std::atomic<bool> stop{false};
    std::vector<std::string> failed(threads);
    std::vector<std::int64_t> failed_block(threads, blocks);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        threadIdx = {static_cast<unsigned>(t)};
        for (std::int64_t b = 0; b < blocks; ++b) {
          blockIdx = {static_cast<unsigned>(b)};
          try {
            kernel(args...);
          } catch (const DeviceAssert& e) {
            failed[t] = e.what();
            failed_block[t] = b;
            stop = true;
            // A stopped thread must not leave the others of its block or warp waiting.
            state.all.arrive_and_drop();
            state.warps[t / kWarp]->arrive_and_drop();
            return;
          }
          state.all.arrive_and_wait();
          if (stop) return;
        }
      });
    }
    for (std::thread& thread : pool) thread.join();
    block = nullptr;
    int first = 0;
    for (int t = 1; t < threads; ++t) first = failed_block[t] < failed_block[first] ? t : first;
    if (failed_block[first] == blocks) return cudaSuccess;
    assert_message = failed[first];
    assert_block = failed_block[first];
    return cudaErrorAssert;
  }
};

}  // namespace cuda_emulation

#undef CUDA_KERNEL_ASSERT_MSG
#define CUDA_KERNEL_ASSERT_MSG(cond, msg) \
  do {                                    \
    if (!(cond)) throw ::cuda_emulation::DeviceAssert(msg); \
  } while (0)

inline void __syncthreads() { cuda_emulation::block->all.arrive_and_wait(); }

// Every lane of the warp must take part (the kernels pass the full mask).
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(std::uint64_t), "a shuffle moves at most 8 bytes");
  if (mask != 0xffffffffu) throw std::logic_error("__shfl_xor_sync: the emulation takes the full mask only");
  cuda_emulation::Block& b = *cuda_emulation::block;
  const unsigned t = threadIdx.x, first = t / cuda_emulation::kWarp * cuda_emulation::kWarp;
  std::memcpy(&b.slots[t], &value, sizeof(T));
  b.warps[t / cuda_emulation::kWarp]->arrive_and_wait();
  T out;
  std::memcpy(&out, &b.slots[first + ((t - first) ^ static_cast<unsigned>(lane_mask))], sizeof(T));
  b.warps[t / cuda_emulation::kWarp]->arrive_and_wait();  // nobody writes a slot before every lane has read
  return out;
}

inline float atomicAdd(float* address, float value) { return std::atomic_ref<float>(*address).fetch_add(value); }
inline double atomicAdd(double* address, double value) {
  return std::atomic_ref<double>(*address).fetch_add(value);
}

// Cache-hinted loads and stores: plain ones here.
template <typename T>
T __ldcs(const T* address) {
  return *address;
}
template <typename T>
void __stcs(T* address, T value) {
  *address = value;
}

inline float __uint_as_float(unsigned bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}
