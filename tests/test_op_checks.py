"""The registered ops check their arguments in C++ as well, for callers of torch.ops.pysoftlabel.* that skip
the Python layer's checks: each bad argument is a ValueError that names it. A meta tensor among them goes to
the fake kernel, which checks the devices alike."""
import pytest
import torch

import pysoftlabel as psl

pytestmark = pytest.mark.skipif(not psl.extension_info()["cpu"], reason="extension not built")

N, C = 5, 7


def loss_args(**changes):
    """The soft_cross_entropy op's arguments for [N, C] logits with labels and smoothing, changed by name."""
    args = dict(logits=torch.randn(N, C), labels=torch.randint(0, C, (N,)), labels2=None, lam=None, lam_value=1.0,
                smoothing=None, smoothing_value=0.1, table=None, table_weight=None, table_weight_value=0.0,
                dense=None, dense_weight=None, dense_weight_value=0.0, dense_logits=False, temperature=1.0,
                ignore_index=-100, reduction=1, grad_output=None, compute_grad=True, class_sum=None,
                class_count=None, calib_bins=None, calib_sums=None)
    return {**args, **changes}


def class_state(**changes):
    return {"class_sum": torch.zeros(C, C), "class_count": torch.zeros(C), **changes}


def calib_state(**changes):
    return {"calib_bins": torch.zeros(15, 3, dtype=torch.float64), "calib_sums": torch.zeros(3, dtype=torch.float64),
            **changes}


@pytest.mark.parametrize("changes, message", [
    (dict(logits=torch.randn(N)), "logits must have shape [N, C], got [5]"),
    (dict(logits=torch.ones(N, C, dtype=torch.long)), "logits must be floating point, got Long"),
    (dict(logits=torch.randn(N, 0)), "logits must have at least one class, got C = 0"),
    (dict(labels=torch.zeros(N - 1, dtype=torch.long)), "labels must have shape [N] = [5], got [4]"),
    (dict(labels=torch.zeros(N)), "labels must be integer class indices, got Float"),
    (dict(labels=torch.zeros(N, dtype=torch.bool)), "labels must be integer class indices, got Bool"),
    (dict(labels2=torch.zeros(N, 1, dtype=torch.long), lam_value=0.5), "labels2 must have shape [N] = [5], got [5, 1]"),
    (dict(lam=torch.full((N,), 0.5)), "lam needs labels2"),
    (dict(smoothing=torch.zeros(N, device="meta")), "smoothing is on meta but logits is on cpu"),
    (dict(table=torch.zeros(C, C - 1), table_weight_value=0.5), "table must have shape [C, C] = [7, 7], got [7, 6]"),
    (dict(dense=torch.zeros(N, C - 1), dense_weight_value=0.5),
     "dense must have the shape of logits [5, 7], got [5, 6]"),
    (dict(dense=torch.zeros(N, C, dtype=torch.long), dense_weight_value=0.5), "dense must be floating point"),
    (dict(temperature=0.0), "temperature must be positive, got 0"),
    (dict(reduction=3), "reduction must be 0 (none), 1 (mean) or 2 (sum), got 3"),
    (dict(grad_output=torch.ones(3)), "grad_output must have one value or N values, got [3]"),
    (class_state(class_sum=torch.zeros(C, C, dtype=torch.float64)), "class_sum must be Float, got Double"),
    (class_state(class_sum=torch.zeros(C, C - 1)), "class_sum must have shape [7, 7], got [7, 6]"),
    (class_state(class_sum=torch.zeros(C, C).t()), "class_sum must be contiguous"),
    (class_state(class_count=torch.zeros(C, device="meta")), "class_count is on meta but logits is on cpu"),
    (class_state(class_count=None), "class_sum and class_count come together"),
    (calib_state(calib_sums=None), "calib_bins and calib_sums come together"),
    (calib_state(calib_bins=torch.zeros(15, 2, dtype=torch.float64)), "calib_bins must have shape [M, 3], got [15, 2]"),
    (calib_state(calib_sums=torch.zeros(3)), "calib_sums must be Double, got Float"),
])
def test_soft_cross_entropy_op_names_a_bad_argument(changes, message):
    with pytest.raises(ValueError) as raised:
        torch.ops.pysoftlabel.soft_cross_entropy(**loss_args(**changes))
    assert str(raised.value).splitlines()[0] == message


@pytest.mark.parametrize("labels", [torch.tensor([0, 1, 7, 2, 3]), torch.tensor([0, 1, -2, 2, 3])])
def test_statistics_ops_name_a_bad_label_with_its_row(labels):
    logits = torch.randn(N, C)
    for op, state in ((torch.ops.pysoftlabel.class_stats_update, class_state()),
                      (torch.ops.pysoftlabel.calibration_update, calib_state())):
        with pytest.raises(ValueError, match=r"out of range.*\(row 2\)"):
            op(logits, labels, -100, *state.values())


def test_scale_rows_names_a_bad_argument():
    for grad, factor, message in ((torch.zeros(N, C).t(), torch.ones(1), "grad must be a contiguous [N, C] tensor"),
                                  (torch.zeros(N, C), torch.ones(3), "grad_output must have one value or N values, "
                                                                     "got [3]")):
        with pytest.raises(ValueError) as raised:
            torch.ops.pysoftlabel._scale_rows_(grad, factor)
        assert str(raised.value).splitlines()[0] == message


def test_statistics_ops_name_state_on_another_device():
    logits, labels = torch.randn(N, C), torch.zeros(N, dtype=torch.long)
    with pytest.raises(ValueError, match="^class_count is on meta but logits is on cpu$"):
        torch.ops.pysoftlabel.class_stats_update(logits, labels, -100, torch.zeros(C, C),
                                                 torch.zeros(C, device="meta"))
    with pytest.raises(ValueError, match="^bins is on meta but logits is on cpu$"):
        torch.ops.pysoftlabel.calibration_update(logits, labels, -100, torch.zeros(15, 3, device="meta"),
                                                 torch.zeros(3, dtype=torch.float64))
