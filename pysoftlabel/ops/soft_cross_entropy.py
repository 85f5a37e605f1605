"""The fused soft-target cross-entropy: public function, backend choice, autograd and fake kernel
over ``torch.ops.pysoftlabel.soft_cross_entropy``."""
import torch
from torch import Tensor

from .. import reference
from .._extension import _C, check_backend, choose_backend
from ..target import SoftTarget, check_logits
from .fake_checks import check_fake_args

__all__ = ["soft_cross_entropy", "SoftCrossEntropyLoss"]

_REDUCTIONS = ("none", "mean", "sum")  # the op's codes, as at::Reduction: 0, 1, 2


def soft_cross_entropy(logits: Tensor, target, reduction: str = "mean", stats=None, calib=None,
                       backend: str = "auto", validate=None) -> Tensor:
    r"""Cross-entropy between ``logits`` and a soft target, fused: the N x C target is never built.

    For row :math:`i` with target :math:`t_i` (see :class:`~pysoftlabel.SoftTarget`),

    .. math::
        \ell_i = -\sum_{c=1}^{C} t_{ic} \log \frac{\exp(x_{ic})}{\sum_{j} \exp(x_{ij})},
        \qquad \frac{\partial \ell_i}{\partial x_i} = \operatorname{softmax}(x_i) \sum_c t_{ic} - t_i

    and, with :math:`V` the rows whose label is not ``ignore_index``,

    .. math::
        \ell = \begin{cases} (\ell_1, \dots, \ell_N) & \text{reduction = 'none'} \\
               \sum_{i \in V} \ell_i & \text{'sum'} \\
               \frac{1}{|V|} \sum_{i \in V} \ell_i & \text{'mean'} \end{cases}

    With ``SoftTarget(labels, smoothing=s)`` this equals ``F.cross_entropy(logits, labels,
    label_smoothing=s)``, also for classes masked with ``-inf`` logits: a class of target weight 0 adds
    nothing (:math:`0 \log 0 = 0`), one with weight makes the loss ``inf``; the gradient stays finite.
    A row with a NaN or ``+inf`` logit (an fp16 forward that overflowed) has a NaN loss and a NaN gradient, as
    in ``F.cross_entropy``, so that a ``GradScaler`` skips the step; ``stats`` and ``calib`` leave it out
    (``calib`` counts it in ``nonfinite``).

    The native kernels read each row of logits once for the loss, write the gradient in the same call
    (when ``logits`` requires grad) and accumulate ``stats`` / ``calib`` in that pass; ``loss.backward()``
    then costs no pass over the logits. Second derivatives (a backward with ``create_graph=True``, as
    gradient penalties take) go through the reference formula, and so do ``torch.func.grad`` and
    ``functional_call`` (functorch differentiates with a graph; MAML's second-order step included). Under
    ``torch.vmap`` (per-sample gradients: vmap over grad) the loss is the reference formula, vmapped;
    ``stats`` and ``calib`` cannot be accumulated there.

    The target's floating-point tensors (``dense``, ``table``, per-row weights) that require grad get their
    gradient, as the probability targets of ``F.cross_entropy`` do (a learned table, a teacher trained with
    its student). The kernels differentiate the logits only, so such a call takes the reference formula,
    which builds the N x C target: keep targets constant where they are (a frozen teacher's logits computed
    under ``torch.no_grad()``) to keep the fused pass.

    Args:
        logits (Tensor[N, C]): float32, float16, bfloat16 or float64 scores; any strides.
        target (SoftTarget, Tensor[N] or Tensor[N, C]): the target; a label tensor means hard labels, a
            floating-point tensor of the logits' shape class probabilities (as in ``F.cross_entropy``; each
            row's most likely class then stands for its label in ``stats`` and ``calib``).
        reduction (str): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.
        stats (ClassStats, optional): accumulates the softmax of correctly classified rows per class
            (forward only, no gradient). Default: None.
        calib (CalibrationStats, optional): accumulates calibration statistics of the rows against
            ``target.labels``. Default: None.
        backend (str): ``'auto'`` (native where built for the device), ``'native'`` (error if not
            built) or ``'reference'`` (pure PyTorch). Default: ``'auto'``.
        validate (bool, optional): check label and weight values on the host with ValueErrors. On CPU
            they are always checked. On CUDA the default (None) checks them on the device instead,
            which fails loudly (device-side assert) without a host-device synchronisation; True raises
            the ValueErrors at the cost of a synchronisation. Default: None.

    Returns:
        Tensor: the loss in float32 (float64 for float64 logits); shape [N] for ``'none'``, else [].
        The gradient has the dtype of ``logits``. ``'mean'`` over zero valid rows is NaN, as in
        ``F.cross_entropy``.

    Examples::

        >>> logits = torch.randn(8, 10, requires_grad=True)
        >>> labels = torch.randint(0, 10, (8,))
        >>> loss = soft_cross_entropy(logits, SoftTarget(labels, smoothing=0.1))
        >>> loss.backward()

    References: label smoothing, Szegedy et al. 2016 (arXiv:1512.00567) §7; Online Label Smoothing,
    Zhang et al. 2021 (arXiv:2011.12562); online softmax, Milakov & Gimelshein 2018 (arXiv:1805.02867).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    check_logits(logits)
    if _is_probabilities(target):
        target = _probability_target(target)
    elif torch.is_tensor(target):
        target = SoftTarget(target)
    if not isinstance(target, SoftTarget):
        raise ValueError("target must be a SoftTarget, a label tensor [N] or a probability tensor [N, C], "
                         f"got {type(target).__name__}")
    target.check_against(logits)
    for name, state in (("stats", stats), ("calib", calib)):
        if state is not None and state.device != logits.device:
            raise ValueError(f"{name} lives on {state.device} but logits is on {logits.device}")
    if stats is not None and stats.num_classes != logits.shape[1]:
        raise ValueError(f"stats is a ClassStats of {stats.num_classes} classes, but logits has {logits.shape[1]}")

    native = choose_backend(backend, logits.device)
    needs_grad = _target_needing_grad(target)
    if native and needs_grad is not None:  # the kernels differentiate the logits only
        if backend == "native":
            raise ValueError(f"{needs_grad} requires grad, but backend='native' differentiates the logits only: "
                             "detach it (a frozen teacher under torch.no_grad()), or use backend='auto', where the "
                             "reference formula gives the target its gradient")
        native = False
    # Native kernels check values themselves (ValueError on CPU, device-side assert on CUDA).
    if not native or (validate and not torch.compiler.is_compiling()):
        target.check_values(logits.shape[1])
    if not native:
        loss = reference.soft_cross_entropy(logits, target, reduction)
        if stats is not None:
            stats.update(logits.detach(), target.labels, backend="reference")
        if calib is not None:
            calib.update(logits.detach(), target.labels, backend="reference")
        return loss

    state = [None, None, None, None]
    if stats is not None:
        state[0:2] = stats.buffers()
    if calib is not None:
        state[2:4] = calib.buffers()
    # Under no_grad (evaluation) no graph is recorded, so a gradient written in the forward would be
    # thrown away: ask for it only where autograd will use it.
    want_grad = torch.is_grad_enabled() and logits.requires_grad
    loss, _ = _NativeSoftCrossEntropy.apply(logits, _REDUCTIONS.index(reduction), _spec(target, logits), want_grad,
                                            *state)
    return loss


def _target_needing_grad(target: SoftTarget):
    """The name of the first floating-point tensor of ``target`` that autograd must differentiate, else None."""
    if not torch.is_grad_enabled():
        return None
    return next((name for name, value in target.tensors() if value.requires_grad), None)


def _is_probabilities(target) -> bool:
    """Whether ``target`` is a tensor of class probabilities [N, C] (floating point, two dimensions)."""
    return torch.is_tensor(target) and target.is_floating_point() and target.dim() == 2 and target.shape[1] > 0


def _probability_target(probs: Tensor, smoothing: float = 0.0) -> SoftTarget:
    """The target of class probabilities [N, C], F.cross_entropy's other kind, smoothed as there:
    ``(1 - s) p + s / C``. Each row's most likely class stands for its label (in ``stats`` and ``calib``)."""
    labels = probs.detach().argmax(1)
    if smoothing == 1.0:  # the target is uniform: the probabilities take no part
        return SoftTarget(labels, smoothing=1.0)
    return SoftTarget(labels, smoothing=smoothing, dense=probs, dense_weight=1.0 - smoothing)


