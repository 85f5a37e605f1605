// The CUDA row kernels of row_kernel.cuh, launched on the current stream and instantiated for the four
// logit dtypes.
#include "row_kernel.cuh"

namespace psl {
namespace {

// Queues `kernel` with CUDA's launch syntax; the launch's own error (a bad configuration), no synchronisation.
struct StreamLaunch {
  cudaStream_t stream;

  template <typename... Params, typename... Args>
  cudaError_t operator()(void (*kernel)(Params...), int64_t blocks, int threads, const Args&... args) const {
    kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(args...);
    return cudaGetLastError();
  }
};

}  // namespace

template <typename scalar_t>
cudaError_t run_rows_cuda(const RowJob<scalar_t>& job, cudaStream_t stream) {
  return row_device::run_rows(job, StreamLaunch{stream});
}

template <typename scalar_t>
cudaError_t scale_rows_cuda(scalar_t* grad, int64_t rows, int64_t classes, const opmath_t<scalar_t>* factor,
                            bool per_row, cudaStream_t stream) {
  return row_device::scale_rows(grad, rows, classes, factor, per_row, StreamLaunch{stream});
}

#define PSL_INSTANTIATE(T)                                                                     \
  template cudaError_t run_rows_cuda<T>(const RowJob<T>&, cudaStream_t);                       \
  template cudaError_t scale_rows_cuda<T>(T*, int64_t, int64_t, const opmath_t<T>*, bool, cudaStream_t);
PSL_INSTANTIATE(float)
PSL_INSTANTIATE(double)
PSL_INSTANTIATE(c10::Half)
PSL_INSTANTIATE(c10::BFloat16)
#undef PSL_INSTANTIATE

}  // namespace psl
