"""ClassStats and CalibrationStats: native against reference, ECE against independent implementations,
merging, state, DDP all_reduce, edge cases."""
import json
import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pysoftlabel as psl
from conftest import calibration_tolerance, devices


def independent_ece(logits, labels, n_bins=15):
    """Guo et al. 2017, written with a Python loop over bins (b/M, (b+1)/M]."""
    p = torch.softmax(logits.double(), 1)
    conf, pred = p.max(1)
    correct = (pred == labels).double()
    ece, n = 0.0, len(labels)
    for b in range(n_bins):
        in_bin = (conf > b / n_bins) & (conf <= (b + 1) / n_bins)
        if in_bin.any():
            ece += in_bin.sum().item() / n * abs(correct[in_bin].mean().item() - conf[in_bin].mean().item())
    return ece


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_calibration_native_matches_reference(device, dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(500, 10, generator=g) * 3).to(device, dtype)
    labels = torch.randint(0, 10, (500,), generator=g).to(device)
    labels[::11] = -100
    native = psl.calibration_stats(logits, labels, backend="native")
    ref = psl.calibration_stats(logits, labels, backend="reference")
    torch.testing.assert_close(native.bins, ref.bins, **calibration_tolerance(dtype))
    torch.testing.assert_close(native.sums, ref.sums, **calibration_tolerance(dtype))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("c", [10, 1000, 4099])
def test_ties_of_the_max_count_as_torch_argmax(device, dtype, c):
    """Logits with many ties: a row is correct when its label is the first index of the max (torch.argmax),
    in the calibration counts, the top-1 accuracy and the class statistics alike (C = 1000: vectorised
    kernels; 4099: scalar)."""
    g = torch.Generator().manual_seed(c)
    logits = torch.randint(0, 3, (257, c), generator=g).to(device, dtype)
    labels = torch.randint(0, 3, (257,), generator=g).to(device)  # the max, 2, is often at several of 0..2
    labels[::3] = logits[::3].float().argmax(1)
    native = psl.calibration_stats(logits, labels, backend="native")
    ref = psl.calibration_stats(logits, labels, backend="reference")
    assert native.bins[:, 2].sum().item() == (logits.float().argmax(1) == labels).sum().item()
    assert psl.metrics.AccuracyStats((1,), device).update(logits, labels).correct.item() == native.bins[:, 2].sum()
    torch.testing.assert_close(native.bins, ref.bins, **calibration_tolerance(dtype))
    stats = psl.ClassStats(c, device).update(logits, labels, backend="native")
    ref_stats = psl.ClassStats(c, device).update(logits, labels, backend="reference")
    torch.testing.assert_close(stats.count, ref_stats.count, rtol=0, atol=0)
    torch.testing.assert_close(stats.sum, ref_stats.sum, rtol=1e-5, atol=1e-6)


def test_ece_matches_independent_and_torchmetrics():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2000, 7, generator=g) * 2
    labels = torch.randint(0, 7, (2000,), generator=g)
    cal = psl.calibration_stats(logits, labels)
    assert cal.ece == pytest.approx(independent_ece(logits, labels), abs=1e-6)
    assert cal.accuracy == pytest.approx((logits.argmax(1) == labels).double().mean().item(), abs=1e-9)
    nll = torch.nn.functional.cross_entropy(logits.double(), labels).item()
    assert cal.nll == pytest.approx(nll, rel=1e-5)
    tm = pytest.importorskip("torchmetrics.classification")
    metric = tm.MulticlassCalibrationError(num_classes=7, n_bins=15, norm="l1")
    assert cal.ece == pytest.approx(metric(logits, labels).item(), abs=1e-5)
    mce = tm.MulticlassCalibrationError(num_classes=7, n_bins=15, norm="max")
    assert cal.mce == pytest.approx(mce(logits, labels).item(), abs=1e-5)


def test_merge_state_dict_and_reset():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(300, 5, generator=g)
    labels = torch.randint(0, 5, (300,), generator=g)
    whole = psl.calibration_stats(logits, labels)
    parts = psl.calibration_stats(logits[:100], labels[:100]) + psl.calibration_stats(logits[100:], labels[100:])
    torch.testing.assert_close(parts.bins, whole.bins)
    torch.testing.assert_close(parts.sums, whole.sums)
    copy = psl.CalibrationStats()
    copy.load_state_dict(whole.state_dict())
    assert copy.ece == whole.ece and copy.count == 300
    assert copy.reset().count == 0


