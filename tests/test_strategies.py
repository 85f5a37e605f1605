"""Each strategy's targets against a hand computation; OLS's epoch update against the official semantics."""
import pytest
import torch
import torch.nn.functional as F

import pysoftlabel as psl
from pysoftlabel import strategies as S
from pysoftlabel.reference import target_distribution


def batch(n=6, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, 8, 8, generator=g), "label": torch.randint(0, c, (n,), generator=g)}


def test_ce_and_label_smoothing():
    b = batch()
    onehot = F.one_hot(b["label"], 4).float()
    torch.testing.assert_close(target_distribution(S.CrossEntropy().targets(b), 4), onehot)
    torch.testing.assert_close(target_distribution(S.LabelSmoothing(0.2).targets(b), 4), 0.8 * onehot + 0.05)
    mixed = {**b, "label2": b["label"].flip(0), "lam": 0.7}
    want = 0.9 * (0.7 * onehot + 0.3 * onehot.flip(0)) + 0.025
    torch.testing.assert_close(target_distribution(S.LabelSmoothing(0.1).targets(mixed), 4), want)
    with pytest.raises(ValueError, match="eps"):
        S.LabelSmoothing(1.5)


@pytest.mark.parametrize("make, match", [
    (lambda: S.OnlineLabelSmoothing(3, alpha=1.5), r"^alpha must be in \[0, 1\], got 1.5$"),
    (lambda: S.OnlineLabelSmoothing(3, init="ones"), "^init must be 'zeros' or 'uniform', got 'ones'$"),
    (lambda: S.OnlineLabelSmoothing(3, freeze_at=1.2), r"^freeze_at must be in \(0, 1\] or None, got 1.2$"),
    (lambda: S.OnlineLabelSmoothing(3, freeze_at=0.0), r"^freeze_at must be in \(0, 1\] or None, got 0.0$"),
    (lambda: S.AdaptiveLabelSmoothing(eps_min=0.5, eps_max=0.2), "^need 0 <= eps_min <= eps_max <= 1"),
    (lambda: S.AdaptiveLabelSmoothing(eps_no_box=-0.1), "^need 0 <= eps_min <= eps_max <= 1"),
    (lambda: S.KnowledgeDistillation(torch.nn.Identity(), alpha=-0.1), r"^need alpha >= 0 and temperature > 0"),
    (lambda: S.KnowledgeDistillation(torch.nn.Identity(), temperature=0.0), r"\(finite\), got 0.1, 0.0$"),
    (lambda: S.OnlineLabelDistribution(torch.nn.Identity(), decay=1.0), r"^need decay in \[0, 1\)"),
    (lambda: S.OnlineLabelDistribution(torch.nn.Identity(), weight=1.5), r"weight in \[0, 1\]"),
    (lambda: S.OnlineLabelDistribution(torch.nn.Identity(), warmup_epochs=-1),
     "warmup_epochs >= 0; got 0.999, 0.8, -1$"),
    (lambda: S.Mixup(alpha=0.0), "^alpha must be positive, got 0.0$"),
])
def test_strategies_name_a_bad_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("strategy", [S.CrossEntropy(), S.OnlineLabelSmoothing(4), S.AdaptiveLabelSmoothing()])
def test_a_batch_without_labels_is_named(strategy):
    with pytest.raises(ValueError, match=rf"^{strategy.name}: the batch needs a 'label' tensor, got keys \['image'\]$"):
        strategy.targets({"image": torch.zeros(2, 3, 4, 4)})


def test_ols_epochs_follow_the_official_semantics():
    ols = S.OnlineLabelSmoothing(3, alpha=0.5)
    b = {"image": None, "label": torch.tensor([0, 0, 1, 2])}
    # Epoch 0, zero table: the soft term is 0, the target is alpha on the label.
    torch.testing.assert_close(target_distribution(ols.targets(b), 3), 0.5 * F.one_hot(b["label"], 3).float())
    logits = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0]])
    psl.soft_cross_entropy(logits, ols.targets(b), stats=ols.stats)  # the loss gathers the statistics
    ols.end_epoch()
    p = torch.softmax(logits, 1)
    table = torch.full((3, 3), 1 / 3)
    table[0] = (p[0] + p[1]) / 2  # both class-0 rows correct
    table[1] = p[2]               # class 2's only row is wrong: uniform row stays
    torch.testing.assert_close(ols.table, table)
    assert ols.stats.count.sum() == 0  # reset for the next epoch
    want = 0.5 * F.one_hot(b["label"], 3).float() + 0.5 * table[b["label"]]
    torch.testing.assert_close(target_distribution(ols.targets(b), 3), want)
    state = ols.state_dict()
    other = S.OnlineLabelSmoothing(3)
    other.load_state_dict(state)
    torch.testing.assert_close(other.table, ols.table)


