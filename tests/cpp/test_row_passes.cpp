// C++ tests of the CUDA row kernel's arithmetic (csrc/common/row_passes.h), run on the host (ctest), so that
// CI checks the CUDA kernel's math where no GPU is lent. The driver below does per row what
// csrc/soft_ce/cuda/row_device.cuh does per block: pass 1 strided over `threads` threads, U vectors per
// step; the block reduction in the same butterfly order (a warp's lanes, then the warps' lane 0); finishing
// the row; pass 2 per vector. Every output is compared with a direct double-precision evaluation of the
// DESIGN.md formulas, written independently of row_math.h and row_passes.h.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <type_traits>
#include <vector>

#include "../../csrc/common/row_passes.h"

namespace {

int failures = 0;

void expect_close(double got, double want, double atol, double rtol, const char* what, long long i) {
  const bool same = got == want || (std::isnan(got) && std::isnan(want));  // infinities included
  if (!same && !(std::fabs(got - want) <= atol + rtol * std::fabs(want))) {
    if (failures < 30) std::printf("FAIL %s[%lld]: got %.9g, want %.9g\n", what, i, got, want);
    ++failures;
  }
}

struct Case {
  const char* name;
  int C, threads, vec;
  bool mix, table, dense, dense_logits;
  double s, a, d, lam, temperature;
  int values;  // 0 normal, 1 whole numbers (ties of the max), 2 with -inf, 3 with a NaN, 4 all -inf, 5 0/1,
              // 6 with -inf at the label too, 7 with -inf at the mixup partner label, 8 far from 0 (+3e4),
              // 9 with +inf (an fp16 overflow)
};

using State = psl::RowState<float>;

// The block reduction of row_device.cuh: butterfly over each warp's 32 lanes, then over the warps' lane 0.
template <bool kTable, bool kDense>
State block_reduce(std::vector<State> s, bool dense_logits) {
  const int threads = static_cast<int>(s.size()), warps = threads / 32;
  auto butterfly = [&](std::vector<State>& lanes, int first_mask) {
    for (int mask = first_mask; mask > 0; mask >>= 1) {
      std::vector<State> next = lanes;
      for (size_t i = 0; i < lanes.size(); ++i) {
        const size_t base = i / 32 * 32, j = base + ((i - base) ^ static_cast<size_t>(mask));
        next[i].merge<kTable, kDense>(lanes[j], dense_logits);
      }
      lanes = next;
    }
  };
  butterfly(s, 16);
  if (warps == 1) return s[0];
  std::vector<State> second(32);
  for (int lane = 0; lane < 32; ++lane) {
    if (lane < warps) {
      second[lane] = s[lane * 32];
    } else {
      second[lane].init();
    }
  }
  butterfly(second, warps >> 1);
  return second[0];
}

template <int VEC, bool kTable, bool kDense>
void run_row(const Case& k, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.f, 3.f);
  std::uniform_real_distribution<float> uniform(0.f, 1.f);
  std::uniform_int_distribution<int> label(0, k.C - 1);
  const int C = k.C, n_vec = C / VEC;
  std::vector<float> x(C), s_y(C), s_y2(C), dense(C);
  for (auto& v : x) v = k.values == 1 ? std::round(normal(rng) / 2.f) : normal(rng);  // 1: many ties
  if (k.values == 5) for (auto& v : x) v = uniform(rng) < 0.1f ? 1.f : 0.f;  // ties in every group of vectors
  if (k.values == 8) for (auto& v : x) v += 3e4f;  // ulp(3e4) = 2e-3: lse - x_y and x - lse would lose it
  const bool masked = k.values == 2 || k.values == 6 || k.values == 7;  // every third class masked with -inf
  if (masked) for (int c = 0; c < C; c += 3) x[c] = -INFINITY;
  if (k.values == 3) x[C / 2] = NAN;
  if (k.values == 9) x[C / 3] = INFINITY;
  if (k.values == 4) for (auto& v : x) v = -INFINITY;
  int64_t y = label(rng), y2 = k.mix ? label(rng) : y;
  if ((k.values == 2 || k.values == 7) && y % 3 == 0) y = (y + 1) % C;  // a finite label logit
  if (k.values == 6) y = y / 3 * 3;                   // a masked label
  if (k.values == 7) y2 = y2 / 3 * 3;                 // a masked partner
  double sy = 0, sy2 = 0;
  for (int c = 0; c < C; ++c) {
    sy += s_y[c] = uniform(rng);
    sy2 += s_y2[c] = uniform(rng);
    dense[c] = k.dense_logits ? normal(rng) : uniform(rng);
    if (masked && c % 3 == 0) {  // the table and the teacher mask the class too
      s_y[c] = s_y2[c] = 0.f;
      dense[c] = k.dense_logits ? -INFINITY : 0.f;
    }
  }
  for (int c = 0; c < C; ++c) {
    s_y[c] /= static_cast<float>(sy);
    s_y2[c] /= static_cast<float>(sy2);
  }
  if (!k.dense_logits) {
    double sd = 0;
    for (float v : dense) sd += v;
    for (auto& v : dense) v /= static_cast<float>(sd);
  }
  if (y2 == y) s_y2 = s_y;

