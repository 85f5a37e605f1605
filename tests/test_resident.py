"""The resident small-dataset path: decoding, augmentation semantics, epochs, shards; CIFAR-10 from
../shared/data when present."""
import tarfile
from pathlib import Path

import pytest
import torch

from pysoftlabel.data import make_synthetic_dataset
from pysoftlabel.data.imagenet import MEAN, STD
from pysoftlabel.data.resident import ResidentImages, ResidentLoader

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10.tar.gz"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    make_synthetic_dataset(root, num_classes=3, train_per_class=10, val_per_class=4, image_size=32, seed=2)
    return root


@pytest.fixture(scope="module")
def images(root):
    return ResidentImages(root, "train")


def denormalise(x):
    return x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


def test_eval_batches_are_the_images_in_order(images):
    loader = ResidentLoader(images, 8, training=False)
    batches = list(loader)
    assert len(batches) == len(loader) == 4 and sum(len(b["label"]) for b in batches) == 30
    got = torch.cat([denormalise(b["image"]) for b in batches])
    torch.testing.assert_close(got, images.images.float(), atol=1e-3, rtol=0)


def test_a_training_set_smaller_than_a_batch_is_named(images):
    ResidentLoader(images, 30, training=True)  # one full batch: fine
    with pytest.raises(ValueError, match=r"train has 30 training images, fewer than one batch of 31"):
        ResidentLoader(images, 31, training=True)
    with pytest.raises(ValueError, match=r"\(15 per process over 2\), fewer than one batch of 16"):
        ResidentLoader(images, 16, training=True, shard_id=1, num_shards=2)
    ResidentLoader(images, 64, training=False)  # evaluation keeps its partial batch


def test_training_crop_is_a_shifted_window_and_epochs_differ(images):
    loader = ResidentLoader(images, 6, training=True, pad=4, flip=False, seed=1)
    batch = next(iter(loader))
    x = denormalise(batch["image"]).round()
    for i, label in enumerate(batch["label"]):
        # each crop equals some window of the zero-padded original of its row
        candidates = (images.labels == label).nonzero()[:, 0]
        padded = torch.nn.functional.pad(images.images[candidates].float(), (4,) * 4)
        windows = padded.unfold(2, 32, 1).unfold(3, 32, 1)  # [k, 3, 9, 9, 32, 32]
        match = (windows == x[i][None, :, None, None]).flatten(4).all(-1).all(1)
        assert match.any()
    assert len(loader) == 5  # 30 rows, batch 6, last partial dropped
    first = [b["label"] for b in ResidentLoader(images, 6, True, seed=1)]
    again = [b["label"] for b in ResidentLoader(images, 6, True, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    loader2 = ResidentLoader(images, 6, True, seed=1)
    list(loader2)
    second_epoch = [b["label"] for b in loader2]
    assert not all(torch.equal(a, b) for a, b in zip(first, second_epoch))


def test_shards_cover_the_set_once(images):
    shards = [torch.cat([denormalise(b["image"]) for b in ResidentLoader(images, 4, False, shard_id=r, num_shards=2)])
              for r in range(2)]
    together = torch.cat(shards).round().flatten(1)
    assert len(together) == 30
    assert len(torch.unique(together, dim=0)) == len(torch.unique(images.images.flatten(1), dim=0))


def test_cutout_zeroes_a_square_of_its_side_in_the_normalised_image(images):
    """Cutout as DeVries & Taylor's code: a square of side 8 (not 9) centred at a random pixel, clipped where it
    reaches past the image, zero in the normalised image (their Cutout follows Normalize: the mean colour, not
    black); nothing else changes."""
    loader = ResidentLoader(images, 30, training=True, pad=0, flip=False, cutout=8, seed=3)
    original = images.images[loader._rows()].float()
    out = next(iter(loader))["image"]
    cut = (out == 0).all(1)  # [b, h, w]: no pixel of 0-255 integers is the mean colour
    assert (cut | (denormalise(out).round() == original).all(1)).all()
    whole = 0
    for mask in cut:
        ys, xs = mask.nonzero(as_tuple=True)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        assert y1 - y0 <= 8 and x1 - x0 <= 8 and mask[y0:y1, x0:x1].sum() == (y1 - y0) * (x1 - x0)
        if 0 < y0 and y1 < 32 and 0 < x0 and x1 < 32:  # clear of the edges: the whole square
            assert (y1 - y0, x1 - x0) == (8, 8)
            whole += 1
    assert whole >= 5


def test_unreadable_file_is_named(tmp_path):
    bad = tmp_path / "train" / "cls"
    bad.mkdir(parents=True)
    (bad / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot decode .*broken.jpg"):
        ResidentImages(tmp_path, "train")


def test_images_of_several_sizes_are_refused_by_name(tmp_path):
    from PIL import Image
    folder = tmp_path / "train" / "cls"
    folder.mkdir(parents=True)
    for name, size in (("a.png", (32, 32)), ("b.png", (40, 30))):
        Image.new("RGB", size).save(folder / name)
    with pytest.raises(ValueError, match=r"^data: images of .*/train differ in size \(30x40, 32x32\); the resident "
                                         r"path needs one size"):
        ResidentImages(tmp_path, "train")


@pytest.mark.cuda
def test_gpu_batches_never_wait_for_the_gpu(root, images):
    """Past the epoch's start (one copy of its rows and random numbers) a training epoch on the GPU issues no
    synchronising call, so the host runs ahead of the GPU; the batches equal the CPU's."""
    loader = ResidentLoader(ResidentImages(root, "train", "cuda"), 6, True, cutout=8, seed=5)
    batches = iter(loader)
    first = next(batches)
    torch.cuda.set_sync_debug_mode("error")
    try:
        rest = list(batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu = list(ResidentLoader(images, 6, True, cutout=8, seed=5))
    for got, want in zip([first, *rest], cpu, strict=True):
        torch.testing.assert_close(got["image"].cpu(), want["image"])
        assert torch.equal(got["label"].cpu(), want["label"])


@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="../shared/data/cifar10.tar.gz is not beside the checkout")
def test_cifar10_subset_from_shared(tmp_path):
    with tarfile.open(SHARED_CIFAR) as tar:
        members, per_class = [], {}
        for m in tar:
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 3 and parts[-3] == "train":
                if per_class.get(parts[-2], 0) < 20:
                    per_class[parts[-2]] = per_class.get(parts[-2], 0) + 1
                    members.append(m)
            if len(per_class) == 10 and all(v == 20 for v in per_class.values()):
                break
        tar.extractall(tmp_path, members=members, filter="data")
    root = next(tmp_path.rglob("*.jpg")).parents[2]
    data = ResidentImages(root, "train")
    assert len(data) == 200 and data.images.shape[1:] == (3, 32, 32) and len(data.classes) == 10
    assert sorted(data.classes) == data.classes and "airplane" in data.classes
    assert data.labels.bincount().tolist() == [20] * 10
    # Evaluation images are torchvision's ToTensor + Normalize of the decoded file (RGB, ImageNet mean and std).
    T = pytest.importorskip("torchvision.transforms")
    from PIL import Image
    files = sorted(root.glob("train/*/*.jpg"))  # the resident order: classes sorted, then files
    reference = T.Compose([T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    batch = next(iter(ResidentLoader(data, 16, training=False)))
    want = torch.stack([reference(Image.open(f).convert("RGB")) for f in files[:16]])
    torch.testing.assert_close(batch["image"], want, atol=1e-5, rtol=0)
