// The CPU row kernel built for AVX-512 (F, BW, VL, DQ) + FMA, with 16-lane reductions (x86-64 with GCC or
// Clang only; row_kernel.cpp calls it where the CPU has them). Only the hot functions carry the target
// attribute: see row_kernel_impl.h.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PSL_CPU_NS avx512
#define PSL_CPU_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define PSL_CPU_LANES 16
#include "row_kernel_impl.h"
#undef PSL_CPU_LANES
#undef PSL_CPU_TARGET
#undef PSL_CPU_NS
#endif
