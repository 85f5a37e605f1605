"""Models by name: the papers' CIFAR ResNets, torchvision's and timm's models built for the run's images."""
import pytest
import torch

from pysoftlabel.models import create_model, load_model


@pytest.mark.parametrize("arch, params", [("resnet20", 0.27), ("resnet56", 0.85), ("resnet110", 1.7)])
def test_cifar_resnets_have_the_papers_sizes(arch, params):
    # He et al. 2016, Table 6: 0.27M, 0.85M, 1.7M parameters.
    model = create_model(arch, 10)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params, rel=0.03)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_stem_keeps_the_resolution():
    model = create_model("cifar_resnet18", 7)
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("arch", ["resnet9000", "fasterrcnn_resnet50_fpn"])  # unknown; not a classifier
def test_unknown_or_not_a_classifier_is_named(arch):
    with pytest.raises(ValueError, match=f"unknown model '{arch}'"):
        create_model(arch, 10)


def test_vit_is_built_for_the_image_side():
    model = create_model("vit_b_32", 3, image_size=64)  # torchvision's default side is 224
    assert model.training and model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


@pytest.mark.parametrize("arch, side, reason", [("vit_b_16", 40, "indivisible by patch size"),
                                                ("squeezenet1_0", 16, "Output size is too small"),
                                                ("resnet20", 0, "")])
def test_a_side_the_model_cannot_take_is_one_value_error(arch, side, reason):
    with pytest.raises(ValueError, match=f"arch: {arch} cannot take {side}x{side} images \\(.*{reason}"):
        create_model(arch, 3, image_size=side)


@pytest.mark.parametrize("arch", ["googlenet", "inception_v3"])
def test_auxiliary_classifiers_are_off_so_training_gives_one_tensor(arch):
    model = create_model(arch, 4, image_size=96).train()
    assert isinstance(model(torch.randn(2, 3, 96, 96)), torch.Tensor)


def test_load_model_names_weights_that_do_not_fit_and_keeps_the_random_stream():
    weights = create_model("resnet20", 10).state_dict()
    torch.manual_seed(5)
    model = load_model("resnet20", 10, 32, weights, "ck.pt")
    assert torch.equal(torch.rand(3), torch.manual_seed(5) and torch.rand(3))  # the initialisation drew nothing
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=r"^ck.pt does not fit resnet20 for 7 classes at 32 px: size mismatch "
                                         r"for head.weight"):
        load_model("resnet20", 7, 32, weights, "ck.pt")
    vit = create_model("vit_b_16", 3, 32).state_dict()  # position embedding of 4 patches + the class token
    with pytest.raises(ValueError, match=r"does not fit vit_b_16 for 3 classes at 48 px: size mismatch for "
                                         r"encoder.pos_embedding"):
        load_model("vit_b_16", 3, 48, vit, "vit.pt")


def test_pretrained_weights_fill_all_but_a_new_classifier():
    from pysoftlabel.models import load_pretrained
    torch.manual_seed(0)
    weights = create_model("resnet18", 1000, 64).state_dict()  # as torchvision's ImageNet weights
    weights = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}  # as old files
    model = create_model("resnet18", 7, 64)
    assert load_pretrained(model, weights, 7, "resnet18", "w.pth") == ["fc.weight", "fc.bias"]
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items() if not k.startswith("fc."))
    assert state["fc.weight"].shape == (7, 512)
    vit = create_model("vit_b_16", 1000, 224).state_dict()  # a position embedding for 224 px
    with pytest.raises(ValueError, match=r"^w.pth does not fit vit_b_16 here: encoder.pos_embedding is "
                                         r"\[1, 197, 768\] in the weights, \[1, 5, 768\] in the model$"):
        load_pretrained(create_model("vit_b_16", 7, 32), vit, 7, "vit_b_16", "w.pth")
    with pytest.raises(ValueError, match="does not fit resnet20 here: .* not in the weights"):
        load_pretrained(create_model("resnet20", 7), weights, 7, "resnet20", "w.pth")


def test_pretrained_sources_and_their_errors(tmp_path, monkeypatch):
    import torchvision

    from pysoftlabel.models import pretrained_weights
    weights = create_model("resnet20", 10).state_dict()
    torch.save(weights, tmp_path / "plain.pth")
    torch.save({"model": weights, "epoch": 3}, tmp_path / "checkpoint.pt")
    torch.save({"state_dict": weights}, tmp_path / "lightning.ckpt")
    for name in ("plain.pth", "checkpoint.pt", "lightning.ckpt"):
        loaded = pretrained_weights("resnet20", str(tmp_path / name))
        assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)
    (tmp_path / "notes.txt").write_text("hello")
    torch.save(list(weights.values()), tmp_path / "list.pth")
    torch.save({"lr": 0.1, "epochs": 3}, tmp_path / "numbers.pth")
    no_state = r"holds no state dict \(tensors by name, as model.state_dict\(\)\)$"
    for source, match in ((tmp_path / "missing.pth", "does not exist"), (tmp_path / "notes.txt", "cannot be read"),
                          ("default", "torchvision has no weights for resnet20"),
                          (tmp_path / "list.pth", "list.pth " + no_state),
                          (tmp_path / "numbers.pth", "numbers.pth " + no_state)):
        with pytest.raises(ValueError, match=match):
            pretrained_weights("resnet20", str(source))
    # torchvision's weights (offline here): fetched through its weights entry, a failed download named.
    entry = torchvision.models.get_model_weights("resnet18").DEFAULT
    monkeypatch.setattr(type(entry), "get_state_dict", lambda self, **kw: {"fetched": torch.zeros(1)})
    assert pretrained_weights("resnet18", "default") == {"fetched": torch.zeros(1)}

    def offline(self, **kw):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
    monkeypatch.setattr(type(entry), "get_state_dict", offline)
    with pytest.raises(ValueError, match=r"cannot fetch https://download.pytorch.org/models/resnet18-.*\.pth "
                                         r"\(<urlopen error .*\); download it where there is a network"):
        pretrained_weights("resnet18", "default")


