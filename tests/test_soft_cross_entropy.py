"""Parity of the native soft_cross_entropy with pysoftlabel.reference, and its contract."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import pysoftlabel as psl
from conftest import calibration_tolerance, devices
from targets import PARTS, random_target

from pysoftlabel.ops.soft_cross_entropy import _REDUCTIONS, _spec

native = pytest.mark.skipif(not psl.extension_info()["cpu"], reason="extension not built")
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 1e-5), torch.float16: (2e-3, 2e-3),
       torch.bfloat16: (1.5e-2, 1.5e-2)}


def loss_and_grad(logits, target, reduction, backend):
    x = logits.detach().clone().requires_grad_(True)
    loss = psl.soft_cross_entropy(x, target, reduction=reduction, backend=backend)
    weight = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device).reshape(loss.shape)
    (grad,) = torch.autograd.grad((loss * weight).sum(), x)
    return loss.detach(), grad


def check_parity(logits, target, reduction):
    loss, grad = loss_and_grad(logits, target, reduction, "native")
    ref_loss, ref_grad = loss_and_grad(logits.double(), target, reduction, "reference")
    atol, rtol = TOL[logits.dtype]
    assert loss.dtype == (torch.float64 if logits.dtype == torch.float64 else torch.float32)
    assert grad.dtype == logits.dtype
    torch.testing.assert_close(loss.double(), ref_loss, atol=atol, rtol=rtol, equal_nan=True)
    torch.testing.assert_close(grad.double(), ref_grad, atol=atol, rtol=rtol, equal_nan=True)


def check_fused_statistics(logits, target):
    """The class and calibration statistics gathered in the loss's pass equal the references' over the rows
    that count, whatever the target."""
    c, kept = logits.shape[1], target.labels != target.ignore_index
    stats, calib = psl.ClassStats(c, logits.device), psl.CalibrationStats(device=logits.device)
    with torch.no_grad():
        psl.soft_cross_entropy(logits, target, stats=stats, calib=calib)
    ref_stats = psl.ClassStats(c, logits.device).update(logits[kept], target.labels[kept], backend="reference")
    ref_calib = psl.calibration_stats(logits[kept], target.labels[kept], backend="reference")
    torch.testing.assert_close(stats.count, ref_stats.count, rtol=0, atol=0)
    torch.testing.assert_close(stats.sum, ref_stats.sum, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(calib.bins[:, ::2], ref_calib.bins[:, ::2], rtol=0, atol=0)  # the two counts
    torch.testing.assert_close(calib.bins[:, 1], ref_calib.bins[:, 1], **calibration_tolerance(logits.dtype))
    torch.testing.assert_close(calib.sums, ref_calib.sums, **calibration_tolerance(logits.dtype))


@native
@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 9), c=st.sampled_from([1, 2, 7, 64, 1000]), seed=st.integers(0, 2**31 - 1),
       parts=st.sets(st.sampled_from(PARTS)), reduction=st.sampled_from(["none", "mean", "sum"]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
def test_parity_random_targets_cpu(n, c, seed, parts, reduction, dtype):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g) * 3).to(dtype)
    target = random_target(n, c, parts, generator=g, logits_dtype=dtype)
    if reduction == "mean" and n > 0 and bool((target.labels == -100).all()):
        reduction = "sum"  # all-ignored mean is NaN in both; tested on its own
    check_parity(logits, target, reduction)
    check_fused_statistics(logits, target)


@native
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("c", [1, 3, 1000, 4099])
@pytest.mark.parametrize("contiguous", [True, False])
def test_parity_dtypes_shapes(device, dtype, c, contiguous):
    g = torch.Generator().manual_seed(c)
    n = 33
    logits = (torch.randn(c, n, generator=g) * 4).to(device, dtype).t() if not contiguous else \
        (torch.randn(n, c, generator=g) * 4).to(device, dtype)
    target = random_target(n, c, set(PARTS), device=device, generator=g, logits_dtype=dtype)
    check_parity(logits, target, "mean")


@native
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_matches_torch_label_smoothing(device, smoothing):
    logits = torch.randn(64, 100, device=device, requires_grad=True)
    labels = torch.randint(0, 100, (64,), device=device)
    labels[::7] = -100
    for reduction in ("none", "mean", "sum"):
        ours = psl.soft_cross_entropy(logits, psl.SoftTarget(labels, smoothing=smoothing), reduction=reduction)
        theirs = F.cross_entropy(logits, labels, label_smoothing=smoothing, reduction=reduction)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        g1, = torch.autograd.grad(ours.sum(), logits)
        g2, = torch.autograd.grad(theirs.sum(), logits)
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)


@native
@pytest.mark.parametrize("device", devices())
def test_matches_torch_probability_targets(device):
    logits = torch.randn(32, 50, device=device, requires_grad=True)
    probs = torch.softmax(torch.randn(32, 50, device=device), 1)
    labels = torch.randint(0, 50, (32,), device=device)
    theirs = F.cross_entropy(logits, probs)
    for target in (psl.SoftTarget(labels, dense=probs, dense_weight=1.0), probs):  # a tensor of probabilities too
        ours = psl.soft_cross_entropy(logits, target)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.autograd.grad(ours, logits)[0],
                                   torch.autograd.grad(theirs, logits, retain_graph=True)[0], atol=1e-6, rtol=1e-5)
    calib = psl.CalibrationStats(device=device)
    psl.soft_cross_entropy(logits, probs, calib=calib)
    assert calib.accuracy == (logits.argmax(1) == probs.argmax(1)).double().mean().item()


@native
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("smoothing", [0.0, 0.2, 1.0])  # at 1 the probabilities take no part
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_module_is_a_drop_in_for_cross_entropy_loss(device, smoothing, reduction):
    """SoftCrossEntropyLoss against nn.CrossEntropyLoss for label tensors (ignore_index rows included) and
    probability tensors (mixup's), smoothed alike; a SoftTarget passes through."""
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(12, 7, generator=g).to(device).requires_grad_(True)
    labels = torch.randint(0, 7, (12,), generator=g).to(device)
    labels[::5] = -100
    probs = torch.softmax(torch.randn(12, 7, generator=g), 1).to(device)
    ours = psl.SoftCrossEntropyLoss(smoothing=smoothing, reduction=reduction)
    theirs = torch.nn.CrossEntropyLoss(label_smoothing=smoothing, reduction=reduction)
    renamed = psl.SoftCrossEntropyLoss(label_smoothing=smoothing, reduction=reduction)  # the class name swapped
    assert renamed.smoothing == ours.smoothing
    for target in (labels, probs):
        got, want = ours(logits, target), theirs(logits, target)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.autograd.grad(got.sum(), logits)[0],
                                   torch.autograd.grad(want.sum(), logits)[0], atol=1e-6, rtol=1e-5)
    soft = psl.SoftTarget(labels.clamp(min=0), smoothing=0.3)
    plain = psl.SoftCrossEntropyLoss(reduction=reduction)
    torch.testing.assert_close(plain(logits, soft), psl.soft_cross_entropy(logits, soft, reduction=reduction))
    if smoothing:  # the module's smoothing was silently left out of a SoftTarget
        with pytest.raises(ValueError, match=rf"^this SoftCrossEntropyLoss has smoothing={smoothing}, "):
            ours(logits, soft)
    with pytest.raises(ValueError, match="ignore_index=-1, which a SoftTarget .ignore_index=-100. would leave out"):
        psl.SoftCrossEntropyLoss(ignore_index=-1)(logits, soft)
    own = dataclasses.replace(soft, ignore_index=-1)  # the module's default leaves the target's own
    torch.testing.assert_close(plain(logits, own), psl.soft_cross_entropy(logits, own, reduction=reduction))
    with pytest.raises(ValueError, match="smoothing"):
        psl.SoftCrossEntropyLoss(smoothing=1.5)
    with pytest.raises(ValueError, match="not both"):
        psl.SoftCrossEntropyLoss(0.1, label_smoothing=0.2)
    with pytest.raises(ValueError, match=r"^reduction must be one of \('none', 'mean', 'sum'\), got 'avg'$"):
        psl.SoftCrossEntropyLoss(reduction="avg")
    assert repr(psl.SoftCrossEntropyLoss(0.1)) == "SoftCrossEntropyLoss(smoothing=0.1, reduction='mean')"


