"""Models by name: torchvision's, plus the CIFAR ResNets of the papers (He et al. 2016, §4.2:
resnet20/32/44/56/110) and CIFAR-stem ResNet-18/34 (3x3 stem, no max-pool)."""
import contextlib

import torch
from torch import nn

__all__ = ["create_model", "load_model", "CIFAR_RESNETS"]

CIFAR_RESNETS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}


class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """3 stages of ``blocks`` basic blocks (16, 32, 64 channels), global pooling, linear head."""

    def __init__(self, blocks: int, num_classes: int, widths=(16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks):
                layers.append(_Block(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


def _builder_options(arch, image_size):
    """torchvision builder arguments a model needs here: the input side of models built for one (ViT's
    position embedding, MaxViT's partitions), and single logits from the two whose training-mode output
    carries auxiliary classifiers (the loss takes one tensor of logits)."""
    if arch.startswith("vit_") and image_size is not None:
        return {"image_size": image_size}
    if arch.startswith("maxvit_") and image_size is not None:
        return {"input_size": (image_size, image_size)}
    if arch in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": True}
    return {}


def create_model(arch: str, num_classes: int, image_size: int = None) -> nn.Module:
    """A model by name: resnet20/32/44/56/110 (CIFAR), cifar_resnet18/34 (torchvision ResNet with a CIFAR
    stem), or any torchvision classification model (resnet50, vit_b_16, ...).

    With ``image_size`` the model is built for square images of that side (ViT, MaxViT) and checked to take
    them with one forward pass of a blank image in eval mode, so that a model that cannot (ViT at a side that
    is not a multiple of its patch, Inception-v3 under 75 pixels) is a ValueError naming it here, not an error
    deep inside the first training step.
    """
    import torchvision

    if arch in CIFAR_RESNETS:
        model = CifarResNet(CIFAR_RESNETS[arch], num_classes)
    elif arch in ("cifar_resnet18", "cifar_resnet34"):
        model = getattr(torchvision.models, arch.removeprefix("cifar_"))(num_classes=num_classes)
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif arch in torchvision.models.list_models(module=torchvision.models):  # classification models only
        with _cannot_take(arch, image_size):  # ViT's builder checks the side against its patch
            model = torchvision.models.get_model(arch, num_classes=num_classes, **_builder_options(arch, image_size))
    else:
        names = sorted(CIFAR_RESNETS) + ["cifar_resnet18", "cifar_resnet34"]
        raise ValueError(f"arch: unknown model {arch!r}; use one of {names} or a torchvision classification model "
                         "name (torchvision.models.list_models(module=torchvision.models))")
    if image_size is not None:
        _check_takes(model, arch, image_size)
    return model


def load_model(arch: str, num_classes: int, image_size: int, weights: dict, source) -> nn.Module:
    """:func:`create_model` with the trained ``weights`` loaded; ValueError naming ``source`` (a checkpoint's
    path) and the first mismatch when they do not fit (another architecture or class count; a ViT's position
    embedding is made for the side it was trained at). The random initialisation that the weights replace
    leaves the global random stream as it was, so that loading a model does not change a run's randomness."""
    with torch.random.fork_rng(devices=[]):
        model = create_model(arch, num_classes, image_size)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:  # torch lists every mismatch; the first names the problem
        detail = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
        detail = detail if len(detail) <= 240 else detail[:240] + " ..."
        raise ValueError(f"{source} does not fit {arch} for {num_classes} classes at {image_size} px: "
                         f"{detail}") from None
    return model


def _check_takes(model, arch, image_size):
    training = model.training
    try:
        with _cannot_take(arch, image_size), torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size))
    finally:
        model.train(training)


@contextlib.contextmanager
def _cannot_take(arch, image_size):
    """What a model says of an input it cannot take (assertions, shape errors), as one ValueError."""
    try:
        yield
    except (RuntimeError, ValueError, AssertionError) as error:
        if image_size is None:  # not about a side: the builder's own error
            raise
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"arch: {arch} cannot take {image_size}x{image_size} images ({reason})") from None
