// Per-vector arithmetic of the CUDA row kernel's two passes over a row (../soft_ce/cuda/row_device.cuh),
// written for host and device so that the C++ tests (tests/cpp/test_row_passes.cpp) run this very code on
// the CPU: the CUDA kernel's math is checked on every CI run, not only where a GPU is lent.
//
// Pass 1: each thread folds the vectors of the row that it reads into a RowState: an online softmax of the
// logits (Milakov & Gimelshein, arXiv:1805.02867) — max, sum exp(x - max), sum exp(x - max)^2 for the Brier
// score, and the first vector that holds the max (the argmax, resolved to one element once per row) — plus
// the sums that the target needs. States of different threads merge in any order (the block reduction).
// Pass 2: the softmax and the gradient elements of one vector.
//
// Written for few instructions per element, since they bounded the kernel (the bf16 and calibration launches
// were issue-bound, docs/benchmarks.md): per element one fmax, one exp (a subtract, a multiply and the SFU's
// ex2) and one add per sum; the max update, its rescaling and the argmax bookkeeping once per group of
// vectors; sums of x rather than of x - x_y (the label's logit is subtracted once per row, as in the CPU
// kernel); the two spikes of the hard part added only in the vectors that hold y and y2.
#pragma once

#include "row_math.h"

namespace psl {

// 2^x. float on the device: the SFU's approximation (2 ulp), results below 2^-126 flushed to zero (nothing
// in a sum that holds exp(0) = 1); on the host std::exp2. double: exp2.
PSL_HD float exp2_approx(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::exp2(x);
#endif
}
PSL_HD double exp2_approx(double x) { return exp2(x); }

constexpr double kLog2e = 1.4426950408889634;  // log2(e): exp(x) = 2^(x log2(e))

// exp(x - m): exactly 1 at x = m; 0 for x = -inf and finite m.
template <typename acc_t>
PSL_HD acc_t exp_minus(acc_t x, acc_t m) {
  return exp2_approx((x - m) * acc_t(kLog2e));
}

// The larger of a and b, ignoring NaN (one instruction on the device): a running max is never NaN, while
// a NaN logit still makes its row's sums NaN.
PSL_HD float max_ignoring_nan(float a, float b) { return fmaxf(a, b); }
PSL_HD double max_ignoring_nan(double a, double b) { return fmax(a, b); }

// The factor that takes a sum of exp(x - from) to a sum of exp(x - to), for to >= from: 1 when they are
// equal (both -inf included), 0 when `from` is -inf (an empty sum).
template <typename acc_t>
PSL_HD acc_t rescale(acc_t from, acc_t to) {
  return from == to ? acc_t(1) : exp_minus(from, to);
}

// The base that exps are taken against: the max, or 0 while the max is -inf (then every exp is 0).
template <typename acc_t>
PSL_HD acc_t exp_base(acc_t max) {
  return max == acc_t(-INFINITY) ? acc_t(0) : max;
}

constexpr int kNoVector = 0x7fffffff;  // max_vector of a state that has seen no finite logit (C <= kMaxClasses)

// One thread's (and, merged, one block's) view of a row after pass 1.
template <typename acc_t>
struct RowState {
  acc_t max, sum, sum_sq;       // online softmax: max, sum exp(x - max), sum exp(x - max)^2
  int max_vector;               // the first vector (index among the row's vectors) holding `max`
  acc_t sum_x;                  // sum x
  acc_t table_dot, table_mass;  // sum T x, sum T  (T = lam S[y] + (1 - lam) S[y2])
  acc_t dense_max, dense_sum;   // dense logits: online softmax of z = dense / temperature
  acc_t dense_dot, dense_mass;  // dense probabilities: sum D x, sum D; dense logits: sum exp(z - dense_max) x

