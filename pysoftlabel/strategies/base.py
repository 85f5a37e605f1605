"""The lifecycle every soft-label strategy follows (DESIGN.md, "Layers")."""
import contextlib

import torch

from ..metrics.state import SummedState
from ..ops.soft_cross_entropy import soft_cross_entropy
from ..target import SoftTarget

__all__ = ["Strategy", "hard_target"]


def hard_target(batch, **parts) -> SoftTarget:
    """The batch's (possibly mixed) hard labels as a SoftTarget: ``label``, and with mixing augmentation
    ``label2`` + ``lam`` (see :mod:`pysoftlabel.strategies.mix`); ``parts`` adds the other SoftTarget
    arguments (smoothing, table, dense, ...)."""
    if batch.get("label2") is not None:
        parts.update(labels2=batch["label2"], lam=batch["lam"])
    return SoftTarget(batch["label"], **parts)


class Strategy:
    """A soft-label strategy: it turns a batch into the target of the fused cross-entropy.

    The batch is a dict with ``image`` [N, 3, H, W], ``label`` [N] and, after mixing augmentation,
    ``label2`` [N] and ``lam`` (float or [N]); ALS also reads ``object_fraction`` [N].

    Lifecycle: ``loss(logits, batch, model, calib)`` computes the training loss through the fused
    operator, by default of ``targets(batch, model)`` (which may run a teacher); ``after_step(model)``
    after the optimiser step; ``end_epoch()`` at the end of each training epoch; ``state_dict()`` /
    ``load_state_dict()`` for checkpoints; ``all_reduce()`` before ``end_epoch()`` under DDP.
    ``stats`` is a :class:`~pysoftlabel.ClassStats` to pass to the loss (or None); ``label_free``
    strategies' targets do not depend on the hard labels. A strategy that runs models beside the student (a
    teacher, an average) names them in ``frozen_models()`` and runs them through ``frozen_forward()``, which
    ``compile_forwards()`` compiles and ``reusing_forwards()`` shares between the losses of one batch.
    """

    name = "base"
    stats = None
    label_free = False
    _forwards = None  # {id(module): (images, outputs)} inside reusing_forwards()
    _compiled = None  # {id(module): its torch.compile wrapper} after compile_forwards()

    def targets(self, batch, model=None) -> SoftTarget:
        raise NotImplementedError

    def loss(self, logits, batch, model=None, calib=None):
        """The training loss of ``logits`` for ``batch``; gathers ``self.stats`` and ``calib`` in the same pass."""
        return soft_cross_entropy(logits, self.targets(batch, model), stats=self.stats, calib=calib)

    def frozen_forward(self, module, images):
        """``module(images)`` without a graph: a teacher's or an average's forward. Inside
        :meth:`reusing_forwards` the same module on the same images runs once."""
        if self._forwards is not None:
            images_and_outputs = self._forwards.get(id(module))
            if images_and_outputs is not None and images_and_outputs[0] is images:
                return images_and_outputs[1]
        with torch.no_grad():
            outputs = (self._compiled or {}).get(id(module), module)(images)
        if self._forwards is not None:
            self._forwards[id(module)] = (images, outputs)
        return outputs

    def frozen_models(self):
        """The models whose forwards the strategy runs beside the student's: the modules it holds (a teacher,
        an average of the student), as :meth:`to` finds them."""
        return tuple(value for value in vars(self).values() if isinstance(value, torch.nn.Module))

    def compile_forwards(self, **options):
        """Runs the forwards of :meth:`frozen_models` through ``torch.compile(model, **options)`` (a good part of
        each step for a teacher as large as the student); the models themselves, their weights and the
        strategy's state stay as they are."""
        self._compiled = {id(model): torch.compile(model, **options) for model in self.frozen_models()}
        return self

    @contextlib.contextmanager
    def reusing_forwards(self):
        """Several losses of one batch (RICAP's two passes) share the frozen forwards of its images; nothing
        is held after the block."""
        self._forwards = {}
        try:
            yield self
        finally:
            self._forwards = None

    def after_step(self, model=None):
        pass

    def end_epoch(self):
        pass

    def all_reduce(self, group=None):
        if self.stats is not None:
            self.stats.all_reduce(group)
        return self

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def to(self, device):
        """Moves what the strategy holds (a teacher or an average of the student, tables, statistics) to
        ``device``, in place; returns self."""
        for name, value in vars(self).items():
            if torch.is_tensor(value):
                setattr(self, name, value.to(device))
            elif isinstance(value, (torch.nn.Module, SummedState)):
                value.to(device)
        return self

    def _check_batch(self, batch):
        if "label" not in batch or not torch.is_tensor(batch["label"]):
            raise ValueError(f"{self.name}: the batch needs a 'label' tensor, got keys {sorted(batch)}")
        if "ricap" in batch and not self.label_free:  # its loss alone would leave out two of the four labels
            raise ValueError(f"{self.name}: a RICAP batch holds four labels, two in 'ricap': its loss is "
                             "pysoftlabel.strategies.mixed_loss(strategy, logits, batch, model, calib)")
