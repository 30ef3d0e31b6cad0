"""Write the embedded default: a small synthetic dataset in the COCO 2017 layout (the command line; the data are drawn
by synthetic.py, and its keypoint variant by synthetic_people.py, where tests and benchmarks can import them).

The dataset exists so that the real loading, training and evaluation code runs on a machine without COCO: shapes
with the quirks the loaders must handle, learnable from scratch in a few hundred CPU iterations (synthetic.py says
how).

    python synthetic_coco.py --output data/synthetic --seed 0

The keypoint variant (--keypoints) writes the same layout with COCO's person keypoint files,
annotations/person_keypoints_{train,val}2017.json (and instances_* files with the same images and objects): stick
figures, each with the 17 COCO person keypoints, facing the viewer as in COCO photographs.

    python synthetic_coco.py --keypoints --output data/synthetic_kp --num-train 256 --num-val 64 --seed 0
"""

import argparse

import synthetic
import synthetic_people


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keypoints", action="store_true", help="write the person keypoint variant (stick figures) instead"
    )
    parser.add_argument(
        "--output", default=None, help="folder to write the dataset into (data/synthetic, or data/synthetic_kp)"
    )
    parser.add_argument("--num-train", type=int, default=None, help="training images (512, or 256 with --keypoints)")
    parser.add_argument("--num-val", type=int, default=64, help="validation images")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(args: argparse.Namespace) -> None:
    write, output, num_train = (
        (synthetic_people.generate_keypoints, "data/synthetic_kp", 256)
        if args.keypoints
        else (synthetic.generate, "data/synthetic", 512)
    )
    num_train = num_train if args.num_train is None else args.num_train
    root = write(args.output or output, num_train, args.num_val, args.seed)
    print(f"wrote {num_train} training and {args.num_val} validation images to {root}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
