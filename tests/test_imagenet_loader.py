"""The DALI ImageNet-layout loader on CPU-only DALI: shapes, dtypes, labels against folder names, object
fractions against the pixels of the output crops, context-only crops, determinism, sharding, bad data, and
Imagenette from ../shared when it is there."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_tar

pytest.importorskip("nvidia.dali", reason="the data layer needs NVIDIA DALI (pip install nvidia-dali-cuda130)")

from pysoftlabel.data.boxes import load_boxes  # noqa: E402
from pysoftlabel.data.folder import scan_image_folder  # noqa: E402
from pysoftlabel.data.imagenet import MEAN, STD, ImageNetLoader, context_crops  # noqa: E402

CLASSES = ("blue", "green", "red")  # sorted folder names; the background is dark in that channel
WIDTH, HEIGHT = 64, 48  # not square, so that swapped x and y would show


def draw(path, label, box, fmt="JPEG"):
    img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    img[..., 2 - label] = 120  # blue -> channel 2, green -> 1, red -> 0
    if box is not None:
        x0, y0, x1, y1 = box
        img[y0:y1, x0:x1] = 255
    Image.fromarray(img).save(path, format=fmt, quality=95)


def write_xml(path, name, box):
    x0, y0, x1, y1 = box
    path.write_text(f"<annotation><size><width>{WIDTH}</width><height>{HEIGHT}</height></size><object><name>{name}"
                    f"</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"
                    "</object></annotation>")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("boxes_data")
    rng = np.random.default_rng(0)
    (root / "boxes").mkdir()
    for split, per_class in (("train", 8), ("val", 7)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                x0, y0 = int(rng.integers(0, WIDTH // 2)), int(rng.integers(0, HEIGHT // 2))
                box = (x0, y0, x0 + int(rng.integers(8, WIDTH // 2)), y0 + int(rng.integers(8, HEIGHT // 2)))
                stem = f"{split}_{name}_{i}"
                draw(root / split / name / f"{stem}.JPEG", label, box)
                if i != 0:  # the first image of each class has no annotation
                    write_xml(root / "boxes" / f"{stem}.xml", name, box)
    return root


def pixels(batch):
    """The images back in 0-255 RGB, [N, H, W, 3]."""
    img = batch["image"].float().cpu().permute(0, 2, 3, 1)
    return img * torch.tensor(STD) + torch.tensor(MEAN)


def drawn_labels(batch):
    """The label each image was drawn with: the channel its (non-white) background is bright in."""
    img = pixels(batch)
    background = img.masked_fill((img > 200).all(dim=-1)[..., None], 0).sum(dim=(1, 2))
    return 2 - background.argmax(dim=1)


def train_loader(data, seed=0, **kwargs):
    listing = scan_image_folder(data, "train")
    boxes = load_boxes(data / "boxes", *listing)
    return ImageNetLoader(data, "train", 6, 32, "cpu", seed=seed, listing=listing, boxes=boxes, min_scale=0.2,
                          num_threads=1, **kwargs)


def check_labels_and_object_fractions(loader):
    """Each training batch's labels are the drawn ones, and its object fractions the crops' share of white
    pixels (-1 for the images without boxes); returns how many images came."""
    seen = 0
    for batch in loader:
        white = (pixels(batch) > 200).all(dim=-1)
        assert (drawn_labels(batch) == batch["label"]).all()  # label of the folder the file is in
        for i in range(len(batch["label"])):
            fraction = float(batch["object_fraction"][i])
            is_first = Path(loader.files[int(batch["index"][i])]).stem.endswith("_0")
            if is_first:
                assert fraction == -1
            else:  # the crop's share of white pixels, after resizing: a few pixels of blur at the edges
                assert fraction == pytest.approx(float(white[i].float().mean()), abs=0.07)
        seen += len(batch["label"])
    return seen


def test_train_batches_labels_and_object_fractions(data):
    batch = next(iter(train_loader(data)))
    assert batch["image"].shape == (6, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    loader = train_loader(data)
    assert check_labels_and_object_fractions(loader) == len(loader) * 6 == 24


def test_object_fractions_stay_with_their_images_when_files_are_skipped(data, tmp_path):
    import shutil
    for folder in ("train", "boxes"):
        shutil.copytree(data / folder, tmp_path / folder)
    # Unreadable files sorted first, one with a box of its own: every later row moves up when they are dropped.
    for name in CLASSES:
        (tmp_path / "train" / name / "a_unreadable.JPEG").write_bytes(b"")
    write_xml(tmp_path / "boxes" / "a_unreadable.xml", "blue", (0, 0, 8, 8))
    loader = train_loader(tmp_path)
    assert len(loader.skipped) == 3 and len(loader.boxes.boxes) == len(loader.files) == 24
    assert check_labels_and_object_fractions(loader) == 24


def test_dtypes_determinism_and_sharding(data):
    first = next(iter(train_loader(data, seed=3, dtype=torch.bfloat16)))
    assert first["image"].dtype == torch.bfloat16
    again = next(iter(train_loader(data, seed=3, dtype=torch.bfloat16)))
    other = next(iter(train_loader(data, seed=4, dtype=torch.bfloat16)))
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["index"], again["index"])
    assert not torch.equal(first["image"], other["image"])
    assert next(iter(train_loader(data, dtype=torch.float16)))["image"].dtype == torch.float16
    with pytest.raises(ValueError, match="^dtype must be float32, float16 or bfloat16, got torch.float64$"):
        train_loader(data, dtype=torch.float64)
    seen = []
    for shard in range(3):  # 21 validation images, batches of 4: every image exactly once, partial batches kept
        loader = ImageNetLoader(data, "val", 4, 32, "cpu", shard_id=shard, num_shards=3, num_threads=1)
        seen += [int(i) for batch in loader for i in batch["index"]]
    assert sorted(seen) == list(range(21))


@pytest.fixture(scope="module")
def many_per_class(tmp_path_factory):
    """4 classes of 1500 tiny images: a class-sorted listing much longer than DALI's 1024-file shuffle buffer."""
    root = tmp_path_factory.mktemp("many_per_class")
    for label in range(4):
        (root / "train" / f"c{label}").mkdir(parents=True)
        for i in range(1500):
            Image.fromarray(np.full((8, 8, 3), 60 * label, np.uint8)).save(root / "train" / f"c{label}" / f"{i}.jpg")
    return root


