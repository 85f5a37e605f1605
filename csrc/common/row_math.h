// Per-row arithmetic of the fused soft-target cross-entropy, shared by the CPU and CUDA kernels.
//
// For row i with logits x (C classes), labels y, y2, mixing weight lam, smoothing s, table weight a,
// dense weight d, class table S and per-sample distribution D, the target is (DESIGN.md)
//
//   t_c = (1 - s - a - d) * (lam [c == y] + (1 - lam) [c == y2])       hard part
//       + s / C                                                         uniform part
//       + a * (lam S[y]_c + (1 - lam) S[y2]_c)                          class-table part
//       + d * D_c                                                       per-sample part
//
//   loss = -sum_c t_c log softmax(x)_c = sum(t) * lse - sum_c t_c x_c
//   dloss/dx_c = softmax(x)_c * sum(t) - t_c
//
// Sums of t_c * x_c are taken over x_c - x_y (the label's logit) so that hard and nearly hard targets
// lose no precision to cancellation: sum(t) * (lse - x_y) - sum_c t_c (x_c - x_y).
//
// A class whose target weight is 0 contributes nothing, even where its logit is -inf (a masked class):
// 0 log 0 = 0, as in F.cross_entropy. Where the label's own logit is -inf the sums are taken against the
// row's max instead, and the loss is +inf when the target gives the label any weight.
//
// Nothing here includes ATen: the CUDA translation unit stays light and compiles in seconds.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define PSL_HD __host__ __device__ __forceinline__
#define PSL_UNROLL _Pragma("unroll")
#else
#define PSL_HD inline
#define PSL_UNROLL
#endif

namespace psl {

// The most classes a row may have: the kernels index the classes of a row with 32-bit integers.
constexpr int64_t kMaxClasses = 0x7fffffff - 1;

// Accumulation type: fp32 for fp32/fp16/bf16 logits, fp64 for fp64 (gradcheck).
template <typename scalar_t> struct OpMath { using type = float; };
template <> struct OpMath<double> { using type = double; };
template <typename scalar_t> using opmath_t = typename OpMath<scalar_t>::type;

// A weight given either as one value for the batch or as one value per row.
template <typename acc_t>
struct PerRow {
  const acc_t* values = nullptr;
  acc_t value = 0;
  PSL_HD acc_t operator()(int64_t row) const { return values ? values[row] : value; }
};

// Everything one launch reads and writes; pointers are contiguous, null when a part is absent.
template <typename scalar_t>
struct RowJob {
  using acc_t = opmath_t<scalar_t>;
  int64_t rows = 0;
  int64_t classes = 0;
  const scalar_t* logits = nullptr;          // rows x classes
  const int64_t* labels = nullptr;           // rows
  const int64_t* labels2 = nullptr;          // rows, or null (then lam is 1)
  PerRow<acc_t> lam{nullptr, acc_t(1)};
  PerRow<acc_t> smoothing;
  PerRow<acc_t> table_weight;
  PerRow<acc_t> dense_weight;
  const acc_t* table = nullptr;              // classes x classes
  const scalar_t* dense = nullptr;           // rows x classes: probabilities, or logits when dense_logits
  bool dense_logits = false;
  acc_t inv_temperature = 1;
  int64_t ignore_index = -100;

  acc_t* loss = nullptr;                     // rows: per-row loss, 0 on ignored rows (null: not wanted)
  int reduction = 0;                         // 0 none, 1 mean, 2 sum (as at::Reduction)
  acc_t* loss_reduced = nullptr;             // one value: the reduced loss (mean or sum)
  acc_t* valid_and_scale = nullptr;          // two values: rows that count, and the gradient scale
  scalar_t* grad = nullptr;                  // rows x classes, or null
  const acc_t* grad_scale = nullptr;         // one value (1 / valid rows for 'mean'), or null for 1
  const acc_t* grad_output = nullptr;        // one value or one per row (grad_output_per_row), or null for 1
  bool grad_output_per_row = false;

  float* class_sum = nullptr;                // classes x classes: softmax rows of correct samples
  float* class_count = nullptr;              // classes
  double* calib_bins = nullptr;              // n_bins x 3: count, confidence sum, correct count
  double* calib_sums = nullptr;              // 3: NLL sum, Brier sum, rows with non-finite logits
  int64_t n_bins = 0;

