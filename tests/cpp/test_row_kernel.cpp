// C++ tests of the row kernels (ctest): every output against a direct double-precision evaluation of the
// DESIGN.md formulas, written independently of csrc/common/row_math.h. Built twice: against the CPU kernel,
// and with PSL_EMULATED_CUDA against the CUDA kernels' own text (row_kernel.cuh) run by the host emulation
// of cuda_emulation/ (first on that build's include path).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#if defined(PSL_EMULATED_CUDA)
#include "../../csrc/soft_ce/cuda/row_kernel.cuh"
#else
#include "../../csrc/common/launch.h"
#endif

namespace {

// The kernels under test: the only place where the two builds differ.
#if defined(PSL_EMULATED_CUDA)
// The CUDA kernels report an invalid row by a device-side assert naming its error, in the block of that row
// (one block per row).
template <typename scalar_t>
psl::RowStatus run_rows(const psl::RowJob<scalar_t>& job) {
  const cudaError_t error = psl::row_device::run_rows(job, cuda_emulation::Launch{});
  psl::RowStatus status;
  if (error == cudaErrorAssert) {
    for (int code = psl::kBadLabel; code <= psl::kWeightsOverOne; ++code) {
      if (cuda_emulation::assert_message == psl::row_error_message(code)) status.code = code;
    }
    status.row = cuda_emulation::assert_block;
  } else if (error != cudaSuccess) {
    status.code = -static_cast<int>(error);
  }
  return status;
}

void scale_rows(float* grad, int64_t rows, int64_t classes, const float* factor) {
  psl::row_device::scale_rows(grad, rows, classes, factor, true, cuda_emulation::Launch{});
}

std::string build_name() { return "CUDA kernels, emulated on the host"; }
#else
template <typename scalar_t>
psl::RowStatus run_rows(const psl::RowJob<scalar_t>& job) {
  return psl::run_rows_cpu(job);
}

void scale_rows(float* grad, int64_t rows, int64_t classes, const float* factor) {
  psl::scale_rows_cpu(grad, rows, classes, factor, true);
}

std::string build_name() { return std::string("CPU kernel, ") + psl::cpu_capability() + " build"; }
#endif

int failures = 0;

void expect_close(double got, double want, double tol, const char* what, int64_t i) {
  if (std::isnan(got) && std::isnan(want)) return;
  if (got != want && !(std::fabs(got - want) <= tol * (1 + std::fabs(want)))) {  // infinities: equal
    if (failures < 30) std::printf("FAIL %s[%lld]: got %.9g, want %.9g\n", what, static_cast<long long>(i), got, want);
    ++failures;
  }
}

struct Case {
  int64_t n, c;
  bool mix, table, dense, dense_logits, ignore;
  double s, a, d, lam, temperature;
  float nonfinite = 0;    // every fourth row gets this logit (+inf: an fp16 overflow; NaN), on its label or another
  int reduction = 0;      // 0 none, 1 mean, 2 sum; with a reduction the gradient also takes a grad_output of 0.5
  bool masked = false;    // classes c % 5 == 3 (other than the labels) masked: -inf logits, no target weight
  bool statistics_only = false;  // no loss, no gradient (the calibration and class statistics ops)
  bool ties = false;      // whole-number logits, and the label's logit also half a row away (another thread's
                          // vector) in rows i % 4 == 0: the argmax is the first of the ties, as torch.argmax
  bool per_row = false;   // lam, s, a and d one per row (a third to all of the given value), and without a
                          // reduction one grad_output per row (a backward of reduction='none')
};

// A masked class: a -inf logit to which the target gives no weight (0 log 0 = 0, as in F.cross_entropy). The
// CUDA kernel sums such a row's target parts a second time, with a guard, after a block-wide flag.
bool masked_class(const Case& k, int64_t c, int64_t y, int64_t y2) {
  return k.masked && c % 5 == 3 && c != y && c != y2;
}

// A row with a +inf or NaN logit has NaN loss and gradient, as in F.cross_entropy (GradScaler then skips the
// step), counts as non-finite in the calibration sums and stays out of the class statistics. The CPU kernel
// once took a +inf row's exps against 0: a finite gradient, a finite or -inf loss, and a row of confidence 1
// in the statistics.
bool nonfinite_row(const Case& k, int64_t i) { return k.nonfinite != 0 && i % 4 == 2; }

// The logits' (and dense targets') dtype: the expected values are computed from the values as stored, the
// gradient is compared within its own rounding.
template <typename scalar_t> double grad_tolerance() { return 2e-5; }
template <> double grad_tolerance<c10::Half>() { return 1e-3; }
template <> double grad_tolerance<c10::BFloat16>() { return 8e-3; }

template <typename scalar_t>
void run_case(const Case& k, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.f, 2.f);
  std::uniform_real_distribution<float> uniform(0.f, 1.f);
  std::uniform_int_distribution<int64_t> label(0, k.c - 1);
  const int64_t N = k.n, C = k.c;
  const scalar_t unwritten = scalar_t(1e4f);
  std::vector<scalar_t> x(N * C), dense(N * C), grad(N * C, unwritten);
  std::vector<float> table(C * C), loss(N);
  std::vector<int64_t> y(N), y2(N);
  for (auto& v : x) v = scalar_t(k.ties ? std::round(normal(rng) / 2.f) : normal(rng));
  for (int64_t i = 0; i < N; ++i) {
    y[i] = (k.ignore && i % 3 == 1) ? -100 : label(rng);
    y2[i] = label(rng);
    // Every other row classified correctly (whatever C), so that the class statistics have rows to add.
    if (i % 2 == 0 && y[i] != -100) x[i * C + y[i]] = scalar_t(static_cast<float>(x[i * C + y[i]]) + 12.f);
    if (k.ties && i % 4 == 0 && y[i] != -100) x[i * C + (y[i] + C / 2) % C] = x[i * C + y[i]];
    if (nonfinite_row(k, i) && y[i] != -100) x[i * C + (i % 8 == 2 ? y[i] : (y[i] + 1) % C)] = scalar_t(k.nonfinite);
    for (int64_t c = 0; c < C; ++c) {
      if (masked_class(k, c, y[i], y2[i])) x[i * C + c] = scalar_t(-INFINITY);
    }
  }
  for (int64_t r = 0; r < C; ++r) {
    double sum = 0;
    for (int64_t c = 0; c < C; ++c) sum += table[r * C + c] = uniform(rng);
    for (int64_t c = 0; c < C; ++c) table[r * C + c] /= static_cast<float>(sum);
  }
  for (int64_t i = 0; i < N; ++i) {
    std::vector<float> row(C);
    double sum = 0;
    for (int64_t c = 0; c < C; ++c) {
      row[c] = k.dense_logits ? normal(rng) : masked_class(k, c, y[i], y2[i]) ? 0.f : uniform(rng);
      sum += row[c];
    }
    for (int64_t c = 0; c < C; ++c) {
      dense[i * C + c] = scalar_t(k.dense_logits ? row[c] : row[c] / static_cast<float>(sum));
    }
  }
  const int64_t bins_n = 15;
  std::vector<double> bins(bins_n * 3, 0.0), sums(3, 0.0);
  std::vector<float> class_sum(C * C, 0.f), class_count(C, 0.f);
  float loss_reduced = NAN, valid_and_scale[2] = {NAN, NAN};
  const float grad_output = 0.5f;
  // Per-row weights and factors (k.per_row), as float as the kernels read them.
  std::vector<float> lam_rows(N), s_rows(N), a_rows(N), d_rows(N), grad_output_rows(N);
  for (int64_t i = 0; i < N; ++i) {
    const float share = static_cast<float>(i % 3 + 1) / 3.f;
    lam_rows[i] = static_cast<float>(i % 5) / 4.f;
    s_rows[i] = static_cast<float>(k.s) * share;
    a_rows[i] = static_cast<float>(k.a) * share;
    d_rows[i] = static_cast<float>(k.d) * share;
    grad_output_rows[i] = 0.25f * static_cast<float>(1 + i % 4);
  }