def test_repr_shows_the_figures_and_never_raises():
    logits, labels = torch.randn(40, 6), torch.randint(0, 6, (40,))
    cal = psl.calibration_stats(logits, labels)
    assert repr(cal) == (f"CalibrationStats(n_bins=15, device=cpu, count=40, ece={cal.ece:.4f}, "
                         f"accuracy={cal.accuracy:.4f})")
    assert repr(psl.CalibrationStats(n_bins=5)) == "CalibrationStats(n_bins=5, device=cpu)"
    bad = psl.CalibrationStats(skip_nonfinite=True).update(torch.full((3, 6), float("nan")), labels[:3])
    bad.skip_nonfinite = False  # reading .ece would now raise; repr still shows the state
    assert repr(bad) == "CalibrationStats(n_bins=15, device=cpu, nonfinite=3)"
    stats = psl.ClassStats(6).update(logits, logits.argmax(1))
    seen = logits.argmax(1).unique().numel()
    assert repr(stats) == f"ClassStats(num_classes=6, device=cpu, correct=40, classes_seen={seen})"


@pytest.mark.parametrize("make", [lambda: psl.CalibrationStats(), lambda: psl.ClassStats(6),
                                  lambda: psl.metrics.AccuracyStats(), lambda: psl.metrics.AdaptiveCalibrationStats(),
                                  lambda: psl.metrics.ClasswiseCalibrationStats(6)])
def test_to_moves_every_accumulator_in_place(make):
    logits, labels = torch.randn(40, 6), torch.randint(0, 6, (40,))
    stat = make().update(logits, labels)
    before = stat.state_dict()
    assert stat.to("cpu") is stat and all(torch.equal(before[k], v) for k, v in stat.state_dict().items())
    assert stat.to("meta") is stat and stat.device.type == "meta"
    assert all(v.device.type == "meta" for v in stat.state_dict().values())


def test_sum_of_accumulators_and_bad_state():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(90, 4, generator=g)
    labels = torch.randint(0, 4, (90,), generator=g)
    parts = [psl.calibration_stats(logits[i:i + 30], labels[i:i + 30]) for i in (0, 30, 60)]
    total = sum(parts)  # starts from 0
    torch.testing.assert_close(total.bins, psl.calibration_stats(logits, labels).bins)
    assert parts[0].count == 30  # summing did not add into the first part
    with pytest.raises(ValueError, match=r"lacks \['sums'\]"):
        psl.CalibrationStats().load_state_dict({"bins": torch.zeros(15, 3)})
    with pytest.raises(ValueError, match="must be a tensor"):
        psl.ClassStats(3).load_state_dict({"sum": torch.zeros(3, 3), "count": [0, 0, 0]})
    with pytest.raises(ValueError, match=r"^state 'sum' has shape \(4, 4\), this ClassStats \(3, 3\)$"):
        psl.ClassStats(3).load_state_dict(psl.ClassStats(4).state_dict())
    same = r"^can only add a CalibrationStats of the same configuration \(bins \(15, 3\), sums \(3,\)\), got "
    with pytest.raises(ValueError, match=same + r"bins \(10, 3\), sums \(3,\)$"):
        parts[0] + psl.CalibrationStats(10)
    with pytest.raises(ValueError, match=same + "ClassStats$"):
        parts[0] + psl.ClassStats(4)
    with pytest.raises(ValueError, match=same + "int$"):
        1 + parts[0]  # only 0 starts a sum


@pytest.mark.parametrize("stats", [psl.CalibrationStats, lambda: psl.ClassStats(3)])
@pytest.mark.parametrize("logits, labels, match", [
    (torch.randn(4), torch.zeros(4, dtype=torch.long), r"^logits must have shape \[N, (C|3)\], got \(4,\)$"),
    (torch.randn(4, 3), torch.zeros(4, 1, dtype=torch.long), r"^labels must have shape \[N\] = \[4\], got \(4, 1\)$"),
    (torch.randn(4, 3), torch.zeros(3, dtype=torch.long), r"^labels must have shape \[N\] = \[4\], got \(3,\)$"),
    (torch.randn(4, 3), torch.zeros(4), "^labels must hold integer class indices, got dtype torch.float32$"),
])
def test_update_names_a_bad_argument(stats, logits, labels, match):
    with pytest.raises(ValueError, match=match):
        stats().update(logits, labels)


