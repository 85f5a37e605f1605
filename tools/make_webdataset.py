#!/usr/bin/env python3
"""Convert an ImageNet-layout folder into webdataset shards (OUT/{train,val}/shard-NNNNNN.tar, samples in a
seeded random order, each shard with its DALI index .idx; class indices in the training folder's sorted order,
named in OUT/classes.txt) for tools/train_imagenet.py --data OUT. Samples are named by their files' stems
(ImageNet's n01440764_10026), by which --boxes finds their annotations for --strategy als, or numbered where
stems repeat or hold a dot or a space. Unreadable images (empty, truncated, not an image) are left out, and
said in one line.

    python tools/make_webdataset.py /data/imagenet /data/imagenet-wds --per-shard 1000
"""
from pysoftlabel.cli import ArgumentParser
from pysoftlabel.data.folder import drop_unreadable, scan_image_folder, skipped_line
from pysoftlabel.data.webdataset import write_class_names, write_webdataset


def main(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument("root", help="ImageNet-layout root")
    p.add_argument("out", help="output root")
    p.add_argument("--splits", nargs="+", default=["train", "val"], help="splits to convert (default: train val)")
    p.add_argument("--per-shard", type=int, default=1000, help="samples per shard (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed (default: 0)")
    args = p.parse_args(argv)
    if args.per_shard < 1 or args.seed < 0:
        p.error(f"--per-shard must be at least 1 and --seed at least 0, got {args.per_shard} and {args.seed}")
    classes = None
    # The training split names the classes (its sorted folders), whichever splits are converted, in any order.
    for split in ["train"] + [s for s in dict.fromkeys(args.splits) if s != "train"]:
        try:
            files, labels, classes = scan_image_folder(args.root, split, classes)
            if split == "train":  # the names of the class indices, for the loader and for checkpoints
                write_class_names(args.out, classes)
            if split not in args.splits:
                continue
            files, labels, skipped = drop_unreadable(files, labels)  # DALI would stop at them in training
            if skipped:
                print(skipped_line(skipped, f"{split} images"))
            shards = write_webdataset(files, labels, f"{args.out}/{split}", args.per_shard, args.seed)
        except ValueError as error:  # bad layout, --per-shard, an output folder holding shards already
            raise SystemExit(str(error))
        print(f"{split}: {len(files)} images in {len(shards)} shard{'s' if len(shards) != 1 else ''} under "
              f"{args.out}/{split}")


if __name__ == "__main__":
    main()