  // The row's description, resolved by row_math.h as the kernels do.
  std::vector<float> table(static_cast<size_t>(C) * C, 0.f);
  std::copy(s_y.begin(), s_y.end(), table.begin() + y * C);
  std::copy(s_y2.begin(), s_y2.end(), table.begin() + y2 * C);
  psl::RowJob<float> job;
  job.rows = 1;
  job.classes = C;
  job.logits = x.data();
  job.labels = &y;
  if (k.mix) {
    job.labels2 = &y2;
    job.lam.value = static_cast<float>(k.lam);
  }
  job.smoothing.value = static_cast<float>(k.s);
  if (kTable) {
    job.table = table.data();
    job.table_weight.value = static_cast<float>(k.a);
  }
  if (kDense) {
    job.dense = dense.data();
    job.dense_weight.value = static_cast<float>(k.d);
    job.dense_logits = k.dense_logits;
    job.inv_temperature = static_cast<float>(1.0 / k.temperature);
  }
  psl::RowTarget<float> t;
  if (psl::make_row_target(job, 0, t) != psl::kRowOk) {
    std::printf("FAIL %s: the row is invalid\n", k.name);
    ++failures;
    return;
  }

  auto vector_at = [&](const std::vector<float>& src, int v, float (&out)[VEC]) {
    for (int j = 0; j < VEC; ++j) out[j] = src[v * VEC + j];
  };
  auto table_at = [&](int v, float (&w)[VEC]) {  // as table_vector in row_device.cuh
    for (int j = 0; j < VEC; ++j) {
      const int c = v * VEC + j;
      w[j] = t.table_y2 == t.table_y ? t.table_y[c] : t.table_at(c);
    }
  };
  auto add_parts = [&](State& st, const float (&xv)[VEC], int v, auto guard) {
    constexpr bool kGuard = decltype(guard)::value;
    if (kTable) {
      float w[VEC];
      table_at(v, w);
      psl::add_weighted<kGuard>(st.table_dot, st.table_mass, xv, w);
    }
    if (kDense) {
      float d[VEC];
      vector_at(dense, v, d);
      if (k.dense_logits) {
        psl::add_dense_logits<kGuard>(st, xv, d, job.inv_temperature);
      } else {
        psl::add_weighted<kGuard>(st.dense_dot, st.dense_mass, xv, d);
      }
    }
  };
  const std::false_type plain;
  const std::true_type guarded;

  // Pass 1, as pass1() in row_device.cuh.
  constexpr int U = VEC >= 8 || kTable || kDense ? 2 : 4;
  std::vector<State> states(k.threads);
  for (int tid = 0; tid < k.threads; ++tid) {
    State& st = states[tid];
    st.init();
    int v = tid;
    for (; v + (U - 1) * k.threads < n_vec; v += U * k.threads) {
      float xs[U][VEC];
      int index[U];
      for (int u = 0; u < U; ++u) {
        index[u] = v + u * k.threads;
        vector_at(x, index[u], xs[u]);
      }
      psl::add_logits(st, xs, index);
      for (int u = 0; u < U; ++u) add_parts(st, xs[u], index[u], plain);
    }
    for (; v < n_vec; v += k.threads) {
      float xs[1][VEC];
      vector_at(x, v, xs[0]);
      const int index[1] = {v};
      psl::add_logits(st, xs, index);
      add_parts(st, xs[0], v, plain);
    }
  }
  State st = block_reduce<kTable, kDense>(states, k.dense_logits);

  // The guarded second sum of the target's parts, as guarded_target_sums() in row_device.cuh, where pass 1
  // met 0 * -inf: exactly the rows with classes masked in the logits and given no weight by a table or dense
  // part.
  const bool guard = psl::needs_guarded_sums(st);
  expect_close(guard, masked && (kTable || kDense), 0, 0, "guarded second sum", 0);
  if (guard) {
    std::vector<State> parts(k.threads);
    for (int tid = 0; tid < k.threads; ++tid) {
      parts[tid].init();
      for (int v = tid; v < n_vec; v += k.threads) {
        float xs[VEC];
        vector_at(x, v, xs);
        add_parts(parts[tid], xs, v, guarded);
      }
    }
    st.take_target_sums(block_reduce<kTable, kDense>(parts, k.dense_logits));
  }