@pytest.mark.parametrize("stats", [psl.CalibrationStats, lambda: psl.ClassStats(3)])
def test_update_refuses_tensors_on_another_device(stats):
    with pytest.raises(ValueError, match=r"^logits and labels must be on meta, got cpu and cpu$"):
        stats().to("meta").update(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("make, match", [
    (lambda: psl.CalibrationStats(2.5), "n_bins must be an integer"),
    (lambda: psl.CalibrationStats(0), "n_bins must be >= 1"),
    (lambda: psl.ClassStats(True), "num_classes must be an integer"),
    (lambda: psl.ClassStats("10"), "num_classes must be an integer"),
])
def test_bad_counts_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_calibration_edge_cases():
    one_class = psl.calibration_stats(torch.randn(4, 1), torch.zeros(4, dtype=torch.long))
    assert one_class.accuracy == 1.0 and one_class.ece == pytest.approx(0.0)
    assert one_class.bins[-1, 0] == 4  # confidence exactly 1.0 lands in the last bin
    sure = psl.calibration_stats(torch.tensor([[100.0, 0.0]]), torch.tensor([0]))
    assert sure.bins[-1, 0] == 1 and sure.ece == pytest.approx(0.0, abs=1e-12)
    all_wrong = psl.calibration_stats(torch.tensor([[5.0, 0.0], [0.0, 5.0]]), torch.tensor([1, 0]))
    assert all_wrong.accuracy == 0.0
    assert all_wrong.ece == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item(), rel=1e-6)
    empty = psl.calibration_stats(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert empty.count == 0 and empty.ece != empty.ece  # NaN: no rows
    with pytest.raises(ValueError, match="logits"):
        psl.calibration_stats(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels"):
        psl.calibration_stats(torch.randn(2, 3), torch.tensor([0, 3]))


@pytest.mark.parametrize("device", devices())
def test_class_stats_follow_ols_semantics(device):
    """Official OLS: a correctly classified sample adds its softmax to its class's row; table = mean rows,
    uniform where a class had no correct sample."""
    logits = torch.tensor([[3.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]], device=device)
    labels = torch.tensor([0, 0, 0, 1], device=device)  # rows 0, 1 correct (class 0); 2, 3 wrong
    stats = psl.ClassStats(3, device).update(logits, labels)
    p = torch.softmax(logits, 1)
    expected = torch.full((3, 3), 1 / 3, device=device)
    expected[0] = (p[0] + p[1]) / 2
    torch.testing.assert_close(stats.table(), expected)
    torch.testing.assert_close(stats.count, torch.tensor([2.0, 0.0, 0.0], device=device))
    ref = psl.ClassStats(3, device).update(logits, labels, backend="reference")
    torch.testing.assert_close(stats.sum, ref.sum)
    state = stats.state_dict()
    assert psl.ClassStats(3, device).load_state_dict(state) is None
    with pytest.raises(ValueError, match="logits"):
        stats.update(torch.randn(2, 4, device=device), torch.tensor([0, 1], device=device))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_statistics_leave_out_rows_with_non_finite_logits(device, backend):
    """Rows with NaN or +inf logits (an fp16 overflow) or all -inf have no softmax: both backends leave them
    out of the class statistics (the reference added NaN rows to the OLS table, and the CPU kernel a +inf
    row's softmax) and count them as non-finite in the calibration statistics (the CPU kernel counted +inf
    rows as finite rows of confidence 1 and NLL -inf), in the fused loss's pass too."""
    if backend == "native" and not psl.extension_info()["cpu"]:
        pytest.skip("extension not built")
    g = torch.Generator().manual_seed(2)
    n, c = 40, 6
    logits = torch.randn(n, c, generator=g) * 3
    labels = torch.randint(0, c, (n,), generator=g)
    logits[torch.arange(n), labels] += 4  # most rows correct
    finite = logits.clone()
    bad = torch.tensor([3, 10, 17, 25])
    logits[3, int(labels[3])] = float("inf")
    logits[10, int(labels[10])] = float("nan")
    logits[17, :] = -float("inf")
    logits[25, (int(labels[25]) + 1) % c] = float("inf")
    keep = torch.ones(n, dtype=torch.bool)
    keep[bad] = False
    logits, labels, finite = logits.to(device), labels.to(device), finite.to(device)
    want_stats = psl.ClassStats(c, device).update(finite[keep], labels[keep], backend="reference")
    want_cal = psl.CalibrationStats(device=device).update(finite[keep], labels[keep], backend="reference")
    for fused in (False, True):
        stats, cal = psl.ClassStats(c, device), psl.CalibrationStats(device=device, skip_nonfinite=True)
        if fused:
            psl.soft_cross_entropy(logits, labels, stats=stats, calib=cal, backend=backend)
        else:
            stats.update(logits, labels, backend=backend)
            cal.update(logits, labels, backend=backend)
        assert stats.sum.isfinite().all()
        torch.testing.assert_close(stats.count, want_stats.count)
        torch.testing.assert_close(stats.sum, want_stats.sum)
        assert cal.nonfinite == len(bad) and cal.count == n - len(bad)
        torch.testing.assert_close(cal.bins, want_cal.bins)
        torch.testing.assert_close(cal.sums[:2], want_cal.sums[:2])
    with pytest.raises(ValueError, match="4 row"):
        psl.CalibrationStats(device=device).update(logits, labels, backend=backend).ece


@pytest.mark.skipif(not psl.extension_info()["cpu"], reason="extension not built")
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_statistics_are_the_same_bits_on_every_run(threads):
    """Rows of one class in different threads were added in the order the threads got there, so class
    statistics (and calibration sums) changed in their last bits from run to run, and OLS training with
    them. The CPU kernel now adds blocks of rows in a fixed order: the same bits for the same threads."""
    g = torch.Generator().manual_seed(0)
    n, c = 4096, 200
    logits = torch.randn(n, c, generator=g) * 3
    labels = torch.randint(0, c, (n,), generator=g)
    logits[torch.arange(n), labels] += 6  # most rows correct: several rows to add per class row
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs = []
        for _ in range(4):
            stats, cal = psl.ClassStats(c), psl.CalibrationStats()
            for part in (slice(0, 1500), slice(1500, None)):
                stats.update(logits[part], labels[part])
                cal.update(logits[part], labels[part])
            x = logits.clone().requires_grad_(True)
            psl.soft_cross_entropy(x, psl.SoftTarget(labels, smoothing=0.1), stats=stats, calib=cal).backward()
            runs.append((stats.sum, stats.count, cal.bins, cal.sums))
    finally:
        torch.set_num_threads(previous)
    for run in runs[1:]:
        for got, first in zip(run, runs[0]):
            assert torch.equal(got, first)
    ref = psl.ClassStats(c)
    for _ in range(2):
        ref.update(logits, labels, backend="reference")
    torch.testing.assert_close(runs[0][0], ref.sum)
    torch.testing.assert_close(runs[0][1], ref.count)


@pytest.mark.skipif(not psl.extension_info()["cpu"], reason="extension not built")
def test_an_invalid_row_leaves_the_statistics_as_they_were():
    """The CPU kernel checks every row before it adds any: a ValueError does not leave half a batch in."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=g)
    labels = torch.randint(0, 10, (64,), generator=g)
    stats, cal = psl.ClassStats(10).update(logits, labels), psl.calibration_stats(logits, labels)
    before = [t.clone() for t in (stats.sum, stats.count, cal.bins, cal.sums)]
    bad = labels.clone()
    bad[50] = 10  # in the second thread's block: the first block's rows would otherwise be in already
    for update in (lambda: stats.update(logits, bad), lambda: cal.update(logits, bad),
                   lambda: psl.soft_cross_entropy(logits, bad, stats=stats, calib=cal)):
        with pytest.raises(ValueError, match="out of range"):
            update()
    for got, want in zip((stats.sum, stats.count, cal.bins, cal.sums), before):
        assert torch.equal(got, want)


@pytest.mark.cuda
def test_cuda_statistics_alert_under_deterministic_algorithms():
    """CUDA statistics are float atomics: torch.use_deterministic_algorithms makes them an error, as
    PyTorch's own nondeterministic kernels; the loss without statistics stays allowed."""
    logits = torch.randn(16, 5, device="cuda")
    labels = torch.randint(0, 5, (16,), device="cuda")
    torch.use_deterministic_algorithms(True)
    try:
        for update in (lambda: psl.ClassStats(5, "cuda").update(logits, labels),
                       lambda: psl.CalibrationStats(device="cuda").update(logits, labels),
                       lambda: psl.soft_cross_entropy(logits, labels, calib=psl.CalibrationStats(device="cuda"))):
            with pytest.raises(RuntimeError, match="pysoftlabel class and calibration statistics on CUDA"):
                update()
        psl.soft_cross_entropy(logits, labels)
    finally:
        torch.use_deterministic_algorithms(False)


def _ddp_worker(rank, world, init_file, out_file, logits, labels):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    shard = slice(rank, None, world)
    cal = psl.calibration_stats(logits[shard], labels[shard]).all_reduce()
    stats = psl.ClassStats(logits.shape[1]).update(logits[shard], labels[shard]).all_reduce()
    if rank == 0:
        torch.save({"bins": cal.bins, "sums": cal.sums, "table": stats.table(), "count": stats.count}, out_file)
    dist.barrier()
    dist.destroy_process_group()


def test_all_reduce_two_gloo_processes_equal_one_process():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(64, 6, generator=g) * 2
    labels = torch.randint(0, 6, (64,), generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.pt")
        mp.spawn(_ddp_worker, args=(2, os.path.join(tmp, "init"), out, logits, labels), nprocs=2, join=True)
        got = torch.load(out)
    cal = psl.calibration_stats(logits, labels)
    stats = psl.ClassStats(6).update(logits, labels)
    torch.testing.assert_close(got["bins"], cal.bins)
    torch.testing.assert_close(got["sums"], cal.sums)
    torch.testing.assert_close(got["table"], stats.table())
    torch.testing.assert_close(got["count"], stats.count)


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.5], [0.2, 0.3, 0.1]])
    labels = torch.tensor([1, 2, 0])
    acc = psl.metrics.AccuracyStats(ks=(1, 2)).update(logits, labels)
    assert acc.accuracy(1) == pytest.approx(1 / 3) and acc.accuracy(2) == pytest.approx(1.0)
    acc.update(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([0]))
    assert acc.accuracy(2) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match=r"^AccuracyStats counts the top-k accuracy for ks=\(1, 2\), not for k=5$"):
        acc.accuracy(5)  # it was "tuple.index(x): x not in tuple"