def test_training_reads_the_whole_listing_in_a_new_order_each_epoch_and_seed(many_per_class):
    # DALI's random_shuffle draws from a buffer of the next 1024 files of one fixed order, the same for every
    # seed: on this listing two seeds' (or two epochs') positions of the files correlated by 0.76, and on
    # ImageNet's 1.28M files nearly the same batches would come every epoch.
    listing = scan_image_folder(many_per_class, "train")

    def epochs(seed, count, shard=0, num_shards=1):
        loader = ImageNetLoader(many_per_class, "train", 100, 8, "cpu", shard_id=shard, num_shards=num_shards,
                                seed=seed, listing=listing, num_threads=1)
        orders = []
        for _ in range(count):  # the same loader again
            batches = list(loader)
            for batch in batches:  # each image with its own label: grey level 60 x label
                assert torch.equal((pixels(batch).mean(dim=(1, 2, 3)) / 60).round().long(), batch["label"])
            orders.append(torch.cat([batch["index"] for batch in batches]))
        for order in orders:
            assert len(order.unique()) == len(order) == 6000 // num_shards  # no file twice in an epoch
        return orders

    def correlation(first, second):  # of the files' positions in the two orders
        return float(np.corrcoef(first.argsort(), second.argsort())[0, 1])

    first, second = epochs(seed=1, count=2)
    assert abs(correlation(first, second)) < 0.1  # about 0.013 apart by chance
    assert abs(correlation(first, epochs(seed=2, count=1)[0])) < 0.1
    assert torch.equal(first, epochs(seed=1, count=1)[0])
    labels = torch.tensor(listing[1])
    assert labels[first[:100]].unique().tolist() == [0, 1, 2, 3]  # the first batch: the four classes
    # Two shards: their blocks of one order each epoch, the whole listing between them.
    shards = [epochs(seed=1, count=2, shard=shard, num_shards=2) for shard in range(2)]
    for epoch in range(2):
        assert sorted(torch.cat([orders[epoch] for orders in shards]).tolist()) == list(range(6000))