  // Finishing the row, as finish_row() and row_argmax().
  const float x_y = x[y];
  const psl::RowTotals<float> r = psl::row_totals(st, x_y, C, k.dense_logits);
  int64_t argmax = 0;
  if (st.max_vector != psl::kNoVector) {
    for (int j = VEC - 1; j >= 0; --j) {
      if (x[st.max_vector * VEC + j] == st.max) argmax = st.max_vector * VEC + j;
    }
  }
  const float loss = psl::row_loss(t, r.sums, C, x_y, x[y2]);
  const float f = 0.75f;  // a gradient factor other than 1
  const psl::GradRow<float> g_row = psl::grad_row(t, r, C, f);

  // The direct evaluation.
  double m = -INFINITY;
  int64_t want_argmax = 0;
  bool any_nan = false;
  for (int c = 0; c < C; ++c) {
    any_nan |= std::isnan(x[c]);
    if (x[c] > m) {
      m = x[c];
      want_argmax = c;
    }
  }
  double z = 0, z2 = 0;
  for (int c = 0; c < C; ++c) {
    const double e = std::exp(double(x[c]) - (std::isfinite(m) ? m : 0.0));
    z += e;
    z2 += e * e;
  }
  if (any_nan || m == INFINITY) z = z2 = NAN;  // no softmax: NaN, as in F.cross_entropy
  const double lse = (std::isfinite(m) ? m : 0.0) + std::log(z);
  std::vector<double> D(C, 0.0);
  if (kDense) {
    double dm = -INFINITY, dz = 0;
    for (int c = 0; c < C; ++c) dm = std::max(dm, double(dense[c]) / k.temperature);
    for (int c = 0; c < C; ++c) dz += std::exp(double(dense[c]) / k.temperature - dm);
    for (int c = 0; c < C; ++c) D[c] = k.dense_logits ? std::exp(double(dense[c]) / k.temperature - dm) / dz : dense[c];
  }
  const double lam = k.mix ? k.lam : 1.0, s = k.s, a = kTable ? k.a : 0, d = kDense ? k.d : 0;
  std::vector<double> target(C);
  double want_loss = 0, mass = 0;
  for (int c = 0; c < C; ++c) {
    const double h = lam * (c == y) + (1 - lam) * (c == y2);
    const double T = kTable ? lam * s_y[c] + (1 - lam) * s_y2[c] : 0;
    target[c] = (1 - s - a - d) * h + s / C + a * T + d * D[c];
    if (target[c] != 0) want_loss -= target[c] * (double(x[c]) - lse);
    mass += target[c];
  }

  const bool finite = std::isfinite(lse);
  expect_close(std::isfinite(r.lse), finite, 0, 0, "lse is finite", 0);
  if (k.values == 4) {
    expect_close(st.max_vector, psl::kNoVector, 0, 0, "no max vector", 0);
    return;
  }
  if (finite) {
    expect_close(st.max, m, 0, 0, "max", 0);
    expect_close(argmax, want_argmax, 0, 0, "argmax", 0);
    expect_close(st.sum, z, 0, 2e-6, "sum exp", 0);
    expect_close(st.sum_sq, z2, 0, 2e-6, "sum exp^2", 0);
    expect_close(r.lse, lse, 2e-6, 1e-6, "lse", 0);
    expect_close(1.0 / st.sum, std::exp(m - lse), 0, 2e-6, "confidence", 0);
    expect_close(loss, want_loss, 2e-5, 2e-5, "loss", 0);  // +inf where a masked class has target weight
  } else {  // a NaN or +inf logit: the loss and (below) every gradient element NaN, so that GradScaler skips
    expect_close(loss, NAN, 0, 0, "loss", 0);
  }

  // Pass 2 of every vector, as pass2() (gradient) in row_device.cuh.
  for (int v = 0; v < n_vec; ++v) {
    float xv[VEC], p[VEC], w[VEC] = {}, dv[VEC] = {}, g[VEC];
    vector_at(x, v, xv);
    psl::softmax_vector(xv, g_row.base, g_row.log2_sum, p);
    if (kTable) table_at(v, w);
    if (kDense) vector_at(dense, v, dv);
    psl::grad_vector<VEC, kTable, kDense>(g_row, p, w, dv, k.dense_logits, job.inv_temperature, v * VEC, g);
    for (int j = 0; j < VEC; ++j) {
      const int c = v * VEC + j;
      const double want_p = finite ? std::exp(double(x[c]) - lse) : NAN;
      expect_close(p[j], want_p, 1e-7, 2e-6, "softmax", c);
      expect_close(g[j], (want_p * mass - target[c]) * f, 1e-6, 1e-5, "grad", c);
    }
  }
}