def test_topk_accuracy_breaks_ties_as_argmax():
    """Tied logits (frequent in bf16) rank by class index, as torch.argmax picks the row's class: top-k is a
    stable sort's; topk's own tie order made val_acc1 differ from the report's accuracy of the same logits."""
    acc = psl.metrics.AccuracyStats(ks=(1, 2)).update(torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]]),
                                                      torch.tensor([1, 1]))
    assert acc.correct.tolist() == [1, 2]  # row 0: class 0 ties and comes first; row 1: label 1 comes first
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(20000, 10, generator=g) * 0.3).bfloat16().float()
    labels = torch.randint(0, 10, (20000,), generator=g)
    acc = psl.metrics.AccuracyStats(ks=(3,)).update(logits, labels)  # top-1: test_ties_of_the_max_count_as_...
    stable_order = torch.sort(-logits, dim=1, stable=True).indices
    assert acc.accuracy(3) == (stable_order[:, :3] == labels[:, None]).any(1).double().mean().item()


def test_label_rank_puts_nan_first_as_argmax():
    logits = torch.tensor([[float("nan"), 1.0, 2.0], [1.0, float("nan"), float("nan")]])
    assert psl.metrics.accuracy.label_rank(logits, torch.tensor([1, 2])).tolist() == [2, 1]
    assert psl.metrics.accuracy.label_rank(logits, logits.argmax(1)).tolist() == [0, 0]


