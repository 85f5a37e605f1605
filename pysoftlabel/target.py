"""SoftTarget: the compact description of a soft-target distribution, one row per sample.

The fused operator never builds the N x C target; it forms each element from this description:

.. math::
    t_i = (1 - s_i - a_i - d_i) h_i + \\frac{s_i}{C} \\mathbf{1} + a_i T_i + d_i D_i

with :math:`h_i = \\lambda_i e(y_i) + (1 - \\lambda_i) e(y2_i)` (hard part, mixup/CutMix),
:math:`T_i = \\lambda_i S[y_i] + (1 - \\lambda_i) S[y2_i]` (class table, Online Label Smoothing) and
:math:`D_i` the per-sample distribution (dense probabilities, or ``softmax(dense / temperature)``).
"""
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

Weight = Union[float, Tensor]

# Weights computed in fp32 (1 - lam etc.) may exceed 1 by rounding; the kernels use the same tolerance.
WEIGHT_TOLERANCE = 1e-6


@dataclass
class SoftTarget:
    """A soft target for :func:`pysoftlabel.soft_cross_entropy`.

    Args:
        labels (Tensor[N], integer): class of each row; ``ignore_index`` rows contribute nothing.
        smoothing (float or Tensor[N]): uniform weight ``s`` (label smoothing). Default: 0.
        labels2 (Tensor[N], optional): second class of each row (mixup / CutMix partner). Default: None.
        lam (float or Tensor[N], optional): weight of ``labels`` against ``labels2``, in [0, 1]; required
            with ``labels2``. Default: None.
        table (Tensor[C, C], optional): class table ``S``, row c the target of class c (OLS). Default: None.
        table_weight (float or Tensor[N]): weight ``a`` of the class table; nonzero with ``table``. Default: 0.
        dense (Tensor[N, C], optional): per-sample probabilities, or logits if ``dense_logits``. Default: None.
        dense_weight (float or Tensor[N]): weight ``d`` of ``dense``; nonzero with ``dense``. Default: 0.
        dense_logits (bool): ``dense`` holds logits; the target uses ``softmax(dense / temperature)``.
            Default: False.
        temperature (float): temperature of ``dense`` logits (only with ``dense_logits``). Default: 1.
        ignore_index (int): label value of rows to ignore. Default: -100.

    A weight given as a 0-d tensor applies to every row (as a float does, but without reading it on the host).
    A floating-point part that requires grad (``table``, ``dense``, a per-row weight) gets its gradient, as
    in ``F.cross_entropy``; the loss then takes the reference formula (see :func:`soft_cross_entropy`).
    Per-row value checks (labels in range, weights in range) happen when the loss is computed,
    because they need ``C`` and, on CUDA, would otherwise cost a host-device synchronisation.
    """

    labels: Tensor
    smoothing: Weight = 0.0
    labels2: Optional[Tensor] = None
    lam: Optional[Weight] = None
    table: Optional[Tensor] = None
    table_weight: Weight = 0.0
    dense: Optional[Tensor] = None
    dense_weight: Weight = 0.0
    dense_logits: bool = False
    temperature: float = 1.0
    ignore_index: int = -100

    def __post_init__(self):
        if not torch.is_tensor(self.labels) or self.labels.dim() != 1:
            raise ValueError(f"labels must be a 1-D tensor of class indices, got {_describe(self.labels)}")
        check_label_dtype(self.labels)
        n = self.labels.shape[0]
        if self.labels2 is not None:
            if not torch.is_tensor(self.labels2) or self.labels2.shape != self.labels.shape:
                raise ValueError(f"labels2 must have the shape of labels {tuple(self.labels.shape)}, "
                                 f"got {_describe(self.labels2)}")
            check_label_dtype(self.labels2, "labels2")
            if self.lam is None:
                raise ValueError("lam is required with labels2: the weight of labels against labels2")
        elif self.lam is not None:
            raise ValueError("lam is given without labels2")
        for name in ("smoothing", "lam", "table_weight", "dense_weight"):
            value = getattr(self, name)
            if torch.is_tensor(value):
                if value.dim() == 0:  # one weight for every row, e.g. lam drawn on the device: no sync
                    value = value.expand(n)
                    setattr(self, name, value)
                if value.shape != (n,):
                    raise ValueError(f"{name} must be a float, a 0-d tensor or a tensor of shape [N] = [{n}], "
                                     f"got shape {tuple(value.shape)}")
                if not value.is_floating_point():
                    raise ValueError(f"{name} must be floating point, got dtype {value.dtype}")
            elif value is not None:
                setattr(self, name, float(value))
        if isinstance(self.lam, float) and not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {self.lam}")
        scalars = [getattr(self, k) for k in ("smoothing", "table_weight", "dense_weight")]
        if any(isinstance(v, float) and not v >= 0 for v in scalars):  # NaN too
            raise ValueError(f"smoothing, table_weight, dense_weight must be >= 0 (not NaN), got {scalars}")
        if all(isinstance(v, float) for v in scalars) and sum(scalars) > 1 + WEIGHT_TOLERANCE:
            raise ValueError(f"smoothing + table_weight + dense_weight must be <= 1, got {sum(scalars)}")
        if self.table is not None:
            if not torch.is_tensor(self.table) or self.table.dim() != 2 or self.table.shape[0] != self.table.shape[1]:
                raise ValueError(f"table must be a square [C, C] tensor, got {_describe(self.table)}")
            if not _nonzero(self.table_weight):  # it would be ignored: hard CE where a table was meant
                raise ValueError("table is given but table_weight is 0, so it would have no effect; "
                                 "give table_weight, the table's share of the target")
        elif _nonzero(self.table_weight):
            raise ValueError("table_weight is nonzero but no table is given")
        if self.dense is not None:
            if not torch.is_tensor(self.dense) or self.dense.dim() != 2 or self.dense.shape[0] != n:
                raise ValueError(f"dense must have shape [N, C] with N = {n}, got {_describe(self.dense)}")
            if not self.dense.is_floating_point():
                raise ValueError(f"dense must be floating point, got dtype {self.dense.dtype}")
            if not _nonzero(self.dense_weight):
                raise ValueError("dense is given but dense_weight is 0, so it would have no effect; "
                                 "give dense_weight, the dense target's share (1.0 for it alone)")
        elif _nonzero(self.dense_weight):
            raise ValueError("dense_weight is nonzero but no dense target is given")
        elif self.dense_logits:
            raise ValueError("dense_logits is True but no dense target is given")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.temperature != 1.0 and not self.dense_logits:  # it would be ignored
            raise ValueError(f"temperature={self.temperature} applies to dense logits only (dense_logits=True); "
                             "dense probabilities are used as they are")

    def check_against(self, logits):
        """Shape, dtype and device checks against ``logits`` (no data access, no synchronisation)."""
        check_logits(logits)
        n, c = logits.shape
        if self.labels.shape[0] != n:
            raise ValueError(f"labels has {self.labels.shape[0]} rows but logits has {n} (shape {tuple(logits.shape)})")
        if self.table is not None and tuple(self.table.shape) != (c, c):
            raise ValueError(f"table must have shape [C, C] = [{c}, {c}], got {tuple(self.table.shape)}")
        if self.dense is not None and self.dense.shape != logits.shape:
            raise ValueError(f"dense must have the shape of logits {tuple(logits.shape)}, "
                             f"got {tuple(self.dense.shape)}")
        device = logits.device
        for name, value in self.tensors():
            if value.device != device:
                raise ValueError(f"{name} is on {value.device} but logits is on {device}")

    def check_values(self, num_classes):
        """Per-row value checks (reads the tensors: a synchronisation on CUDA)."""
        valid = check_label_range(self.labels, num_classes, self.ignore_index)
        if self.labels2 is not None:
            if bool(((self.labels2 < 0) | (self.labels2 >= num_classes))[valid].any()):
                raise ValueError(f"labels2: a label is out of range [0, {num_classes})")
            if torch.is_tensor(self.lam) and bool((~((self.lam >= 0) & (self.lam <= 1)))[valid].any()):
                raise ValueError("lam: a mixing weight is outside [0, 1] or NaN")
        weights = [w for w in (self.smoothing, self.table_weight, self.dense_weight)]
        if any(torch.is_tensor(w) for w in weights):
            rows = [w if torch.is_tensor(w) else torch.full_like(self.labels, w, dtype=torch.float64) for w in weights]
            rows = [r.double()[valid] for r in rows]
            if any(bool((~(r >= 0)).any()) for r in rows):
                raise ValueError("smoothing, table_weight, dense_weight: a weight is negative or NaN")
            if bool((sum(rows) > 1 + WEIGHT_TOLERANCE).any()):
                raise ValueError("smoothing, table_weight, dense_weight: s + a + d exceeds 1")

    def tensors(self):
        """(name, tensor) for every tensor part."""
        parts = (("labels", self.labels), ("smoothing", self.smoothing), ("labels2", self.labels2), ("lam", self.lam),
                 ("table", self.table), ("table_weight", self.table_weight), ("dense", self.dense),
                 ("dense_weight", self.dense_weight))
        return [(k, v) for k, v in parts if isinstance(v, Tensor)]


