// CPU row kernel: rows in parallel (at::parallel_for), each row in three cache-resident sweeps
// (max; exp and sums; gradient) written so that the compiler vectorises them.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <mutex>
#include <vector>

#include "../../common/launch.h"

namespace psl {
namespace {

// exp(x) for float with a branch-free body so that loops over it vectorise (Cephes expf:
// x = k ln2 + r, |r| <= ln2/2, degree-5 polynomial for exp(r), then scale by 2^k through the exponent).
// Relative error about 2e-7; exp(-inf) = 0, exp(NaN) = NaN.
inline float exp_vec(float x) {
  const float xc = std::min(std::max(x, -87.0f), 88.0f);
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
  const float out = y * scale;
  return x != x ? x : (x < -87.0f ? 0.0f : out);
}
inline double exp_vec(double x) { return std::exp(x); }

template <typename acc_t, typename scalar_t>
inline acc_t to_acc(scalar_t v) { return static_cast<acc_t>(v); }

// Stripes of locks for the class-statistics rows, which rows of one class in different threads share.
std::array<std::mutex, 64>& class_locks() {
  static std::array<std::mutex, 64> locks;
  return locks;
}
std::mutex& calib_lock() {
  static std::mutex lock;
  return lock;
}

template <typename scalar_t>
void run_chunk(const RowJob<scalar_t>& job, int64_t begin, int64_t end) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t C = job.classes;
  std::vector<acc_t> x_buf(std::is_same<scalar_t, acc_t>::value ? 0 : C), e(C), dense(job.dense ? C : 0),
      g(job.grad ? C : 0);
  std::vector<double> bins(job.calib_bins ? job.n_bins * 3 : 0);
  std::array<double, 3> calib_sums{0, 0, 0};

  for (int64_t row = begin; row < end; ++row) {
    if (row_ignored(job, row)) {
      if (job.loss) job.loss[row] = 0;
      if (job.grad) std::fill(job.grad + row * C, job.grad + (row + 1) * C, scalar_t(0));
      continue;
    }
    RowTarget<acc_t> t;
    const int code = make_row_target(job, row, t);
    TORCH_CHECK_VALUE(code == kRowOk, row_error_message(code), " (row ", row, ")");

    const scalar_t* src = job.logits + row * C;
    const acc_t* x;
    if constexpr (std::is_same<scalar_t, acc_t>::value) {
      x = src;
    } else {
      for (int64_t c = 0; c < C; ++c) x_buf[c] = to_acc<acc_t>(src[c]);
      x = x_buf.data();
    }

    acc_t m = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t c = 0; c < C; ++c) m = x[c] > m ? x[c] : m;
    const acc_t m_safe = std::isfinite(m) ? m : acc_t(0);
    acc_t s = 0, s2 = 0, sx = 0;
#pragma omp simd reduction(+ : s, s2, sx)
    for (int64_t c = 0; c < C; ++c) {
      e[c] = exp_vec(x[c] - m_safe);
      s += e[c];
      s2 += e[c] * e[c];
      sx += x[c];
    }
    const acc_t lse = m_safe + std::log(s);
    const acc_t x_y = x[t.y];

    RowSums<acc_t> sums;
    sums.shifted_sum = sx - acc_t(C) * x_y;
    if (t.table_y) {
      acc_t dot = 0, mass = 0;
#pragma omp simd reduction(+ : dot, mass)
      for (int64_t c = 0; c < C; ++c) {
        const acc_t w = t.table_at(c);
        dot += w * x[c];
        mass += w;
      }
      sums.table_dot = dot - mass * x_y;
      sums.table_mass = mass;
    }
    if (job.dense) {
      const scalar_t* d_src = job.dense + row * C;
      for (int64_t c = 0; c < C; ++c) dense[c] = to_acc<acc_t>(d_src[c]);
      if (job.dense_logits) {  // D = softmax(dense / temperature)
        acc_t dm = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(max : dm)
        for (int64_t c = 0; c < C; ++c) dm = dense[c] > dm ? dense[c] : dm;
        acc_t ds = 0;
#pragma omp simd reduction(+ : ds)
        for (int64_t c = 0; c < C; ++c) {
          dense[c] = exp_vec((dense[c] - dm) * job.inv_temperature);
          ds += dense[c];
        }
        const acc_t inv = acc_t(1) / ds;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) dense[c] *= inv;
      }
      acc_t dot = 0, mass = 0;
#pragma omp simd reduction(+ : dot, mass)
      for (int64_t c = 0; c < C; ++c) {
        dot += dense[c] * x[c];
        mass += dense[c];
      }
      sums.dense_dot = dot - mass * x_y;
      sums.dense_mass = mass;
    }
    if (job.loss) job.loss[row] = row_loss(t, sums, C, lse, x_y, x[t.y2]);