def test_backend_is_checked_by_name_and_native_needs_kernels_for_the_device():
    logits, labels = torch.randn(2, 3), torch.tensor([0, 1])
    bad = "^backend must be 'auto', 'native' or 'reference', got 'nativ'$"
    for call in (lambda: psl.soft_cross_entropy(logits, labels, backend="nativ"),
                 lambda: psl.calibration_stats(logits, labels, backend="nativ"),
                 lambda: psl.ClassStats(3).update(logits, labels, backend="nativ"),
                 lambda: psl.SoftCrossEntropyLoss(backend="nativ")):  # when made, not at the first batch
        with pytest.raises(ValueError, match=bad):
            call()
    meta = torch.randn(2, 3, device="meta"), torch.tensor([0, 1], device="meta")
    with pytest.raises(RuntimeError, match="^backend='native': pysoftlabel's extension has no kernels for meta"):
        psl.soft_cross_entropy(*meta, backend="native")


@native
@pytest.mark.parametrize("device", devices())
def test_module_is_a_drop_in_for_timms_losses(device):
    """What the README says it replaces: timm's LabelSmoothingCrossEntropy on labels, and SoftTargetCrossEntropy
    on the dense targets of timm's mixup_target, which the compact SoftTarget (labels2, lam) describes."""
    pytest.importorskip("timm", reason="the comparison needs timm (pip install timm)")
    from timm.data.mixup import mixup_target
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    g = torch.Generator().manual_seed(12)
    logits = (torch.randn(16, 9, generator=g) * 3).to(device).requires_grad_(True)
    labels = torch.randint(0, 9, (16,), generator=g).to(device)
    cases = [(LabelSmoothingCrossEntropy(smoothing=0.1)(logits, labels),
              psl.SoftCrossEntropyLoss(smoothing=0.1)(logits, labels))]
    for lam, smoothing in ((0.7, 0.0), (0.35, 0.1)):
        dense = mixup_target(labels, 9, lam=lam, smoothing=smoothing)  # mixed with the flipped batch
        cases.append((SoftTargetCrossEntropy()(logits, dense), psl.soft_cross_entropy(
            logits, psl.SoftTarget(labels, smoothing=smoothing, labels2=labels.flip(0), lam=lam))))
    for want, got in cases:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.autograd.grad(got, logits)[0], torch.autograd.grad(want, logits)[0],
                                   atol=1e-6, rtol=1e-5)


@native
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("parts", [(), ("smoothing", "mix"), ("table", "dense_logits", "per_row"), ("dense", "ignore")])
def test_gradcheck_float64(reduction, parts):
    """First derivatives, and second ones (backward with create_graph=True)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = random_target(6, 5, set(parts), generator=g, logits_dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: psl.soft_cross_entropy(x, target, reduction=reduction), (logits,))
    assert torch.autograd.gradgradcheck(lambda x: psl.soft_cross_entropy(x, target, reduction=reduction),
                                        (logits,))


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dense_part", ["dense", "dense_logits"])
def test_gradient_flows_into_target_tensors_that_require_it(backend, reduction, dense_part):
    """Every floating-point tensor of the target that requires grad gets its gradient, as the target of
    F.cross_entropy does: a learned class table, a teacher trained beside its student (mutual learning),
    learned per-sample smoothing or mixing weights. gradcheck in float64, logits and target together."""
    g = torch.Generator().manual_seed(3)
    target = random_target(7, 5, {"smoothing", "mix", "table", dense_part, "ignore", "per_row"}, generator=g,
                           logits_dtype=torch.float64)
    names = [name for name, value in target.tensors() if value.is_floating_point()]
    assert set(names) == {"smoothing", "lam", "table", "table_weight", "dense", "dense_weight"}
    inputs = [torch.randn(7, 5, generator=g, dtype=torch.float64)] + [getattr(target, k).double() for k in names]

    def loss(logits, *values):
        parts = dataclasses.replace(target, **dict(zip(names, values)))
        return psl.soft_cross_entropy(logits, parts, reduction=reduction, backend=backend)
    assert torch.autograd.gradcheck(loss, [t.requires_grad_() for t in inputs])


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("module", [False, True])
def test_probability_targets_that_require_grad_match_torch(device, module):
    """F.cross_entropy's probability targets with their gradient, zero probabilities included (their
    gradient is -log p / N, not 0); as nn.CrossEntropyLoss's drop-in too."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 4, generator=g).to(device)
    probs = torch.softmax(torch.randn(6, 4, generator=g), 1)
    probs[:, 0] = 0.0
    probs = (probs / probs.sum(1, keepdim=True)).to(device)
    grads = []
    for loss_fn in (psl.SoftCrossEntropyLoss(smoothing=0.1) if module else psl.soft_cross_entropy,
                    lambda x, p: F.cross_entropy(x, p, label_smoothing=0.1 if module else 0.0)):
        x, p = logits.clone().requires_grad_(), probs.clone().requires_grad_()
        grads.append(torch.autograd.grad(loss_fn(x, p), (x, p)))
    for ours, torch_grad in zip(*grads):
        torch.testing.assert_close(ours, torch_grad)


