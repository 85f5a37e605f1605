// CPU row kernel: rows in parallel (at::parallel_for), each row in cache-resident sweeps (max; exp
// and sums; gradient) that the compiler vectorises; class and calibration statistics per block of rows,
// added up in block order, so that they come out the same on every run. The body is row_kernel_impl.h; this file builds it
// for the baseline instruction set and picks the AVX-512 or AVX2 build (row_kernel_avx512.cpp,
// row_kernel_avx2.cpp) where the CPU has it.
#define PSL_CPU_NS baseline
#define PSL_CPU_TARGET
#define PSL_CPU_LANES 8
#include "row_kernel_impl.h"
#undef PSL_CPU_LANES
#undef PSL_CPU_TARGET
#undef PSL_CPU_NS

namespace psl {

std::mutex& report_lock() {
  static std::mutex lock;
  return lock;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PSL_HAVE_X86_BUILDS 1
#define PSL_DECLARE_BUILD(NS)                                                                              \
  namespace NS {                                                                                           \
  template <typename scalar_t> RowStatus run_rows(const RowJob<scalar_t>& job);                            \
  template <typename scalar_t>                                                                             \
  void scale_rows(scalar_t* grad, int64_t rows, int64_t classes, const opmath_t<scalar_t>* factor, bool per_row); \
  }
PSL_DECLARE_BUILD(avx2)
PSL_DECLARE_BUILD(avx512)
#undef PSL_DECLARE_BUILD
#endif

namespace {

enum Capability { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kCapabilityNames[] = {"default", "avx2", "avx512"};

// The best build this CPU runs, at most ATEN_CPU_CAPABILITY when that is set (PyTorch's variable, with its
// values "default", "avx2", "avx512"): one wheel serves every x86-64 machine, and each build can be tested
// on one machine.
Capability detect_capability() {
  int best = kBaseline;
#if defined(PSL_HAVE_X86_BUILDS)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = kAvx2;
  if (best == kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    best = kAvx512;
  }
#endif
  if (const char* limit = std::getenv("ATEN_CPU_CAPABILITY")) {
    for (int c = kBaseline; c <= kAvx512; ++c) {
      if (std::strcmp(limit, kCapabilityNames[c]) == 0 && c < best) best = c;
    }
  }
  return static_cast<Capability>(best);
}

Capability capability() {
  static const Capability c = detect_capability();
  return c;
}

}  // namespace

const char* cpu_capability() { return kCapabilityNames[capability()]; }

template <typename scalar_t>
RowStatus run_rows_cpu(const RowJob<scalar_t>& job) {
#if defined(PSL_HAVE_X86_BUILDS)
  if (capability() == kAvx512) return avx512::run_rows(job);
  if (capability() == kAvx2) return avx2::run_rows(job);
#endif
  return baseline::run_rows(job);
}

template <typename scalar_t>
void scale_rows_cpu(scalar_t* grad, int64_t rows, int64_t classes, const opmath_t<scalar_t>* factor,
                    bool per_row) {
#if defined(PSL_HAVE_X86_BUILDS)
  if (capability() == kAvx512) return avx512::scale_rows(grad, rows, classes, factor, per_row);
  if (capability() == kAvx2) return avx2::scale_rows(grad, rows, classes, factor, per_row);
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