def test_ols_with_alpha_one_is_hard_cross_entropy():
    """alpha = 1 puts all weight on the label: the table takes no part (a table of weight 0 is refused by
    SoftTarget), and the statistics are still gathered."""
    ols = S.OnlineLabelSmoothing(3, alpha=1.0, init="uniform")
    b = {"image": None, "label": torch.tensor([0, 1, 2])}
    torch.testing.assert_close(target_distribution(ols.targets(b), 3), F.one_hot(b["label"], 3).float())
    logits = torch.eye(3)
    loss = psl.soft_cross_entropy(logits, ols.targets(b), stats=ols.stats)
    torch.testing.assert_close(loss, F.cross_entropy(logits, b["label"]))
    assert ols.stats.count.tolist() == [1, 1, 1]


def test_ols_freezes_confident_rows():
    ols = S.OnlineLabelSmoothing(2, freeze_at=0.88, init="uniform")
    logits = torch.tensor([[5.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    ols.stats.update(logits, labels)
    ols.end_epoch()
    frozen_row = ols.table[0].clone()
    assert ols.frozen.tolist() == [True, False]
    ols.stats.update(torch.tensor([[1.0, 0.0], [0.0, 3.0]]), labels)
    ols.end_epoch()
    torch.testing.assert_close(ols.table[0], frozen_row)
    torch.testing.assert_close(ols.table[1], torch.softmax(torch.tensor([0.0, 3.0]), 0))


def test_als_smoothing_from_object_fraction():
    als = S.AdaptiveLabelSmoothing(eps_min=0.05, eps_max=0.9, eps_no_box=0.1)
    b = {"image": None, "label": torch.tensor([0, 1, 2, 3]), "object_fraction": torch.tensor([1.0, 0.3, 0.0, -1.0])}
    torch.testing.assert_close(als.smoothing(b["object_fraction"]), torch.tensor([0.05, 0.7, 0.9, 0.1]))
    t = target_distribution(als.targets(b), 4)
    torch.testing.assert_close(t[1], 0.3 * F.one_hot(torch.tensor(1), 4).float() + 0.7 / 4)
    with pytest.raises(ValueError, match="object_fraction"):
        als.targets({"label": b["label"]})
    with pytest.raises(ValueError, match="^als: a mixed batch needs 'object_fraction2'"):
        als.targets({**b, "label2": b["label"].flip(0), "lam": 0.5})


@pytest.mark.parametrize("mix", [S.Mixup, S.CutMix, S.RICAP])
def test_als_under_mixing_mixes_the_als_targets_of_the_images(mix):
    """A mixed sample's target is the mix, weighted as its labels, of the ALS targets of the images it is
    made of, each smoothed by its own object fraction: the partners' fractions travel with their labels."""
    n = c = 8  # label = index of the image: a label names its source image
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 12, 16).clone()
    fraction = torch.tensor([1.0, 0.3, 0.0, -1.0, 0.5, 0.9, 0.2, -1.0])
    als = S.AdaptiveLabelSmoothing(eps_min=0.05, eps_max=0.9, eps_no_box=0.1)
    eps = als.smoothing(fraction)
    b = mix(seed=3)({"image": images, "label": torch.arange(n), "object_fraction": fraction})
    pairs = [(b["lam"], b["label"]), (1 - b["lam"], b["label2"])]
    if "ricap" in b:
        first, second = b["ricap"]
        pairs = [(first * w, y) for w, y in pairs] + [((1 - first) * second["lam"], second["label"]),
                                                      ((1 - first) * (1 - second["lam"]), second["label2"])]
    assert sum(w for w, _ in pairs) == pytest.approx(1.0) and any(0 < w < 1 for w, _ in pairs)
    want_target = sum(w * ((1 - eps[y, None]) * F.one_hot(y, c) + eps[y, None] / c) for w, y in pairs)
    logits = torch.randn(n, c, requires_grad=True)
    ours = S.mixed_loss(als, logits, b)
    want = -(want_target * F.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(ours, want)
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(want, logits)[0])


def test_ldl_uses_the_teacher_on_the_mixed_image_and_ignores_mixed_labels():
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    b = S.Mixup(seed=1)(batch())
    t = target_distribution(S.LabelDistribution(teacher).targets(b), 4)
    with torch.no_grad():
        torch.testing.assert_close(t, torch.softmax(teacher(b["image"]), 1))


def test_online_ldl_ramps_and_tracks_the_student():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4), torch.nn.BatchNorm1d(4))
    online = S.OnlineLabelDistribution(model, decay=0.5, weight=0.8, warmup_epochs=2)
    b = batch()
    torch.testing.assert_close(target_distribution(online.targets(b), 4), F.one_hot(b["label"], 4).float())
    before, mean_before = online.ema[1].weight.clone(), online.ema[2].running_mean.clone()
    with torch.no_grad():
        model[1].weight.add_(1.0)
        model(b["image"])  # training mode: BatchNorm's running statistics and its step count move
    online.after_step(model)
    # Float tensors, parameters and buffers alike, are averaged; the integer step count is copied.
    torch.testing.assert_close(online.ema[1].weight, 0.5 * before + 0.5 * model[1].weight)
    torch.testing.assert_close(online.ema[2].running_mean, 0.5 * mean_before + 0.5 * model[2].running_mean)
    assert online.ema[2].num_batches_tracked.item() == model[2].num_batches_tracked.item() == 1
    online.end_epoch()  # weight 0.4 in epoch 1
    with torch.no_grad():
        want = 0.6 * F.one_hot(b["label"], 4).float() + 0.4 * torch.softmax(online.ema(b["image"]), 1)
    torch.testing.assert_close(target_distribution(online.targets(b), 4), want)