def test_weights_of_which_no_tensor_fits_are_refused():
    from pysoftlabel.models import load_pretrained
    probe = torch.nn.Linear(4, 3)  # a classifier alone: every tensor is the classifier's
    with pytest.raises(ValueError, match="^no tensor of w.pth fits the probe: weights of another architecture$"):
        load_pretrained(probe, torch.nn.Linear(4, 5).state_dict(), 3, "the probe", "w.pth")


def test_timm_models_by_name():
    timm = pytest.importorskip("timm", reason="timm models are optional (pip install timm)")
    from pysoftlabel.models import check_model_name, default_weights
    model = create_model("timm/resnet10t", 7, 32)
    assert isinstance(model, timm.models.ResNet) and model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    vit = create_model("timm/vit_tiny_patch16_224", 7, 32)  # built for the side it is given, as torchvision's
    assert vit.patch_embed.img_size == (32, 32) and vit(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match=r"^arch: timm/vit_tiny_patch16_224 cannot take 8x8 images \(.*Kernel size"):
        create_model("timm/vit_tiny_patch16_224", 7, 8)  # smaller than one patch
    reloaded = load_model("timm/resnet10t", 7, 32, model.state_dict(), "run/checkpoint.pt")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values()))
    for arch, match in (("timm/resnet_nonexistent", r"timm has no model 'resnet_nonexistent'"),
                        ("timm/resnet18.bogus", r"^timm/resnet18.bogus: Invalid pretrained tag \(bogus\)")):
        with pytest.raises(ValueError, match=match):
            check_model_name(arch)
    assert default_weights("timm/resnet18.a1_in1k") == ("timm's resnet18.a1_in1k",
                                                        "https://huggingface.co/timm/resnet18.a1_in1k")
    words, where = default_weights("timm/resnet18")  # timm's default tag (which timm releases may change)
    assert words.startswith("timm's resnet18.") and where == "https://huggingface.co/timm/" + words.split()[1]
    words, _ = default_weights("timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k")  # for inputs in [-1, 1]
    assert "normalised with mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5)" in words


def test_timm_models_whose_weights_expect_other_normalisation_map_imagenets_to_it():
    """The data layer normalises with ImageNet's mean and std; ViT augreg weights expect (x - 0.5) / 0.5."""
    timm = pytest.importorskip("timm", reason="timm models are optional (pip install timm)")
    import copy
    arch = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    model = create_model(arch, 7, 32).eval()
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=7, img_size=32).eval()
    model.load_state_dict(plain.state_dict())  # strict: the state dict is timm's, the mapping not in it
    image = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = plain((image - 0.5) / 0.5)
        torch.testing.assert_close(model((image - mean) / std), want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(copy.deepcopy(model)((image - mean) / std), want, atol=1e-5, rtol=1e-4)
    resnet = create_model("timm/resnet18.a1_in1k", 7, 32)  # ImageNet's normalisation: its input as it comes
    assert not resnet._forward_pre_hooks and not any(n.startswith("input_") for n, _ in resnet.named_buffers())


def test_timm_default_weights_are_fetched_by_timm_for_the_image_side(monkeypatch):
    pytest.importorskip("timm", reason="timm models are optional (pip install timm)")
    import timm.models._builder as builder

    from pysoftlabel.models import load_pretrained, pretrained_weights
    sides = []

    def fetched(model, pretrained_cfg=None, **kw):  # as a download from the hub: known values, for 1000 classes
        sides.append(model.patch_embed.img_size)
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(0.5)
    monkeypatch.setattr(builder, "load_pretrained", fetched)
    weights = pretrained_weights("timm/vit_tiny_patch16_224", "default", 32)
    assert sides == [(32, 32)] and weights["head.weight"].shape == (1000, 192)
    model = create_model("timm/vit_tiny_patch16_224", 7, 32)
    assert load_pretrained(model, weights, 7, "timm/vit_tiny_patch16_224", "timm") == ["head.weight", "head.bias"]
    assert torch.all(model.state_dict()["pos_embed"] == 0.5)

    def offline(*args, **kw):
        raise OSError("An error happened while trying to locate the file on the Hub")
    monkeypatch.setattr(builder, "load_pretrained", offline)
    with pytest.raises(ValueError, match=r"^cannot fetch https://huggingface.co/timm/vit_tiny_patch16_224\.\w+ "
                                         r"\(An error happened .*\); download it where there is a network and "
                                         r"give the file instead$"):
        pretrained_weights("timm/vit_tiny_patch16_224", "default", 32)


def test_imagenet_class_indices_of_wnid_folders():
    pytest.importorskip("timm", reason="the wnids of ImageNet's classes come from timm")
    from pysoftlabel.models import imagenet_class_indices
    imagenette = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
                  "n03425413", "n03445777", "n03888257"]  # its class folders, sorted
    assert imagenet_class_indices(imagenette) == [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]
    assert imagenet_class_indices(["n01440764", "c01_square"]) is None
