// The CPU row kernel's body, compiled three times: for the baseline instruction set (row_kernel.cpp)
// and, on x86-64, for AVX2 + FMA (row_kernel_avx2.cpp) and AVX-512 (row_kernel_avx512.cpp);
// row_kernel.cpp picks one at run time.
//
// Included with PSL_CPU_NS naming the namespace of this copy, PSL_CPU_TARGET the function attribute of
// its hot functions (run_chunk, scale_row) and PSL_CPU_LANES the width of its reductions. Only the hot
// functions carry the attribute; the helpers they call are inlined into them and vectorised there.
// Nothing else, and in particular no template of the standard library or of c10 that the copies
// instantiate, is built for AVX2 or AVX-512: the linker keeps one copy of such a template, which then
// serves every caller in the process.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <type_traits>

#include "../../common/launch.h"
#include "../../common/row_passes.h"

namespace psl {

// Shared by the copies (defined in row_kernel.cpp): the lock of a launch's error report.
std::mutex& report_lock();

namespace PSL_CPU_NS {

inline int64_t grain_for(int64_t classes) {
  const int64_t g = 32768 / (classes > 0 ? classes : 1);
  return g > 1 ? g : 1;
}

// exp(x) for float with a branch-free body so that loops over it vectorise (Cephes expf:
// x = k ln2 + r, |r| <= ln2/2, degree-5 polynomial for exp(r), then scale by 2^k through the exponent).
// Relative error about 2e-7; exp(x) = 0 for x < -87 (and -inf), exp(NaN) = NaN.
inline float exp_vec(float x) {
  float xc = x < -87.0f ? -87.0f : x;
  xc = xc > 88.0f ? 88.0f : xc;
  const float k = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = xc - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  // Below -87 the result is 0 (exp(-inf) = 0); NaN stays NaN (NaN * 0). A multiply, not a branch,
  // keeps the loop vectorisable.
  return y * scale * static_cast<float>(!(x < -87.0f));
}
inline double exp_vec(double x) { return std::exp(x); }

template <typename acc_t, typename scalar_t>
inline acc_t to_acc(scalar_t v) { return static_cast<acc_t>(v); }

// A hint to bring p's cache line into cache (GCC and Clang; other compilers build without it).
inline void prefetch_for_reading(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p, 0, 3);
#else
  (void)p;
#endif
}

// Reductions with independent lanes, one vector register's worth (PSL_CPU_LANES: 8 floats for AVX2,
// 16 for AVX-512): the compiler vectorises them without reassociating floating-point sums on its own (no
// -ffast-math). Lanes are added in a fixed order, so results are deterministic.
constexpr int kLanes = PSL_CPU_LANES;

template <typename T>
inline T lane_max(const T* v, int64_t n) {
  T acc[kLanes];
  for (int k = 0; k < kLanes; ++k) acc[k] = -std::numeric_limits<T>::infinity();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) acc[k] = v[i + k] > acc[k] ? v[i + k] : acc[k];
  }
  for (; i < n; ++i) acc[0] = v[i] > acc[0] ? v[i] : acc[0];
  T m = acc[0];
  for (int k = 1; k < kLanes; ++k) m = acc[k] > m ? acc[k] : m;
  return m;
}

// The first index of m among v's values (torch.argmax's tie rule), found a vector of lanes at a time;
// n - 1 when m is none of them (a row of NaN, whose statistics are not used).
template <typename T>
inline int64_t first_index_of(const T* v, int64_t n, T m) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    int found = 0;
#pragma omp simd reduction(| : found)
    for (int k = 0; k < kLanes; ++k) found |= v[i + k] == m;
    if (found) break;
  }
  while (i < n - 1 && !(v[i] == m)) ++i;
  return i;
}

// A row of target weights w against the logits x, in one sweep: sum_i w[i] (x[i] - m), a term of weight 0
// adding 0 even where x[i] is -inf (weighted, row_math.h), and sum_i w[i].
template <typename T>
struct DotMass {
  T dot = 0, mass = 0;
};