  PSL_HD bool wants_grad() const { return grad != nullptr; }
};

// Why a row's description is invalid; 0 when it is valid. The kernels report these differently
// (ValueError on the CPU, a device-side trap on CUDA) but decide them here, once.
enum RowError : int {
  kRowOk = 0,
  kBadLabel = 1,
  kBadLabel2 = 2,
  kBadLam = 3,
  kNegativeWeight = 4,
  kWeightsOverOne = 5,
};

PSL_HD const char* row_error_message(int code) {
  switch (code) {
    case kBadLabel: return "labels: a label is out of range [0, C) and is not ignore_index";
    case kBadLabel2: return "labels2: a label is out of range [0, C)";
    case kBadLam: return "lam: a mixing weight is outside [0, 1] or NaN";
    case kNegativeWeight: return "smoothing, table_weight, dense_weight: a weight is negative or NaN";
    case kWeightsOverOne: return "smoothing, table_weight, dense_weight: s + a + d exceeds 1";
    default: return "ok";
  }
}

// The first invalid row a CPU launch met (the kernels never throw: the host side reports it).
struct RowStatus {
  int code = kRowOk;
  int64_t row = -1;
};

// The resolved target description of one row.
template <typename acc_t>
struct RowTarget {
  int64_t y = 0, y2 = 0;
  acc_t lam = 1;
  acc_t hard = 1;           // 1 - s - a - d
  acc_t uniform = 0;        // s / C
  acc_t table_weight = 0;   // a
  acc_t dense_weight = 0;   // d
  const acc_t* table_y = nullptr;
  const acc_t* table_y2 = nullptr;

  // The class-table mixture lam S[y]_c + (1 - lam) S[y2]_c, of the two rows' values at c.
  PSL_HD acc_t mix(acc_t s_y, acc_t s_y2) const { return lam * s_y + (acc_t(1) - lam) * s_y2; }
  PSL_HD acc_t table_at(int64_t c) const { return mix(table_y[c], table_y2[c]); }
};

template <typename scalar_t>
PSL_HD bool row_ignored(const RowJob<scalar_t>& job, int64_t row) {
  return job.labels[row] == job.ignore_index;
}

// Resolves row `row` of `job` into `out`; returns a RowError code. Call only for rows not ignored.
template <typename scalar_t>
PSL_HD int make_row_target(const RowJob<scalar_t>& job, int64_t row,
                           RowTarget<opmath_t<scalar_t>>& out) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t C = job.classes;
  out.y = job.labels[row];
  if (out.y < 0 || out.y >= C) return kBadLabel;
  out.y2 = out.y;
  out.lam = acc_t(1);
  if (job.labels2) {
    out.y2 = job.labels2[row];
    if (out.y2 < 0 || out.y2 >= C) return kBadLabel2;
    out.lam = job.lam(row);
    if (!(out.lam >= acc_t(0) && out.lam <= acc_t(1))) return kBadLam;
  }
  const acc_t s = job.smoothing(row);
  const acc_t a = job.table ? job.table_weight(row) : acc_t(0);
  const acc_t d = job.dense ? job.dense_weight(row) : acc_t(0);
  if (!(s >= acc_t(0) && a >= acc_t(0) && d >= acc_t(0))) return kNegativeWeight;
  // Same tolerance as the Python check: rounding of weights computed in fp32 must not fail.
  if (s + a + d > acc_t(1) + acc_t(1e-6)) return kWeightsOverOne;
  out.hard = acc_t(1) - s - a - d;
  out.uniform = s / acc_t(C);
  out.table_weight = a;
  out.dense_weight = d;
  out.table_y = job.table ? job.table + out.y * C : nullptr;
  out.table_y2 = job.table ? job.table + out.y2 * C : nullptr;
  return kRowOk;
}

// w * v, and 0 where w is 0 whatever v is (0 * -inf would be NaN): a term the target gives no weight.
template <typename acc_t>
PSL_HD acc_t weighted(acc_t w, acc_t v) {
  return w == acc_t(0) ? acc_t(0) : w * v;
}

// The logit that a row's sums are taken against: the label's, or where that is -inf the row's max (0 when
// the max is -inf too: the row then has no finite logit and its loss is NaN).
template <typename acc_t>
PSL_HD acc_t row_shift(acc_t x_y, acc_t max) {
  if (x_y != acc_t(-INFINITY)) return x_y;
  return max == acc_t(-INFINITY) ? acc_t(0) : max;
}