def test_mixup_and_cutmix():
    import numpy as np
    b = batch(n=8)
    m = S.Mixup(alpha=1.0, seed=3)(b)
    lam = np.random.default_rng(3).beta(1.0, 1.0)  # the same draws, made by hand
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    assert m["lam"] == pytest.approx(lam)
    torch.testing.assert_close(m["image"], lam * b["image"] + (1 - lam) * b["image"][perm])
    torch.testing.assert_close(m["label2"], b["label"][perm])
    c = S.CutMix(alpha=1.0, seed=3)(b)
    changed = (c["image"] != b["image"]).any(dim=1)  # [N, H, W]
    rows_with_new_partner = c["label2"] != b["label"]
    if rows_with_new_partner.any():
        i = int(rows_with_new_partner.nonzero()[0])
        assert changed[i].float().mean().item() == pytest.approx(1 - c["lam"], abs=1e-6)
    mix = S.Mixup(seed=4)
    state = mix.state_dict()
    first = mix(b)["lam"]
    mix.load_state_dict(state)
    assert mix(b)["lam"] == first  # resumable randomness


@pytest.mark.parametrize("mix", [S.Mixup, S.CutMix, S.RICAP])
@pytest.mark.parametrize("bad", [dict(label=None), dict(label=torch.zeros(3, dtype=torch.long)),
                                 dict(image=torch.zeros(3, 8, 8))])
def test_mixing_names_a_batch_it_cannot_mix(mix, bad):
    b = {k: v for k, v in {**batch(n=4), **bad}.items() if v is not None}
    with pytest.raises(ValueError, match=f"{mix.__name__}: the batch needs 'image'"):
        mix()(b)


@pytest.mark.cuda
def test_mixing_on_the_gpu_matches_the_cpu_without_waiting_for_it():
    b = {**batch(n=8), "object_fraction": torch.linspace(-1, 1, 8)}  # ALS's travel with the labels
    on_gpu = {k: v.cuda() for k, v in b.items()}
    for make in (S.Mixup, S.CutMix, S.RICAP):
        want = make(seed=5)(b)
        torch.cuda.set_sync_debug_mode("error")  # the partner permutation travels pinned and asynchronously
        try:
            got = make(seed=5)(on_gpu)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.testing.assert_close(got["image"].cpu(), want["image"])
        assert torch.equal(got["label2"].cpu(), want["label2"]) and got["lam"] == want["lam"]
        assert torch.equal(got["object_fraction2"].cpu(), want["object_fraction2"])


