// The CUDA row kernels (one block per row, grid-stride over rows) and the sequence of launches that runs a
// RowJob, written over a `launch` callable so that one text serves the GPU (row_kernel.cu launches with
// <<<>>>) and the host emulation of tests/cpp (cuda_emulation/), which runs each block's threads as
// std::threads and so executes this very code, barriers and shuffles included, on every CI run.
//
// Pass 1 reads the row once with 16-byte loads where alignment allows and keeps an online softmax state (max,
// sum of exp, sum of exp^2, the vector of the argmax; Milakov & Gimelshein, arXiv:1805.02867) plus the target's
// sums (../../common/row_passes.h); a block reduction merges the threads' states. Pass 2 runs only where
// needed (gradient, or class statistics of a correctly classified row) and reads the row in reverse order, so
// the part pass 1 read last is still in L2.
//
// No host synchronisation: an invalid row fails a device-side assert that names it.
#pragma once

#include <algorithm>

#include "row_device.cuh"

namespace psl {
namespace row_device {

// Sum over a block of blockDim.x <= 1024 threads; the result is valid in thread 0.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v) {
  __shared__ acc_t partial[32];
  for (int mask = 16; mask > 0; mask >>= 1) v += __shfl_xor_sync(0xffffffff, v, mask);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? partial[threadIdx.x] : acc_t(0);
  if (threadIdx.x < 32) {
    for (int mask = 16; mask > 0; mask >>= 1) v += __shfl_xor_sync(0xffffffff, v, mask);
  }
  return v;
}

// Before the rows: how many count, and the gradient scale of the reduction.
template <typename scalar_t>
__global__ void count_valid_kernel(RowJob<scalar_t> job) {
  using acc_t = opmath_t<scalar_t>;
  acc_t valid = 0;
  for (int64_t row = threadIdx.x; row < job.rows; row += blockDim.x) valid += row_ignored(job, row) ? 0 : 1;
  valid = block_sum(valid);
  if (threadIdx.x == 0) {
    job.valid_and_scale[0] = valid;
    job.valid_and_scale[1] = reduction_grad_scale(valid, job.reduction);
  }
}

// After the rows: the reduced loss, in a fixed order (deterministic).
template <typename scalar_t>
__global__ void reduce_loss_kernel(RowJob<scalar_t> job) {
  using acc_t = opmath_t<scalar_t>;
  acc_t sum = 0;
  for (int64_t row = threadIdx.x; row < job.rows; row += blockDim.x) sum += job.loss[row];
  sum = block_sum(sum);
  if (threadIdx.x == 0) job.loss_reduced[0] = reduce_loss(sum, job.valid_and_scale[0], job.reduction);
}

template <typename scalar_t, int VEC, bool kTable, bool kDense>
__global__ void __launch_bounds__(kMaxThreads, 2) row_kernel(RowJob<scalar_t> job) {
  using acc_t = opmath_t<scalar_t>;
  __shared__ RowState<acc_t> reduce_buf[32];
  __shared__ RowShared<acc_t> shared;
  __shared__ bool guard_row;
  const int64_t C = job.classes;
  const int n_vec = static_cast<int>(C / VEC);  // C <= kMaxClasses (checked on the host)

  for (int64_t row = blockIdx.x; row < job.rows; row += gridDim.x) {
    const scalar_t* x_row = job.logits + row * C;
    const scalar_t* dense_row = kDense ? job.dense + row * C : nullptr;
    if (row_ignored(job, row)) {
      ignore_row(job, row);
      continue;
    }
    RowTarget<acc_t> t;
    const int code = make_row_target(job, row, t);
    if (code != kRowOk) fail_bad_row(code, row);

    RowState<acc_t> st;
    st.init();
    pass1<scalar_t, VEC, kTable, kDense>(st, job, t, x_row, dense_row, n_vec);
    st = block_reduce<kTable, kDense>(st, reduce_buf, job.dense_logits);
    if constexpr (kTable || kDense) {
      // A masked class (-inf logit) that the target gives no weight made the target's sums NaN (0 * -inf):
      // sum them again with the guard. Rare, so other rows pay a flag and a barrier, not a select per logit.
      if (threadIdx.x == 0) guard_row = needs_guarded_sums(st);
      __syncthreads();
      if (guard_row) {  // the same value in every thread of the block
        RowState<acc_t> parts;
        parts.init();
        guarded_target_sums<scalar_t, VEC, kTable, kDense>(parts, job, t, x_row, dense_row, n_vec);
        parts = block_reduce<kTable, kDense>(parts, reduce_buf, job.dense_logits);
        if (threadIdx.x == 0) st.take_target_sums(parts);
      }
    }
    if (threadIdx.x == 0) finish_row<scalar_t, VEC>(job, t, st, row, shared);
    __syncthreads();
    const RowShared<acc_t> s = shared;
    float* stats_row = job.class_sum != nullptr && s.correct ? job.class_sum + t.y * C : nullptr;
    scalar_t* grad_row = job.grad ? job.grad + row * C : nullptr;
    if (grad_row && stats_row) {
      pass2<true, true, scalar_t, VEC, kTable, kDense>(job, t, s.grad, x_row, dense_row, n_vec, stats_row, grad_row);
    } else if (grad_row) {
      pass2<false, true, scalar_t, VEC, kTable, kDense>(job, t, s.grad, x_row, dense_row, n_vec, stats_row, grad_row);
    } else if (stats_row) {
      pass2<true, false, scalar_t, VEC, kTable, kDense>(job, t, s.grad, x_row, dense_row, n_vec, stats_row, grad_row);
    }
    __syncthreads();  // `shared` and `reduce_buf` are rewritten for the next row
  }
}

template <typename scalar_t>
__global__ void scale_rows_kernel(scalar_t* grad, int64_t rows, int64_t classes,
                                  const opmath_t<scalar_t>* factor, bool per_row) {
  using acc_t = opmath_t<scalar_t>;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const acc_t f = factor[per_row ? row : 0];
    if (f == acc_t(1)) continue;  // the common case (loss.backward()): no memory traffic at all
    scalar_t* dst = grad + row * classes;
    for (int64_t c = threadIdx.x; c < classes; c += blockDim.x)
      dst[c] = static_cast<scalar_t>(static_cast<acc_t>(dst[c]) * f);
  }
}