    const acc_t inv_s = acc_t(1) / s;
    const bool want_stats = job.class_sum != nullptr || job.calib_bins != nullptr;
    int64_t argmax = 0;
    if (want_stats) {
      while (argmax < C - 1 && !(x[argmax] == m)) ++argmax;
    }
    const bool finite = std::isfinite(lse);
    if (job.calib_bins) {
      if (!finite) {
        calib_sums[2] += 1;
      } else {
        const acc_t confidence = inv_s * e[argmax];
        const acc_t p_y = e[t.y] * inv_s;
        const int64_t b = confidence_bin(confidence, job.n_bins);
        bins[b * 3 + 0] += 1;
        bins[b * 3 + 1] += confidence;
        bins[b * 3 + 2] += argmax == t.y ? 1 : 0;
        calib_sums[0] += lse - x_y;
        calib_sums[1] += brier_score(s2 * inv_s * inv_s, p_y);
      }
    }
    if (job.class_sum && finite && argmax == t.y) {
      std::lock_guard<std::mutex> guard(class_locks()[t.y % 64]);
      float* dst = job.class_sum + t.y * C;
      for (int64_t c = 0; c < C; ++c) dst[c] += static_cast<float>(e[c] * inv_s);
      job.class_count[t.y] += 1;
    }

    if (job.grad) {
      const acc_t f = row_grad_factor(job, row);
      const acc_t mass = target_mass(t, sums, C);
      const acc_t pm = mass * inv_s;
      // Vectorised over c without the hard part; the two spikes of the hard part are added after.
      if (t.table_y) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) g[c] = e[c] * pm - t.uniform - t.table_weight * t.table_at(c);
      } else {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) g[c] = e[c] * pm - t.uniform;
      }
      if (job.dense) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) g[c] -= t.dense_weight * dense[c];
      }
      g[t.y] -= t.hard * t.lam;
      g[t.y2] -= t.hard * (acc_t(1) - t.lam);
      scalar_t* dst = job.grad + row * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(g[c] * f);
    }
  }
  if (job.calib_bins) {
    std::lock_guard<std::mutex> guard(calib_lock());
    for (size_t i = 0; i < bins.size(); ++i) job.calib_bins[i] += bins[i];
    for (int i = 0; i < 3; ++i) job.calib_sums[i] += calib_sums[i];
  }
}

}  // namespace

template <typename scalar_t>
void run_rows_cpu(const RowJob<scalar_t>& job) {
  if (job.rows == 0) return;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(job.classes, 1));
  at::parallel_for(0, job.rows, grain, [&](int64_t begin, int64_t end) { run_chunk(job, begin, end); });
}

template <typename scalar_t>
void scale_rows_cpu(scalar_t* grad, int64_t rows, int64_t classes, const opmath_t<scalar_t>* factor,
                    bool per_row) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(classes, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const acc_t f = factor[per_row ? row : 0];
      if (f == acc_t(1)) continue;
      scalar_t* dst = grad + row * classes;
#pragma omp simd
      for (int64_t c = 0; c < classes; ++c) dst[c] = static_cast<scalar_t>(static_cast<acc_t>(dst[c]) * f);
    }
  });
}

#define PSL_INSTANTIATE(T)                                   \
  template void run_rows_cpu<T>(const RowJob<T>&);           \
  template void scale_rows_cpu<T>(T*, int64_t, int64_t, const opmath_t<T>*, bool);
PSL_INSTANTIATE(float)
PSL_INSTANTIATE(double)
PSL_INSTANTIATE(c10::Half)
PSL_INSTANTIATE(c10::BFloat16)
#undef PSL_INSTANTIATE

}  // namespace psl