def test_ricap_patches_weights_and_loss():
    n, c = 8, 5
    labels = torch.arange(n) % c
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 12, 16).clone()  # pixel = source
    r = S.RICAP(seed=2)({"image": images, "label": labels})
    first, second = r["ricap"]
    weights = [first * r["lam"], first * (1 - r["lam"]), (1 - first) * second["lam"], (1 - first) * (1 - second["lam"])]
    patch_labels = [r["label"], r["label2"], second["label"], second["label2"]]
    assert sum(weights) == pytest.approx(1.0)
    for i in range(n):  # each label's weight is the area its source image covers in the output
        source = r["image"][i, 0].long().flatten()
        for k in range(4):
            covered = 0
            if weights[k] > 0:  # the patch's pixels come from one image, whose label is the patch's label
                area = {j: float((source == j).float().mean()) for j in source.unique().tolist()}
                covered = sum(a for j, a in area.items() if int(labels[j]) == int(patch_labels[k][i]))
                assert covered >= weights[k] - 1e-6
    assert (r["image"][:, 0, 0, 0].long() == torch.arange(n)).all() or weights[0] == 0  # top-left: the sample
    logits = torch.randn(n, c, requires_grad=True)
    for strategy, eps in ((S.CrossEntropy(), 0.0), (S.LabelSmoothing(0.1), 0.1)):
        ours = S.mixed_loss(strategy, logits, r)
        want = sum(w * F.cross_entropy(logits, y, label_smoothing=eps) for w, y in zip(weights, patch_labels))
        torch.testing.assert_close(ours, want)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 16, c))
    ldl = S.LabelDistribution(teacher)
    torch.testing.assert_close(S.mixed_loss(ldl, logits, r), ldl.loss(logits, r))  # labels unused: one pass


class CountingLinear(torch.nn.Module):
    """A linear model that counts its forwards."""

    def __init__(self, c):
        super().__init__()
        self.linear, self.calls = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, c)), 0

    def forward(self, x):
        self.calls += 1
        return self.linear(x)


@pytest.mark.parametrize("make", [S.KnowledgeDistillation, lambda m: S.OnlineLabelDistribution(m, warmup_epochs=0)])
def test_ricap_runs_a_teachers_forward_once(make):
    """RICAP's two passes share the teacher's (or the average's) forward of the images; the loss is the one of
    two separate passes, and nothing is held after the step."""
    n, c = 16, 4
    r = S.RICAP(seed=1)(batch(n=n, c=c))
    first, second = r["ricap"]
    strategy, logits = make(CountingLinear(c)), torch.randn(n, c)
    frozen = getattr(strategy, "teacher", None) or strategy.ema
    pair = {k: v for k, v in r.items() if k != "ricap"}
    separate = first * strategy.loss(logits, pair) + (1 - first) * strategy.loss(logits, {**pair, **second})
    frozen.calls = 0
    torch.testing.assert_close(S.mixed_loss(strategy, logits, r), separate)
    assert frozen.calls == 1 and strategy._forwards is None
    S.mixed_loss(strategy, logits, r)
    assert frozen.calls == 2  # the next step's forward is its own