  psl::RowJob<scalar_t> job;
  job.rows = N;
  job.classes = C;
  job.logits = x.data();
  job.labels = y.data();
  if (k.mix) {
    job.labels2 = y2.data();
    job.lam.value = static_cast<float>(k.lam);
  }
  job.smoothing.value = static_cast<float>(k.s);
  if (k.table) {
    job.table = table.data();
    job.table_weight.value = static_cast<float>(k.a);
  }
  if (k.dense) {
    job.dense = dense.data();
    job.dense_weight.value = static_cast<float>(k.d);
    job.dense_logits = k.dense_logits;
    job.inv_temperature = static_cast<float>(1.0 / k.temperature);
  }
  if (!k.statistics_only) {
    job.loss = loss.data();
    job.grad = grad.data();
  }
  if (k.reduction) {
    job.reduction = k.reduction;
    job.loss_reduced = &loss_reduced;
    job.valid_and_scale = valid_and_scale;
    job.grad_output = &grad_output;
  }
  if (k.per_row) {
    job.lam.values = k.mix ? lam_rows.data() : nullptr;
    job.smoothing.values = s_rows.data();
    job.table_weight.values = a_rows.data();
    job.dense_weight.values = d_rows.data();
    if (!k.reduction) {
      job.grad_output = grad_output_rows.data();
      job.grad_output_per_row = true;
    }
  }
  job.calib_bins = bins.data();
  job.calib_sums = sums.data();
  job.n_bins = bins_n;
  job.class_sum = class_sum.data();
  job.class_count = class_count.data();
  const psl::RowStatus status = run_rows(job);
  if (status.code != psl::kRowOk) {
    std::printf("FAIL: unexpected row error %d at row %lld\n", status.code, static_cast<long long>(status.row));
    ++failures;
    return;
  }