def test_torch_func_grad_with_respect_to_the_target():
    """torch.func.grad of the loss with respect to a dense target: the same as autograd's."""
    g = torch.Generator().manual_seed(5)
    logits, teacher = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    labels = torch.randint(0, 3, (5,), generator=g)

    def loss(dense):
        return psl.soft_cross_entropy(logits, psl.SoftTarget(labels, dense=dense, dense_logits=True, dense_weight=0.5,
                                                             temperature=2.0))
    want = teacher.clone().requires_grad_()
    (want_grad,) = torch.autograd.grad(loss(want), want)
    assert want_grad.abs().sum() > 0
    torch.testing.assert_close(torch.func.grad(loss)(teacher), want_grad)


@native
def test_native_backend_refuses_a_target_that_requires_grad():
    """The kernels differentiate the logits only: forced to them, a target's gradient is an error, not a
    silent zero."""
    labels = torch.tensor([0, 1])
    dense = torch.rand(2, 3, requires_grad=True)
    target = psl.SoftTarget(labels, dense=dense, dense_weight=0.5)
    with pytest.raises(ValueError, match=r"dense requires grad.*backend='native'"):
        psl.soft_cross_entropy(torch.randn(2, 3), target, backend="native")
    with torch.no_grad():  # no gradient wanted: the kernels serve
        psl.soft_cross_entropy(torch.randn(2, 3), target, backend="native")
    psl.soft_cross_entropy(torch.randn(2, 3), dataclasses.replace(target, dense=dense.detach()), backend="native")


@native
@pytest.mark.parametrize("device", devices())
def test_gradient_penalty_matches_torch(device):
    """A penalty on the input gradient (create_graph=True) trains the model as with F.cross_entropy."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5)).to(device)
    inputs = torch.randn(10, 6, device=device, requires_grad=True)
    labels = torch.randint(0, 5, (10,), device=device)
    grads = []
    for loss_fn in (lambda z: psl.soft_cross_entropy(z, psl.SoftTarget(labels, smoothing=0.1)),
                    lambda z: F.cross_entropy(z, labels, label_smoothing=0.1)):
        loss = loss_fn(model(inputs))
        (input_grad,) = torch.autograd.grad(loss, inputs, create_graph=True)
        grads.append(torch.autograd.grad(loss + input_grad.square().sum(), list(model.parameters())))
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref)


@native
@pytest.mark.parametrize("device", devices())
def test_torch_func_grad_functional_call_and_maml(device):
    """torch.func: grad of the loss, of a model's parameters through functional_call, and a second-order
    MAML step (the outer gradient through one inner SGD step), all as with F.cross_entropy."""
    model = torch.nn.Linear(5, 10).to(device)
    params = {k: v.detach() for k, v in model.named_parameters()}
    inputs = torch.randn(8, 5, device=device)
    labels = torch.randint(0, 10, (8,), device=device)
    ours = lambda z: psl.soft_cross_entropy(z, psl.SoftTarget(labels, smoothing=0.1))  # noqa: E731
    theirs = lambda z: F.cross_entropy(z, labels, label_smoothing=0.1)  # noqa: E731

    def inner(p, loss_fn):
        return loss_fn(torch.func.functional_call(model, p, (inputs,)))

    def maml(p, loss_fn):
        g = torch.func.grad(inner)(p, loss_fn)
        return inner({k: p[k] - 0.5 * g[k] for k in p}, loss_fn)

    logits = torch.randn(8, 10, device=device)
    torch.testing.assert_close(torch.func.grad(ours)(logits), torch.func.grad(theirs)(logits))
    for fn in (inner, maml):
        got, want = torch.func.grad(fn)(params, ours), torch.func.grad(fn)(params, theirs)
        for k in want:
            torch.testing.assert_close(got[k], want[k])


@native
@pytest.mark.parametrize("device", devices())
def test_torch_vmap_and_per_sample_gradients(device):
    """vmap of the loss over a batch of logit matrices, and per-sample gradients (vmap over grad of a model's
    loss on one sample) with a mixed OLS target, as the reference gives them; no statistics under vmap."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 8, 10, generator=g).to(device)
    labels = torch.randint(0, 10, (8,), generator=g).to(device)
    target = psl.SoftTarget(labels, smoothing=0.1)
    want = torch.stack([F.cross_entropy(z, labels, label_smoothing=0.1) for z in logits])
    torch.testing.assert_close(torch.vmap(lambda z: psl.soft_cross_entropy(z, target))(logits), want)

    model = torch.nn.Linear(5, 10).to(device)
    params = {k: v.detach() for k, v in model.named_parameters()}
    inputs = torch.randn(16, 5, generator=g).to(device)
    table = torch.softmax(torch.randn(10, 10, generator=g), 1).to(device)
    sample_labels = torch.randint(0, 10, (16,), generator=g).to(device)

    def loss_one(p, x, y, backend):
        t = psl.SoftTarget(y[None], labels2=(y[None] + 1) % 10, lam=0.7, table=table, table_weight=0.3)
        return psl.soft_cross_entropy(torch.func.functional_call(model, p, (x[None],)), t, backend=backend)
    per_sample = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0, None))(params, inputs,
                                                                                         sample_labels, "auto")
    for i in range(16):
        one = torch.func.grad(loss_one)(params, inputs[i], sample_labels[i], "reference")
        for k in one:
            torch.testing.assert_close(per_sample[k][i], one[k])
    with pytest.raises(ValueError, match="under torch.vmap"):
        torch.vmap(lambda z: psl.soft_cross_entropy(z, target, calib=psl.CalibrationStats(device=device)))(logits)


