"""Models by name: torchvision's, timm's (``timm/<name>``, where timm is installed), plus the CIFAR ResNets of
the papers (He et al. 2016, §4.2: resnet20/32/44/56/110) and CIFAR-stem ResNet-18/34 (3x3 stem, no max-pool)."""
import contextlib

import torch
from torch import nn

__all__ = ["create_model", "check_model_name", "load_model", "default_weights", "pretrained_weights",
           "load_pretrained", "imagenet_class_indices", "CIFAR_RESNETS", "TIMM_PREFIX"]

CIFAR_RESNETS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}
CIFAR_STEM = ("cifar_resnet18", "cifar_resnet34")  # torchvision's ResNet-18/34 with a 3x3 stem, no max-pool
TIMM_PREFIX = "timm/"  # timm's models: timm/convnext_tiny, timm/resnet50.a1_in1k (a tag names its weights)


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
    """3 stages of ``blocks`` basic blocks (16, 32, 64 channels), global pooling, linear head.

    Where a block changes the shape, its shortcut is a 1x1 convolution with batch norm (He et al.'s option
    B); the paper's CIFAR nets used option A (identity with zero-padded channels). B adds 2,752 parameters
    to each depth (resnet20: 0.272M, the paper's 0.27M)."""

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


def check_model_name(arch: str) -> None:
    """A ValueError naming ``arch`` unless :func:`create_model` builds it (a check that builds nothing)."""
    if arch.startswith(TIMM_PREFIX):
        _timm_config(arch)
        return
    import torchvision
    names = sorted(CIFAR_RESNETS) + list(CIFAR_STEM)
    if arch not in names and arch not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown model {arch!r}; use one of {names}, a torchvision classification model "
                         "name (torchvision.models.list_models(module=torchvision.models)) or timm/<name> "
                         "(timm.list_models())")


def _timm_config(arch: str):
    """timm and the pretrained configuration of ``timm/<name>`` (its weights' source and normalisation);
    ValueError when timm is not installed or has no such model or tag."""
    try:
        import timm
    except ImportError:
        raise ValueError(f"{arch} is a timm model, but timm is not installed (pip install timm)") from None
    name = arch.removeprefix(TIMM_PREFIX)
    if not timm.is_model(name):
        raise ValueError(f"unknown model {arch!r}: timm has no model {name!r} (timm.list_models())")
    try:
        return timm, timm.models.get_pretrained_cfg(name)
    except RuntimeError as error:  # "Invalid pretrained tag (x) for resnet18."
        raise ValueError(f"{arch}: {error}") from None


def _create_timm(arch: str, image_size, **options) -> nn.Module:
    timm, config = _timm_config(arch)
    name = arch.removeprefix(TIMM_PREFIX)
    with _cannot_take(arch, image_size):
        try:  # models built for one input side (ViT, Swin) take it; the others have no such argument
            model = timm.create_model(name, **options, **({} if image_size is None else {"img_size": image_size}))
        except TypeError as error:
            if image_size is None or "img_size" not in str(error):
                raise
            model = timm.create_model(name, **options)
    if config is not None and not _imagenet_normalised(config.mean, config.std):
        _renormalise_input(model, config.mean, config.std)
    return model


def _renormalise_input(model: nn.Module, mean, std) -> None:
    """Makes ``model``, whose weights expect inputs normalised with ``mean`` and ``std`` (many of timm's:
    0.5, 0.5), take the data layer's, normalised with ImageNet's: its forward first maps x to
    x·a + b per channel. A forward pre-hook over non-persistent buffers, so that the model stays timm's own
    class with timm's state dict, and the buffers follow it to any device (and into copies: an EMA teacher)."""
    ours_mean, ours_std, theirs_mean, theirs_std = (torch.tensor(v).view(1, 3, 1, 1)
                                                    for v in (*_imagenet_normalisation(), mean, std))
    model.register_buffer("input_scale", ours_std / theirs_std, persistent=False)
    model.register_buffer("input_shift", (ours_mean - theirs_mean) / theirs_std, persistent=False)
    model.register_forward_pre_hook(_renormalised)


def _renormalised(model, args):
    x, *rest = args
    return (x * model.input_scale.to(x.dtype) + model.input_shift.to(x.dtype), *rest)


def create_model(arch: str, num_classes: int, image_size: int = None) -> nn.Module:
    """A model by name: resnet20/32/44/56/110 (CIFAR), cifar_resnet18/34 (torchvision ResNet with a CIFAR
    stem), any torchvision classification model (resnet50, vit_b_16, ...), or timm's as ``timm/<name>`` (one
    whose weights expect other input normalisation than ImageNet's, which the data layer uses, maps its input
    to that normalisation first).

    With ``image_size`` the model is built for square images of that side (ViT, MaxViT) and checked to take
    them with one forward pass of a blank image in eval mode, so that a model that cannot (ViT at a side that
    is not a multiple of its patch, Inception-v3 under 75 pixels) is a ValueError naming it here, not an error
    deep inside the first training step.
    """
    import torchvision

    if arch.startswith(TIMM_PREFIX):
        model = _create_timm(arch, image_size, num_classes=num_classes)
    elif arch in CIFAR_RESNETS:
        model = CifarResNet(CIFAR_RESNETS[arch], num_classes)
    elif arch in CIFAR_STEM:
        model = getattr(torchvision.models, arch.removeprefix("cifar_"))(num_classes=num_classes)
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    else:
        check_model_name(arch)
        with _cannot_take(arch, image_size):  # ViT's builder checks the side against its patch
            model = torchvision.models.get_model(arch, num_classes=num_classes, **_builder_options(arch, image_size))
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