class SoftCrossEntropyLoss(torch.nn.Module):
    r""":func:`soft_cross_entropy` as a module: a drop-in for ``nn.CrossEntropyLoss(label_smoothing=s)`` and
    for timm's ``LabelSmoothingCrossEntropy`` and ``SoftTargetCrossEntropy`` (mixup's probability targets).

    ``forward(logits, target, stats=None, calib=None)``: ``target`` a label tensor [N], a floating-point
    tensor of class probabilities [N, C], or a :class:`~pysoftlabel.SoftTarget` (taken as it is).
    ``smoothing`` applies to the first two as in ``F.cross_entropy``: labels get ``s / C`` on every class and
    ``1 - s`` more on their own, probabilities become ``(1 - s) p + s / C``. A SoftTarget carries its own
    smoothing and ignore_index, so a module made with others refuses it rather than leave them out.

    Args:
        smoothing (float): label smoothing ``s`` in [0, 1] (timm's name). Default: 0.
        reduction (str): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.
        ignore_index (int): label value of rows to ignore (label tensors). Default: -100.
        backend (str): as :func:`soft_cross_entropy`'s. Default: ``'auto'``.
        label_smoothing (float, optional): ``smoothing`` by ``nn.CrossEntropyLoss``'s name, so that swapping
            the class name is all a drop-in takes.
    """

    def __init__(self, smoothing: float = 0.0, reduction: str = "mean", ignore_index: int = -100,
                 backend: str = "auto", *, label_smoothing: float = None):
        super().__init__()
        if label_smoothing is not None:
            if smoothing:
                raise ValueError("give smoothing or label_smoothing (the same thing), not both")
            smoothing = label_smoothing
        if not 0.0 <= float(smoothing) <= 1.0:
            raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        check_backend(backend)  # here, not at the first batch
        self.smoothing, self.reduction = float(smoothing), reduction
        self.ignore_index, self.backend = ignore_index, backend

    def forward(self, logits: Tensor, target, stats=None, calib=None) -> Tensor:
        if _is_probabilities(target):
            target = _probability_target(target, self.smoothing)
        elif torch.is_tensor(target):
            target = SoftTarget(target, smoothing=self.smoothing, ignore_index=self.ignore_index)
        elif isinstance(target, SoftTarget) and (self.smoothing or
                                                 self.ignore_index not in (-100, target.ignore_index)):
            raise ValueError(f"this SoftCrossEntropyLoss has smoothing={self.smoothing}, "
                             f"ignore_index={self.ignore_index}, which a SoftTarget (ignore_index="
                             f"{target.ignore_index}) would leave out: give them to the SoftTarget, "
                             "and make the module with the defaults")
        return soft_cross_entropy(logits, target, self.reduction, stats=stats, calib=calib, backend=self.backend)

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing}, reduction={self.reduction!r}"


