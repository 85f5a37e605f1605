// Device building blocks of the CUDA row kernel (row_kernel.cu): vector loads with cache hints, the block
// reduction of the row state, and the three steps the kernel takes per row: pass 1 (accumulate the state),
// finishing the row (loss, statistics, what pass 2 needs) and pass 2 (gradient and class statistics). The
// arithmetic itself is in ../../common/row_passes.h (per vector, tested on the host by tests/cpp) and
// ../../common/row_math.h (per row, shared with the CPU kernels); this file moves the data.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <cstdio>

#include "../../common/launch.h"
#include "../../common/row_passes.h"

namespace psl {
namespace row_device {

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Vec {
  scalar_t v[VEC];
};

// The integer type of a vector's size, for the cache-hinted loads and stores below.
template <int BYTES> struct Bits;
template <> struct Bits<2> { using type = unsigned short; };
template <> struct Bits<4> { using type = unsigned int; };
template <> struct Bits<8> { using type = unsigned long long; };
template <> struct Bits<16> { using type = uint4; };

// Pass 2 reads each logit for the last time and writes the gradient once: both are marked
// evict-first (.cs), so they do not push out of L2 the rows that pass 1 of other blocks has just read.
template <typename V>
__device__ __forceinline__ V load_last_use(const V* p) {
  using B = typename Bits<sizeof(V)>::type;
  const B raw = __ldcs(reinterpret_cast<const B*>(p));
  V v;
  memcpy(&v, &raw, sizeof(V));
  return v;
}
template <typename V>
__device__ __forceinline__ void store_streaming(V* p, const V& v) {
  using B = typename Bits<sizeof(V)>::type;
  B raw;
  memcpy(&raw, &v, sizeof(V));
  __stcs(reinterpret_cast<B*>(p), raw);
}

// VEC values of a vector as the accumulation type.
template <typename scalar_t, int VEC>
__device__ __forceinline__ void to_acc(const Vec<scalar_t, VEC>& v, opmath_t<scalar_t> (&out)[VEC]) {
  PSL_UNROLL
  for (int k = 0; k < VEC; ++k) out[k] = static_cast<opmath_t<scalar_t>>(v.v[k]);
}

// bf16 to fp32 is a shift of the bits: one instruction per element, two elements per 32-bit word.
template <int VEC>
__device__ __forceinline__ void to_acc(const Vec<c10::BFloat16, VEC>& v, float (&out)[VEC]) {
  if constexpr (VEC % 2 == 0) {
    PSL_UNROLL
    for (int i = 0; i < VEC / 2; ++i) {
      unsigned int bits;
      memcpy(&bits, &v.v[2 * i], sizeof(bits));
      out[2 * i] = __uint_as_float(bits << 16);
      out[2 * i + 1] = __uint_as_float(bits & 0xffff0000u);
    }
  } else {
    PSL_UNROLL
    for (int k = 0; k < VEC; ++k) out[k] = static_cast<float>(v.v[k]);
  }
}

// VEC consecutive values of an accumulation-type array (the class table): 16-byte loads where VEC fills
// them (the vectorised kernels, whose launch checks the alignment), else one by one.
template <int VEC, typename acc_t>
__device__ __forceinline__ void load_values(const acc_t* p, acc_t (&out)[VEC]) {
  constexpr int kPiece = 16 / sizeof(acc_t);
  if constexpr (VEC % kPiece == 0) {
    PSL_UNROLL
    for (int i = 0; i < VEC / kPiece; ++i) {
      const Vec<acc_t, kPiece> piece = reinterpret_cast<const Vec<acc_t, kPiece>*>(p)[i];
      PSL_UNROLL
      for (int k = 0; k < kPiece; ++k) out[i * kPiece + k] = piece.v[k];
    }
  } else {
    PSL_UNROLL
    for (int k = 0; k < VEC; ++k) out[k] = p[k];
  }
}

// dst[0..3] += v, dst[0..1] += v: one atomic on sm_90 and later, one per float before.
__device__ __forceinline__ void atomic_add(float* dst, float4 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4*>(dst), v);
#else
  atomicAdd(dst, v.x), atomicAdd(dst + 1, v.y), atomicAdd(dst + 2, v.z), atomicAdd(dst + 3, v.w);
#endif
}
__device__ __forceinline__ void atomic_add(float* dst, float2 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(dst), v);
#else
  atomicAdd(dst, v.x), atomicAdd(dst + 1, v.y);
#endif
}