  int64_t valid = 0;
  for (int64_t i = 0; i < N; ++i) valid += y[i] != -100;
  const double grad_factor = k.reduction == 0 ? 1.0 : grad_output / (k.reduction == 1 ? double(valid) : 1.0);
  const double grad_tol = grad_tolerance<scalar_t>();
  std::vector<double> want_bins(bins_n * 3, 0.0), want_sum(C * C, 0.0), want_count(C, 0.0);
  double want_nll = 0, want_brier = 0, want_nonfinite = 0, want_loss_sum = 0;
  for (int64_t i = 0; i < N; ++i) {
    std::vector<double> xi(C);
    for (int64_t c = 0; c < C; ++c) xi[c] = static_cast<float>(x[i * C + c]);
    if (k.statistics_only) {
      // Neither output is written: the loss stays as allocated (0), the gradient at its sentinel.
      expect_close(loss[i], 0, 0, "statistics only: loss", i);
      for (int64_t c = 0; c < C; ++c) {
        expect_close(static_cast<float>(grad[i * C + c]), static_cast<float>(unwritten), 0, "statistics only: grad", i);
      }
    }
    if (y[i] == -100) {
      if (k.statistics_only) continue;
      expect_close(loss[i], 0, 0, "ignored loss", i);
      for (int64_t c = 0; c < C; ++c) expect_close(static_cast<float>(grad[i * C + c]), 0, 0, "ignored grad", i);
      continue;
    }
    if (nonfinite_row(k, i)) {
      want_nonfinite += 1;
      want_loss_sum = NAN;  // a reduction over a NaN row is NaN, as in F.cross_entropy
      if (k.statistics_only) continue;
      expect_close(std::isnan(loss[i]), 1, 0, "non-finite row: loss NaN", i);
      for (int64_t c = 0; c < C; ++c) {
        expect_close(std::isnan(static_cast<float>(grad[i * C + c])), 1, 0, "non-finite row: grad NaN", i);
      }
      continue;
    }
    double m = -INFINITY, z = 0;
    int64_t argmax = 0;
    for (int64_t c = 0; c < C; ++c) if (xi[c] > m) { m = xi[c]; argmax = c; }
    for (int64_t c = 0; c < C; ++c) z += std::exp(xi[c] - m);
    const double lse = m + std::log(z);
    std::vector<double> D(C, 0.0);
    if (k.dense) {
      auto dense_at = [&](int64_t c) { return double(static_cast<float>(dense[i * C + c])); };
      double dm = -INFINITY, dz = 0;
      for (int64_t c = 0; c < C; ++c) dm = std::max(dm, dense_at(c) / k.temperature);
      for (int64_t c = 0; c < C; ++c) dz += std::exp(dense_at(c) / k.temperature - dm);
      for (int64_t c = 0; c < C; ++c) {
        D[c] = k.dense_logits ? std::exp(dense_at(c) / k.temperature - dm) / dz : dense_at(c);
      }
    }
    const double lam = !k.mix ? 1.0 : k.per_row ? lam_rows[i] : k.lam;
    const int64_t yb = k.mix ? y2[i] : y[i];
    const double s = k.per_row ? s_rows[i] : k.s;
    const double a = !k.table ? 0 : k.per_row ? a_rows[i] : k.a, d = !k.dense ? 0 : k.per_row ? d_rows[i] : k.d;
    const double row_grad_factor = k.per_row && !k.reduction ? grad_output_rows[i] : grad_factor;
    double l = 0, mass = 0, brier = 0;
    std::vector<double> t(C);
    for (int64_t c = 0; c < C; ++c) {
      const double h = lam * (c == y[i]) + (1 - lam) * (c == yb);
      const double T = k.table ? lam * table[y[i] * C + c] + (1 - lam) * table[yb * C + c] : 0;
      t[c] = (1 - s - a - d) * h + s / C + a * T + d * D[c];
      if (t[c] != 0) l -= t[c] * (xi[c] - lse);
      mass += t[c];
    }
    want_loss_sum += l;
    if (!k.statistics_only) expect_close(loss[i], l, 2e-5, "loss", i);
    for (int64_t c = 0; c < C; ++c) {
      const double p = std::exp(xi[c] - lse);
      if (!k.statistics_only) {
        expect_close(static_cast<float>(grad[i * C + c]), row_grad_factor * (p * mass - t[c]), grad_tol, "grad",
                     i * C + c);
      }
      brier += (p - (c == y[i])) * (p - (c == y[i]));
    }
    const double conf = std::exp(m - lse);
    int64_t b = static_cast<int64_t>(std::ceil(conf * bins_n)) - 1;
    b = std::min<int64_t>(std::max<int64_t>(b, 0), bins_n - 1);
    want_bins[b * 3] += 1;
    want_bins[b * 3 + 1] += conf;
    want_bins[b * 3 + 2] += argmax == y[i];
    want_nll += lse - xi[y[i]];
    want_brier += brier;
    if (argmax == y[i]) {
      want_count[y[i]] += 1;
      for (int64_t c = 0; c < C; ++c) want_sum[y[i] * C + c] += std::exp(xi[c] - lse);
    }
  }
  for (int64_t j = 0; j < bins_n * 3; ++j) expect_close(bins[j], want_bins[j], 1e-5, "bins", j);
  expect_close(sums[0], want_nll, 1e-5, "nll sum", 0);
  expect_close(sums[1], want_brier, 1e-5, "brier sum", 0);
  expect_close(sums[2], want_nonfinite, 0, "non-finite rows", 0);
  for (int64_t j = 0; j < C; ++j) expect_close(class_count[j], want_count[j], 0, "class_count", j);
  for (int64_t j = 0; j < C * C; ++j) expect_close(class_sum[j], want_sum[j], 1e-5, "class_sum", j);
  if (k.reduction) {
    expect_close(valid_and_scale[0], valid, 0, "valid rows", 0);
    expect_close(loss_reduced, k.reduction == 1 ? want_loss_sum / valid : want_loss_sum, 2e-5, "reduced loss", 0);
  }
}