def _weight(value, dtype):
    """(tensor or None, float) for a weight given as a float or a per-row tensor."""
    if isinstance(value, Tensor):
        return value.detach().to(dtype), 0.0
    return None, float(value)


def _spec(target: SoftTarget, logits: Tensor):
    """The op's target arguments, between logits and reduction, as a tuple."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    lam, lam_value = _weight(1.0 if target.lam is None else target.lam, acc)
    smoothing, smoothing_value = _weight(target.smoothing, acc)
    table_weight, table_weight_value = _weight(target.table_weight, acc)
    dense_weight, dense_weight_value = _weight(target.dense_weight, acc)
    table = None if target.table is None else target.table.detach()
    dense = None if target.dense is None else target.dense.detach()
    return (target.labels, target.labels2, lam, lam_value, smoothing, smoothing_value, table, table_weight,
            table_weight_value, dense, dense_weight, dense_weight_value, bool(target.dense_logits),
            float(target.temperature), int(target.ignore_index))


def _target_from_spec(spec) -> SoftTarget:
    """The SoftTarget that _spec turned into ``spec`` (its weights as fp32 / fp64 tensors or floats)."""
    (labels, labels2, lam, lam_value, smoothing, smoothing_value, table, table_weight, table_weight_value,
     dense, dense_weight, dense_weight_value, dense_logits, temperature, ignore_index) = spec

    def weight(tensor, value):
        return value if tensor is None else tensor
    return SoftTarget(labels, smoothing=weight(smoothing, smoothing_value), labels2=labels2,
                      lam=None if labels2 is None else weight(lam, lam_value), table=table,
                      table_weight=weight(table_weight, table_weight_value), dense=dense,
                      dense_weight=weight(dense_weight, dense_weight_value), dense_logits=dense_logits,
                      temperature=temperature, ignore_index=ignore_index)


def _reference_loss(logits, spec, reduction):
    """The loss of the op's arguments by the reference formula (PyTorch ops: differentiable, vmappable)."""
    return reference.soft_cross_entropy(logits, _target_from_spec(spec), _REDUCTIONS[reduction])


def _differentiable_grad(logits, spec, reduction, grad_output):
    """The gradient as PyTorch ops that autograd can differentiate again, for a backward with
    ``create_graph=True`` (gradient penalties, Hessian-vector products, meta-learning): the reference
    formula, which builds the N x C target. The native kernels' gradient is a constant to autograd."""
    with torch.enable_grad():
        loss = _reference_loss(logits, spec, reduction)
        (grad,) = torch.autograd.grad(loss, logits, grad_output, create_graph=True)
    return grad


