// Device building blocks of the CUDA row kernel (row_kernel.cu): vector loads with cache hints, the
// online-softmax state of a row and its block reduction, and the three steps the kernel takes per row:
// pass 1 (accumulate the state), finishing the row (loss, statistics, what pass 2 needs) and pass 2
// (gradient and class statistics). The per-element arithmetic itself is in ../../common/row_math.h,
// shared with the CPU kernels.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <cstdio>

#include "../../common/launch.h"

namespace psl {
namespace row_device {

template <typename acc_t> __device__ __forceinline__ acc_t fast_exp(acc_t x) { return exp(x); }
template <> __device__ __forceinline__ float fast_exp<float>(float x) { return __expf(x); }
template <typename acc_t> __device__ __forceinline__ acc_t neg_inf() { return -INFINITY; }

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

// One thread's (and, merged, one block's) view of a row after pass 1.
template <typename acc_t>
struct RowState {
  acc_t max, sum, sum_sq;       // online softmax of the logits
  int64_t argmax;
  acc_t shifted_sum;            // sum (x - x_y)
  acc_t table_dot, table_mass;  // sum T (x - x_y), sum T
  acc_t dense_max, dense_sum;   // online softmax of dense / temperature (dense logits)
  acc_t dense_dot, dense_mass;  // sum D (x - x_y), sum D  (for dense logits: unnormalised, over dense_max)

  __device__ void init() {
    max = neg_inf<acc_t>(); sum = 0; sum_sq = 0; argmax = 0;
    shifted_sum = 0; table_dot = 0; table_mass = 0;
    dense_max = neg_inf<acc_t>(); dense_sum = 0; dense_dot = 0; dense_mass = 0;
  }

  // exp(from - to), 0 when `from` is -inf (nothing accumulated yet).
  static __device__ __forceinline__ acc_t rescale(acc_t from, acc_t to) {
    return from == neg_inf<acc_t>() ? acc_t(0) : fast_exp(from - to);
  }

  __device__ void merge(const RowState& o, bool dense_logits) {
    if (o.max > max || (o.max == max && o.argmax < argmax)) argmax = o.argmax;
    const acc_t m = max > o.max ? max : o.max;
    if (m != neg_inf<acc_t>()) {
      const acc_t a = rescale(max, m), b = rescale(o.max, m);
      sum = sum * a + o.sum * b;
      sum_sq = sum_sq * a * a + o.sum_sq * b * b;
      max = m;
    } else {
      sum += o.sum;  // NaN propagates
      sum_sq += o.sum_sq;
    }
    shifted_sum += o.shifted_sum;
    table_dot += o.table_dot;
    table_mass += o.table_mass;
    if (dense_logits) {
      const acc_t dm = dense_max > o.dense_max ? dense_max : o.dense_max;
      if (dm != neg_inf<acc_t>()) {
        const acc_t a = rescale(dense_max, dm), b = rescale(o.dense_max, dm);
        dense_sum = dense_sum * a + o.dense_sum * b;
        dense_dot = dense_dot * a + o.dense_dot * b;
        dense_max = dm;
      }
    } else {
      dense_dot += o.dense_dot;
      dense_mass += o.dense_mass;
    }
  }

  __device__ RowState shfl_xor(int lane_mask) const {
    RowState o;
    o.max = __shfl_xor_sync(0xffffffff, max, lane_mask);
    o.sum = __shfl_xor_sync(0xffffffff, sum, lane_mask);
    o.sum_sq = __shfl_xor_sync(0xffffffff, sum_sq, lane_mask);
    o.argmax = __shfl_xor_sync(0xffffffff, argmax, lane_mask);
    o.shifted_sum = __shfl_xor_sync(0xffffffff, shifted_sum, lane_mask);
    o.table_dot = __shfl_xor_sync(0xffffffff, table_dot, lane_mask);
    o.table_mass = __shfl_xor_sync(0xffffffff, table_mass, lane_mask);
    o.dense_max = __shfl_xor_sync(0xffffffff, dense_max, lane_mask);
    o.dense_sum = __shfl_xor_sync(0xffffffff, dense_sum, lane_mask);
    o.dense_dot = __shfl_xor_sync(0xffffffff, dense_dot, lane_mask);
    o.dense_mass = __shfl_xor_sync(0xffffffff, dense_mass, lane_mask);
    return o;
  }
};

// Merges every thread's state; the result is valid in all threads. `shared` holds one state per warp.
template <typename acc_t>
__device__ RowState<acc_t> block_reduce(RowState<acc_t> s, RowState<acc_t>* shared, bool dense_logits) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int mask = 16; mask > 0; mask >>= 1) s.merge(s.shfl_xor(mask), dense_logits);
  if (lane == 0) shared[warp] = s;
  __syncthreads();
  if (warp == 0) {
    if (lane < warps) {
      s = shared[lane];
    } else {
      s.init();
    }
    for (int mask = 16; mask > 0; mask >>= 1) s.merge(s.shfl_xor(mask), dense_logits);
    if (lane == 0) shared[0] = s;
  }
  __syncthreads();
  s = shared[0];
  __syncthreads();  // shared is reused by the next row
  return s;
}