def test_adaptive_ece_matches_sorting():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3000, 10, generator=g) * 2
    labels = torch.randint(0, 10, (3000,), generator=g)
    p = torch.softmax(logits.double(), 1)
    conf, pred = p.max(1)
    order = conf.argsort()
    exact = 0.0
    for chunk in order.chunk(15):  # equal-mass bins by sorting, as Mukhoti et al.
        exact += abs((pred[chunk] == labels[chunk]).double().sum().item() - conf[chunk].sum().item())
    exact /= 3000
    got = psl.metrics.AdaptiveCalibrationStats(15).update(logits, labels).ece
    assert got == pytest.approx(exact, abs=2e-3)


def test_classwise_ece_matches_loop():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(400, 4, generator=g)
    labels = torch.randint(0, 4, (400,), generator=g)
    p = torch.softmax(logits.double(), 1)
    want = 0.0
    for c in range(4):
        for b in range(15):
            m = (p[:, c] > b / 15) & (p[:, c] <= (b + 1) / 15)
            want += abs((labels[m] == c).double().sum().item() - p[m, c].sum().item()) / 400
    want /= 4
    stats = psl.metrics.ClasswiseCalibrationStats(4).update(logits[:150], labels[:150])
    stats = stats + psl.metrics.ClasswiseCalibrationStats(4).update(logits[150:], labels[150:])
    assert stats.ece == pytest.approx(want, abs=1e-9)


def test_ece_interval_bins_as_calibration_stats_and_narrows_with_more_rows():
    from pysoftlabel.metrics import ece_interval
    # Identical rows: every draw is the same set, so the interval is the point ECE, binned alike (a
    # confidence on a bin edge, 0.6 = 9/15, and 1.0 in the last bin).
    for row in ([0.0, 0.0, 0.0], [math.log(0.6), math.log(0.2), math.log(0.2)], [0.0, -math.inf, -math.inf]):
        logits, labels = torch.tensor([row] * 10, dtype=torch.float64), torch.zeros(10, dtype=torch.long)
        low, high = ece_interval(logits, labels, resamples=50)
        assert low == high == pytest.approx(psl.calibration_stats(logits, labels).ece, abs=1e-12)
    g = torch.Generator().manual_seed(3)
    widths = []
    for n in (400, 40000):
        logits = torch.randn(n, 10, generator=g) * 2
        labels = torch.where(torch.rand(n, generator=g) < 0.4, logits.argmax(1),
                             torch.randint(0, 10, (n,), generator=g))
        low, high = ece_interval(logits, labels, resamples=200)
        assert low <= psl.calibration_stats(logits, labels).ece <= high
        assert (low, high) == ece_interval(logits, labels, resamples=200)  # seeded
        widths.append(high - low)
    assert 5 < widths[0] / widths[1] < 20  # the spread goes as 1 / sqrt(n): about 10 for 100 times the rows
    assert ece_interval(logits[:0], labels[:0]) != ece_interval(logits[:0], labels[:0])  # (nan, nan)
    with pytest.raises(ValueError, match="level"):
        ece_interval(logits, labels, level=1.0)