@native
@pytest.mark.parametrize("device", devices())
def test_ignored_rows_and_empty_batch(device):
    logits = torch.randn(4, 6, device=device, requires_grad=True)
    labels = torch.full((4,), -100, device=device)
    loss = psl.soft_cross_entropy(logits, labels)
    assert torch.isnan(loss)  # as F.cross_entropy: 0 / 0
    assert psl.soft_cross_entropy(logits, labels, reduction="sum").item() == 0
    loss = psl.soft_cross_entropy(logits, labels, reduction="sum")
    assert torch.equal(torch.autograd.grad(loss, logits)[0], torch.zeros_like(logits))
    empty = torch.randn(0, 6, device=device, requires_grad=True)
    out = psl.soft_cross_entropy(empty, torch.zeros(0, dtype=torch.long, device=device), reduction="sum")
    out.backward()
    assert out.item() == 0 and empty.grad.shape == (0, 6)


@native
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("offset", [1e4, 1e6, -1e30])
def test_logits_far_from_zero_keep_fp32_precision(device, offset):
    """Rows of logits far from 0 (a large common offset): the loss and the NLL as precise as fp32
    F.cross_entropy's, since lse - x_y is taken as (max - x_y) + log(sum). Label smoothing too on the CPU,
    whose sums are of x - max (the CUDA kernel sums x)."""
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(64, 1000, generator=g) * 2 + offset).to(device)
    labels, labels2 = torch.randint(0, 1000, (2, 64), generator=g).to(device)
    ref = lambda **kw: F.cross_entropy(x.double(), labels, reduction="none", **kw)  # noqa: E731
    cases = [(psl.SoftTarget(labels), ref()),
             (psl.SoftTarget(labels, labels2=labels2, lam=0.3),
              0.3 * ref() + 0.7 * F.cross_entropy(x.double(), labels2, reduction="none"))]
    if device == "cpu":
        cases.append((psl.SoftTarget(labels, smoothing=0.1), ref(label_smoothing=0.1)))
    for target, want in cases:
        torch.testing.assert_close(psl.soft_cross_entropy(x, target, reduction="none").double(), want,
                                   atol=1e-5, rtol=0)
    assert psl.calibration_stats(x, labels).nll == pytest.approx(ref().mean().item(), abs=1e-6)


@native
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_masked_logits_match_torch(device, dtype, smoothing):
    """Classes masked with -inf: a class of target weight 0 adds 0 (finite hard-label loss, as
    F.cross_entropy), one with weight is +inf (label smoothing, a masked label); never NaN. The gradient
    matches F.cross_entropy's, also on rows whose label is masked."""
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(40, 300, generator=g)
    logits[torch.rand(40, 300, generator=g) < 0.4] = -float("inf")
    labels = torch.randint(0, 300, (40,), generator=g)
    labels[:30] = logits[:30].argmax(1)  # a finite label logit in most rows; rows 30.. may have it masked
    labels[::9] = -100
    logits = logits.to(device, dtype)
    labels = labels.to(device)
    x = logits.clone().requires_grad_(True)
    ref_x = logits.float().clone().requires_grad_(True)
    for reduction in ("none", "sum"):
        ours = psl.soft_cross_entropy(x, psl.SoftTarget(labels, smoothing=smoothing), reduction=reduction)
        theirs = F.cross_entropy(ref_x, labels, label_smoothing=smoothing, reduction=reduction)
        assert not ours.isnan().any()
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        weight = torch.linspace(0.5, 1.5, ours.numel(), device=device).reshape(ours.shape)
        ours_grad, = torch.autograd.grad((ours.nan_to_num(0, 0, 0) * weight).sum(), x)
        theirs_grad, = torch.autograd.grad((theirs.nan_to_num(0, 0, 0) * weight).sum(), ref_x)
        torch.testing.assert_close(ours_grad.float(), theirs_grad, **({} if dtype == torch.float32 else
                                                                       dict(atol=1e-2, rtol=1e-2)))
    per_row = psl.soft_cross_entropy(logits, psl.SoftTarget(labels, smoothing=smoothing), reduction="none")
    label_masked = (labels != -100) & (logits.gather(1, labels.clamp(min=0)[:, None])[:, 0] == -float("inf"))
    assert label_masked.any() and per_row[label_masked].eq(float("inf")).all()


@native
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("parts", [("smoothing",), ("mix",), ("table",), ("dense",), ("dense_logits",),
                                   ("mix", "table", "dense", "ignore", "per_row")])
def test_masked_classes_soft_targets_parity(device, parts):
    """Classes masked in the logits, and given no weight by the class table and the dense target (a model
    restricted to a subset of classes): native equals reference, finite except for label smoothing (which
    gives the masked classes weight)."""
    g = torch.Generator().manual_seed(3)
    n, c = 24, 257
    masked = torch.rand(c, generator=g) < 0.3
    target = random_target(n, c, set(parts), generator=g)
    keep = ~masked
    labels = torch.where(target.labels == -100, -100, keep.nonzero()[:, 0][target.labels % int(keep.sum())])
    changes = {"labels": labels.to(device)}
    if target.labels2 is not None:
        changes["labels2"] = keep.nonzero()[:, 0][target.labels2 % int(keep.sum())].to(device)
    if target.table is not None:
        changes["table"] = torch.where(masked, 0.0, target.table).to(device)
    if target.dense is not None:
        changes["dense"] = torch.where(masked, -float("inf") if target.dense_logits else 0.0, target.dense).to(device)
    for name in ("smoothing", "lam", "table_weight", "dense_weight"):
        if torch.is_tensor(getattr(target, name)):
            changes[name] = getattr(target, name).to(device)
    target = dataclasses.replace(target, **changes)
    logits = torch.randn(n, c, generator=g).masked_fill(masked, -float("inf")).to(device)
    check_parity(logits, target, "none")
    loss = psl.soft_cross_entropy(logits, target, reduction="none")
    valid = target.labels != -100
    assert torch.isfinite(loss[valid]).all() != ("smoothing" in parts)


