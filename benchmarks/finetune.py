"""Fine-tuning on a user's handwriting: the other-writers kind of benchmarks/handwriting split in
two halves by file order (alternate files); `mnist train --init bundled` learns the first half
(MNIST replayed from --data-dir) and is scored on the second half and the MNIST test set.

    python benchmarks/finetune.py --data-dir datafiles --seeds 0 1 2

Each fine-tuning is the whole `mnist train` command, timed by the wall clock.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mnist_cli.data import load_split
from mnist_cli.infer.backends import open_model
from mnist_cli.infer.evaluation import evaluate
from mnist_cli.labelled import LabelledImages, load_labelled_images
from mnist_cli.options import BUNDLED_MODELS, BackendName

SET = Path(__file__).resolve().parent / "handwriting"
KIND = "other-writers"
# Issue 30's goals: the second half, MNIST's test set, the whole command's seconds.
GOALS = {"second half": 0.99, "MNIST test": 0.995, "seconds": 120}


def halves(folder: Path, out: Path) -> tuple[Path, Path]:
    """Two CSV files of `file,label`: the kind's even-numbered files, then its odd ones."""
    with open(SET / "labels.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["kind"] == KIND]
    made = []
    for name, part in (("first", rows[0::2]), ("second", rows[1::2])):
        path = out / f"{name}.csv"
        lines = ["file,label"] + [f"{folder / row['file']},{row['label']}" for row in part]
        path.write_text("\n".join(lines) + "\n")
        made.append(path)
    return made[0], made[1]


def scores(model: Path, second: LabelledImages, mnist: LabelledImages) -> tuple[float, float]:
    opened = open_model(model, backend=BackendName.torch, device="cpu")
    return evaluate(opened, second)[0].accuracy, evaluate(opened, mnist)[0].accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="MNIST, replayed and tested")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="instead of the fine-tuning recipe's")
    args = parser.parse_args()
    mnist = LabelledImages.from_split(load_split(args.data_dir, "test"))
    with tempfile.TemporaryDirectory() as scratch:
        first, second_csv = halves(SET, Path(scratch))
        second = load_labelled_images(second_csv)
        bundled = BUNDLED_MODELS[BackendName.torch]
        before = scores(bundled, second, mnist)
        print(f"{KIND}: {len(second.labels)} images in each half")
        print("| model | seconds (whole command) | second half | MNIST test |")
        print("|---|---|---|---|")
        print(f"| bundled | | {before[0]:.1%} | {before[1]:.2%} |")
        results = []
        for seed in args.seeds:
            out = Path(scratch) / f"seed{seed}"
            command = [sys.executable, "-m", "mnist_cli", "train", "--images", str(first)]
            command += ["--init", "bundled", "--data-dir", str(args.data_dir), "--quiet"]
            command += ["--out-dir", str(out), "--seed", str(seed), "--device", "cpu"]
            command += ["--epochs", str(args.epochs)] if args.epochs else []
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - started
            after = scores(out / "best.pt", second, mnist)
            results.append((*after, seconds))
            print(f"| fine-tuned, seed {seed} | {seconds:.0f} | {after[0]:.1%} | {after[1]:.2%} |")
    print()
    for column, (name, goal) in enumerate(GOALS.items()):
        values = [result[column] for result in results]
        met = sum(value <= goal if name == "seconds" else value >= goal for value in values)
        print(
            f"{name}: goal {'at most' if name == 'seconds' else 'at least'} {goal:g}, met by "
            f"{met} of {len(values)} seeds"
        )


if __name__ == "__main__":
    main()
