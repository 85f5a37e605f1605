"""A training run's record of its epochs: OUT/metrics.jsonl (read back on --resume), the console line
and TensorBoard."""
import json
import os

from pysoftlabel.atomic import write_text_atomically
from pysoftlabel.jsontext import json_text


def read_metrics(path):
    """The (line, record) pairs of a run's metrics.jsonl. Its last line is dropped, with a message, when it is
    not whole JSON: a crash or a power loss during an append leaves it cut off (its epoch is trained again). A
    bad line elsewhere is damage a resume must not hide: ValueError naming the file and the line."""
    lines = path.read_text().splitlines()
    pairs = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            pairs.append((line, record))
        elif number < len(lines):
            raise ValueError(f"{path}, line {number} is not a JSON record of an epoch: {line[:80]!r}; repair or "
                             "remove it, or start again with --overwrite")
        else:
            print(f"{path}: dropping its last line, cut off by a crash: {line[:80]}", flush=True)
    return pairs


class EpochLog:
    """Rank 0's outputs of each epoch: OUT/metrics.jsonl, the console line, TensorBoard when installed."""

    def __init__(self, out, name, epochs, start):
        self.out, self.name, self.epochs = out, name, epochs
        path = out / "metrics.jsonl"
        # A run stopped between its metrics line and its checkpoint would repeat that epoch: keep the lines
        # of the epochs the checkpoint holds.
        kept = [line for line, record in read_metrics(path) if record["epoch"] < start] \
            if start and path.exists() else []
        write_text_atomically(path, "".join(line + "\n" for line in kept))  # a kill here loses no epoch
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(out / "tb"))
        except ImportError:  # tensorboard is optional
            self.tensorboard = None

    def progress(self, epoch):
        """A live progress bar for the training batches (tqdm; off when stderr is not a terminal)."""
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        bar = tqdm(desc=f"[{self.name}] epoch {epoch + 1}/{self.epochs}", unit="batch", leave=False, disable=None)

        def update(step, steps):
            bar.total = steps
            bar.update(step - bar.n)
            if step == steps:
                bar.close()
        return update

    def write(self, record):
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json_text(record) + "\n")
            f.flush()
            os.fsync(f.fileno())  # the epoch's line is on the disk before its checkpoint is written
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, float):
                    self.tensorboard.add_scalar(key, value, record["epoch"])
            self.tensorboard.flush()
        print(f"[{self.name}] epoch {record['epoch'] + 1}/{self.epochs}  loss {record['train_loss']:.3f}  "
              f"train acc {record['train_acc1']:.3f}  val acc {record['val_acc1']:.3f}  val ECE "
              f"{record['val_ece']:.4f}  {record['img_per_s']:.0f} img/s", flush=True)