@native
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("parts", [(), ("smoothing",), ("mix", "table", "dense", "per_row")])
def test_overflowed_logits_give_nan_loss_and_gradient(device, dtype, parts):
    """A row with a +inf logit (an fp16 forward that overflowed) has a NaN loss and a NaN gradient, as in
    F.cross_entropy and the reference, so that GradScaler sees the overflow and skips the step. The CPU
    kernel took such a row's exps against 0 instead of its max: the loss came out finite (hard labels), -inf
    or NaN beside a finite gradient (softmax 1 on the +inf class), and the step was taken. Other rows are
    unaffected."""
    g = torch.Generator().manual_seed(5)
    n, c = 12, 37
    target = random_target(n, c, set(parts), generator=g)
    target = dataclasses.replace(target, **{k: v.to(device) for k, v in target.tensors()})
    logits = torch.randn(n, c, generator=g) * 3
    overflowed = torch.tensor([1, 4, 7, 8])
    logits[1, 5] = float("inf")                               # on another class
    logits[4, int(target.labels[4])] = float("inf")           # on the label
    logits[7, :3] = float("inf")                              # on several classes
    logits[8, 0], logits[8, 1] = float("inf"), -float("inf")  # beside a masked class
    logits = logits.to(device, dtype)
    check_parity(logits, target, "none")
    loss, grad = loss_and_grad(logits, target, "none", "native")
    bad = torch.zeros(n, dtype=torch.bool)
    bad[overflowed] = True
    assert loss[bad].isnan().all() and grad[bad].isnan().all()
    assert loss[~bad].isfinite().all() and grad[~bad].isfinite().all()
    if not parts:  # a label target: exactly F.cross_entropy's NaN pattern
        x = logits.float().detach().requires_grad_(True)
        theirs = F.cross_entropy(x, target.labels, reduction="none")
        theirs_grad, = torch.autograd.grad(theirs.sum(), x)
        assert torch.equal(theirs.isnan().cpu(), bad) and torch.equal(theirs_grad.isnan().any(1).cpu(), bad)


@native
@pytest.mark.parametrize("device", devices())
def test_not_last_layer_and_retain_graph(device):
    """loss * 3 scales the stored gradient; a second backward through the same graph recomputes it."""
    logits = torch.randn(16, 10, device=device, requires_grad=True)
    target = psl.SoftTarget(torch.randint(0, 10, (16,), device=device), smoothing=0.1)
    ref = 3 * F.cross_entropy(logits, target.labels, label_smoothing=0.1)
    ref_grad, = torch.autograd.grad(ref, logits)
    loss = 3 * psl.soft_cross_entropy(logits, target)
    g1, = torch.autograd.grad(loss, logits, retain_graph=True)
    g2, = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(g1, ref_grad)
    torch.testing.assert_close(g2, ref_grad)


@native
@pytest.mark.parametrize("device", devices())
def test_does_not_write_into_logits_liger_272(device):
    """Liger-Kernel #272: a gradient written into the logits broke an upstream softmax's backward."""
    x = torch.randn(8, 12, device=device, requires_grad=True)
    labels = torch.randint(0, 12, (8,), device=device)
    results = []
    for loss_fn in (lambda z: psl.soft_cross_entropy(z, labels), lambda z: F.cross_entropy(z, labels)):
        z = torch.softmax(x, dim=1) * 5  # an upstream op that saves its output
        before = z.detach().clone()
        loss = loss_fn(z)
        assert torch.equal(z, before)
        results.append(torch.autograd.grad(loss, x)[0])
    torch.testing.assert_close(results[0], results[1])


@native
def test_no_gradient_computed_under_no_grad(monkeypatch):
    """Evaluation under no_grad of logits that require grad: the forward writes no gradient (autograd
    would drop it), and the loss is the same."""
    x = torch.randn(8, 12, requires_grad=True)
    target = psl.SoftTarget(torch.randint(0, 12, (8,)), smoothing=0.1)
    asked = []
    op = torch.ops.pysoftlabel.soft_cross_entropy

    def spy(*args):
        asked.append(args[18])  # compute_grad
        return op(*args)
    monkeypatch.setattr(torch.ops.pysoftlabel, "soft_cross_entropy", spy)
    with torch.no_grad():
        evaluated = psl.soft_cross_entropy(x, target)
    trained = psl.soft_cross_entropy(x, target)
    assert asked == [False, True]
    assert evaluated.grad_fn is None and trained.grad_fn is not None
    torch.testing.assert_close(evaluated, trained.detach())


class _OpLog(TorchDispatchMode):
    """The shapes of the tensors each aten / pysoftlabel op makes while the mode is on."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        self.made += [(str(func), tuple(o.shape)) for o in outs if isinstance(o, torch.Tensor)]
        return out


@native
@pytest.mark.parametrize("device", devices())
def test_backward_makes_no_n_by_c_tensor(device):
    """After the forward wrote the gradient, backward makes no N x C tensor: autograd's default is to fill one
    with zeros for the gradient output's own gradient, a whole extra pass over N x C on every step."""
    x = torch.randn(8, 5, device=device, requires_grad=True)
    labels = torch.randint(0, 5, (8,), device=device)
    loss = psl.soft_cross_entropy(x, psl.SoftTarget(labels, smoothing=0.1))
    with _OpLog() as log:
        loss.backward()
    made = [op for op, shape in log.made if shape == (8, 5) and op != "aten.detach.default"]
    assert made == []
    expected, = torch.autograd.grad(F.cross_entropy(x, labels, label_smoothing=0.1), x)
    torch.testing.assert_close(x.grad, expected)


