"""Accuracy on digits MNIST lacks, per kind and per style: benchmarks/handwriting/ (see its README).

Each image goes through the same reading as `mnist predict` (preprocessing.load_digit), so the
figures are what a user gets. Give several models to compare them side by side, and
--data-dir to add their MNIST test accuracy (which must not drop).

    python benchmarks/handwriting.py --model before.pt --model mnist_cli/pretrained/cnn.pt \\
        --data-dir datafiles
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from mnist_cli.infer.backends import open_model
from mnist_cli.infer.preprocessing import load_digit

SET = Path(__file__).resolve().parent / "handwriting"


def read_set(folder: Path) -> tuple[list[dict], np.ndarray]:
    with open(folder / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    digits = np.stack([load_digit(folder / row["file"]) for row in rows])[:, None]
    return rows, digits


def _families(label: int, style: str) -> list[str]:
    """The style rows a drawn digit counts in: its digit's style, and its pen."""
    parts = style.split("-")
    pen = next((p for p in parts if p in ("thin", "thick")), "normal")
    shape = "-".join(p for p in parts if p not in ("thin", "thick")) or "plain"
    return [f"style: {label} {shape}", f"pen: {pen}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", help="a .pt or .onnx file")
    parser.add_argument("--data-dir", type=Path, help="also score MNIST's test set from here")
    parser.add_argument("--set", type=Path, default=SET)
    args = parser.parse_args()
    models = args.model or [None]  # None: the bundled model
    rows, digits = read_set(args.set)
    labels = np.array([int(row["label"]) for row in rows])
    groups: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        groups[row["kind"]].append(index)
        if row["kind"] in ("drawings", "photos"):  # styles: drawn and photographed together
            for family in _families(int(row["label"]), row["style"]):
                groups[f"  {family}"].append(index)
    groups["all"] = list(range(len(rows)))
    correct = []
    for path in models:
        backend = open_model(path, device="cpu")
        predicted = backend.probabilities(digits.astype(np.float32)).argmax(1)
        correct.append(predicted == labels)
    names = [str(path) if path else "bundled" for path in models]
    print("| kind / digit and style | images | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    order = ["all"] + sorted(k for k in groups if k != "all" and not k.startswith(" "))
    for kind in order:
        print(
            f"| **{kind}** | {len(groups[kind])} | "
            + " | ".join(f"{c[groups[kind]].mean():.1%}" for c in correct)
            + " |"
        )
    for key in sorted(k for k in groups if k.startswith(" ")):
        print(
            f"| {key.strip()} | {len(groups[key])} | "
            + " | ".join(f"{c[groups[key]].mean():.0%}" for c in correct)
            + " |"
        )
    if args.data_dir:
        from mnist_cli.infer.evaluation import evaluate_model

        scores = [
            evaluate_model(p, data_dir=args.data_dir, device="cpu")[0].accuracy for p in models
        ]
        print("| MNIST test (10,000) | 10000 | " + " | ".join(f"{a:.2%}" for a in scores) + " |")


if __name__ == "__main__":
    main()