void bad_label_reports_row() {
  std::vector<float> x(3 * 4, 0.5f), loss(3);
  std::vector<int64_t> y = {0, 7, 1};
  psl::RowJob<float> job;
  job.rows = 3;
  job.classes = 4;
  job.logits = x.data();
  job.labels = y.data();
  job.loss = loss.data();
  const psl::RowStatus status = run_rows(job);
  if (status.code != psl::kBadLabel || status.row != 1) {
    std::printf("FAIL: bad label: code %d row %lld, want %d row 1\n", status.code,
                static_cast<long long>(status.row), psl::kBadLabel);
    ++failures;
  }
}

// grad *= factor row by row (a backward's grad_output); a factor of 1 leaves its row untouched.
void scale_rows_by_factor() {
  const int64_t N = 5, C = 300;
  std::vector<float> grad(N * C), factor = {2.f, 1.f, -0.5f, 0.f, 1.f};
  for (int64_t j = 0; j < N * C; ++j) grad[j] = static_cast<float>(j % 17) - 8.f;
  const std::vector<float> before = grad;
  scale_rows(grad.data(), N, C, factor.data());
  for (int64_t j = 0; j < N * C; ++j) expect_close(grad[j], before[j] * factor[j / C], 0, "scaled grad", j);
}

// A case drawn at random: any class count (a whole number of 16-byte vectors or not, blocks of one warp to
// sixteen), any target parts, reduction, per-row weights, ties and non-finite logits, also in combinations no
// fixed case has; masked classes only where no weight falls on them and no logit is non-finite (a masked
// class could hide that logit).
Case random_case(std::mt19937& rng) {
  auto chance = [&](double p) { return std::bernoulli_distribution(p)(rng); };
  auto uniform = [&](double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); };
  auto integer = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  Case k{};
  k.n = integer(1, 12);
  k.c = chance(0.5) ? 8 * integer(1, 600) : integer(1, 5000);
  k.lam = k.temperature = 1;
  if (chance(0.2)) {  // as the statistics ops run the kernel: labels only
    k.statistics_only = true;
  } else {
    k.mix = chance(0.5), k.table = chance(0.5), k.dense = chance(0.5), k.ignore = chance(0.5);
    k.dense_logits = k.dense && chance(0.5);
    k.s = chance(0.6) ? uniform(0, 0.3) : 0;
    k.a = k.table ? uniform(0, 0.3) : 0;
    k.d = !k.dense ? 0 : chance(0.2) ? 1 - k.s - k.a : uniform(0, 0.4);
    k.lam = k.mix ? uniform(0, 1) : 1;
    k.temperature = uniform(0.5, 3);
    k.reduction = static_cast<int>(integer(0, 2));
    k.per_row = chance(0.3);
  }
  k.nonfinite = chance(0.2) ? (chance(0.5) ? INFINITY : NAN) : 0;
  k.ties = chance(0.3);
  k.masked = k.nonfinite == 0 && k.s == 0 && k.a == 0 && (!k.dense || !k.dense_logits) && chance(0.3);
  return k;
}

