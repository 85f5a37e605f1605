// The row kernel's entry points, one per device. Each runs one pass over the rows of a RowJob:
// loss, gradient, class statistics and calibration statistics, whichever the job asks for.
#pragma once

#include "row_math.h"

#if defined(PSL_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace psl {

// Returns the first invalid row met, if any; rows after it may be left unprocessed.
template <typename scalar_t>
RowStatus run_rows_cpu(const RowJob<scalar_t>& job);

// The instruction set the CPU kernel runs with: "avx512", "avx2" or "default" (the best this CPU has, at
// most the environment's ATEN_CPU_CAPABILITY).
const char* cpu_capability();

// grad *= factor, row by row; factor is one value or one per row; rows whose factor is 1 are left alone.
template <typename scalar_t>
void scale_rows_cpu(scalar_t* grad, int64_t rows, int64_t classes, const opmath_t<scalar_t>* factor,
                    bool per_row);

#if defined(PSL_WITH_CUDA)
template <typename scalar_t>
cudaError_t run_rows_cuda(const RowJob<scalar_t>& job, cudaStream_t stream);

template <typename scalar_t>
cudaError_t scale_rows_cuda(scalar_t* grad, int64_t rows, int64_t classes,
                            const opmath_t<scalar_t>* factor, bool per_row, cudaStream_t stream);
#endif

}  // namespace psl