@native
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    """A model and the loss in one graph, the statistics accumulating into their state in place: the second
    call of the compiled step (the cached graph) adds to them as eager does."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    x = torch.randn(10, 8)
    labels = torch.randint(0, 5, (10,))
    table = torch.softmax(torch.randn(5, 5), 1)

    def step(x, labels, stats, calib):
        logits = model(x)
        return psl.soft_cross_entropy(logits, psl.SoftTarget(labels, smoothing=0.1, table=table, table_weight=0.3),
                                      stats=stats, calib=calib)

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    states = [(psl.ClassStats(5), psl.CalibrationStats()) for _ in range(2)]
    for _ in range(2):
        loss = compiled(x, labels, *states[0])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        ref = step(x, labels, *states[1])
        ref_grads = torch.autograd.grad(ref, list(model.parameters()))
        torch.testing.assert_close(loss, ref)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b)
    assert states[0][1].count == 20
    for got, want in zip(states[0], states[1]):
        for name, value in want.state_dict().items():
            torch.testing.assert_close(got.state_dict()[name], value, msg=name)


def _call_op(logits, target, reduction, dense=None):
    """torch.ops.pysoftlabel.soft_cross_entropy called as a torch.export graph calls it: the op itself
    (``dense`` in place of the target's, which _spec detaches)."""
    spec = list(_spec(target, logits))
    if dense is not None:
        spec[9] = dense
    return torch.ops.pysoftlabel.soft_cross_entropy(logits, *spec, _REDUCTIONS.index(reduction), None, False,
                                                   None, None, None, None)[0]


@native
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_the_op_called_directly_has_the_gradient(device, reduction):
    """The op itself is differentiable (its C++ Autograd kernel): its loss had no gradient before, with only a
    warning from PyTorch, so that a graph from torch.export trained nothing."""
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(9, 13, generator=g, dtype=torch.float64).to(device)
    target = random_target(9, 13, PARTS, device, g, torch.float64)
    x = logits.clone().requires_grad_(True)
    loss = _call_op(x, target, reduction)
    weight = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=device).reshape(loss.shape)
    (grad,) = torch.autograd.grad((loss * weight).sum(), x)
    want_loss, want_grad = loss_and_grad(logits, target, reduction, "reference")
    torch.testing.assert_close(loss.detach(), want_loss)
    torch.testing.assert_close(grad, want_grad)
    torch.autograd.gradcheck(lambda z: _call_op(z, target, reduction), (x,))
    with pytest.raises(RuntimeError, match="called directly has no second derivative"):
        (grad,) = torch.autograd.grad(_call_op(x, target, reduction).sum(), x, create_graph=True)
        torch.autograd.grad(grad.sum(), x)
    dense = target.dense.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="differentiates the logits only, but dense requires grad"):
        _call_op(x, target, reduction, dense=dense)


@native
def test_an_exported_program_trains_as_the_module():
    """torch.export writes the op itself into its graph: the exported module's gradients are the eager
    module's."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    loss_fn = psl.SoftCrossEntropyLoss(smoothing=0.1)

    class WithLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x, y):
            return loss_fn(self.model(x), y)

    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    exported = torch.export.export(WithLoss(), (x, y)).module()
    assert any("pysoftlabel.soft_cross_entropy" in str(node.target) for node in exported.graph.nodes)
    WithLoss()(x, y).backward()
    want = {f"model.{name}": param.grad.clone() for name, param in model.named_parameters()}
    model.zero_grad(set_to_none=True)  # the exported module may hold the same parameters
    exported(x, y).backward()
    for name, grad in want.items():
        got = exported.get_parameter(name).grad
        assert got is not None, f"{name} has no gradient"
        torch.testing.assert_close(got, grad, msg=name)


@native
def test_opcheck():
    logits = torch.randn(5, 7)
    labels = torch.randint(0, 7, (5,))
    args = (logits, labels, None, None, 1.0, None, 0.1, None, None, 0.0, None, None, 0.0, False, 1.0, -100,
            1, None, True, torch.zeros(7, 7), torch.zeros(7), torch.zeros(15, 3, dtype=torch.float64),
            torch.zeros(3, dtype=torch.float64))
    torch.library.opcheck(torch.ops.pysoftlabel.soft_cross_entropy.default, args)
    torch.library.opcheck(torch.ops.pysoftlabel._scale_rows_.default, (torch.randn(5, 7), torch.tensor(2.0)))
    torch.library.opcheck(torch.ops.pysoftlabel.calibration_update.default,
                          (logits, labels, -100, torch.zeros(15, 3, dtype=torch.float64),
                           torch.zeros(3, dtype=torch.float64)))
    torch.library.opcheck(torch.ops.pysoftlabel.class_stats_update.default,
                          (logits, labels, -100, torch.zeros(7, 7), torch.zeros(7)))


@native
@pytest.mark.parametrize("device", devices())
def test_fused_statistics_equal_standalone(device):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(200, 9, generator=g).to(device) * 3
    labels = torch.randint(0, 9, (200,), generator=g).to(device)
    labels[:10] = -100
    check_fused_statistics(logits, psl.SoftTarget(labels, smoothing=0.1))


def _bad(**changes):
    n, c = 4, 5
    base = dict(logits=torch.randn(n, c), labels=torch.randint(0, c, (n,)))
    base.update(changes)
    return base


@native
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_zero_dim_weights_equal_floats(backend):
    """A 0-d tensor weight (lam drawn on the device, a scheduled smoothing) is one weight for every row."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 7, generator=g)
    labels, labels2 = torch.randint(0, 7, (6,), generator=g), torch.randint(0, 7, (6,), generator=g)
    dense = torch.softmax(torch.randn(6, 7, generator=g), 1)
    weights = dict(smoothing=0.1, lam=0.3, dense_weight=0.4)
    as_tensors = psl.SoftTarget(labels, labels2=labels2, dense=dense,
                                **{k: torch.tensor(v) for k, v in weights.items()})
    as_floats = psl.SoftTarget(labels, labels2=labels2, dense=dense, **weights)
    loss, grad = loss_and_grad(logits, as_tensors, "none", backend)
    want_loss, want_grad = loss_and_grad(logits, as_floats, "none", backend)
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(grad, want_grad)