def test_ece_difference_interval_pairs_the_rows_of_two_models():
    from pysoftlabel.metrics import ece_difference_interval, ece_interval
    g = torch.Generator().manual_seed(4)
    n = 2000
    truth = torch.randn(n, 10, generator=g) * 2
    labels = torch.multinomial(truth.softmax(1), 1, generator=g).squeeze(1)  # drawn from its softmax: calibrated
    a, b = truth * 1.3, truth * 1.4  # two over-confident models, b a little more
    assert ece_difference_interval(a, a, labels, resamples=100) == (0.0, 0.0, 0.0)
    difference, low, high = ece_difference_interval(a, b, labels, resamples=300)
    whole = psl.calibration_stats(b, labels).ece - psl.calibration_stats(a, labels).ece
    assert difference == pytest.approx(whole, abs=1e-6) and 0 < low <= difference <= high  # fp32 kernel, fp64 here
    # Their own intervals overlap widely; on the same draws the set's luck cancels and the difference shows.
    (a_low, a_high), (b_low, b_high) = (ece_interval(x, labels, resamples=300) for x in (a, b))
    assert b_low < a_high and high - low < 0.2 * min(a_high - a_low, b_high - b_low)
    ignored = labels.clone()
    ignored[:100] = -100
    assert ece_difference_interval(a, b, ignored, resamples=50)[0] == pytest.approx(
        psl.calibration_stats(b[100:], labels[100:]).ece - psl.calibration_stats(a[100:], labels[100:]).ece)
    with pytest.raises(ValueError, match="same shape"):
        ece_difference_interval(a, a[:10], labels)


def test_ece_with_interval_reads_the_same_everywhere_and_without_an_interval():
    from pysoftlabel.metrics import ece_with_interval
    assert ece_with_interval(0.074, 0.054, 0.1213) == "0.0740 (95% CI 0.0540–0.1213)"
    assert ece_with_interval(0.074, 0.054, 0.1213, digits=3) == "0.074 (95% CI 0.054–0.121)"
    assert ece_with_interval(0.074, None, None) == "0.0740"  # a report from before intervals were kept


def test_temperature_scaling_recovers_temperature_and_lowers_ece():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(20000, 10, generator=g) * 1.5
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=g)[:, 0]
    logits = 3.0 * z  # an over-confident model: the calibrated temperature is 3
    t = psl.metrics.fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    before = psl.calibration_stats(logits, labels).ece
    after = psl.calibration_stats(logits / t, labels).ece
    assert after < before / 3


def test_temperature_fitting_refuses_what_it_cannot_fit_in_one_line():
    g = torch.Generator().manual_seed(3)
    logits, labels = torch.randn(40, 4, generator=g) * 2, torch.randint(0, 3, (40,), generator=g)
    labels[5] = 3
    masked = logits.clone()
    masked[:, 3] = float("-inf")  # a masked class: rows not labelled with it fit as if it were not there
    keep = labels != 3
    assert psl.metrics.fit_temperature(masked[keep], labels[keep]) == pytest.approx(
        psl.metrics.fit_temperature(logits[keep, :3], labels[keep]), rel=1e-6)  # it was NaN
    with pytest.raises(ValueError, match=r"logits: 1 row\(s\)"):
        psl.metrics.fit_temperature(masked, labels)  # row 5, labelled with the masked class: probability 0
    for bad in (float("nan"), float("inf")):
        x = logits.clone()
        x[2, 1] = bad
        with pytest.raises(ValueError, match=r"^logits: 1 row\(s\) have a non-finite NLL"):
            psl.metrics.fit_temperature(x, labels)  # it returned NaN, or a temperature fitted to nothing
    with pytest.raises(ValueError, match=r"^labels must have shape \[N\] = \[40\], got \(4,\)$"):
        psl.metrics.fit_temperature(logits, labels[:4])  # it was an IndexError about a mask


