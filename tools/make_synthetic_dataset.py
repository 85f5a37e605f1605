#!/usr/bin/env python3
"""Write pysoftlabel's synthetic dataset (ImageNet layout + VOC boxes), deterministic by seed.

    python tools/make_synthetic_dataset.py OUT [--classes 10 --train-per-class 100 --val-per-class 25 --size 64
                                                --seed 0 --workers 1]
"""
from pysoftlabel.cli import ArgumentParser
from pysoftlabel.data import make_synthetic_dataset


# make_synthetic_dataset's parameters as this tool's options
FLAGS = {"num_classes": "--classes", "train_per_class": "--train-per-class", "val_per_class": "--val-per-class",
         "image_size": "--size", "box_fraction": "--box-fraction", "seed": "--seed", "workers": "--workers"}


def main(argv=None):
    parser = ArgumentParser(__doc__)
    parser.add_argument("out", help="output folder")
    parser.add_argument("--classes", type=int, default=10, help="number of classes (default: 10)")
    parser.add_argument("--train-per-class", type=int, default=100, help="training images per class (default: 100)")
    parser.add_argument("--val-per-class", type=int, default=25, help="validation images per class (default: 25)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    parser.add_argument("--box-fraction", type=float, default=0.9, help="images with a box file (default: 0.9)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--workers", type=int, default=1, help="processes writing in parallel (default: 1)")
    args = parser.parse_args(argv)
    try:
        summary = make_synthetic_dataset(args.out, args.classes, args.train_per_class, args.val_per_class, args.size,
                                         args.box_fraction, args.seed, workers=args.workers)
    except ValueError as error:  # bad arguments (by the library's names), or a folder that holds something else
        name, _, rest = str(error).partition(" ")
        parser.error(f"{FLAGS[name]} {rest}" if name in FLAGS else str(error))
    except OSError as error:
        parser.error(f"cannot write to {args.out}: {error.strerror}")
    print(summary)


if __name__ == "__main__":
    main()