def check_logits(logits):
    """ValueError unless ``logits`` is a floating-point [N, C] tensor with C >= 1. The loss checks this before
    its target, so that one sample's scores (F.cross_entropy's unbatched [C] input) are named as the problem."""
    if not torch.is_tensor(logits) or logits.dim() != 2:
        dims = logits.dim() if torch.is_tensor(logits) else 0
        hint = ("; for one sample's scores use logits[None] and labels[None]" if dims == 1 else
                "; for F.cross_entropy's [N, C, d1, ...] form use logits.movedim(1, -1).flatten(0, -2) and "
                "labels.flatten()" if dims > 2 else "")
        raise ValueError(f"logits must have shape [N, C], got {_describe(logits)}{hint}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")
    if logits.shape[1] < 1:
        raise ValueError("logits must have at least one class (C >= 1)")


def check_label_dtype(labels, name="labels"):
    """ValueError naming ``name`` unless ``labels`` holds integer class indices (any integer dtype; not
    floating point, complex or bool, which are soft targets or masks passed by mistake)."""
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")


def check_label_range(labels, num_classes, ignore_index):
    """The rows of ``labels`` that are not ``ignore_index``; ValueError naming the first label among them
    outside [0, num_classes) (reads the tensor: a synchronisation on CUDA)."""
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"labels: label {int(labels[bad][0])} is out of range [0, {num_classes}) and is not "
                         f"ignore_index ({ignore_index})")
    return valid


def _nonzero(weight):
    return torch.is_tensor(weight) or weight != 0.0


def _describe(value):
    if torch.is_tensor(value):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__}"