@native
@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("case, match", [
    (lambda: dict(target=psl.SoftTarget(torch.tensor([0, 1, 5, 2]))), "labels"),
    (lambda: dict(target=psl.SoftTarget(torch.tensor([0, 1, -3, 2]))), "labels"),
    (lambda: dict(target=psl.SoftTarget(torch.tensor([0, 1, 2, 3]), labels2=torch.tensor([0, 9, 1, 1]),
                                        lam=0.5)), "labels2"),
    (lambda: dict(target=psl.SoftTarget(torch.tensor([0, 1, 2, 3]), labels2=torch.tensor([0, 1, 1, 1]),
                                        lam=torch.tensor([0.5, 1.5, 0.2, 0.1]))), "lam"),
    (lambda: dict(target=psl.SoftTarget(torch.tensor([0, 1, 2, 3]),
                                        smoothing=torch.tensor([0.1, 0.9, -0.2, 0.0]))), "weight"),
    (lambda: dict(target=psl.SoftTarget(torch.tensor([0, 1, 2, 3]),
                                        smoothing=torch.tensor([0.1, float("nan"), 0.2, 0.0]))), "negative or NaN"),
    (lambda: dict(target=psl.SoftTarget(torch.tensor([0, 1, 2, 3]), labels2=torch.tensor([0, 1, 1, 1]),
                                        lam=torch.tensor([0.5, float("nan"), 0.2, 0.1]))), "lam.*NaN"),
    (lambda: dict(target=psl.SoftTarget(torch.tensor([0, 1, 2, 3]), labels2=torch.tensor([0, 1, 1, 1]),
                                        lam=torch.tensor(1.5))), "lam"),
    (lambda: dict(target=psl.SoftTarget(torch.tensor([0, 1, 2, 3]), smoothing=torch.tensor(0.7),
                                        dense=torch.rand(4, 5), dense_weight=torch.tensor(0.5))), "exceeds 1"),
    (lambda: dict(target=psl.SoftTarget(torch.tensor([0, 1, 2, 3]), smoothing=torch.tensor([0.5, 0.9, 0.2, 0.0]),
                                        dense=torch.rand(4, 5), dense_weight=0.5)), "exceeds 1"),
    (lambda: dict(target=psl.SoftTarget(torch.tensor([0, 1, 2, 3]), table=torch.rand(4, 4), table_weight=0.1)),
     "table"),
    (lambda: dict(target=psl.SoftTarget(torch.tensor([0, 1, 2]))), "labels"),
    (lambda: dict(target=psl.SoftTarget(torch.tensor([0, 1, 2, 3]), dense=torch.rand(4, 6), dense_weight=0.1)),
     "dense"),
    (lambda: dict(target=torch.tensor([0, 1, 2, 3]), logits=torch.randn(4, 5, 2)),
     r"^logits must have shape \[N, C\], got a tensor of shape \(4, 5, 2\); for F.cross_entropy's \[N, C, d1, \.\.\.\] "
     r"form use logits.movedim\(1, -1\).flatten\(0, -2\) and labels.flatten\(\)$"),
    (lambda: dict(target=torch.tensor([0, 1, 2, 3]), reduction="avg"), "reduction"),
    # F.cross_entropy's unbatched call: the logits are the problem, not the 0-d label
    (lambda: dict(target=torch.tensor(2), logits=torch.randn(5)),
     r"^logits must have shape \[N, C\], got a tensor of shape \(5,\); for one sample's scores use logits\[None\]"),
    (lambda: dict(target=torch.tensor([0, 1, 2, 3]), logits=torch.ones(4, 5, dtype=torch.long)),
     "^logits must be floating point, got dtype torch.int64$"),
    (lambda: dict(target=torch.tensor([0, 1, 2, 3]), logits=torch.ones(4, 0)),
     r"^logits must have at least one class \(C >= 1\)$"),
    (lambda: dict(target=[0, 1, 2, 3]),
     r"^target must be a SoftTarget, a label tensor \[N\] or a probability tensor \[N, C\], got list$"),
    (lambda: dict(target=torch.tensor([0, 1, 2, 3]), calib=psl.CalibrationStats(device="meta")),
     "^calib lives on meta but logits is on cpu$"),
    (lambda: dict(target=torch.tensor([0, 1, 2, 3]), stats=psl.ClassStats(3)),
     r"^stats is a ClassStats of 3 classes, but logits has 5$"),  # the same words from both backends
])
def test_bad_input_raises_value_error(backend, case, match):
    kwargs = dict(logits=torch.randn(4, 5), reduction="mean")
    kwargs.update(case())
    with pytest.raises(ValueError, match=match):
        psl.soft_cross_entropy(kwargs.pop("logits"), kwargs.pop("target"), backend=backend, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(smoothing=0.6, table=torch.rand(5, 5), table_weight=0.6), "must be <= 1"),
    (dict(smoothing=-0.1), ">= 0"),
    (dict(smoothing=float("nan")), "not NaN"),
    (dict(labels2=torch.tensor([1, 2, 3, 4]), lam=float("nan")), "lam must be in"),
    (dict(labels2=torch.tensor([1, 2, 3, 4])), "lam is required"),
    (dict(labels2=torch.tensor([1, 2, 3, 4]), lam=1.5), "lam must be in"),
    (dict(table=torch.rand(5, 4), table_weight=0.1), "square"),
    (dict(table_weight=0.2), "no table"),
    (dict(temperature=0.0), "temperature"),
    # A temperature with dense probabilities, or with no dense target, was silently not applied.
    (dict(dense=torch.rand(4, 5).softmax(1), dense_weight=1.0, temperature=3.0),
     "temperature=3.0 applies to dense logits"),
    (dict(temperature=2.0), "temperature=2.0 applies to dense logits"),
    (dict(dense_logits=True), "dense_logits is True but no dense"),
    (dict(smoothing=torch.zeros(3)), "smoothing"),
    (dict(smoothing=torch.zeros(4, dtype=torch.int64)), "^smoothing must be floating point, got dtype torch.int64$"),
    (dict(labels=torch.zeros(4, 1, dtype=torch.long)),
     r"^labels must be a 1-D tensor of class indices, got a tensor of shape \(4, 1\)"),
    (dict(labels=[0, 1, 2, 3]), "^labels must be a 1-D tensor of class indices, got list$"),
    (dict(labels2=torch.tensor([1, 2, 3]), lam=0.5), r"^labels2 must have the shape of labels \(4,\), got a tensor"),
    (dict(lam=0.5), "^lam is given without labels2$"),
    (dict(dense=torch.rand(4), dense_weight=0.5), r"^dense must have shape \[N, C\] with N = 4, got a tensor"),
    (dict(dense=torch.rand(3, 5), dense_weight=0.5), r"^dense must have shape \[N, C\] with N = 4, got a tensor"),
    (dict(dense=torch.ones(4, 5, dtype=torch.long), dense_weight=0.5),
     "^dense must be floating point, got dtype torch.int64$"),
    (dict(dense_weight=0.5), "^dense_weight is nonzero but no dense target is given$"),
    # A dense target or table with no weight was silently left out: hard CE where a teacher was meant.
    (dict(dense=torch.rand(4, 5).softmax(1)), "^dense is given but dense_weight is 0, so it would have no effect"),
    (dict(table=torch.rand(5, 5)), "^table is given but table_weight is 0, so it would have no effect"),
])
def test_soft_target_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        psl.SoftTarget(**{"labels": torch.tensor([0, 1, 2, 3]), **kwargs})