// Pass 1 over VEC consecutive logits starting at class c0. kTable / kDense: the target has a class
// table / a per-sample part (kernels without them carry no code, and fewer registers, for them).
template <typename scalar_t, int VEC, bool kTable, bool kDense>
__device__ __forceinline__ void accumulate(RowState<opmath_t<scalar_t>>& st, const RowJob<scalar_t>& job,
                                           const RowTarget<opmath_t<scalar_t>>& t,
                                           const Vec<scalar_t, VEC>& xv, const scalar_t* dense_row,
                                           int64_t c0, opmath_t<scalar_t> x_y) {
  using acc_t = opmath_t<scalar_t>;
  acc_t x[VEC];
  acc_t local_max = neg_inf<acc_t>();
  int local_arg = 0;
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    x[k] = static_cast<acc_t>(xv.v[k]);
    if (x[k] > local_max) { local_max = x[k]; local_arg = k; }
  }
  if (local_max > st.max) {
    const acc_t a = RowState<acc_t>::rescale(st.max, local_max);
    st.sum *= a;
    st.sum_sq *= a * a;
    st.max = local_max;
    st.argmax = c0 + local_arg;
  }
  const acc_t m = st.max == neg_inf<acc_t>() ? acc_t(0) : st.max;
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const acc_t e = fast_exp(x[k] - m);
    st.sum += e;
    st.sum_sq += e * e;
    st.shifted_sum += x[k] - x_y;
  }
  if (kTable && t.table_y) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const acc_t w = t.table_at(c0 + k);
      st.table_dot += w * (x[k] - x_y);
      st.table_mass += w;
    }
  }
  if (kDense) {
    acc_t d[VEC];
    const Vec<scalar_t, VEC> dv = *reinterpret_cast<const Vec<scalar_t, VEC>*>(dense_row + c0);
#pragma unroll
    for (int k = 0; k < VEC; ++k) d[k] = static_cast<acc_t>(dv.v[k]);
    if (job.dense_logits) {
      acc_t dmax = neg_inf<acc_t>();
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        d[k] *= job.inv_temperature;
        dmax = d[k] > dmax ? d[k] : dmax;
      }
      if (dmax > st.dense_max) {
        const acc_t a = RowState<acc_t>::rescale(st.dense_max, dmax);
        st.dense_sum *= a;
        st.dense_dot *= a;
        st.dense_max = dmax;
      }
      const acc_t dm = st.dense_max == neg_inf<acc_t>() ? acc_t(0) : st.dense_max;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const acc_t e = fast_exp(d[k] - dm);
        st.dense_sum += e;
        st.dense_dot += e * (x[k] - x_y);
      }
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        st.dense_dot += d[k] * (x[k] - x_y);
        st.dense_mass += d[k];
      }
    }
  }
}

template <typename acc_t>
struct RowShared {
  acc_t lse, mass, dense_lse, factor;
  bool correct;
};

// Pass 1 over the n_vec vectors of a row, strided over the block's threads.
template <typename scalar_t, int VEC, bool kTable, bool kDense>
__device__ __forceinline__ void pass1(RowState<opmath_t<scalar_t>>& st, const RowJob<scalar_t>& job,
                                      const RowTarget<opmath_t<scalar_t>>& t, const scalar_t* x_row,
                                      const scalar_t* dense_row, int64_t n_vec, opmath_t<scalar_t> x_y) {
  using V = Vec<scalar_t, VEC>;
  const V* xv = reinterpret_cast<const V*>(x_row);
  constexpr int UNROLL = VEC >= 8 ? 2 : 4;  // loads in flight per thread: 32 to 64 bytes
  int64_t v = threadIdx.x;
  for (; v + (UNROLL - 1) * blockDim.x < n_vec; v += UNROLL * blockDim.x) {
    V buf[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) buf[u] = xv[v + u * blockDim.x];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      accumulate<scalar_t, VEC, kTable, kDense>(st, job, t, buf[u], dense_row, (v + u * blockDim.x) * VEC, x_y);
    }
  }
  for (; v < n_vec; v += blockDim.x) {
    const V x = xv[v];  // one vector load; passing xv[v] by reference would load element by element
    accumulate<scalar_t, VEC, kTable, kDense>(st, job, t, x, dense_row, v * VEC, x_y);
  }
}

