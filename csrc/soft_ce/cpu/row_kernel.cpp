// CPU row kernel: rows in parallel (at::parallel_for), each row in cache-resident sweeps (max; exp
// and sums; gradient) that the compiler vectorises. The body is row_kernel_impl.h; this file builds it
// for the baseline instruction set and picks the AVX2 build (row_kernel_avx2.cpp) where the CPU has it.
#define PSL_CPU_NS baseline
#define PSL_CPU_TARGET
#include "row_kernel_impl.h"
#undef PSL_CPU_TARGET
#undef PSL_CPU_NS

namespace psl {

std::mutex& class_lock(int64_t label) {
  static std::mutex locks[64];
  return locks[label % 64];
}

std::mutex& calib_lock() {
  static std::mutex lock;
  return lock;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PSL_HAVE_AVX2_BUILD 1
namespace avx2 {
template <typename scalar_t> RowStatus run_rows(const RowJob<scalar_t>& job);
template <typename scalar_t>
void scale_rows(scalar_t* grad, int64_t rows, int64_t classes, const opmath_t<scalar_t>* factor, bool per_row);
}  // namespace avx2

static bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

template <typename scalar_t>
RowStatus run_rows_cpu(const RowJob<scalar_t>& job) {
#if defined(PSL_HAVE_AVX2_BUILD)
  if (cpu_has_avx2()) return avx2::run_rows(job);
#endif
  return baseline::run_rows(job);
}

template <typename scalar_t>
void scale_rows_cpu(scalar_t* grad, int64_t rows, int64_t classes, const opmath_t<scalar_t>* factor,
                    bool per_row) {
#if defined(PSL_HAVE_AVX2_BUILD)
  if (cpu_has_avx2()) return avx2::scale_rows(grad, rows, classes, factor, per_row);
#endif
  baseline::scale_rows(grad, rows, classes, factor, per_row);
}

#define PSL_INSTANTIATE(T)                                   \
  template RowStatus run_rows_cpu<T>(const RowJob<T>&);           \
  template void scale_rows_cpu<T>(T*, int64_t, int64_t, const opmath_t<T>*, bool);
PSL_INSTANTIATE(float)
PSL_INSTANTIATE(double)
PSL_INSTANTIATE(c10::Half)
PSL_INSTANTIATE(c10::BFloat16)
#undef PSL_INSTANTIATE

}  // namespace psl