template <typename T>
inline DotMass<T> weighted_dot_and_mass(const T* w, const T* x, T m, int64_t n) {
  T dot[kLanes] = {}, mass[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) {
      dot[k] += weighted(w[i + k], x[i + k] - m);
      mass[k] += w[i + k];
    }
  }
  for (; i < n; ++i) {
    dot[0] += weighted(w[i], x[i] - m);
    mass[0] += w[i];
  }
  DotMass<T> out;
  for (int k = 0; k < kLanes; ++k) {
    out.dot += dot[k];
    out.mass += mass[k];
  }
  return out;
}

// Dense logits d: e[i] = exp((d[i] - d_max) * inv_temperature), the per-sample distribution before its
// normalisation, and in the same sweep the sums of e (mass) and of e (x - m) (dot), as above. One sweep
// where normalising first took three more (sum, scale, then the weighted sums). `next`: the next row's
// dense logits, prefetched meanwhile (as exp_and_sums does the logits).
template <typename T, typename U>
inline DotMass<T> exp_dot_and_mass(const T* d, T d_max, T inv_temperature, const T* x, T m, T* e, int64_t n,
                                   const U* next) {
  T dot[kLanes] = {}, mass[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    prefetch_for_reading(next + i);
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) {
      const T v = exp_vec((d[i + k] - d_max) * inv_temperature);
      e[i + k] = v;
      dot[k] += weighted(v, x[i + k] - m);
      mass[k] += v;
    }
  }
  for (; i < n; ++i) {
    const T v = exp_vec((d[i] - d_max) * inv_temperature);
    e[i] = v;
    dot[0] += weighted(v, x[i] - m);
    mass[0] += v;
  }
  DotMass<T> out;
  for (int k = 0; k < kLanes; ++k) {
    out.dot += dot[k];
    out.mass += mass[k];
  }
  return out;
}

// e[i] = exp(x[i] - m) for a row, and in the same sweep (the row is read once for them) the sums of e,
// of e^2 and of x - m, with lanes as above. Sums of x - m, not of x: a row of logits far from 0 (1e4, 1e30)
// keeps the precision of its differences, and x - m is there anyway for exp.
template <typename T>
struct ExpSums {
  T sum = 0, sum_sq = 0, sum_x_minus_m = 0;
};

// `next`: the next row's logits, prefetched meanwhile. This sweep is compute-bound and runs in L1, the max
// sweep of a row waits on memory: fetching the next row now overlaps the two (a fifth less time for the
// forward on one thread here, a tenth on two; docs/benchmarks.md).
template <typename T, typename U>
inline ExpSums<T> exp_and_sums(const T* x, T m, T* e, int64_t n, const U* next) {
  T s[kLanes] = {}, s2[kLanes] = {}, sx[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    prefetch_for_reading(next + i);
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) {
      const T d = x[i + k] - m;
      const T v = exp_vec(d);
      e[i + k] = v;
      s[k] += v;
      s2[k] += v * v;
      sx[k] += d;
    }
  }
  for (; i < n; ++i) {
    const T d = x[i] - m;
    const T v = exp_vec(d);
    e[i] = v;
    s[0] += v;
    s2[0] += v * v;
    sx[0] += d;
  }
  ExpSums<T> out;
  for (int k = 0; k < kLanes; ++k) {
    out.sum += s[k];
    out.sum_sq += s2[k];
    out.sum_x_minus_m += sx[k];
  }
  return out;
}

// The gradient (p sum(t) - t) f without its hard part, from e = exp(x - max) (mass_e: sum(t) f / sum(e)) and
// the row's coefficients g (grad_row, as the CUDA kernel), over the table and dense parts present.
template <typename acc_t>
inline acc_t soft_grad(acc_t e, acc_t mass_e, acc_t table_mix, acc_t dense, const GradRow<acc_t>& g) {
  return e * mass_e - g.uniform_f - g.table_f * table_mix - g.dense_f * dense;
}