template <int VEC>
void run_case(const Case& k, std::mt19937& rng) {
  if (k.table && k.dense) return run_row<VEC, true, true>(k, rng);
  if (k.table) return run_row<VEC, true, false>(k, rng);
  if (k.dense) return run_row<VEC, false, true>(k, rng);
  run_row<VEC, false, false>(k, rng);
}

}  // namespace

int main() {
  std::mt19937 rng(4321);
  // name, C, threads, VEC, mix, table, dense, dense_logits, s, a, d, lam, temperature, values
  const Case cases[] = {
      {"one class", 1, 32, 1, false, false, false, false, 0.0, 0, 0, 1, 1, 0},
      {"ls bf16-like", 1000, 32, 8, false, false, false, false, 0.1, 0, 0, 1, 1, 0},
      {"ls fp32-like", 4096, 64, 4, false, false, false, false, 0.1, 0, 0, 1, 1, 0},
      {"ls long row", 32000, 512, 8, false, false, false, false, 0.1, 0, 0, 1, 1, 0},
      {"ls odd C", 4099, 128, 1, false, false, false, false, 0.2, 0, 0, 1, 1, 0},
      {"ties of the max", 2048, 64, 8, false, false, false, false, 0.1, 0, 0, 1, 1, 1},
      {"ties, scalar", 777, 32, 1, false, false, false, false, 0.0, 0, 0, 1, 1, 1},
      {"ties within groups", 4096, 32, 8, false, false, false, false, 0.1, 0, 0, 1, 1, 5},
      {"ties within groups, fp32-like", 4096, 64, 4, false, false, false, false, 0.1, 0, 0, 1, 1, 5},
      {"-inf logits", 960, 32, 4, false, false, false, false, 0.0, 0, 0, 1, 1, 2},
      {"-inf logits, smoothed: loss +inf", 960, 32, 4, false, false, false, false, 0.1, 0, 0, 1, 1, 2},
      {"-inf at the mixup partner: loss +inf", 999, 64, 1, true, false, false, false, 0.0, 0, 0, 0.4, 1, 7},
      {"-inf at the mixup partner, lam 1", 999, 64, 1, true, false, false, false, 0.0, 0, 0, 1.0, 1, 7},
      {"-inf logits, masked in table and dense", 1002, 32, 1, true, true, true, false, 0.0, 0.3, 0.3, 0.6, 1, 2},
      {"-inf logits, masked in dense logits", 1000, 32, 4, false, false, true, true, 0.0, 0, 0.6, 1, 2.0, 2},
      {"-inf at the label: loss +inf", 960, 64, 8, false, false, false, false, 0.0, 0, 0, 1, 1, 6},
      {"-inf at the label, no weight on it", 1002, 32, 1, false, true, true, true, 0.0, 0.5, 0.5, 1, 1, 6},
      {"a NaN logit", 512, 64, 8, false, false, false, false, 0.1, 0, 0, 1, 1, 3},
      {"a +inf logit", 512, 64, 8, false, false, false, false, 0.1, 0, 0, 1, 1, 9},
      {"a +inf logit, every part", 1000, 32, 4, true, true, true, true, 0.1, 0.2, 0.3, 0.6, 2.0, 9},
      {"logits far from 0", 1000, 32, 8, false, false, false, false, 0.0, 0, 0, 1, 1, 8},
      {"logits far from 0, mixup", 1024, 64, 4, true, false, false, false, 0.0, 0, 0, 0.3, 1, 8},
      {"all -inf", 64, 32, 4, false, false, false, false, 0.0, 0, 0, 1, 1, 4},
      {"mixup", 1000, 32, 8, true, false, false, false, 0.1, 0, 0, 0.3, 1, 0},
      {"ols table", 1024, 128, 4, false, true, false, false, 0.0, 0.5, 0, 1, 1, 0},
      {"ols table, mixed", 1000, 32, 8, true, true, false, false, 0.05, 0.4, 0, 0.7, 1, 0},
      {"dense probabilities", 4000, 512, 8, false, false, true, false, 0.0, 0, 1.0, 1, 1, 0},
      {"dense logits (ldl, kd)", 1000, 32, 4, false, false, true, true, 0.1, 0, 0.6, 1, 3.0, 0},
      {"every part", 1024, 64, 8, true, true, true, true, 0.1, 0.2, 0.3, 0.6, 2.5, 1},
      {"every part, scalar", 333, 32, 1, true, true, true, false, 0.1, 0.2, 0.3, 0.4, 1, 0},
  };
  for (const Case& k : cases) {
    for (int repeat = 0; repeat < 3; ++repeat) {
      const int before = failures;
      if (k.vec == 8) run_case<8>(k, rng);
      if (k.vec == 4) run_case<4>(k, rng);
      if (k.vec == 1) run_case<1>(k, rng);
      if (failures != before) std::printf("  in case '%s'\n", k.name);
    }
  }
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("row passes: all checks passed\n");
  return 0;
}