// dst[k] += p[k] (class statistics; dst is aligned as the vectorised kernels' launch checks).
template <int VEC, typename acc_t>
__device__ __forceinline__ void add_to_row(float* dst, const acc_t (&p)[VEC]) {
  auto f = [&](int k) { return static_cast<float>(p[k]); };
  if constexpr (VEC % 4 == 0) {
    PSL_UNROLL
    for (int i = 0; i < VEC; i += 4) atomic_add(dst + i, make_float4(f(i), f(i + 1), f(i + 2), f(i + 3)));
  } else if constexpr (VEC % 2 == 0) {
    PSL_UNROLL
    for (int i = 0; i < VEC; i += 2) atomic_add(dst + i, make_float2(f(i), f(i + 1)));
  } else {
    PSL_UNROLL
    for (int k = 0; k < VEC; ++k) atomicAdd(dst + k, f(k));
  }
}

// The class-table mixture w = lam S[y] + (1 - lam) S[y2] of the VEC classes from c0 (one row read when
// y2 == y, as without mixing).
template <int VEC, typename acc_t>
__device__ __forceinline__ void table_vector(const RowTarget<acc_t>& t, int c0, acc_t (&w)[VEC]) {
  load_values(t.table_y + c0, w);
  if (t.table_y2 != t.table_y) {
    acc_t w2[VEC];
    load_values(t.table_y2 + c0, w2);
    PSL_UNROLL
    for (int k = 0; k < VEC; ++k) w[k] = t.mix(w[k], w2[k]);
  }
}

// A state from lane ^ mask of the warp: the fields in use only (kTable, kDense).
template <bool kTable, bool kDense, typename acc_t>
__device__ __forceinline__ RowState<acc_t> shfl_xor(const RowState<acc_t>& s, int mask) {
  RowState<acc_t> o = s;
  o.max = __shfl_xor_sync(0xffffffff, s.max, mask);
  o.sum = __shfl_xor_sync(0xffffffff, s.sum, mask);
  o.sum_sq = __shfl_xor_sync(0xffffffff, s.sum_sq, mask);
  o.max_vector = __shfl_xor_sync(0xffffffff, s.max_vector, mask);
  o.sum_x = __shfl_xor_sync(0xffffffff, s.sum_x, mask);
  if (kTable) {
    o.table_dot = __shfl_xor_sync(0xffffffff, s.table_dot, mask);
    o.table_mass = __shfl_xor_sync(0xffffffff, s.table_mass, mask);
  }
  if (kDense) {
    o.dense_max = __shfl_xor_sync(0xffffffff, s.dense_max, mask);
    o.dense_sum = __shfl_xor_sync(0xffffffff, s.dense_sum, mask);
    o.dense_dot = __shfl_xor_sync(0xffffffff, s.dense_dot, mask);
    o.dense_mass = __shfl_xor_sync(0xffffffff, s.dense_mass, mask);
  }
  return o;
}

// Merges the states of all threads of the block (blockDim.x a power of two, as threads_for gives); the
// result is valid in thread 0. `shared` holds one state per warp; the caller's next __syncthreads() must
// come before `shared` is written again.
template <bool kTable, bool kDense, typename acc_t>
__device__ RowState<acc_t> block_reduce(RowState<acc_t> s, RowState<acc_t>* shared, bool dense_logits) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int mask = 16; mask > 0; mask >>= 1) s.template merge<kTable, kDense>(shfl_xor<kTable, kDense>(s, mask), dense_logits);
  if (warps == 1) return s;
  if (lane == 0) shared[warp] = s;
  __syncthreads();
  if (warp == 0) {
    if (lane < warps) {
      s = shared[lane];
    } else {
      s.init();
    }
    for (int mask = warps >> 1; mask > 0; mask >>= 1) {
      s.template merge<kTable, kDense>(shfl_xor<kTable, kDense>(s, mask), dense_logits);
    }
  }
  return s;
}

// The target's class-table and per-sample parts of the vector at class c0 (x: its logits); kGuard: terms of
// weight 0 add 0 (weight_times in row_passes.h).
template <bool kGuard, typename scalar_t, int VEC, bool kTable, bool kDense>
__device__ __forceinline__ void add_target_parts(RowState<opmath_t<scalar_t>>& st, const RowJob<scalar_t>& job,
                                                 const RowTarget<opmath_t<scalar_t>>& t,
                                                 const opmath_t<scalar_t> (&x)[VEC], const scalar_t* dense_row, int c0) {
  using acc_t = opmath_t<scalar_t>;
  if constexpr (kTable) {
    acc_t w[VEC];
    table_vector(t, c0, w);
    add_weighted<kGuard>(st.table_dot, st.table_mass, x, w);
  }
  if constexpr (kDense) {
    acc_t d[VEC];
    to_acc(*reinterpret_cast<const Vec<scalar_t, VEC>*>(dense_row + c0), d);
    if (job.dense_logits) {
      add_dense_logits<kGuard>(st, x, d, job.inv_temperature);
    } else {
      add_weighted<kGuard>(st.dense_dot, st.dense_mass, x, d);
    }
  }
}