// dst = that gradient for the whole row, in one sweep over e.
template <bool kTable, bool kDense, typename scalar_t, typename acc_t>
inline void write_grad(scalar_t* dst, const acc_t* e, acc_t mass_e, const acc_t* table_mix, const acc_t* dense,
                       int64_t n, const GradRow<acc_t>& g) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    acc_t v = e[c] * mass_e - g.uniform_f;
    if constexpr (kTable) v -= g.table_f * table_mix[c];
    if constexpr (kDense) v -= g.dense_f * dense[c];
    dst[c] = static_cast<scalar_t>(v);
  }
}

// dst = (overwrite ? 0 : dst) + e * scale, in float: a row of class statistics.
template <typename acc_t>
inline void add_scaled(float* dst, const acc_t* e, acc_t scale, int64_t n, bool overwrite) {
  if (overwrite) {
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) dst[c] = static_cast<float>(e[c] * scale);
  } else {
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) dst[c] += static_cast<float>(e[c] * scale);
  }
}

// Scratch rows of one chunk (uninitialised). malloc, not std::vector: see the note on templates at the top.
template <typename T>
struct Scratch {
  T* data = nullptr;
  Scratch() = default;
  explicit Scratch(int64_t n) { reset(n); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(data); }
  void reset(int64_t n) {
    std::free(data);
    data = n ? static_cast<T*>(std::malloc(sizeof(T) * n)) : nullptr;
    if (n != 0 && data == nullptr) throw std::bad_alloc();
  }
  T& operator[](int64_t i) { return data[i]; }
};

// Records the first invalid row of a launch (threads race; the lowest row wins).
inline void report(RowStatus& status, int code, int64_t row) {
  std::mutex& lock = report_lock();
  lock.lock();
  if (status.code == kRowOk || row < status.row) {
    status.code = code;
    status.row = row;
  }
  lock.unlock();
}

// The statistics of one block of rows, kept apart from the job's and added to them in block order once
// every block is done (run_blocks), so that they do not depend on which thread ran which block or when:
// the same bits on every run, as the loss and the gradient. A slot holds the class-statistics row of one
// label of the block. The first block, first in that order anyway, adds to the job's class rows directly.
struct BlockStats {
  bool direct = false;             // class statistics straight into job.class_sum / class_count
  int32_t* slot_of_row = nullptr;  // per row of the block: the slot of its label, -1 for none
  int64_t* slot_class = nullptr;   // per slot: its class
  int32_t slots = 0;
  float* class_rows = nullptr;     // slots x C: sum of the softmax of the slot's correct rows
  float* slot_count = nullptr;     // per slot: how many rows class_rows holds (0: class_rows unset)
  double* bins = nullptr;          // n_bins x 3, as job.calib_bins
  double* calib_sums = nullptr;    // 3, as job.calib_sums
};