def test_a_training_set_smaller_than_a_batch_is_named(data):
    # 24 training images: DALI would stop with a message about its reader ("no data in the pipeline")
    with pytest.raises(ValueError, match=r"train has 24 training images \(8 per process over 3\), fewer than one "
                                         r"batch of 9"):
        ImageNetLoader(data, "train", 9, 32, "cpu", shard_id=0, num_shards=3, num_threads=1)
    assert len(ImageNetLoader(data, "val", 64, 32, "cpu", num_threads=1)) == 1  # evaluation: one partial batch


def test_context_crops_avoid_every_box(data):
    loader = context_crops(data, "val", data / "boxes", 4, 32, "cpu", list(CLASSES), min_area=0.1, num_threads=1)
    crops = 0
    for batch in loader:
        white = (pixels(batch) > 200).all(dim=-1).float().mean(dim=(1, 2))
        assert (white < 0.03).all()  # at most resize blur from a box edge
        crops += len(batch["label"])
    assert 0 < crops <= 18  # 18 validation images have boxes


def test_shards_find_their_boxes_and_context_windows_by_sample_key(data, tmp_path):
    """ALS on webdataset shards: the samples are named by their files' stems, by which their boxes are found;
    each training crop's object fraction is its share of white pixels, as from the folders, and the context
    crops of the validation shards are those of the folders."""
    from pysoftlabel.data.webdataset import find_shards, scan_webdataset, write_webdataset
    for split in ("train", "val"):
        write_webdataset(*scan_image_folder(data, split)[:2], tmp_path / split, per_shard=5)
    listing = scan_webdataset(find_shards(tmp_path / "train"))
    keys = [key.decode() for key in listing.keys]
    assert sorted(keys) == sorted(Path(f).stem for f in scan_image_folder(data, "train")[0])
    boxes = load_boxes(data / "boxes", keys, listing.labels.tolist(), list(CLASSES))
    loader = ImageNetLoader(tmp_path, "train", 6, 32, "cpu", classes=list(CLASSES), boxes=boxes, min_scale=0.2,
                            num_threads=1)
    fractions = []
    for batch in loader:
        assert (drawn_labels(batch) == batch["label"]).all()
        white = (pixels(batch) > 200).all(dim=-1).float().mean(dim=(1, 2))
        for fraction, share in zip(batch["object_fraction"].tolist(), white.tolist()):
            assert fraction == -1 or fraction == pytest.approx(share, abs=0.07)
            fractions.append(fraction)
    assert len(fractions) == 24 and fractions.count(-1) == 3  # the first image of each class has no annotation
    with pytest.raises(ValueError, match=r"^boxes: 23 rows for the 24 samples of the shards$"):
        ImageNetLoader(tmp_path, "train", 6, 32, "cpu", boxes=boxes.select(range(23)), num_threads=1)

    def crops(root):
        loader = context_crops(root, "val", data / "boxes", 4, 32, "cpu", list(CLASSES), num_threads=1)
        images = torch.cat([batch["image"] for batch in loader])
        return images[images.mean(dim=(1, 2, 3)).argsort()]  # the shards' order is shuffled
    from_shards = crops(tmp_path)
    assert len(from_shards) > 0 and torch.equal(from_shards, crops(data))