  PSL_HD void init() {
    max = acc_t(-INFINITY); sum = 0; sum_sq = 0; max_vector = kNoVector; sum_x = 0;
    table_dot = 0; table_mass = 0; dense_max = acc_t(-INFINITY); dense_sum = 0; dense_dot = 0; dense_mass = 0;
  }

  // The target's sums of `o` in place of this state's (the guarded second sum of a row).
  PSL_HD void take_target_sums(const RowState& o) {
    table_dot = o.table_dot; table_mass = o.table_mass;
    dense_max = o.dense_max; dense_sum = o.dense_sum; dense_dot = o.dense_dot; dense_mass = o.dense_mass;
  }

  // Adds the state `o` of other logits of the row. Ties of the max go to the earlier vector, so the argmax
  // is the first index of the maximum, as torch.argmax.
  template <bool kTable, bool kDense>
  PSL_HD void merge(const RowState& o, bool dense_logits) {
    if (o.max > max || (o.max == max && o.max_vector < max_vector)) max_vector = o.max_vector;
    const acc_t m = max_ignoring_nan(max, o.max);
    const acc_t a = rescale(max, m), b = rescale(o.max, m);
    sum = sum * a + o.sum * b;
    sum_sq = sum_sq * (a * a) + o.sum_sq * (b * b);
    max = m;
    sum_x += o.sum_x;
    if (kTable) {
      table_dot += o.table_dot;
      table_mass += o.table_mass;
    }
    if (kDense && dense_logits) {
      const acc_t dm = max_ignoring_nan(dense_max, o.dense_max);
      const acc_t da = rescale(dense_max, dm), db = rescale(o.dense_max, dm);
      dense_sum = dense_sum * da + o.dense_sum * db;
      dense_dot = weighted(da, dense_dot) + weighted(db, o.dense_dot);  // an exp that underflowed: 0, not NaN
      dense_max = dm;
    } else if (kDense) {
      dense_dot += o.dense_dot;
      dense_mass += o.dense_mass;
    }
  }
};

// Folds U vectors of VEC logits into the state: x[u] is vector vec[u] of the row, vec increasing from call
// to call. The max is updated once for the U vectors together.
template <int U, int VEC, typename acc_t>
PSL_HD void add_logits(RowState<acc_t>& st, const acc_t (&x)[U][VEC], const int (&vec)[U]) {
  acc_t vmax[U];
  PSL_UNROLL
  for (int u = 0; u < U; ++u) {
    vmax[u] = x[u][0];
    PSL_UNROLL
    for (int k = 1; k < VEC; ++k) vmax[u] = max_ignoring_nan(vmax[u], x[u][k]);
  }
  acc_t group_max = vmax[0];
  PSL_UNROLL
  for (int u = 1; u < U; ++u) group_max = max_ignoring_nan(group_max, vmax[u]);
  int first = vec[0];
  PSL_UNROLL
  for (int u = U - 1; u >= 0; --u) first = vmax[u] == group_max ? vec[u] : first;
  if (group_max > st.max) st.max_vector = first;  // strictly: an earlier vector keeps a tie
  const acc_t m = max_ignoring_nan(st.max, group_max);
  const acc_t a = rescale(st.max, m);
  st.sum *= a;
  st.sum_sq *= a * a;
  st.max = m;
  const acc_t base = exp_base(m);
  PSL_UNROLL
  for (int u = 0; u < U; ++u) {
    PSL_UNROLL
    for (int k = 0; k < VEC; ++k) {
      const acc_t e = exp_minus(x[u][k], base);
      st.sum += e;
      st.sum_sq += e * e;
      st.sum_x += x[u][k];
    }
  }
}

// w * x, and with kGuard 0 where w is 0 (weighted, row_math.h). The first pass over a row takes the plain
// product, one fused multiply-add per element; a row where that met 0 * -inf (a masked class that the
// target gives no weight) has NaN sums and is summed again with the guard (needs_guarded_sums).
template <bool kGuard, typename acc_t>
PSL_HD acc_t weight_times(acc_t w, acc_t x) {
  return kGuard ? weighted(w, x) : w * x;
}

// dot += sum_k w[k] x[k], mass += sum_k w[k] over one vector: the class-table part (w = lam S[y] + (1 - lam)
// S[y2] at its classes, into table_dot and table_mass) and the dense probabilities (into dense_dot, dense_mass).
template <bool kGuard, int VEC, typename acc_t>
PSL_HD void add_weighted(acc_t& dot, acc_t& mass, const acc_t (&x)[VEC], const acc_t (&w)[VEC]) {
  PSL_UNROLL
  for (int k = 0; k < VEC; ++k) {
    dot += weight_times<kGuard>(w[k], x[k]);
    mass += w[k];
  }
}

// Per-sample part of one vector, d: dense logits (D = softmax(d / temperature)).
template <bool kGuard, int VEC, typename acc_t>
PSL_HD void add_dense_logits(RowState<acc_t>& st, const acc_t (&x)[VEC], const acc_t (&d)[VEC],
                             acc_t inv_temperature) {
  acc_t z[VEC];
  acc_t zmax = acc_t(-INFINITY);
  PSL_UNROLL
  for (int k = 0; k < VEC; ++k) {
    z[k] = d[k] * inv_temperature;
    zmax = max_ignoring_nan(zmax, z[k]);
  }
  const acc_t m = max_ignoring_nan(st.dense_max, zmax);
  const acc_t a = rescale(st.dense_max, m);
  st.dense_sum *= a;
  st.dense_dot = weighted(a, st.dense_dot);
  st.dense_max = m;
  const acc_t base = exp_base(m);
  PSL_UNROLL
  for (int k = 0; k < VEC; ++k) {
    const acc_t e = exp_minus(z[k], base);
    st.dense_sum += e;
    st.dense_dot += weight_times<kGuard>(e, x[k]);
  }
}

// Whether the target's sums of a merged state met 0 * -inf and must be summed again with the guard: they are
// NaN while the logits' own sum is not (a NaN logit makes that NaN too, and then the row's loss is NaN anyway).
template <typename acc_t>
PSL_HD bool needs_guarded_sums(const RowState<acc_t>& st) {
  const auto is_nan = [](acc_t v) { return v != v; };
  return !is_nan(st.sum) && (is_nan(st.table_dot) || is_nan(st.dense_dot));
}

// A row's totals from its merged state, given its label's logit x_y.
template <typename acc_t>
struct RowTotals {
  acc_t lse = 0;        // log sum exp x
  acc_t dense_lse = 0;  // dense logits: log sum exp(dense / temperature); else 0
  acc_t base = 0;       // the max (exp_base), and log of sum exp(x - base): the loss, the NLL and softmax_at
  acc_t log_sum = 0;    // take these rather than lse, whose rounding costs precision at logits far from 0
  RowSums<acc_t> sums;
};

template <typename acc_t>
PSL_HD RowTotals<acc_t> row_totals(const RowState<acc_t>& st, acc_t x_y, int64_t C, bool dense_logits) {
  RowTotals<acc_t> r;
  const acc_t shift = row_shift(x_y, st.max);
  r.base = exp_base(st.max);
  r.log_sum = log(st.sum);
  r.lse = st.max + r.log_sum;
  r.sums.shift = shift;
  r.sums.lse_shifted = lse_minus(r.base, r.log_sum, shift);
  r.sums.shifted_sum = st.sum_x - acc_t(C) * shift;
  r.sums.table_dot = st.table_dot - st.table_mass * shift;
  r.sums.table_mass = st.table_mass;
  if (dense_logits) {
    r.sums.dense_dot = st.dense_dot / st.dense_sum - shift;
    r.sums.dense_mass = 1;
    r.dense_lse = st.dense_max + log(st.dense_sum);
  } else {
    r.sums.dense_dot = st.dense_dot - st.dense_mass * shift;
    r.sums.dense_mass = st.dense_mass;
    r.dense_lse = 0;
  }
  return r;
}

// What pass 2 needs of a row: the target's coefficients with the gradient factor f (reduction scale times
// upstream gradient) folded in, so that an element costs one multiply-add before the target's own parts.
// The CPU kernel's gradient sweep uses it too.
template <typename acc_t>
struct GradRow {
  acc_t base, log2_sum;        // of the row's softmax (softmax_at)
  acc_t dense_lse;
  acc_t mass_f;                // sum(t) f
  acc_t uniform_f;             // s / C f
  acc_t table_f, dense_f;      // a f, d f
  acc_t hard_y_f, hard_y2_f;   // (1 - s - a - d) lam f, (1 - s - a - d) (1 - lam) f
  int y, y2;
};

template <typename acc_t>
PSL_HD GradRow<acc_t> grad_row(const RowTarget<acc_t>& t, const RowTotals<acc_t>& r, int64_t C, acc_t f) {
  GradRow<acc_t> g;
  g.base = r.base;
  g.log2_sum = r.log_sum * acc_t(kLog2e);
  g.dense_lse = r.dense_lse;
  g.mass_f = target_mass(t, r.sums, C) * f;
  g.uniform_f = t.uniform * f;
  g.table_f = t.table_weight * f;
  g.dense_f = t.dense_weight * f;
  g.hard_y_f = t.hard * t.lam * f;
  g.hard_y2_f = t.hard * (acc_t(1) - t.lam) * f;
  g.y = static_cast<int>(t.y);
  g.y2 = static_cast<int>(t.y2);
  return g;
}

// softmax(x)_c = 2^((x_c - base) log2(e) - log2_sum): a subtract and a multiply-add, as exp(x - lse) costs,
// but with x_c - base exact where exp(x - lse) would round lse (at |x| = 1e4 by 1e-3: p off by 0.1%).
template <typename acc_t>
PSL_HD acc_t softmax_at(acc_t x, acc_t base, acc_t log2_sum) {
  return exp2_approx((x - base) * acc_t(kLog2e) - log2_sum);
}

// p = softmax(x) over one vector.
template <int VEC, typename acc_t>
PSL_HD void softmax_vector(const acc_t (&x)[VEC], acc_t base, acc_t log2_sum, acc_t (&p)[VEC]) {
  PSL_UNROLL
  for (int k = 0; k < VEC; ++k) p[k] = softmax_at(x[k], base, log2_sum);
}

// g[offset] -= v when the vector holds that class (the label's spike: one vector per row).
template <int VEC, typename acc_t>
PSL_HD void subtract_at(acc_t (&g)[VEC], int offset, acc_t v) {
  if (offset >= 0 && offset < VEC) {
    PSL_UNROLL
    for (int k = 0; k < VEC; ++k) {
      if (k == offset) g[k] -= v;
    }
  }
}

// The gradient (p sum(t) - t) f of the vector at class c0, from its softmax p, its class-table mixture w
// (kTable) and its dense values d (kDense: probabilities, or logits with dense_logits).
template <int VEC, bool kTable, bool kDense, typename acc_t>
PSL_HD void grad_vector(const GradRow<acc_t>& r, const acc_t (&p)[VEC], const acc_t (&w)[VEC],
                        const acc_t (&d)[VEC], bool dense_logits, acc_t inv_temperature, int c0,
                        acc_t (&g)[VEC]) {
  PSL_UNROLL
  for (int k = 0; k < VEC; ++k) {
    g[k] = p[k] * r.mass_f - r.uniform_f;
    if (kTable) g[k] -= r.table_f * w[k];
    if (kDense) g[k] -= r.dense_f * (dense_logits ? exp_minus(d[k] * inv_temperature, r.dense_lse) : d[k]);
  }
  subtract_at(g, r.y - c0, r.hard_y_f);
  subtract_at(g, r.y2 - c0, r.hard_y2_f);
}

}  // namespace psl