// Rows [begin, end) of the job; stats: their block's statistics (run_blocks), null when the job keeps none.
template <typename scalar_t>
PSL_CPU_TARGET void run_chunk(const RowJob<scalar_t>& job, int64_t begin, int64_t end, RowStatus& status,
                              BlockStats* stats) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t C = job.classes;
  constexpr bool same = std::is_same<scalar_t, acc_t>::value;
  // dense: the row's dense values as acc_t (when they are not already), or the exps of dense logits.
  Scratch<acc_t> x_buf(same ? 0 : C), e(C), dense(job.dense && (job.dense_logits || !same) ? C : 0),
      table_mix(job.table ? C : 0);

  for (int64_t row = begin; row < end; ++row) {
    if (row_ignored(job, row)) {
      if (job.loss) job.loss[row] = 0;
      if (job.grad) {
        for (int64_t c = 0; c < C; ++c) job.grad[row * C + c] = scalar_t(0);
      }
      continue;
    }
    RowTarget<acc_t> t;
    const int code = make_row_target(job, row, t);
    if (code != kRowOk) {
      report(status, code, row);
      break;  // (rows with statistics were all checked before: see run_blocks)
    }

    const scalar_t* src = job.logits + row * C;
    const acc_t* x;
    if constexpr (same) {
      x = src;
    } else {
      for (int64_t c = 0; c < C; ++c) x_buf[c] = to_acc<acc_t>(src[c]);
      x = x_buf.data;
    }

    const acc_t m = lane_max(x, C);
    const int64_t argmax = job.class_sum != nullptr || job.calib_bins != nullptr ? first_index_of(x, C, m) : 0;
    // Class statistics alone need nothing more of a misclassified row.
    if (!job.loss && !job.grad && !job.calib_bins && argmax != t.y) continue;
    // The exps' base, as the CUDA kernel's (exp_base): 0 only where the max is -inf. A +inf max stays, so that
    // the row's sums, loss and gradient are NaN as in F.cross_entropy (a base of 0 gave an fp16 overflow a
    // finite gradient, a finite or -inf loss and a place in the statistics).
    const acc_t base = exp_base(m);
    // exp(x - max) straight into the row's gradient when it has the accumulation type: the gradient's
    // cache misses then fall in this compute-bound sweep, and the gradient sweep below runs in cache.
    acc_t* er = e.data;
    if constexpr (same) {
      if (job.grad) er = job.grad + row * C;
    }
    const ExpSums<acc_t> row_sums = exp_and_sums(x, base, er, C, row + 1 < end ? src + C : src);
    const acc_t s = row_sums.sum, s2 = row_sums.sum_sq;
    const acc_t log_s = std::log(s);
    const acc_t lse = base + log_s;
    const acc_t x_y = x[t.y];

    RowSums<acc_t> sums;
    sums.shift = row_shift(x_y, m);
    sums.lse_shifted = lse_minus(base, log_s, sums.shift);
    sums.shifted_sum = row_sums.sum_x_minus_m + acc_t(C) * (base - sums.shift);
    if (t.table_y) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) table_mix[c] = t.table_at(c);
      const DotMass<acc_t> w = weighted_dot_and_mass(table_mix.data, x, base, C);
      sums.table_dot = w.dot + w.mass * (base - sums.shift);
      sums.table_mass = w.mass;
    }
    // The per-sample part D of the gradient sweep, as dense_part[c] * dense_scale.
    const acc_t* dense_part = nullptr;
    acc_t dense_scale = 1;
    if (job.dense) {
      const scalar_t* d_src = job.dense + row * C;
      const acc_t* d;
      if constexpr (same) {
        d = d_src;
      } else {
        for (int64_t c = 0; c < C; ++c) dense[c] = to_acc<acc_t>(d_src[c]);
        d = dense.data;
      }
      if (job.dense_logits) {  // D = softmax(d / temperature) = e / sum(e), e = exp((d - max) / temperature)
        const DotMass<acc_t> e = exp_dot_and_mass(d, lane_max(d, C), job.inv_temperature, x, base, dense.data, C,
                                                  row + 1 < end ? d_src + C : d_src);
        dense_scale = acc_t(1) / e.mass;
        sums.dense_dot = e.dot * dense_scale + (base - sums.shift);
        sums.dense_mass = 1;  // as the CUDA kernel (row_totals)
        dense_part = dense.data;
      } else {
        const DotMass<acc_t> w = weighted_dot_and_mass(d, x, base, C);
        sums.dense_dot = w.dot + w.mass * (base - sums.shift);
        sums.dense_mass = w.mass;
        dense_part = d;
      }
    }
    if (job.loss) job.loss[row] = row_loss(t, sums, C, x_y, x[t.y2]);

    const acc_t inv_s = acc_t(1) / s;
    const bool finite = std::isfinite(lse);
    if (job.calib_bins) {
      if (!finite) {
        stats->calib_sums[2] += 1;
      } else {
        const acc_t confidence = inv_s * er[argmax];
        const acc_t p_y = er[t.y] * inv_s;
        const int64_t b = confidence_bin(confidence, job.n_bins);
        stats->bins[b * 3 + 0] += 1;
        stats->bins[b * 3 + 1] += confidence;
        stats->bins[b * 3 + 2] += argmax == t.y ? 1 : 0;
        stats->calib_sums[0] += lse_minus(base, log_s, x_y);  // NLL = lse - x_y
        stats->calib_sums[1] += brier_score(s2 * inv_s * inv_s, p_y);
      }
    }
    if (job.class_sum && finite && argmax == t.y) {  // the first block into the job's rows, the others into slots
      const int32_t slot = stats->direct ? -1 : stats->slot_of_row[row - begin];
      float* dst = slot < 0 ? job.class_sum + t.y * C : stats->class_rows + slot * C;
      float& count = slot < 0 ? job.class_count[t.y] : stats->slot_count[slot];
      add_scaled(dst, er, inv_s, C, slot >= 0 && count == 0);
      count += 1;
    }

    if (job.grad) {
      RowTotals<acc_t> totals;  // the CPU sweep takes exp(x - max) from er, not base and log2_sum
      totals.lse = lse;
      totals.sums = sums;
      GradRow<acc_t> g = grad_row(t, totals, C, row_grad_factor(job, row));
      g.dense_f *= dense_scale;
      const acc_t mass_e = g.mass_f * inv_s;
      scalar_t* dst = job.grad + row * C;
      const acc_t* table_part = t.table_y ? table_mix.data : nullptr;
      // The two spikes of the hard part, taken before the sweep (which may overwrite er) and written over
      // the elements of y and y2 after it.
      const auto at = [&](int64_t c) {
        return soft_grad(er[c], mass_e, table_part ? table_part[c] : acc_t(0), dense_part ? dense_part[c] : acc_t(0),
                         g);
      };
      const acc_t spike_y = at(t.y) - g.hard_y_f - (t.y2 == t.y ? g.hard_y2_f : acc_t(0));
      const acc_t spike_y2 = at(t.y2) - g.hard_y2_f;
      if (table_part && dense_part) {
        write_grad<true, true>(dst, er, mass_e, table_part, dense_part, C, g);
      } else if (table_part) {
        write_grad<true, false>(dst, er, mass_e, table_part, dense_part, C, g);
      } else if (dense_part) {
        write_grad<false, true>(dst, er, mass_e, table_part, dense_part, C, g);
      } else {
        write_grad<false, false>(dst, er, mass_e, table_part, dense_part, C, g);
      }
      dst[t.y] = static_cast<scalar_t>(spike_y);
      if (t.y2 != t.y) dst[t.y2] = static_cast<scalar_t>(spike_y2);
    }
  }
}