def test_heldout_temperature_ece_scales_each_fold_by_the_other_folds_temperature():
    g = torch.Generator().manual_seed(8)
    z = torch.randn(3001, 6, generator=g) * 1.5
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=g)[:, 0]
    labels[::10] = -100  # left out of fitting and measuring
    logits = 2.5 * z
    keep = (labels != -100).nonzero()[:, 0]
    order = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(5))]
    a, b = order.tensor_split(2)
    want = psl.calibration_stats(logits[a] / psl.metrics.fit_temperature(logits[b], labels[b]), labels[a])
    want = want + psl.calibration_stats(logits[b] / psl.metrics.fit_temperature(logits[a], labels[a]), labels[b])
    got = psl.metrics.heldout_temperature_ece(logits, labels, seed=5)
    assert got == pytest.approx(want.ece, abs=1e-12)
    assert got < psl.calibration_stats(logits[keep], labels[keep]).ece / 3
    assert psl.metrics.heldout_temperature_ece(logits[:3], labels[:3]) != psl.metrics.heldout_temperature_ece(
        logits[:3], labels[:3])  # NaN: too few rows to hold any out
    with pytest.raises(ValueError, match="folds"):
        psl.metrics.heldout_temperature_ece(logits, labels, folds=1)


@pytest.mark.parametrize("update, match", [
    (lambda x, y: psl.metrics.AccuracyStats().update(x, y + 7), "label 7 is out of range"),
    (lambda x, y: psl.metrics.AdaptiveCalibrationStats().update(x, y - 9), "out of range"),
    (lambda x, y: psl.metrics.ClasswiseCalibrationStats(5).update(x, y + 7), "out of range"),
    (lambda x, y: psl.metrics.ClasswiseCalibrationStats(4).update(x, y), r"shape \[N, 4\]"),
    (lambda x, y: psl.metrics.AccuracyStats().update(x.index_fill(0, torch.tensor([2]), float("nan")), y),
     "1 row"),
    (lambda x, y: psl.metrics.AdaptiveCalibrationStats().update(x.index_fill(0, torch.tensor([1, 3]), float("inf")), y),
     "2 row"),
    (lambda x, y: psl.metrics.ContextConfidence().update(x.index_fill(0, torch.tensor([0]), -float("inf"))), "1 row"),
    (lambda x, y: psl.metrics.AccuracyStats().update(x, y[:3]), "labels must have shape"),
])
def test_python_accumulators_name_bad_batches(update, match):
    """The accumulators beside CalibrationStats check labels and logits as it does (on CPU tensors)."""
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    with pytest.raises(ValueError, match=match):
        update(x, y)
    masked = x.index_fill(1, torch.tensor([4]), -float("inf"))  # a masked class is fine, an ignored row too
    psl.metrics.AdaptiveCalibrationStats().update(masked, torch.tensor([0, 1, 2, 3, -100, 0]))


# Every entry point of the metrics that takes logits and labels, as a function of them.
LABELLED_METRICS = {
    "CalibrationStats": lambda x, y: psl.calibration_stats(x, y).ece,
    "ClassStats": lambda x, y: psl.ClassStats(5).update(x, y).table(),
    "AdaptiveCalibrationStats": lambda x, y: psl.metrics.AdaptiveCalibrationStats().update(x, y).ece,
    "ClasswiseCalibrationStats": lambda x, y: psl.metrics.ClasswiseCalibrationStats(5).update(x, y).ece,
    "AccuracyStats": lambda x, y: psl.metrics.AccuracyStats((1, 2)).update(x, y).correct,
    "fit_temperature": lambda x, y: psl.metrics.fit_temperature(x, y),
    "heldout_temperature_ece": lambda x, y: psl.metrics.heldout_temperature_ece(x, y),
    "ece_interval": lambda x, y: psl.metrics.ece_interval(x, y, resamples=20),
    "ece_difference_interval": lambda x, y: psl.metrics.ece_difference_interval(x, 2 * x, y, resamples=20),
}


@pytest.mark.parametrize("name", LABELLED_METRICS)
def test_every_metric_takes_any_integer_labels_and_refuses_others_in_one_line(name):
    """int32 or uint8 labels give the figures of int64 ones (ClasswiseCalibrationStats and the temperature
    fit raised RuntimeErrors from one_hot and cross_entropy); float or bool labels (soft targets or a mask
    passed by mistake) are refused with the same line everywhere, where some metrics compared them with the
    predictions; a label out of range and a NaN row are ValueErrors (the intervals took both silently)."""
    metric = LABELLED_METRICS[name]
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(12, 5, generator=g) * 2, torch.randint(0, 5, (12,), generator=g)
    want = metric(x, y)
    for dtype in (torch.int32, torch.uint8):
        got = metric(x, y.to(dtype))
        assert torch.equal(torch.as_tensor(got), torch.as_tensor(want)), dtype
    for dtype in (torch.float32, torch.bool):
        with pytest.raises(ValueError, match=rf"^labels must hold integer class indices, got dtype {dtype}$"):
            metric(x, y.to(dtype))
    with pytest.raises(ValueError, match="out of range"):
        metric(x, y.index_fill(0, torch.tensor([3]), 5))
    if name != "ClassStats":  # which leaves such rows out by design (OLS's statistics)
        with pytest.raises(ValueError, match=r"^logits: 1 row\(s\)"):
            metric(x.index_fill(0, torch.tensor([4]), float("nan")), y)