def test_compiled_forwards_follow_the_average_and_leave_the_state_plain():
    """compile_forwards() runs the frozen models' forwards compiled: the average's, updated in place after each
    step, gives the eager module's outputs, and the strategy's state keeps the module's own names."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    online = S.OnlineLabelDistribution(model, decay=0.5, warmup_epochs=0)
    graphs = []

    def backend(graph, example_inputs):  # records what dynamo compiled, runs it as it is
        graphs.append(graph)
        return graph.forward
    assert online.compile_forwards(backend=backend) is online and online.frozen_models() == (online.ema,)
    b = batch()
    for _ in range(3):
        with torch.no_grad():
            model[1].weight.add_(1.0)
        online.after_step(model)
        torch.testing.assert_close(online.frozen_forward(online.ema, b["image"]), online.ema(b["image"]))
    assert len(graphs) == 1  # compiled once, run three times
    assert set(online.state_dict()["ema"]) == {"1.weight", "1.bias"}
    assert S.CrossEntropy().compile_forwards().frozen_models() == ()


@pytest.mark.parametrize("make", [S.CrossEntropy, S.LabelSmoothing, lambda: S.OnlineLabelSmoothing(4)])
def test_a_ricap_batch_given_to_loss_names_mixed_loss(make):
    """strategy.loss of a RICAP batch would train on two of its four labels without a word: it names
    mixed_loss instead."""
    r = S.RICAP(seed=1)(batch())
    with pytest.raises(ValueError, match=r"a RICAP batch holds four labels, two in 'ricap': its loss is "
                                         r"pysoftlabel\.strategies\.mixed_loss"):
        make().loss(torch.randn(6, 4), r)


def test_ricap_gathers_calibration_once_and_class_statistics_per_pair():
    """Under RICAP's two passes, training calibration counts each row once, against its first label; OLS's
    class statistics count the rows classified as the first label of either pair."""
    n, c = 64, 3
    g = torch.Generator().manual_seed(4)
    batch = {"image": torch.randn(n, 3, 8, 8, generator=g), "label": torch.randint(0, c, (n,), generator=g)}
    r = S.RICAP(seed=1)(batch)
    logits = torch.randn(n, c, generator=g)
    ols, calib = S.OnlineLabelSmoothing(c), psl.CalibrationStats()
    S.mixed_loss(ols, logits, r, calib=calib)
    assert calib.count == n
    torch.testing.assert_close(calib.bins, psl.calibration_stats(logits, r["label"]).bins)
    want = psl.ClassStats(c).update(logits, r["label"]).update(logits, r["ricap"][1]["label"])
    torch.testing.assert_close(ols.stats.count, want.count)
    torch.testing.assert_close(ols.stats.sum, want.sum)


def test_kd_is_the_hard_cross_entropy_plus_alpha_t2_kl():
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    b = batch()
    logits = torch.randn(6, 4, requires_grad=True)
    kd = S.KnowledgeDistillation(teacher, alpha=0.1, temperature=3.0)
    ours = kd.loss(logits, b)
    with torch.no_grad():
        t = teacher(b["image"])
    kl = F.kl_div(F.log_softmax(logits / 3, 1), F.log_softmax(t / 3, 1), reduction="batchmean", log_target=True)
    want = F.cross_entropy(logits, b["label"]) + 0.1 * 9 * kl
    torch.testing.assert_close(ours, want)
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(want, logits)[0])


def test_default_loss_gathers_ols_statistics():
    ols = S.OnlineLabelSmoothing(4)
    b = batch()
    logits = torch.randn(6, 4)
    ols.loss(logits, b)
    ref = psl.ClassStats(4).update(logits, b["label"])
    torch.testing.assert_close(ols.stats.count, ref.count)


def test_to_moves_what_each_strategy_holds():
    def devices(strategy):
        return {name: (next(value.parameters()).device if isinstance(value, torch.nn.Module) else value.device).type
                for name, value in vars(strategy).items()
                if torch.is_tensor(value) or isinstance(value, (torch.nn.Module, psl.ClassStats))}
    teacher = torch.nn.Linear(4, 3)
    for strategy, held in ((S.OnlineLabelSmoothing(3), {"table", "frozen", "stats"}),
                           (S.LabelDistribution(teacher), {"teacher"}), (S.KnowledgeDistillation(teacher), {"teacher"}),
                           (S.OnlineLabelDistribution(teacher), {"ema"})):
        assert strategy.to("meta") is strategy and devices(strategy) == dict.fromkeys(held, "meta")


@pytest.mark.skipif(not psl.extension_info()["cpu"], reason="extension not built")
@pytest.mark.parametrize("mix", [None, S.Mixup, S.CutMix, S.RICAP])
def test_every_strategy_trains_through_the_fused_kernels(monkeypatch, mix):
    """Every strategy under every mixing augmentation: no strategy hands the loss a target that requires grad
    (a teacher's logits with a graph, say), which would send it to the reference formula: the training loss
    and its gradient come from the kernels, finite."""
    def no_reference(*args, **kwargs):
        raise AssertionError("the loss took the reference formula")
    monkeypatch.setattr(psl.reference, "soft_cross_entropy", no_reference)

    def linear():  # a teacher of its own for each strategy: each freezes the one it is given
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    model = linear()
    b = {**batch(), "object_fraction": torch.tensor([0.5, -1.0, 0.2, 1.0, 0.0, 0.7])}
    b = mix(seed=2)(b) if mix is not None else b
    for strategy in (S.CrossEntropy(), S.LabelSmoothing(), S.OnlineLabelSmoothing(4), S.AdaptiveLabelSmoothing(),
                     S.LabelDistribution(linear()), S.OnlineLabelDistribution(model, warmup_epochs=0),
                     S.KnowledgeDistillation(linear())):
        model.zero_grad()
        loss = S.mixed_loss(strategy, model(b["image"]), b, model)
        loss.backward()
        assert loss.isfinite() and all(p.grad.isfinite().all() for p in model.parameters()), strategy.name
