"""How well `mnist predict` reads what people write: lone digits, numbers, and what is no digit.

Every image of benchmarks/handwriting (labels.csv: lone digits; numbers.csv: numbers and
not-a-digit, see scripts/make_numbers_set.py) is read exactly as `mnist predict FILE` reads it
(segmentation, refusal), by each model given, side by side:

- lone digits by kind: read right (the text is the digit), and refused (no digit read);
- numbers by kind: the exact text read;
- not a digit by kind: refused (no digit read);
- with --data-dir: MNIST test accuracy, ECE, and the share it refuses.

    python benchmarks/reading.py --model old.onnx --model mnist_cli/pretrained/cnn.onnx \\
        [--data-dir datafiles]
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from mnist_cli.infer.backends import open_model
from mnist_cli.infer.prediction import predict_paths

SET = Path(__file__).resolve().parent / "handwriting"


def rows_of(folder: Path, name: str) -> list[dict]:
    if not (folder / name).is_file():
        return []
    with open(folder / name, newline="") as handle:
        return list(csv.DictReader(handle))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", help="a .pt or .onnx file")
    parser.add_argument("--data-dir", type=Path, help="also score MNIST's test set from here")
    parser.add_argument("--set", type=Path, default=SET, help="another folder of that layout")
    args = parser.parse_args()
    models = args.model or [None]  # None: the bundled model
    singles, others = rows_of(args.set, "labels.csv"), rows_of(args.set, "numbers.csv")
    for row in singles:
        row["text"] = row["label"]
        row["kind"] = f"digits: {row['kind']}"
    for row in others:
        row["kind"] = f"{'refused' if row['kind'] == 'not-a-digit' else 'exact'}: {row['kind']}"
        if not row["text"]:
            row["kind"] += f" ({row['style'].split('-')[0]})"
    rows = singles + others
    texts = []
    for path in models:
        model = open_model(path, device="cpu")
        files = [str(args.set / row["file"]) for row in rows]
        texts.append([result.text for result in predict_paths(model, files)])
    groups: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        groups[row["kind"]].append(index)
        if row["kind"].startswith("digits"):
            groups["digits refused: all lone digits"].append(index)
    names = [str(path) if path else "bundled" for path in models]
    print("| images | count | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for kind in sorted(groups):
        indices = groups[kind]
        cells = []
        for read in texts:
            if kind.startswith("digits refused") or kind.startswith("refused"):
                hits = sum(read[i] == "" for i in indices)
            else:
                hits = sum(read[i] == rows[i]["text"] for i in indices)
            cells.append(f"{hits / len(indices):.1%}")
        print(f"| {kind} | {len(indices)} | " + " | ".join(cells) + " |")
    if args.data_dir:
        from mnist_cli.infer.evaluation import evaluate_model

        reports = [evaluate_model(p, data_dir=args.data_dir, device="cpu")[0] for p in models]
        for label, value in (
            ("MNIST test: accuracy", lambda r: f"{r.accuracy:.2%}"),
            ("MNIST test: calibration error (ECE)", lambda r: f"{r.ece:.2%}"),
            ("MNIST test: refused", lambda r: f"{1 - r.coverage:.2%}"),
            ("MNIST test: accuracy of the answered", lambda r: f"{r.answered_accuracy:.2%}"),
        ):
            print(f"| {label} | 10,000 | " + " | ".join(map(value, reports)) + " |")


if __name__ == "__main__":
    main()