@pytest.mark.parametrize("logits, labels", [(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)),
                                            (torch.randn(3, 5), torch.full((3,), -100))],  # every row ignored
                         ids=["empty", "all-ignored"])
def test_every_metric_of_no_rows_is_nan_or_says_so(logits, labels):
    """An empty validation shard: each figure is NaN (not 0, not a ZeroDivisionError), and what cannot be
    computed on nothing says so."""
    M = psl.metrics
    accuracy = M.AccuracyStats().update(logits, labels)
    figures = [accuracy.accuracy(1), accuracy.accuracy(5), psl.calibration_stats(logits, labels).ece,
               M.AdaptiveCalibrationStats().update(logits, labels).ece,
               M.ClasswiseCalibrationStats(5).update(logits, labels).ece,
               *M.ece_interval(logits, labels, resamples=10), *M.ece_difference_interval(logits, logits, labels,
                                                                                        resamples=10)]
    assert all(math.isnan(f) for f in figures), figures
    with pytest.raises(ValueError, match="^logits: no rows to fit a temperature on$"):
        M.fit_temperature(logits, labels)


@pytest.mark.parametrize("make, match", [
    (lambda: psl.metrics.AccuracyStats(ks=(1, 0)), r"^ks must be positive integers, got \(1, 0\)$"),
    (lambda: psl.metrics.AccuracyStats(ks=()), r"^ks must be positive integers, got \(\)$"),
    (lambda: psl.metrics.AdaptiveCalibrationStats(20, resolution=10),
     "^need n_bins <= resolution, got n_bins=20, resolution=10$"),
    (lambda: psl.metrics.ece_interval(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), resamples=0),
     "^resamples must be >= 1, got 0$"),
    (lambda: psl.metrics.fit_temperature(torch.randn(4), torch.zeros(4, dtype=torch.long)),
     r"^logits must have shape \[N, C\], got \(4,\)$"),
])
def test_metric_arguments_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_report_of_an_empty_set_is_strict_json_with_null_for_figures_it_cannot_measure(tmp_path):
    """Python's json writes NaN as the token NaN, which jq and JSON.parse refuse: a report on no rows (an empty
    validation shard) must still be standard JSON, its unmeasurable figures null."""
    cal = psl.calibration_stats(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))
    psl.metrics.calibration_report(cal, tmp_path, extra={"ece_after_temperature": float("inf")})

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    report = json.loads((tmp_path / "calibration.json").read_text(), parse_constant=refuse)
    assert report["count"] == 0 and report["ece"] is None and report["ece_after_temperature"] is None
    assert all(b["count"] == 0 for b in report["bins"])


def test_context_confidence():
    ctx = psl.metrics.ContextConfidence().update(torch.zeros(3, 4)).update(torch.tensor([[10.0, 0, 0, 0]]))
    p = torch.softmax(torch.tensor([10.0, 0, 0, 0]), 0).max().item()
    assert ctx.mean == pytest.approx((3 * 0.25 + p) / 4)


def test_report_and_reliability_diagram(tmp_path):
    g = torch.Generator().manual_seed(8)
    cal = psl.calibration_stats(torch.randn(500, 5, generator=g) * 3, torch.randint(0, 5, (500,), generator=g))
    summary = psl.metrics.calibration_report(cal, tmp_path, extra={"ece_after_temperature": 0.01})
    assert summary["ece"] == cal.ece and (tmp_path / "calibration.md").read_text().count("|") > 10
    assert '"ece_after_temperature": 0.01' in (tmp_path / "calibration.json").read_text()
    psl.metrics.calibration_report(cal, tmp_path, name="titled", title="resnet20 on CIFAR-10 test")
    assert (tmp_path / "titled.md").read_text().startswith("# resnet20 on CIFAR-10 test\n\n| metric | value |")
    assert '"title": "resnet20 on CIFAR-10 test"' in (tmp_path / "titled.json").read_text()
    pytest.importorskip("matplotlib")
    png = psl.metrics.reliability_diagram(cal, tmp_path / "reliability.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