// The class-statistics slots of the block [begin, end): one per distinct label in range, in the order the
// labels first appear; slot_of_class is scratch of `classes` entries.
inline void assign_slots(const int64_t* labels, int64_t begin, int64_t end, int64_t classes, BlockStats& stats,
                         int32_t* slot_of_class) {
  for (int64_t c = 0; c < classes; ++c) slot_of_class[c] = -1;
  stats.slots = 0;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t y = labels[row];
    int32_t slot = -1;
    if (y >= 0 && y < classes) {
      if (slot_of_class[y] < 0) {
        slot_of_class[y] = stats.slots;
        stats.slot_class[stats.slots] = y;
        stats.slot_count[stats.slots] = 0;
        ++stats.slots;
      }
      slot = slot_of_class[y];
    }
    stats.slot_of_row[row - begin] = slot;
  }
}

// class_sum[:, c0:c1] += the blocks' slot rows, block after block.
PSL_CPU_TARGET inline void add_class_rows(float* class_sum, int64_t classes, int64_t c0, int64_t c1,
                                          const BlockStats* blocks, int64_t n_blocks) {
  for (int64_t b = 0; b < n_blocks; ++b) {
    for (int32_t slot = 0; slot < blocks[b].slots; ++slot) {
      if (blocks[b].slot_count[slot] == 0) continue;
      float* dst = class_sum + blocks[b].slot_class[slot] * classes;
      const float* src = blocks[b].class_rows + slot * classes;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

// Rows with statistics: one block of consecutive rows per thread, each block with its own BlockStats (its
// rows in order), added to the job's in block order once the blocks are done. The bits then depend on
// the number of threads, as PyTorch's CPU reductions, and not on their timing. A wave is as many rows
// as keep the slot rows within kSlotBytes. Every row's target is checked first, so that an invalid row
// leaves the statistics as they were.
constexpr int64_t kSlotBytes = int64_t(64) << 20;

template <typename scalar_t>
RowStatus first_invalid_row(const RowJob<scalar_t>& job) {
  RowStatus status;
  RowTarget<opmath_t<scalar_t>> t;
  for (int64_t row = 0; row < job.rows; ++row) {
    const int code = row_ignored(job, row) ? int(kRowOk) : make_row_target(job, row, t);
    if (code != kRowOk) {
      status.code = code;
      status.row = row;
      break;
    }
  }
  return status;
}

template <typename scalar_t>
void run_blocks(const RowJob<scalar_t>& job, RowStatus& status) {
  status = first_invalid_row(job);
  if (status.code != kRowOk) return;
  const int64_t C = job.classes, threads = at::get_num_threads();
  const int64_t fit = job.class_sum ? kSlotBytes / (C * int64_t(sizeof(float))) : job.rows;
  const int64_t wave = fit > threads ? fit : threads;
  const int64_t max_blocks = threads, max_rows = wave < job.rows ? wave : job.rows;
  const int64_t bin_values = job.calib_bins ? job.n_bins * 3 : 0;
  Scratch<BlockStats> blocks(max_blocks);
  std::unique_ptr<Scratch<float>[]> slot_rows(new Scratch<float>[max_blocks]);  // written before read
  Scratch<int32_t> slot_of_row(job.class_sum ? max_rows : 0);
  Scratch<int64_t> slot_class(job.class_sum ? max_rows : 0);
  Scratch<float> slot_count(job.class_sum ? max_rows : 0);
  Scratch<int32_t> slot_of_class(job.class_sum ? max_blocks * C : 0);
  Scratch<double> bins(max_blocks * bin_values), calib_sums(max_blocks * 3);
  for (int64_t w0 = 0; w0 < job.rows; w0 += wave) {
    const int64_t w1 = w0 + wave < job.rows ? w0 + wave : job.rows;
    const int64_t n_blocks = w1 - w0 < threads ? w1 - w0 : threads;
    const int64_t block = (w1 - w0 + n_blocks - 1) / n_blocks;
    const auto rows_of = [&](int64_t b, int64_t& begin, int64_t& end) {
      begin = w0 + b * block;
      end = begin + block < w1 ? begin + block : w1;
    };
    for (int64_t i = 0; i < n_blocks * bin_values; ++i) bins[i] = 0;
    for (int64_t i = 0; i < n_blocks * 3; ++i) calib_sums[i] = 0;
    at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        int64_t begin, end;
        rows_of(b, begin, end);
        BlockStats& stats = blocks[b];
        stats = BlockStats{};
        stats.direct = b == 0;
        stats.bins = bins.data + b * bin_values;
        stats.calib_sums = calib_sums.data + b * 3;
        if (job.class_sum && b > 0) {
          const int64_t first = begin - w0;  // the block's rows (and at most as many slots) in the wave
          stats.slot_of_row = slot_of_row.data + first;
          stats.slot_class = slot_class.data + first;
          stats.slot_count = slot_count.data + first;
          assign_slots(job.labels, begin, end, C, stats, slot_of_class.data + b * C);
          slot_rows[b].reset(stats.slots * C);
          stats.class_rows = slot_rows[b].data;
        }
        run_chunk(job, begin, end, status, &stats);
      }
    });
    for (int64_t b = 0; b < n_blocks; ++b) {
      for (int64_t i = 0; i < bin_values; ++i) job.calib_bins[i] += blocks[b].bins[i];
      if (job.calib_sums) {
        for (int i = 0; i < 3; ++i) job.calib_sums[i] += blocks[b].calib_sums[i];
      }
      for (int32_t slot = 0; slot < blocks[b].slots; ++slot) {
        job.class_count[blocks[b].slot_class[slot]] += blocks[b].slot_count[slot];
      }
    }
    int64_t slots = 0;
    for (int64_t b = 0; b < n_blocks; ++b) slots += blocks[b].slots;
    if (slots > 0) {
      at::parallel_for(0, C, grain_for(slots), [&](int64_t c0, int64_t c1) {
        add_class_rows(job.class_sum, C, c0, c1, blocks.data, n_blocks);
      });
    }
  }
}