// The row kernel of the job's target parts, VEC classes per load.
template <typename scalar_t, int VEC, typename Launch>
cudaError_t launch_rows(const RowJob<scalar_t>& job, Launch& launch) {
  const int threads = threads_for(job.classes / VEC);
  const int64_t blocks = std::min<int64_t>(job.rows, int64_t(1) << 30);
  if (job.table) {
    return job.dense ? launch(row_kernel<scalar_t, VEC, true, true>, blocks, threads, job)
                     : launch(row_kernel<scalar_t, VEC, true, false>, blocks, threads, job);
  }
  return job.dense ? launch(row_kernel<scalar_t, VEC, false, true>, blocks, threads, job)
                   : launch(row_kernel<scalar_t, VEC, false, false>, blocks, threads, job);
}

// Runs `job`: `launch(kernel, blocks, threads, args...)` queues one kernel and returns its launch error.
template <typename scalar_t, typename Launch>
cudaError_t run_rows(const RowJob<scalar_t>& job_in, Launch&& launch) {
  RowJob<scalar_t> job = job_in;
  if (job.reduction != 0) {
    const cudaError_t error = launch(count_valid_kernel<scalar_t>, 1, 1024, job);
    if (error != cudaSuccess) return error;
    job.grad_scale = job.valid_and_scale + 1;
  }
  if (job.rows > 0) {
    constexpr int kVec = 16 / sizeof(scalar_t);
    const bool vectorisable = job.classes % kVec == 0 && aligned(job.logits, 16) &&
                              (!job.dense || aligned(job.dense, 16)) && (!job.grad || aligned(job.grad, 16)) &&
                              (!job.table || aligned(job.table, 16)) && (!job.class_sum || aligned(job.class_sum, 16));
    const cudaError_t error =
        vectorisable ? launch_rows<scalar_t, kVec>(job, launch) : launch_rows<scalar_t, 1>(job, launch);
    if (error != cudaSuccess) return error;
  }
  if (job.reduction != 0) return launch(reduce_loss_kernel<scalar_t>, 1, 1024, job);
  return cudaSuccess;
}

// grad *= factor, row by row, as scale_rows_cpu.
template <typename scalar_t, typename Launch>
cudaError_t scale_rows(scalar_t* grad, int64_t rows, int64_t classes, const opmath_t<scalar_t>* factor,
                       bool per_row, Launch&& launch) {
  if (rows == 0 || classes == 0) return cudaSuccess;
  const int64_t blocks = rows < 65536 * 16 ? rows : 65536 * 16;
  return launch(scale_rows_kernel<scalar_t>, blocks, 256, grad, rows, classes, factor, per_row);
}

}  // namespace row_device
}  // namespace psl