def _computes_grad(want_grad):
    """Whether the forward writes the gradient: in eager mode where autograd will use it; a traced graph
    (torch.compile) computes it in its backward instead."""
    return want_grad and not torch.compiler.is_compiling()


class _NativeSoftCrossEntropy(torch.autograd.Function):
    """Autograd over the native op. In eager mode the forward already writes the unscaled gradient
    into a fresh buffer (never into ``logits``); backward scales it in place on the device, skipping
    rows whose factor is 1 (no pass at all after a plain ``loss.backward()``) and without a host
    synchronisation. A second backward through the same graph, or a traced graph, recomputes it; a
    backward with ``create_graph=True`` (and so every torch.func transform) takes the reference formula, so
    second derivatives are exact; under vmap the forward is the reference's too (the vmap rule)."""

    @staticmethod
    def forward(logits, reduction, spec, want_grad, class_sum, class_count, calib_bins, calib_sums):
        return torch.ops.pysoftlabel.soft_cross_entropy(logits, *spec, reduction, None, _computes_grad(want_grad),
                                                       class_sum, class_count, calib_bins, calib_sums)

    @staticmethod
    def setup_context(ctx, inputs, output):
        # forward / setup_context apart: the form that torch.func (grad, functional_call, vmap) accepts.
        logits, reduction, spec = inputs[:3]
        _, grad = output
        # The target's tensors are detached constants of _spec: kept as they are, for a recomputation.
        ctx.spec = spec
        ctx.reduction = reduction
        ctx.save_for_backward(logits)
        # The forward's gradient where it wrote one (not in a traced graph, nor under vmap).
        ctx.grad_buffer = grad if grad.shape == logits.shape else None
        ctx.mark_non_differentiable(grad)
        # No zeros for the gradient output's own (never used) gradient: autograd would otherwise fill an
        # N x C buffer with them on every backward, a pass as long as the forward's gradient write.
        ctx.set_materialize_grads(False)

    @staticmethod
    def vmap(info, in_dims, logits, reduction, spec, want_grad, class_sum, class_count, calib_bins, calib_sums):
        # torch.vmap (per-sample gradients: vmap over grad): the reference formula, vmapped. Its gradient is
        # then the reference's too (a transform's backward is taken with a graph).
        if any(t is not None for t in (class_sum, class_count, calib_bins, calib_sums)):
            raise ValueError("stats= and calib= cannot be accumulated under torch.vmap")
        loss = torch.vmap(lambda x, one_spec: _reference_loss(x, one_spec, reduction),
                          in_dims=(in_dims[0], in_dims[2]))(logits, spec)
        return (loss, logits.new_empty((0,))), (0, None)

    @staticmethod
    def backward(ctx, grad_output, _):
        (logits,) = ctx.saved_tensors
        buffer, ctx.grad_buffer = ctx.grad_buffer, None
        if grad_output is None:  # no gradient reached the loss (grads are not materialised: setup_context)
            return (None,) * 8
        if torch.is_grad_enabled():  # create_graph=True: the gradient must carry its own graph
            grad = _differentiable_grad(logits, ctx.spec, ctx.reduction, grad_output)
        elif buffer is not None:
            grad = buffer
            torch.ops.pysoftlabel._scale_rows_(grad, grad_output)
        else:
            _, grad = torch.ops.pysoftlabel.soft_cross_entropy(
                logits, *ctx.spec, ctx.reduction, grad_output, True, None, None, None, None)
        return grad, None, None, None, None, None, None, None


if _C is not None:
    @torch.library.register_fake("pysoftlabel::soft_cross_entropy")
    def _(logits, labels, labels2, lam, lam_value, smoothing, smoothing_value, table, table_weight,
          table_weight_value, dense, dense_weight, dense_weight_value, dense_logits, temperature, ignore_index,
          reduction, grad_output, compute_grad, class_sum, class_count, calib_bins, calib_sums):
        check_fake_args(logits, labels=labels, labels2=labels2, lam=lam, smoothing=smoothing, table=table,
                        table_weight=table_weight, dense=dense, dense_weight=dense_weight, grad_output=grad_output,
                        class_sum=class_sum, class_count=class_count, calib_bins=calib_bins, calib_sums=calib_sums)
        torch._check_value(labels.shape == (logits.shape[0],), lambda: "labels must have shape [N]")
        acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
        loss = logits.new_empty((logits.shape[0],) if reduction == 0 else (), dtype=acc)
        grad = logits.new_empty(logits.shape) if compute_grad else logits.new_empty((0,))
        return loss, grad

    @torch.library.register_fake("pysoftlabel::_scale_rows_")
    def _(grad, grad_output):
        return None
