// The CPU row kernel built for AVX2 + FMA (x86-64 only; row_kernel.cpp calls it where the CPU has them).
// Headers are included before the target pragma so that their inline functions keep the baseline
// instruction set; only the kernel body below it is compiled for AVX2.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <type_traits>

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define PSL_CPU_NS avx2
#include "row_kernel_impl.h"
#undef PSL_CPU_NS

namespace psl::avx2 {
#define PSL_INSTANTIATE(T)                          \
  template RowStatus run_rows<T>(const RowJob<T>&);      \
  template void scale_rows<T>(T*, int64_t, int64_t, const opmath_t<T>*, bool);
PSL_INSTANTIATE(float)
PSL_INSTANTIATE(double)
PSL_INSTANTIATE(c10::Half)
PSL_INSTANTIATE(c10::BFloat16)
#undef PSL_INSTANTIATE
}  // namespace psl::avx2
#pragma GCC pop_options
#endif