// Pass 1 over the n_vec vectors of a row, strided over the block's threads, U vectors per step.
template <typename scalar_t, int VEC, bool kTable, bool kDense>
__device__ __forceinline__ void pass1(RowState<opmath_t<scalar_t>>& st, const RowJob<scalar_t>& job,
                                      const RowTarget<opmath_t<scalar_t>>& t, const scalar_t* x_row,
                                      const scalar_t* dense_row, int n_vec) {
  using acc_t = opmath_t<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  const V* xv = reinterpret_cast<const V*>(x_row);
  // Loads in flight per thread: 32 to 64 bytes of logits; 32 with a table or dense part, whose own loads
  // would otherwise spill registers.
  constexpr int U = VEC >= 8 || kTable || kDense ? 2 : 4;
  const int stride = blockDim.x;
  int v = threadIdx.x;
  for (; v + (U - 1) * stride < n_vec; v += U * stride) {
    V buf[U];
    int index[U];
    PSL_UNROLL
    for (int u = 0; u < U; ++u) {
      index[u] = v + u * stride;
      buf[u] = xv[index[u]];
    }
    acc_t x[U][VEC];
    PSL_UNROLL
    for (int u = 0; u < U; ++u) to_acc(buf[u], x[u]);
    add_logits(st, x, index);
    PSL_UNROLL
    for (int u = 0; u < U; ++u) {
      add_target_parts<false, scalar_t, VEC, kTable, kDense>(st, job, t, x[u], dense_row, index[u] * VEC);
    }
  }
  for (; v < n_vec; v += stride) {
    const V buf = xv[v];  // one vector load; converting xv[v] in place would load element by element
    acc_t x[1][VEC];
    to_acc(buf, x[0]);
    const int index[1] = {v};
    add_logits(st, x, index);
    add_target_parts<false, scalar_t, VEC, kTable, kDense>(st, job, t, x[0], dense_row, v * VEC);
  }
}

// The target's sums of a row again, with the guard, for the rare row whose pass 1 met 0 * -inf
// (needs_guarded_sums): into `st`, which starts empty.
template <typename scalar_t, int VEC, bool kTable, bool kDense>
__device__ void guarded_target_sums(RowState<opmath_t<scalar_t>>& st, const RowJob<scalar_t>& job,
                                    const RowTarget<opmath_t<scalar_t>>& t, const scalar_t* x_row,
                                    const scalar_t* dense_row, int n_vec) {
  using acc_t = opmath_t<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  const V* xv = reinterpret_cast<const V*>(x_row);
  for (int v = threadIdx.x; v < n_vec; v += blockDim.x) {
    const V buf = xv[v];
    acc_t x[VEC];
    to_acc(buf, x);
    add_target_parts<true, scalar_t, VEC, kTable, kDense>(st, job, t, x, dense_row, v * VEC);
  }
}

template <typename acc_t>
struct RowShared {
  GradRow<acc_t> grad;
  bool correct;
};

// The first class holding the row's max (as torch.argmax): the max's first vector is in the state, the
// element within it is found here, once per row.
template <typename scalar_t, int VEC>
__device__ __forceinline__ int64_t row_argmax(const scalar_t* x_row, const RowState<opmath_t<scalar_t>>& st) {
  if (st.max_vector == kNoVector) return 0;
  const int c0 = st.max_vector * VEC;
  PSL_UNROLL
  for (int k = 0; k < VEC; ++k) {
    if (static_cast<opmath_t<scalar_t>>(x_row[c0 + k]) == st.max) return c0 + k;
  }
  return c0;
}