void print_case(const Case& k) {
  std::printf("  in the random case n=%lld c=%lld mix=%d table=%d dense=%d dense_logits=%d ignore=%d s=%g a=%g d=%g "
              "lam=%g T=%g nonfinite=%g reduction=%d masked=%d statistics_only=%d ties=%d per_row=%d\n",
              static_cast<long long>(k.n), static_cast<long long>(k.c), k.mix, k.table, k.dense, k.dense_logits,
              k.ignore, k.s, k.a, k.d, k.lam, k.temperature, k.nonfinite, k.reduction, k.masked, k.statistics_only,
              k.ties, k.per_row);
}

}  // namespace

// test_row_kernel [RANDOM_CASES [SEED]]: the fixed cases, then RANDOM_CASES cases drawn from SEED (default 1),
// each run in the three dtypes. ctest draws some on the builds without a sanitizer; more, with other seeds,
// search further.
int main(int argc, char** argv) {
  const int random_cases = argc > 1 ? std::atoi(argv[1]) : 0;
  const unsigned seed = argc > 2 ? static_cast<unsigned>(std::atol(argv[2])) : 1u;
  std::mt19937 rng(1234);
  const Case cases[] = {
      {7, 1, false, false, false, false, false, 0.0, 0, 0, 1, 1},
      {9, 10, false, false, false, false, true, 0.1, 0, 0, 1, 1},
      {5, 1000, true, false, false, false, false, 0.1, 0, 0, 0.3, 1},
      {6, 37, true, true, false, false, true, 0.05, 0.4, 0, 0.7, 1},
      {4, 129, false, false, true, false, false, 0.0, 0, 1.0, 1, 1},
      {8, 64, true, true, true, true, true, 0.1, 0.2, 0.3, 0.6, 2.5},
      {300, 17, false, false, false, false, false, 0.2, 0, 0, 1, 1},  // several parallel chunks
      {40, 37, false, false, false, false, true, 0.0, 0, 0, 1, 1, INFINITY},  // hard labels: the loss was finite
      {40, 37, false, false, false, false, false, 0.1, 0, 0, 1, 1, INFINITY},
      {24, 64, true, true, true, true, true, 0.1, 0.2, 0.3, 0.6, 2.5, INFINITY},
      {24, 1000, true, true, true, true, false, 0.1, 0.2, 0.3, 0.6, 2.5, NAN},
      // Rows long enough for blocks of several warps on CUDA (4 warps of vectors; 16 warps one class a load).
      {6, 3000, true, true, true, true, true, 0.1, 0.2, 0.3, 0.6, 2.5, 0, 1},
      {5, 2053, false, false, false, false, true, 0.1, 0, 0, 1, 1, 0, 1},
      {7, 1000, true, false, true, false, true, 0.0, 0, 0.5, 0.4, 1, 0, 2},
      // Masked classes: the guarded second sum of the target parts (dense probabilities; a table of weight 0).
      {6, 64, false, false, true, false, false, 0.0, 0, 0.6, 1, 1, 0, 0, true},
      {5, 3000, true, true, true, false, true, 0.0, 0.0, 1.0, 0.7, 1, 0, 1, true},
      // Statistics alone, as the calibration and class-statistics ops run the kernel.
      {9, 1000, false, false, false, false, true, 0.0, 0, 0, 1, 1, INFINITY, 0, false, true},
      {6, 37, false, false, false, false, false, 0.0, 0, 0, 1, 1, 0, 0, false, true},
      // Ties of the max, within a vector and across the block's threads.
      {16, 4096, false, false, false, false, false, 0.1, 0, 0, 1, 1, 0, 0, false, false, true},
      {12, 777, true, true, true, true, true, 0.1, 0.2, 0.3, 0.6, 2.5, 0, 0, false, false, true},
      {12, 2000, false, false, false, false, false, 0.0, 0, 0, 1, 1, 0, 0, false, true, true},
      // Weights one per row, with a grad_output per row, and with 'mean'.
      {10, 3000, true, true, true, true, true, 0.1, 0.2, 0.6, 0.5, 2.0, 0, 0, false, false, false, true},
      {9, 37, true, true, true, false, false, 0.3, 0.3, 0.3, 0.5, 1, 0, 1, false, false, false, true},
  };
  for (const Case& k : cases) run_case<float>(k, rng);
  // The 16-bit logits: eight per 16-byte load on CUDA, and bf16's conversion by a shift of the bits.
  for (const Case& k : cases) run_case<c10::Half>(k, rng);
  for (const Case& k : cases) run_case<c10::BFloat16>(k, rng);
  std::mt19937 draw(seed);
  for (int i = 0; i < random_cases; ++i) {
    const Case k = random_case(draw);
    const int before = failures;
    run_case<float>(k, draw);
    run_case<c10::Half>(k, draw);
    run_case<c10::BFloat16>(k, draw);
    if (failures > before) print_case(k);
  }
  bad_label_reports_row();
  scale_rows_by_factor();
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("row kernel (%s): all checks passed (%zu fixed cases and %d random ones of seed %u, each in float32, "
              "float16 and bfloat16)\n", build_name().c_str(), std::size(cases), random_cases, seed);
  return 0;
}
