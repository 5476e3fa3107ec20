"""Generate the synthetic paper-doll data sets of the demo and tests (no download needed).

python make_synthetic.py --kind lip --out data/demo --num-train 200 --num-val 50
python make_synthetic.py --kind deepfashion --out data/df_raw --num-train 20 --num-val 5
"""

import argparse
from pathlib import Path

from datasets.synthetic import DF_SIZE, LIP_SIZE, make_deepfashion_dataset, make_lip_dataset
from utils.cli import hw_pair


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Generate synthetic paper-doll datasets (LIP layout or raw DeepFashion).",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--kind",
        choices=["lip", "deepfashion"],
        default="lip",
        help="Which dataset to write: LIP layout or raw DeepFashion-MultiModal.",
    )
    parser.add_argument("--out", type=Path, required=True, help="Output folder (created).")
    parser.add_argument(
        "--num-train",
        type=int,
        default=200,
        help="Training images (deepfashion: ids = num-train + num-val).",
    )
    parser.add_argument("--num-val", type=int, default=50, help="Validation images.")
    parser.add_argument(
        "--size",
        type=hw_pair,
        default=None,
        help="Image size H,W (default: 256,192 for lip, 1101,750 for deepfashion).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Random seed; same seed, same files.")
    return parser


def main(args: argparse.Namespace) -> None:
    if args.kind == "lip":
        make_lip_dataset(args.out, args.num_train, args.num_val, args.size or LIP_SIZE, args.seed)
    else:
        make_deepfashion_dataset(
            args.out, args.num_train + args.num_val, args.seed, args.size or DF_SIZE
        )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