@native
def test_native_backend_wrong_device_and_weights_over_one_scalar():
    target = psl.SoftTarget(torch.tensor([0, 1]), smoothing=0.5, dense=torch.rand(2, 3), dense_weight=0.5)
    psl.soft_cross_entropy(torch.randn(2, 3), target)  # s + d == 1 is allowed
    meta_labels = torch.tensor([0, 1], device="meta")
    with pytest.raises(ValueError, match="labels is on meta"):
        psl.soft_cross_entropy(torch.randn(2, 3), psl.SoftTarget(meta_labels))


_BUILD_CHECK = """
import sys
import torch
import pysoftlabel as psl
sys.path.insert(0, {tests!r})
from targets import PARTS, random_target

from pysoftlabel.ops.soft_cross_entropy import _REDUCTIONS, _spec
from conftest import calibration_tolerance
from test_soft_cross_entropy import check_fused_statistics, check_parity
for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
    for c in (1, 7, 1000, 4099):
        g = torch.Generator().manual_seed(c)
        logits = (torch.randn(37, c, generator=g) * 4).to(dtype)
        target = random_target(37, c, set(PARTS), generator=g, logits_dtype=dtype)
        check_parity(logits, target, "mean")
        check_fused_statistics(logits, target)
        check_parity(logits, random_target(37, c, {{"smoothing"}}, generator=g, logits_dtype=dtype), "none")
        labels = torch.randint(0, c, (37,), generator=g)
        native = psl.calibration_stats(logits, labels, backend="native")
        ref = psl.calibration_stats(logits, labels, backend="reference")
        torch.testing.assert_close(native.bins, ref.bins, **calibration_tolerance(dtype))
print(psl.extension_info()["cpu_capability"])
"""


_CAPABILITIES = ["default", "avx2", "avx512"]


@native
@pytest.mark.parametrize("capability", _CAPABILITIES)
def test_every_cpu_build_matches_reference(capability):
    """The CPU kernel is built for the baseline instruction set, AVX2 and AVX-512 and picks the best at run
    time, at most ATEN_CPU_CAPABILITY: each build, forced in its own process, against the reference."""
    best = psl.extension_info()["cpu_capability"]
    if _CAPABILITIES.index(capability) > _CAPABILITIES.index(best):
        # PyTorch takes ATEN_CPU_CAPABILITY at its word: its own kernels would die of an illegal instruction.
        pytest.skip(f"this CPU runs at most the {best} build, not {capability}")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    code = _BUILD_CHECK.format(tests=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == capability


@native
def test_native_backend_rejects_more_classes_than_32_bit_indices():
    logits = torch.empty(0, 2**31)  # no elements: only the shape matters
    with pytest.raises(ValueError, match="classes, more than"):
        psl.soft_cross_entropy(logits, psl.SoftTarget(torch.zeros(0, dtype=torch.long)), backend="native")


@pytest.mark.cuda
def test_cuda_validate_mode_raises_value_error():
    logits = torch.randn(4, 5, device="cuda")
    with pytest.raises(ValueError, match="labels"):
        psl.soft_cross_entropy(logits, psl.SoftTarget(torch.tensor([0, 1, 7, 2], device="cuda")), validate=True)


@native
@pytest.mark.parametrize("device", devices())
def test_large_class_count(device):
    """C up to 256k: one row spans many loop iterations of every thread."""
    g = torch.Generator().manual_seed(5)
    n, c = 3, 262144
    logits = (torch.randn(n, c, generator=g) * 3).to(device)
    target = random_target(n, c, {"smoothing", "dense_logits", "mix"}, device=device, generator=g)
    check_parity(logits, target, "none")


@pytest.mark.cuda
@pytest.mark.parametrize("seed", range(40))
def test_parity_random_targets_cuda(seed):
    g = torch.Generator().manual_seed(seed)
    parts = {p for p in PARTS if float(torch.rand((), generator=g)) < 0.5}
    n = int(torch.randint(0, 40, (), generator=g))
    c = [1, 7, 64, 1000, 4096, 32000][int(torch.randint(0, 6, (), generator=g))]
    dtype = [torch.float32, torch.float16, torch.bfloat16, torch.float64][int(torch.randint(0, 4, (), generator=g))]
    logits = (torch.randn(n, c, generator=g) * 3).to("cuda", dtype)
    target = random_target(n, c, parts, device="cuda", generator=g, logits_dtype=dtype)
    reduction = "sum" if n and bool((target.labels == -100).all()) else ["none", "mean", "sum"][seed % 3]
    check_parity(logits, target, reduction)
    check_fused_statistics(logits, target)


@pytest.mark.cuda
@pytest.mark.parametrize("classes", [5, 32000])  # one warp a row; several warps (a block-wide failure)
def test_cuda_bad_label_fails_device_side_assert(classes):
    """Without validate=True a bad label on CUDA stops the process loudly (device-side assert naming the
    row), never a silent NaN."""
    import subprocess
    import sys
    code = ("import torch, pysoftlabel as psl\n"
            f"x = torch.randn(4, {classes}, device='cuda')\n"
            f"psl.soft_cross_entropy(x, torch.tensor([0, 1, {classes + 4}, 2], device='cuda'))\n"
            "torch.cuda.synchronize()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "labels: a label is out of range" in output, output
    assert "device-side assert triggered" in output, output
    assert "pysoftlabel: row 2:" in output, output
