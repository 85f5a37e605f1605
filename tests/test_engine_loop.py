"""The training loop: under mixed precision the strategies' own forward passes (a teacher, an EMA model) run
in the student's autocast dtype and the fused loss still gets fp32 logits; non-finite losses are skipped with
a loss scaler and stop the epoch without one; non-finite logits in an evaluation are one error once every
batch is in."""
import pytest
import torch

from pysoftlabel import strategies as S
from pysoftlabel.engine import Diverged, context_confidence, evaluate, model_logits, train_one_epoch


class Recorder(torch.nn.Module):
    """A linear model that records the dtype its forward computed in."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3 * 8 * 8, 4)
        self.dtypes = []

    def forward(self, x):
        out = self.linear(x.flatten(1))
        self.dtypes.append(out.dtype)
        return out


class RecordingLDL(S.LabelDistribution):
    """LDL that records the dtype of the logits its fused loss receives."""

    def loss(self, logits, batch, model=None, calib=None):
        self.loss_dtypes = getattr(self, "loss_dtypes", []) + [logits.dtype]
        return super().loss(logits, batch, model, calib)


def test_teacher_forward_runs_under_the_students_autocast():
    g = torch.Generator().manual_seed(0)
    loader = [{"image": torch.randn(6, 3, 8, 8, generator=g), "label": torch.randint(0, 4, (6,), generator=g)}
              for _ in range(3)]
    student, teacher = Recorder(), Recorder()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    strategy = RecordingLDL(teacher)
    metrics = train_one_epoch(student, loader, strategy, optimizer, torch.device("cpu"), amp_dtype=torch.bfloat16)
    assert student.dtypes == teacher.dtypes == [torch.bfloat16] * 3
    assert strategy.loss_dtypes == [torch.float32] * 3
    assert metrics["steps"] == 3 and torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert student.linear.weight.dtype == torch.float32  # autocast computes in bf16, the weights stay fp32


class Overflowing(torch.nn.Module):
    """A linear model whose first logit is +inf in the given calls (an fp16 overflow, a diverged step). The
    addition passes the loss's gradient on to the weights as it is: the step is skipped only if that is not
    finite."""

    def __init__(self, bad_calls):
        super().__init__()
        self.linear = torch.nn.Linear(3 * 8 * 8, 4)
        self.calls, self.bad_calls = 0, set(bad_calls)
        self.weights = []  # the weight each call saw

    def forward(self, x):
        self.calls += 1
        self.weights.append(self.linear.weight.detach().clone())
        out = self.linear(x.flatten(1))
        if self.calls in self.bad_calls:
            out = out + torch.tensor([float("inf"), 0.0, 0.0, 0.0], dtype=out.dtype)
        return out


def _loader(steps=4):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(6, 3, 8, 8, generator=g), "label": torch.randint(0, 4, (6,), generator=g)}
            for _ in range(steps)]


def test_loss_scaler_skips_an_overflowing_step_and_it_is_counted():
    model = Overflowing({2})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    metrics = train_one_epoch(model, _loader(), S.CrossEntropy(), optimizer, torch.device("cpu"),
                              scaler=scaler, amp_dtype=torch.float16)
    assert metrics["steps"] == 4 and metrics["train_nonfinite_steps"] == 1
    # Skipped: the overflowing step left the weights as they were and halved the scale. (The CPU kernel once gave
    # a +inf row a finite gradient, and the scaler took the step.)
    assert not torch.equal(model.weights[1], model.weights[0]) and torch.equal(model.weights[2], model.weights[1])
    assert scaler.get_scale() == 2.0 ** 15
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(torch.tensor([metrics["train_loss"], metrics["train_ece"], metrics["train_acc1"]])).all()


def test_a_non_finite_loss_without_a_scaler_stops_the_epoch():
    model = Overflowing({2})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(Diverged, match="diverged.*by step 2 of the epoch"):
        train_one_epoch(model, _loader(), S.CrossEntropy(), optimizer, torch.device("cpu"))
    assert model.calls == 2  # stopped at once on the CPU


def test_batches_of_a_torchvision_data_loader_train_and_evaluate_as_dicts():
    """(images, labels) pairs, as torchvision's datasets give through a DataLoader, train and evaluate exactly as
    the same batches given as dicts; anything else is one line naming what the loader gave."""
    results = []
    for as_pairs in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        loader = [(b["image"], b["label"]) if as_pairs else b for b in _loader()]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        trained = train_one_epoch(model, loader, S.LabelSmoothing(), optimizer, torch.device("cpu"))
        evaluated, _ = evaluate(model, loader, torch.device("cpu"))
        results.append(({k: trained[k] for k in ("train_loss", "train_acc1", "train_ece")}, evaluated,
                         model[1].weight.detach().clone()))
    assert results[0][:2] == results[1][:2] and torch.equal(results[0][2], results[1][2])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    with pytest.raises(ValueError, match=r"^loader: a batch must be a dict .* got a list of 3$"):
        evaluate(model, [[torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), torch.zeros(2)]],
                 torch.device("cpu"))


def test_an_evaluation_with_non_finite_logits_is_one_error_after_every_batch():
    # Every batch is evaluated first: under DDP each rank then reaches the all_reduce, and all raise alike.
    model = Overflowing({2})
    with pytest.raises(ValueError, match=r"^evaluation: the model's logits are not finite \(NaN or inf\) on 6 of 24 "
                                         r"images$"):
        evaluate(model, _loader(), torch.device("cpu"))
    assert model.calls == 4
    with pytest.raises(ValueError, match=r"on 6 of 24 images \(fp16 overflows past 65504: evaluate in bf16 or fp32\)$"):
        evaluate(Overflowing({2}), _loader(), torch.device("cpu"), amp_dtype=torch.float16)
    with pytest.raises(ValueError, match=r"^evaluation: the model's logits are not finite \(NaN or inf\) on 6 of 24 "
                                         r"images$"):
        model_logits(Overflowing({3}), _loader(), torch.device("cpu"))  # the end-of-run report's logits
    model = Overflowing({1})
    with pytest.raises(ValueError, match=r"^evaluation: the model's logits are not finite \(NaN or inf\) on 6 of 24 "
                                         r"images$"):
        context_confidence(model, _loader(), torch.device("cpu"))  # ALS's context-only crops
    assert model.calls == 4
    assert 0.25 <= context_confidence(Overflowing(()), _loader(), torch.device("cpu")) <= 1
