// The Autograd kernel of pysoftlabel::soft_cross_entropy, for calls that do not come through the Python
// function pysoftlabel.soft_cross_entropy (whose autograd.Function reuses the forward's gradient and gives
// second derivatives and vmap): a graph written by torch.export, torch.ops.pysoftlabel.soft_cross_entropy
// itself. Without one their loss had no gradient, and PyTorch only warned. In C++, as torchvision's ops
// have theirs, so that the Python function's own call of the op pays nothing for it.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace psl {
namespace {

using OptTensor = std::optional<at::Tensor>;
using Signature = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, double, const OptTensor&, double,
    const OptTensor&, const OptTensor&, double, const OptTensor&, const OptTensor&, double, bool, double, int64_t,
    int64_t, const OptTensor&, bool, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&);
constexpr size_t kArguments = 23;

c10::TypedOperatorHandle<Signature> op() {
  static const auto handle = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("pysoftlabel::soft_cross_entropy", "")
                                 .typed<Signature>();
  return handle;
}

OptTensor present(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// The loss's gradient with respect to the logits; the kernel recomputes it in backward, by the same
// arithmetic (the Python function reuses the one its forward wrote instead).
class SoftCrossEntropyFunction : public torch::autograd::Function<SoftCrossEntropyFunction> {
 public:
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& labels,
      const OptTensor& labels2, const OptTensor& lam, double lam_value, const OptTensor& smoothing,
      double smoothing_value, const OptTensor& table, const OptTensor& table_weight, double table_weight_value,
      const OptTensor& dense, const OptTensor& dense_weight, double dense_weight_value, bool dense_logits,
      double temperature, int64_t ignore_index, int64_t reduction, const OptTensor& grad_output,
      bool compute_grad, const OptTensor& class_sum, const OptTensor& class_count, const OptTensor& calib_bins,
      const OptTensor& calib_sums) {
    at::AutoDispatchBelowAutograd below;
    auto [loss, grad] = op().call(logits, labels, labels2, lam, lam_value, smoothing, smoothing_value, table,
                                  table_weight, table_weight_value, dense, dense_weight, dense_weight_value,
                                  dense_logits, temperature, ignore_index, reduction, grad_output, compute_grad,
                                  class_sum, class_count, calib_bins, calib_sums);
    auto value = [](const OptTensor& t) { return t.value_or(at::Tensor()); };
    ctx->save_for_backward({logits, labels, value(labels2), value(lam), value(smoothing), value(table),
                            value(table_weight), value(dense), value(dense_weight)});
    ctx->saved_data["values"] = std::vector<double>{lam_value, smoothing_value, table_weight_value,
                                                    dense_weight_value, temperature};
    ctx->saved_data["dense_logits"] = dense_logits;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["reduction"] = reduction;
    ctx->mark_non_differentiable({grad});
    return {loss, grad};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "pysoftlabel::soft_cross_entropy called directly has no second derivative: call "
                "pysoftlabel.soft_cross_entropy, whose gradient is differentiable");
    torch::autograd::variable_list out(kArguments);  // undefined: only the logits have a gradient
    if (!grads[0].defined()) {
      return out;
    }
    auto s = ctx->get_saved_variables();
    auto v = ctx->saved_data["values"].toDoubleVector();
    at::AutoDispatchBelowAutograd below;
    out[0] = std::get<1>(op().call(s[0], s[1], present(s[2]), present(s[3]), v[0], present(s[4]), v[1],
                                   present(s[5]), present(s[6]), v[2], present(s[7]), present(s[8]), v[3],
                                   ctx->saved_data["dense_logits"].toBool(), v[4],
                                   ctx->saved_data["ignore_index"].toInt(), ctx->saved_data["reduction"].toInt(),
                                   grads[0], true, std::nullopt, std::nullopt, std::nullopt, std::nullopt));
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> soft_cross_entropy_autograd(
    const at::Tensor& logits, const at::Tensor& labels, const OptTensor& labels2, const OptTensor& lam,
    double lam_value, const OptTensor& smoothing, double smoothing_value, const OptTensor& table,
    const OptTensor& table_weight, double table_weight_value, const OptTensor& dense, const OptTensor& dense_weight,
    double dense_weight_value, bool dense_logits, double temperature, int64_t ignore_index, int64_t reduction,
    const OptTensor& grad_output, bool compute_grad, const OptTensor& class_sum, const OptTensor& class_count,
    const OptTensor& calib_bins, const OptTensor& calib_sums) {
  if (at::GradMode::is_enabled()) {
    const std::pair<const char*, const OptTensor*> targets[] = {
        {"lam", &lam}, {"smoothing", &smoothing}, {"table", &table}, {"table_weight", &table_weight},
        {"dense", &dense}, {"dense_weight", &dense_weight}};
    for (const auto& [name, t] : targets) {
      TORCH_CHECK_VALUE(!(t->has_value() && (*t)->requires_grad()),
                        "pysoftlabel::soft_cross_entropy differentiates the logits only, but ", name,
                        " requires grad: call pysoftlabel.soft_cross_entropy, where the reference formula gives "
                        "the target its gradient");
    }
  }
  // The Python function's call (in its autograd.Function's forward, grad mode off), a call under no_grad,
  // and a call for the gradient itself (grad_output given) record nothing.
  if (!at::GradMode::is_enabled() || !logits.requires_grad() || grad_output.has_value()) {
    at::AutoDispatchBelowAutograd below;
    return op().call(logits, labels, labels2, lam, lam_value, smoothing, smoothing_value, table, table_weight,
                     table_weight_value, dense, dense_weight, dense_weight_value, dense_logits, temperature,
                     ignore_index, reduction, grad_output, compute_grad, class_sum, class_count, calib_bins,
                     calib_sums);
  }
  auto out = SoftCrossEntropyFunction::apply(
      logits, labels, labels2, lam, lam_value, smoothing, smoothing_value, table, table_weight, table_weight_value,
      dense, dense_weight, dense_weight_value, dense_logits, temperature, ignore_index, reduction, grad_output,
      compute_grad, class_sum, class_count, calib_bins, calib_sums);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(pysoftlabel, Autograd, m) {
  m.impl("soft_cross_entropy", &soft_cross_entropy_autograd);
}

}  // namespace psl
