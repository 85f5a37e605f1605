"""The training loop's mixed precision: the strategies' own forward passes (a teacher, an EMA model) run in
the student's autocast dtype, and the fused loss still gets fp32 logits."""
import torch

from pysoftlabel import strategies as S
from pysoftlabel.engine import train_one_epoch


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