template <typename scalar_t>
RowStatus run_rows(const RowJob<scalar_t>& job_in) {
  using acc_t = opmath_t<scalar_t>;
  RowStatus status;
  RowJob<scalar_t> job = job_in;
  acc_t valid = 0;
  if (job.reduction != 0) {
    for (int64_t row = 0; row < job.rows; ++row) valid += row_ignored(job, row) ? 0 : 1;
    job.valid_and_scale[0] = valid;
    job.valid_and_scale[1] = reduction_grad_scale(valid, job.reduction);
    job.grad_scale = job.valid_and_scale + 1;
  }
  if (job.class_sum || job.calib_bins) {
    run_blocks(job, status);
  } else if (job.rows > 0) {
    at::parallel_for(0, job.rows, grain_for(job.classes),
                     [&](int64_t begin, int64_t end) { run_chunk(job, begin, end, status, nullptr); });
  }
  if (job.reduction != 0 && status.code == kRowOk) {
    acc_t sum = 0;  // in row order: deterministic
    for (int64_t row = 0; row < job.rows; ++row) sum += job.loss[row];
    job.loss_reduced[0] = reduce_loss(sum, valid, job.reduction);
  }
  return status;
}

template <typename scalar_t>
PSL_CPU_TARGET void scale_row(scalar_t* dst, int64_t classes, opmath_t<scalar_t> f) {
  using acc_t = opmath_t<scalar_t>;
#pragma omp simd
  for (int64_t c = 0; c < classes; ++c) dst[c] = static_cast<scalar_t>(static_cast<acc_t>(dst[c]) * f);
}

template <typename scalar_t>
void scale_rows(scalar_t* grad, int64_t rows, int64_t classes, const opmath_t<scalar_t>* factor,
                bool per_row) {
  using acc_t = opmath_t<scalar_t>;
  at::parallel_for(0, rows, grain_for(classes), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const acc_t f = factor[per_row ? row : 0];
      if (f != acc_t(1)) scale_row(grad + row * classes, classes, f);
    }
  });
}

#define PSL_INSTANTIATE(T)                          \
  template RowStatus run_rows<T>(const RowJob<T>&); \
  template void scale_rows<T>(T*, int64_t, int64_t, const opmath_t<T>*, bool);
PSL_INSTANTIATE(float)
PSL_INSTANTIATE(double)
PSL_INSTANTIATE(c10::Half)
PSL_INSTANTIATE(c10::BFloat16)
#undef PSL_INSTANTIATE

}  // namespace PSL_CPU_NS
}  // namespace psl