// lse - shift, with lse = max + log(sum exp(x - max)): taken as (max - shift) + log(sum), so that log(sum)
// survives where |max| dwarfs it (at logits of 1e30, lse - shift would round to 0; at 1e4, to 1e-3).
template <typename acc_t>
PSL_HD acc_t lse_minus(acc_t max, acc_t log_sum, acc_t shift) {
  return (max - shift) + log_sum;
}

// Row sums gathered in the pass over the logits, each over x_c - shift (shift: row_shift).
template <typename acc_t>
struct RowSums {
  acc_t shift = 0;         // x_y, or the row's max where x_y is -inf
  acc_t lse_shifted = 0;   // lse - shift (lse_minus)
  acc_t shifted_sum = 0;   // sum_c (x_c - shift)                          (uniform part)
  acc_t table_dot = 0;     // sum_c T_c (x_c - shift), T = lam S[y] + (1 - lam) S[y2]
  acc_t table_mass = 0;    // sum_c T_c (1 for probability rows, 0 for OLS's all-zero first epoch)
  acc_t dense_dot = 0;     // sum_c D_c (x_c - shift)
  acc_t dense_mass = 0;    // sum_c D_c
};

// sum_c t_c.
template <typename acc_t>
PSL_HD acc_t target_mass(const RowTarget<acc_t>& t, const RowSums<acc_t>& r, int64_t C) {
  return t.hard + t.uniform * acc_t(C) + t.table_weight * r.table_mass + t.dense_weight * r.dense_mass;
}

// loss = sum(t) (lse - shift) - sum_c t_c (x_c - shift), given x_y and x_y2 of the row. (With shift = x_y
// the label's own term is exactly 0.)
template <typename acc_t>
PSL_HD acc_t row_loss(const RowTarget<acc_t>& t, const RowSums<acc_t>& r, int64_t C, acc_t x_y, acc_t x_y2) {
  const acc_t dot = weighted(t.hard * t.lam, x_y - r.shift) + weighted(t.hard * (acc_t(1) - t.lam), x_y2 - r.shift) +
                    weighted(t.uniform, r.shifted_sum) + weighted(t.table_weight, r.table_dot) +
                    weighted(t.dense_weight, r.dense_dot);
  return target_mass(t, r, C) * r.lse_shifted - dot;
}

// The gradient scale of a reduction over `valid` rows: 1 / valid for 'mean' (1 when none count).
template <typename acc_t>
PSL_HD acc_t reduction_grad_scale(acc_t valid, int reduction) {
  return reduction == 1 ? acc_t(1) / (valid > acc_t(1) ? valid : acc_t(1)) : acc_t(1);
}

// The reduced loss; 'mean' over zero valid rows is 0 / 0 = NaN, as in F.cross_entropy.
template <typename acc_t>
PSL_HD acc_t reduce_loss(acc_t sum, acc_t valid, int reduction) {
  return reduction == 1 ? sum / valid : sum;
}

// The factor a row's gradient is multiplied by: grad_scale * grad_output.
template <typename scalar_t>
PSL_HD opmath_t<scalar_t> row_grad_factor(const RowJob<scalar_t>& job, int64_t row) {
  using acc_t = opmath_t<scalar_t>;
  acc_t f = job.grad_scale ? job.grad_scale[0] : acc_t(1);
  if (job.grad_output) f *= job.grad_output[job.grad_output_per_row ? row : 0];
  return f;
}

// Calibration bin of a confidence: bin b holds (b/M, (b+1)/M], so 1.0 lands in the last bin.
template <typename acc_t>
PSL_HD int64_t confidence_bin(acc_t confidence, int64_t n_bins) {
  int64_t b = static_cast<int64_t>(ceil(confidence * acc_t(n_bins))) - 1;
  return b < 0 ? 0 : (b >= n_bins ? n_bins - 1 : b);
}

// Multiclass Brier score sum_c (p_c - e_y)^2 = sum_c p_c^2 - 2 p_y + 1.
template <typename acc_t>
PSL_HD acc_t brier_score(acc_t sum_p_squared, acc_t p_y) {
  return sum_p_squared - acc_t(2) * p_y + acc_t(1);
}

PSL_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace psl