def default_weights(arch: str) -> tuple:
    """The default (ImageNet) weights of ``arch``, in words and where they are fetched from:
    ("torchvision's ResNet18_Weights.IMAGENET1K_V1", "https://download.pytorch.org/..."), ("timm's
    resnet18.a1_in1k", "https://huggingface.co/timm/resnet18.a1_in1k"). Nothing is downloaded; ValueError when
    the model's library has none."""
    if arch.startswith(TIMM_PREFIX):
        _, config = _timm_config(arch)
        where = config and (f"https://huggingface.co/{config.hf_hub_id}" if config.hf_hub_id else config.url)
        if not where:
            raise ValueError(f"timm has no weights for {arch}; give a file of weights instead")
        words = f"timm's {config.architecture}" + (f".{config.tag}" if config.tag else "")
        if not _imagenet_normalised(config.mean, config.std):
            words += (f" (for inputs normalised with mean {tuple(config.mean)}, std {tuple(config.std)}, "
                      "to which the model maps ImageNet's)")
        return words, where
    weights = _torchvision_weights(arch)
    return f"torchvision's {weights}", weights.url


def _imagenet_normalisation() -> tuple:
    """The data layer's mean and std per channel (ImageNet's), for inputs in [0, 1]."""
    from .data.imagenet import MEAN, STD
    return tuple(m / 255 for m in MEAN), tuple(s / 255 for s in STD)


def _imagenet_normalised(mean, std) -> bool:
    ours_mean, ours_std = _imagenet_normalisation()
    return all(abs(a - b) < 1e-3 for a, b in zip((*mean, *std), (*ours_mean, *ours_std)))


def imagenet_class_indices(classes) -> list:
    """The indices, among ImageNet-1k's classes (their sorted wnids: the order of torchvision's and timm's
    weights), of ``classes`` when every one is an ImageNet wnid (Imagenette's, ImageNet-A's and -R's folders),
    else None. Needs timm's list of the wnids (``pip install timm``); None without timm."""
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        return None
    index = {wnid: i for i, wnid in enumerate(ImageNetInfo().label_names())}
    return [index[c] for c in classes] if all(c in index for c in classes) else None


def _torchvision_weights(arch: str):
    import torchvision
    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except ValueError:
        raise ValueError(f"torchvision has no weights for {arch}; give a file of weights instead") from None


def pretrained_weights(arch: str, source: str, image_size: int = None) -> dict:
    """The weights to start ``arch`` from: its library's default (ImageNet) weights when ``source`` is
    ``"default"`` (torchvision's, downloaded once into ``$TORCH_HOME``; timm's, from the Hugging Face hub into
    its cache, a ViT's position embedding resampled for ``image_size``), else the file ``source``: a state
    dict, or a checkpoint holding one as ``"model"`` (this project's) or ``"state_dict"``. ValueError naming
    the problem (no such weights, a download that failed, a file that is not weights)."""
    if source == "default":
        _, where = default_weights(arch)
        try:
            if arch.startswith(TIMM_PREFIX):
                return _create_timm(arch, image_size, pretrained=True).state_dict()
            return _torchvision_weights(arch).get_state_dict(progress=True, check_hash=True)
        except (OSError, RuntimeError) as error:  # no network, a cut download (its hash is checked)
            raise ValueError(f"cannot fetch {where} ({_first_line(error)}); download it where there is a network "
                             "and give the file instead") from None
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{source} does not exist") from None
    except Exception as error:  # not a torch.save file, or one holding objects
        raise ValueError(f"{source} cannot be read as weights ({_first_line(error)})") from None
    if isinstance(state, dict):
        state = state.get("model", state.get("state_dict", state))
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{source} holds no state dict (tensors by name, as model.state_dict())")
    return state


def load_pretrained(model: nn.Module, weights: dict, num_classes: int, arch: str, source) -> list:
    """Copies ``weights`` into ``model`` (of ``num_classes`` classes) except its classifier, which keeps its
    new initialisation when the weights were trained for another number of classes (their last layer: the
    tensors whose first dimension is the class count and whose other dimensions fit). Returns the names of
    the tensors left new. ValueError naming ``source`` and the first tensor that neither fits nor is the
    classifier (another architecture; a ViT's position embedding made for another image side). Tensors of
    the weights that the model has not (the auxiliary classifiers this project leaves off) are ignored."""
    own = model.state_dict()
    fits = {k: v for k, v in weights.items() if k in own and v.shape == own[k].shape}
    # Batch norm's step counters are not weights (files saved before PyTorch 0.4.1 have none).
    new = [k for k in own if k not in fits and not k.endswith("num_batches_tracked")]
    wrong = [k for k in new if not (k in weights and own[k].dim() >= 1 and own[k].shape[0] == num_classes
                                    and weights[k].shape[1:] == own[k].shape[1:])]
    if wrong:
        k = wrong[0]
        there = f"{list(weights[k].shape)} in the weights" if k in weights else "not in the weights"
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise ValueError(f"{source} does not fit {arch} here: {k} is {there}, "
                         f"{list(own[k].shape)} in the model{more}")
    if not fits:
        raise ValueError(f"no tensor of {source} fits {arch}: weights of another architecture")
    model.load_state_dict(fits, strict=False)
    return new


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
        raise ValueError(f"arch: {arch} cannot take {image_size}x{image_size} images "
                         f"({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    """The first line of what ``error`` says, or its type's name when it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
