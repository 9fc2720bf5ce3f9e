"""Float against int8 ONNX: file size, onnxruntime images per second, test accuracy.

python benchmarks/int8.py --checkpoint params/best.pt --data-dir datafiles
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from mnist_cli.backends import open_model
from mnist_cli.data import load_split
from mnist_cli.evaluation import evaluate_model
from mnist_cli.export import export_onnx


def images_per_second(path: Path, images: np.ndarray, repeats: int = 3) -> float:
    backend = open_model(path, device="cpu")
    backend.probabilities(images[:1000])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(0, len(images), 1000):
            backend.probabilities(images[i : i + 1000])
        best = min(best, time.perf_counter() - started)
    return len(images) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("params/best.pt"))
    parser.add_argument("--data-dir", type=Path, default=Path("datafiles"))
    args = parser.parse_args()
    test = load_split(args.data_dir, "test")
    images = test.images[:, None].astype(np.float32) / 255
    with tempfile.TemporaryDirectory() as out:
        rows = []
        for name, quantize in (("float32", None), ("int8", "int8")):
            path = Path(out, f"{name}.onnx")
            export_onnx(args.checkpoint, path, data_dir=args.data_dir, quantize=quantize)
            report, _ = evaluate_model(path, data_dir=args.data_dir, device="cpu")
            rows.append(
                (name, path.stat().st_size, images_per_second(path, images), report.accuracy)
            )
    print("| model | file KiB | onnxruntime images/s (batch 1000, CPU) | test accuracy |")
    print("|---|---|---|---|")
    for name, size, rate, accuracy in rows:
        print(f"| {name} | {size / 1024:.0f} | {rate:,.0f} | {accuracy:.2%} |")
    loss = (rows[0][3] - rows[1][3]) * 100
    print(
        f"int8: {rows[1][1] / rows[0][1]:.2f}x the size, {rows[1][2] / rows[0][2]:.2f}x the "
        f"speed, accuracy loss {loss:+.2f} points (target: under 0.1)"
    )


if __name__ == "__main__":
    main()