def test_greyscale_cmyk_and_png_named_jpeg_decode_to_rgb(tmp_path):
    (tmp_path / "train" / "x").mkdir(parents=True)
    Image.new("L", (40, 30), 90).save(tmp_path / "train" / "x" / "grey.JPEG")
    Image.new("CMYK", (40, 30), (0, 0, 0, 0)).save(tmp_path / "train" / "x" / "cmyk.JPEG")
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "train" / "x" / "png.JPEG", format="PNG")
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "train" / "x" / "upper.JPG")
    loader = ImageNetLoader(tmp_path, "train", 4, 16, "cpu", num_threads=1)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 16, 16) and len(loader.files) == 4


def test_unreadable_files_are_skipped_and_counted(data, tmp_path):
    import shutil
    # DALI maps the files into memory: each case gets its own copy rather than truncating files in use.
    for case in ("some", "class", "all"):
        shutil.copytree(data / "train", tmp_path / case / "train")
    good = (tmp_path / "some" / "train" / "red" / "train_red_1.JPEG").read_bytes()
    (tmp_path / "some" / "train" / "red" / "truncated.JPEG").write_bytes(good[: len(good) // 2])
    (tmp_path / "some" / "train" / "red" / "empty.JPEG").write_bytes(b"")
    (tmp_path / "some" / "train" / "blue" / "text.JPEG").write_text("not an image")
    loader = ImageNetLoader(tmp_path / "some", "train", 6, 16, "cpu", num_threads=1)
    assert sorted(Path(f).name for f, _ in loader.skipped) == ["empty.JPEG", "text.JPEG", "truncated.JPEG"]
    assert sum(len(b["label"]) for b in loader) == 24  # the run goes on without them
    for path in (tmp_path / "class" / "train" / "green").iterdir():
        path.write_bytes(b"")
    only_bad = ImageNetLoader(tmp_path / "class", "train", 6, 16, "cpu", num_threads=1)
    assert len(only_bad.skipped) == 8 and not any("green" in f for f in only_bad.files)
    for path in (tmp_path / "all" / "train").rglob("*.JPEG"):
        path.write_bytes(b"")
    with pytest.raises(ValueError, match="none of the"):
        ImageNetLoader(tmp_path / "all", "train", 6, 16, "cpu", num_threads=1)
    # A listing said to be checked already, that is not: DALI's error, said as the data's.
    with pytest.raises(ValueError, match=r"^data: DALI could not read a file of 24 in this listing: File mapping "
                                         r"failed: .*/class/train/green/[^/]+\.JPEG; 8 of its files are "
                                         r"unreadable now, e\.g\. .*/green/[^/]+\.JPEG is empty$"):
        list(ImageNetLoader(tmp_path / "class", "train", 6, 16, "cpu", num_threads=1, check_files=False))


def test_a_file_dali_cannot_decode_is_named(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    for i in range(4):
        draw(tmp_path / "train" / "a" / f"{i}.JPEG", 0, None)
    (tmp_path / "train" / "a" / "0.JPEG").write_text("not an image")  # DALI's decoders name no file
    with pytest.raises(ValueError, match=r"^data: DALI could not read a file of 4 in this listing: .*; 1 of its "
                                         r"files are unreadable now, e\.g\. .*/a/0\.JPEG is neither a JPEG nor a PNG"):
        list(ImageNetLoader(tmp_path, "train", 2, 16, "cpu", num_threads=1, check_files=False))


@pytest.mark.parametrize("make, match", [
    (lambda root: (root / "train" / "a").mkdir(parents=True), "has no images"),
    (lambda root: (root / "train" / "a" / "images").mkdir(parents=True), r"has no images .* in it or below it$"),
    (lambda root: ((root / "train").mkdir(), (root / "train" / "x.JPEG").write_bytes(b"")),
     r"no class folders \(found \['x.JPEG'\]\).*ImageNet's validation images come in one folder"),
    (lambda root: ((root / "train").mkdir(), (root / "train" / "LOC_val.csv").write_bytes(b"")),
     r"no class folders \(found \['LOC_val.csv'\]\); expected .*train/<class>/<image>$"),
    (lambda root: None, "does not exist"),
])
def test_bad_layouts_name_the_folder(tmp_path, make, match):
    make(tmp_path)
    with pytest.raises(ValueError, match=match):
        ImageNetLoader(tmp_path, "train", 4, 16, "cpu", num_threads=1)


def test_a_validation_split_without_images_is_named(tmp_path):
    for name in CLASSES:  # the class folders are there, and empty
        (tmp_path / "val" / name).mkdir(parents=True)
    with pytest.raises(ValueError, match=r"^data: no images under .*/val$"):
        ImageNetLoader(tmp_path, "val", 4, 16, "cpu", classes=list(CLASSES), num_threads=1)


def test_a_class_holds_the_images_below_it_as_torchvisions_image_folder_lists_them(tmp_path):
    from torchvision.datasets import ImageFolder
    layout = ["a/z.JPEG", "a/images/b.jpg", "a/images/a.png", "a/b.JPEG", "a/images/deeper/c.jpeg", "b/x.PNG",
              "b/2/y.jpg", "b/10/y.jpg", "b/notes.txt", "b/.ipynb_checkpoints/x-checkpoint.jpg", "b/._x.PNG"]
    for name in layout:
        (tmp_path / "train" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "train" / name).write_bytes(b"")
    files, labels, classes = scan_image_folder(tmp_path, "train")
    hidden = ("/.ipynb_checkpoints/", "/._")
    expected = [(path, label) for path, label in ImageFolder(str(tmp_path / "train"), loader=lambda p: p).samples
                if not any(h in path for h in hidden)]
    assert list(zip(files, labels)) == expected and classes == ["a", "b"]
    assert [Path(f).relative_to(tmp_path / "train").as_posix() for f in files] == [
        "a/b.JPEG", "a/z.JPEG", "a/images/a.png", "a/images/b.jpg", "a/images/deeper/c.jpeg",
        "b/x.PNG", "b/10/y.jpg", "b/2/y.jpg"]
    assert scan_image_folder(tmp_path, "train", per_class=3)[0] == files[:3] + files[5:8]
    (tmp_path / "train" / "a" / "images" / "up").symlink_to(tmp_path / "train" / "a")  # a cycle
    assert scan_image_folder(tmp_path, "train")[0] == files  # each folder once


def test_hidden_folders_are_not_classes(tmp_path):
    for split in ("train", "val"):
        for name in ("b", "a", ".ipynb_checkpoints"):
            (tmp_path / split / name).mkdir(parents=True)
        for name in ("a", "b"):
            (tmp_path / split / name / f"{name}1.JPEG").write_bytes(b"")
    files, labels, classes = scan_image_folder(tmp_path, "train")
    assert classes == ["a", "b"] and labels == [0, 1]
    assert scan_image_folder(tmp_path, "val", classes)[2] == classes
    (tmp_path / "val" / "c").mkdir()
    with pytest.raises(ValueError, match=r"val has classes not in the training set: \['c'\]"):
        scan_image_folder(tmp_path, "val", classes)
    with pytest.raises(ValueError, match=r"none of the folders of .*val \(a, b, c\) is a training class"):
        scan_image_folder(tmp_path, "val", ["x", "y"])  # Tiny ImageNet's val/images/, say


IMAGENETTE = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def imagenette(tmp_path_factory):
    parts = sorted(IMAGENETTE.glob("imagenette2-224.tar.gz.part*"))
    if not parts:
        pytest.skip(f"Imagenette archives not found in {IMAGENETTE} (../shared/data beside the checkout)")
    import subprocess
    root = tmp_path_factory.mktemp("imagenette")
    subprocess.run(f"cat {' '.join(map(str, parts))} | tar -xzf - -C {root}", shell=True, check=True)
    return root / "imagenette2-224"


def test_imagenette_validation_set(imagenette):
    listing = scan_image_folder(imagenette, "val")
    assert len(listing[2]) == 10 and len(listing[0]) == 3925
    loader = ImageNetLoader(imagenette, "val", 256, 64, "cpu", listing=listing, num_threads=2)
    labels = torch.cat([b["label"] for b in loader])
    want = [len(list((imagenette / "val" / c).iterdir())) for c in listing[2]]
    assert labels.bincount(minlength=10).tolist() == want  # greyscale ones included, none lost or repeated


def test_validation_images_are_torchvisions(imagenette):
    """The validation preprocessing is torchvision's Resize(size / 0.875) + CenterCrop + ToTensor + Normalize
    (ImageNet mean and std), so that pretrained torchvision weights and published evaluations carry over.
    At an even margin (64 - 56 here, as 256 - 224) the crops coincide; at some odd ones DALI's starts a pixel
    off (for a margin of 9 it rounds 4.5 up, where torchvision's round() goes to the even 4)."""
    T = pytest.importorskip("torchvision.transforms")
    files, labels, classes = scan_image_folder(imagenette, "val")
    batch = next(iter(ImageNetLoader(imagenette, "val", 16, 56, "cpu", classes=classes, num_threads=1)))
    reference = T.Compose([T.Resize(64), T.CenterCrop(56), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    want = torch.stack([reference(Image.open(files[i]).convert("RGB")) for i in batch["index"].tolist()])
    got = batch["image"].float()
    assert (got - want).abs().mean() < 0.02  # measured 0.0017 (DALI's and PIL's antialiased resizes differ)
    assert (got.flip(1) - want).abs().mean() > 0.2  # swapped channels: 0.30


def test_webdataset_shards(data, tmp_path):
    from pysoftlabel.data.webdataset import write_webdataset
    for split in ("train", "val"):
        files, labels, _ = scan_image_folder(data, split)
        write_webdataset(files, labels, tmp_path / split, per_shard=5)
    train = ImageNetLoader(tmp_path, "train", 6, 16, "cpu", num_threads=1, seed=1)
    assert train.webdataset and len(train.files) == 5 and train.classes == ["0", "1", "2"]
    batch = next(iter(train))
    assert batch["image"].shape == (6, 3, 16, 16)
    assert (drawn_labels(batch) == batch["label"]).all()  # the .cls text parsed back
    val = ImageNetLoader(tmp_path, "val", 4, 16, "cpu", num_threads=1, classes=train.classes)
    labels = torch.cat([b["label"] for b in val])
    assert labels.bincount().tolist() == [7, 7, 7]  # every sample once, the partial batch kept
    for index in (tmp_path / "val").glob("*.idx"):  # shards from elsewhere: DALI finds the samples itself
        index.unlink()
    val = ImageNetLoader(tmp_path, "val", 4, 16, "cpu", num_threads=1, classes=train.classes)
    assert torch.equal(torch.cat([b["label"] for b in val]), labels)
    (tmp_path / "bad").mkdir()
    write_tar(tmp_path / "bad" / "bad.tar", {"x.jpg": Path(files[0]).read_bytes(), "x.cls": b"cat"})
    with pytest.raises(ValueError, match="not a class index"):
        ImageNetLoader(tmp_path, "bad", 4, 16, "cpu", num_threads=1)
    with pytest.raises(ValueError, match=r"/val has class index 2, the training set 2 classes$"):
        ImageNetLoader(tmp_path, "val", 4, 16, "cpu", num_threads=1, classes=["0", "1"])
    with pytest.raises(ValueError, match=r"^windows: 1 rows for the 24 samples of the shards$"):
        ImageNetLoader(tmp_path, "train", 6, 16, "cpu", num_threads=1, windows=torch.zeros(1, 4))


@pytest.mark.parametrize("with_indexes", [True, False])
def test_webdataset_shards_with_unreadable_images_read_every_other_sample_once(data, tmp_path, with_indexes):
    """The scan's indexes leave the unreadable images out, and DALI reads what they list: before, one empty
    image stopped the run ("nvImageCodec failure"). Members named .JPG or .PNG are images too."""
    from pysoftlabel.data.webdataset import write_webdataset
    files, labels, _ = scan_image_folder(data, "val")
    bad = {0: b"", 8: b"not an image", 15: Path(files[15]).read_bytes()[:200]}  # one of each class
    copies = []
    for i, path in enumerate(files):
        copies.append(tmp_path / "images" / f"{i:02d}.JPEG")
        copies[-1].parent.mkdir(exist_ok=True)
        copies[-1].write_bytes(bad.get(i, Path(path).read_bytes()))
    write_webdataset([str(c) for c in copies], labels, tmp_path / "val", per_shard=4)
    # as from other tools: capital extensions
    write_tar(tmp_path / "val" / "upper.tar", {"x.JPG": Path(files[1]).read_bytes(), "x.cls": b"0"})
    if not with_indexes:
        for index in (tmp_path / "val").glob("*.idx"):
            index.unlink()
    val = ImageNetLoader(tmp_path, "val", 4, 16, "cpu", num_threads=1, classes=list(CLASSES))
    assert sorted(name.rsplit(": ", 1)[1] for name, _ in val.skipped) == ["00.jpg", "08.jpg", "15.jpg"]
    batches = list(val)
    got = torch.cat([b["label"] for b in batches])
    assert got.bincount().tolist() == [7 - 1 + 1, 7 - 1, 7 - 1]  # the upper-case sample is class 0
    assert torch.equal(torch.cat([drawn_labels(b) for b in batches]), got)


@pytest.mark.cuda
def test_gpu_pipeline_hands_over_cuda_tensors(data, tmp_path):
    """The GPU ("mixed") pipeline: every output arrives as a CUDA tensor (DALI hands the CPU outputs of a GPU
    pipeline over as pinned host memory, which torch.from_dlpack rejected on the H100), labels match the
    folders, object fractions are there; validation keeps every image; webdataset labels parse."""
    listing = scan_image_folder(data, "train")
    loader = ImageNetLoader(data, "train", 6, 32, "cuda", listing=listing, boxes=load_boxes(data / "boxes", *listing),
                            min_scale=0.2, num_threads=1)
    batches = list(loader)
    assert len(batches) == 4
    for batch in batches:
        assert all(value.is_cuda for value in batch.values()), {k: v.device for k, v in batch.items()}
        assert (drawn_labels(batch) == batch["label"].cpu()).all()
        fraction = batch["object_fraction"]
        assert ((fraction == -1) | ((fraction >= 0) & (fraction <= 1))).all()
    val = ImageNetLoader(data, "val", 4, 32, "cuda", num_threads=1)
    assert sorted(int(i) for batch in val for i in batch["index"]) == list(range(21))
    from pysoftlabel.data.webdataset import find_shards, scan_webdataset, write_webdataset
    for split in ("train", "val"):
        write_webdataset(*scan_image_folder(data, split)[:2], tmp_path / split, per_shard=5)
    shards = ImageNetLoader(tmp_path, "train", 6, 16, "cuda", num_threads=1)
    batch = next(iter(shards))
    assert batch["label"].is_cuda and (drawn_labels(batch) == batch["label"].cpu()).all()
    # ALS on shards: the samples' source_info travels with them, and the context crops' windows are found in
    # Python (python_function, an unpipelined GPU pipeline)
    listing = scan_webdataset(find_shards(tmp_path / "train"))
    boxes = load_boxes(data / "boxes", [k.decode() for k in listing.keys], listing.labels.tolist(), list(CLASSES))
    batch = next(iter(ImageNetLoader(tmp_path, "train", 6, 16, "cuda", boxes=boxes, num_threads=1)))
    assert batch["object_fraction"].is_cuda and (batch["object_fraction"] >= -1).all()
    crops = context_crops(tmp_path, "val", data / "boxes", 4, 32, "cuda", list(CLASSES), num_threads=1)
    assert all(b["image"].is_cuda for b in crops) and sum(len(b["label"]) for b in crops) == crops.samples > 0
