"""Random soft targets covering every part of the fused operator, for parity tests."""
import torch

import pysoftlabel as psl

PARTS = ("smoothing", "mix", "table", "dense", "dense_logits", "ignore", "per_row")


def random_target(n, c, parts, device="cpu", generator=None, logits_dtype=torch.float32):
    """A SoftTarget with the given parts; weights drawn so that s + a + d <= 1."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    labels = torch.randint(0, c, (n,), generator=g)
    if "ignore" in parts and n > 0:
        labels[torch.rand(n, generator=g) < 0.25] = -100
    per_row = "per_row" in parts

    def weight(high):
        if per_row:
            return (torch.rand(n, generator=g) * high).to(device)
        return float(torch.rand((), generator=g) * high)

    kwargs = {}
    if "smoothing" in parts:
        kwargs["smoothing"] = weight(0.3)
    if "mix" in parts:
        kwargs["labels2"] = torch.randint(0, c, (n,), generator=g).to(device)
        kwargs["lam"] = weight(1.0)
    if "table" in parts:
        table = torch.rand(c, c, generator=g)
        table = table / table.sum(1, keepdim=True)
        table[0] = 0  # OLS's first epoch: an all-zero row
        kwargs["table"] = table.to(device)
        kwargs["table_weight"] = weight(0.3)
    if "dense" in parts or "dense_logits" in parts:
        raw = torch.randn(n, c, generator=g) * 2
        if "dense_logits" in parts:
            kwargs["dense"] = raw.to(device, logits_dtype)
            kwargs["dense_logits"] = True
            kwargs["temperature"] = 0.5 + float(torch.rand((), generator=g)) * 3
        else:
            kwargs["dense"] = torch.softmax(raw, 1).to(device, logits_dtype)
        kwargs["dense_weight"] = weight(0.3)
    return psl.SoftTarget(labels.to(device), **kwargs)