// Thread 0, once the row's state `st` is complete: writes the row's loss and statistics and puts in `out`
// what pass 2 needs.
template <typename scalar_t>
__device__ void finish_row(const RowJob<scalar_t>& job, const RowTarget<opmath_t<scalar_t>>& t,
                           const RowState<opmath_t<scalar_t>>& st, int64_t row, opmath_t<scalar_t> x_y,
                           RowShared<opmath_t<scalar_t>>& out) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t C = job.classes;
  RowSums<acc_t> sums;
  sums.shifted_sum = st.shifted_sum;
  sums.table_dot = st.table_dot;
  sums.table_mass = st.table_mass;
  acc_t dense_lse = 0;
  if (job.dense_logits) {
    sums.dense_dot = st.dense_dot / st.dense_sum;
    sums.dense_mass = 1;
    dense_lse = st.dense_max + log(st.dense_sum);
  } else {
    sums.dense_dot = st.dense_dot;
    sums.dense_mass = st.dense_mass;
  }
  const acc_t lse = st.max + log(st.sum);
  const bool finite = isfinite(lse);
  const bool correct = finite && st.argmax == t.y;
  if (job.loss) {
    const acc_t x_y2 = static_cast<acc_t>(job.logits[row * C + t.y2]);
    job.loss[row] = row_loss(t, sums, C, lse, x_y, x_y2);
  }
  if (job.calib_bins) {
    if (!finite) {
      atomicAdd(job.calib_sums + 2, 1.0);
    } else {
      const acc_t confidence = acc_t(1) / st.sum;
      const int64_t b = confidence_bin(confidence, job.n_bins);
      atomicAdd(job.calib_bins + b * 3 + 0, 1.0);
      atomicAdd(job.calib_bins + b * 3 + 1, static_cast<double>(confidence));
      if (correct) atomicAdd(job.calib_bins + b * 3 + 2, 1.0);
      atomicAdd(job.calib_sums + 0, static_cast<double>(lse - x_y));
      const acc_t p_y = fast_exp(x_y - lse);
      atomicAdd(job.calib_sums + 1, static_cast<double>(brier_score(st.sum_sq / (st.sum * st.sum), p_y)));
    }
  }
  if (job.class_sum && correct) atomicAdd(job.class_count + t.y, 1.0f);
  out.lse = lse;
  out.mass = target_mass(t, sums, C);
  out.dense_lse = dense_lse;
  out.factor = job.wants_grad() ? row_grad_factor(job, row) : acc_t(0);
  out.correct = correct;
}

// Pass 2 over one vector at class c0 (x: its logits, d: its dense values with kDense): the gradient
// elements where `grad`, and the softmax added to `stats_row` (class statistics) when it is set.
template <typename scalar_t, int VEC, bool kTable, bool kDense>
__device__ __forceinline__ Vec<scalar_t, VEC> pass2_vector(const RowJob<scalar_t>& job,
                                                           const RowTarget<opmath_t<scalar_t>>& t,
                                                           const RowShared<opmath_t<scalar_t>>& s,
                                                           const Vec<scalar_t, VEC>& x, const Vec<scalar_t, VEC>& d,
                                                           int64_t c0, float* stats_row, bool grad) {
  using acc_t = opmath_t<scalar_t>;
  Vec<scalar_t, VEC> out;
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const int64_t c = c0 + k;
    const acc_t p = fast_exp(static_cast<acc_t>(x.v[k]) - s.lse);
    if (stats_row) atomicAdd(stats_row + c, static_cast<float>(p));
    if (grad) {
      acc_t target = t.template at<kTable>(c);
      if (kDense) {
        const acc_t dk = static_cast<acc_t>(d.v[k]);
        target += t.dense_weight * (job.dense_logits ? fast_exp(dk * job.inv_temperature - s.dense_lse) : dk);
      }
      out.v[k] = static_cast<scalar_t>(grad_element(p, s.mass, target, s.factor));
    }
  }
  return out;
}

// An ignored row: loss 0 and a zero gradient.
template <typename scalar_t>
__device__ __forceinline__ void ignore_row(const RowJob<scalar_t>& job, int64_t row) {
  if (job.loss && threadIdx.x == 0) job.loss[row] = 0;
  if (job.grad) {
    for (int64_t c = threadIdx.x; c < job.classes; c += blockDim.x) job.grad[row * job.classes + c] = scalar_t(0);
  }
}

// An invalid row stops the kernel loudly, without a host synchronisation.
__device__ __forceinline__ void trap_bad_row(int code, int64_t row) {
  if (threadIdx.x == 0) printf("pysoftlabel: row %lld: %s\n", (long long)row, row_error_message(code));
  __trap();
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