// Thread 0, once the row's state `st` is complete: writes the row's loss and statistics and puts in `out`
// what pass 2 needs.
template <typename scalar_t, int VEC>
__device__ void finish_row(const RowJob<scalar_t>& job, const RowTarget<opmath_t<scalar_t>>& t,
                           const RowState<opmath_t<scalar_t>>& st, int64_t row, RowShared<opmath_t<scalar_t>>& out) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t C = job.classes;
  const scalar_t* x_row = job.logits + row * C;
  const acc_t x_y = static_cast<acc_t>(x_row[t.y]);
  const RowTotals<acc_t> r = row_totals(st, x_y, C, job.dense_logits);
  const bool finite = isfinite(r.lse);
  const bool correct = finite && (job.calib_bins || job.class_sum) && row_argmax<scalar_t, VEC>(x_row, st) == t.y;
  if (job.loss) job.loss[row] = row_loss(t, r.sums, C, x_y, static_cast<acc_t>(x_row[t.y2]));
  if (job.calib_bins) {
    if (!finite) {
      atomicAdd(job.calib_sums + 2, 1.0);
    } else {
      const acc_t confidence = acc_t(1) / st.sum;  // exp(max - lse)
      const int64_t b = confidence_bin(confidence, job.n_bins);
      atomicAdd(job.calib_bins + b * 3 + 0, 1.0);
      atomicAdd(job.calib_bins + b * 3 + 1, static_cast<double>(confidence));
      if (correct) atomicAdd(job.calib_bins + b * 3 + 2, 1.0);
      atomicAdd(job.calib_sums + 0, static_cast<double>(lse_minus(r.base, r.log_sum, x_y)));  // NLL = lse - x_y
      const acc_t p_y = softmax_at(x_y, r.base, r.log_sum * acc_t(kLog2e));
      atomicAdd(job.calib_sums + 1, static_cast<double>(brier_score(st.sum_sq / (st.sum * st.sum), p_y)));
    }
  }
  if (job.class_sum && correct) atomicAdd(job.class_count + t.y, 1.0f);
  out.grad = grad_row(t, r, C, job.wants_grad() ? row_grad_factor(job, row) : acc_t(0));
  out.correct = correct;
}

// Pass 2 over the row (x_row, and dense_row with kDense), in reverse order: the end of the row, read last
// in pass 1, is the likeliest still in L2. kStats: add the softmax to stats_row (class statistics of a
// correctly classified row); kGrad: write the gradient into grad_row.
template <bool kStats, bool kGrad, typename scalar_t, int VEC, bool kTable, bool kDense>
__device__ __forceinline__ void pass2(const RowJob<scalar_t>& job, const RowTarget<opmath_t<scalar_t>>& t,
                                      const GradRow<opmath_t<scalar_t>>& r, const scalar_t* x_row,
                                      const scalar_t* dense_row, int n_vec, float* stats_row, scalar_t* grad_row) {
  using acc_t = opmath_t<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  const V* xv = reinterpret_cast<const V*>(x_row);
  const V* dv = reinterpret_cast<const V*>(dense_row);
  V* gv = reinterpret_cast<V*>(grad_row);
  const int stride = blockDim.x;
  const int last = n_vec - 1 - ((n_vec - 1 - static_cast<int>(threadIdx.x)) % stride);
  for (int w = n_vec > static_cast<int>(threadIdx.x) ? last : -1; w >= 0; w -= stride) {
    acc_t x[VEC], p[VEC];
    to_acc(load_last_use(xv + w), x);
    softmax_vector(x, r.base, r.log2_sum, p);
    if constexpr (kStats) add_to_row(stats_row + w * VEC, p);
    if constexpr (kGrad) {
      acc_t tw[VEC], d[VEC], g[VEC];
      if constexpr (kTable) table_vector(t, w * VEC, tw);
      if constexpr (kDense) to_acc(load_last_use(dv + w), d);
      grad_vector<VEC, kTable, kDense>(r, p, tw, d, job.dense_logits, job.inv_temperature, w * VEC, g);
      V out;
      PSL_UNROLL
      for (int k = 0; k < VEC; ++k) out.v[k] = static_cast<scalar_t>(g[k]);
      store_streaming(gv + w, out);
    }
  }
}

// An ignored row: loss 0 and a zero gradient.
template <typename scalar_t>
__device__ __forceinline__ void ignore_row(const RowJob<scalar_t>& job, int64_t row) {
  if (job.loss && threadIdx.x == 0) job.loss[row] = 0;
  if (job.grad) {
    for (int64_t c = threadIdx.x; c < job.classes; c += blockDim.x) job.grad[row * job.classes + c] = scalar_t(0);
  }
}

// An invalid row stops the kernel loudly, without a host synchronisation: a device-side assert, as
// PyTorch's own kernels fail (its message reaches stderr and the next CUDA call raises "device-side assert
// triggered"), after a line naming the row. `code` is the same in every thread of the block (it depends on
// the row only), so the barrier lets thread 0 print before any thread's assert ends the kernel.
__device__ __forceinline__ void fail_bad_row(int code, int64_t row) {
  if (threadIdx.x == 0) printf("pysoftlabel: row %lld: %s\n", (long long)row, row_error_message(code));
  __syncthreads();
  CUDA_KERNEL_ASSERT_MSG(false, row_error_message(code));
}

constexpr int kMaxThreads = 512;

inline int threads_for(int64_t n_vec) {
  // About eight vectors per thread, a whole number of warps, at most kMaxThreads (the register
  // budget of the kernels: 1024 threads fail to launch).
  int threads = 32;
  while (threads < kMaxThreads && threads * 8 < n_vec) threads *= 2;
  return threads;
}

inline bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace row_device
}  // namespace psl
