"""Float against int8 ONNX: file size, onnxruntime images per second, test accuracy.

Trains the default cnn for 1, 2, 15 and 30 epochs (or takes --checkpoint files) and reports,
for each, the int8 model's accuracy loss against its float export on the 10,000 test images.

python benchmarks/int8.py --data-dir datafiles [--epochs 1 2 15 30] [--checkpoint F ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from mnist_cli.data import load_split
from mnist_cli.infer.backends import open_model
from mnist_cli.infer.evaluation import evaluate_model
from mnist_cli.train.export import export_onnx
from mnist_cli.train.recipes import default_config
from mnist_cli.train.training import train


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


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni")
    return ", ".join(f for f in wanted if f in flags) or "none of avx2/avx512/vnni"


def compare(checkpoint: Path, data_dir: Path, images: np.ndarray, out: Path) -> dict:
    """Export float and int8, and measure both on the 10,000 test images."""
    row = {}
    for name, quantize in (("float32", None), ("int8", "int8")):
        path = out / f"{checkpoint.parent.name}-{name}.onnx"
        result = export_onnx(checkpoint, path, data_dir=data_dir, quantize=quantize)
        report, _ = evaluate_model(path, data_dir=data_dir, device="cpu")
        row[name] = {
            "kib": path.stat().st_size / 1024,
            "rate": images_per_second(path, images),
            "accuracy": report.accuracy,
            "agreement": result.agreement,
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, nargs="*", default=[])
    parser.add_argument(
        "--epochs",
        type=int,
        nargs="*",
        default=[1, 2, 15, 30],
        help="Train the default cnn for each of these epoch counts and compare each.",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("datafiles"))
    args = parser.parse_args()
    test = load_split(args.data_dir, "test")
    images = test.images[:, None].astype(np.float32) / 255
    print(f"CPU flags: {cpu_flags()}")
    print(
        "| model | float KiB | int8 KiB | float img/s | int8 img/s | float acc | int8 acc "
        "| loss (points) | agreement on check |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        models = [(str(c), c) for c in args.checkpoint]
        for epochs in args.epochs:
            out = Path(scratch, f"e{epochs}")
            config = default_config("cnn", "cpu", epochs=epochs)
            train(config, data_dir=args.data_dir, out_dir=out, device="cpu")
            models.append((f"cnn, {epochs} epochs", out / "best.pt"))
        worst = 0.0
        for label, checkpoint in models:
            row = compare(checkpoint, args.data_dir, images, Path(scratch))
            f, q = row["float32"], row["int8"]
            loss = (f["accuracy"] - q["accuracy"]) * 100
            worst = max(worst, loss)
            print(
                f"| {label} | {f['kib']:.0f} | {q['kib']:.0f} | {f['rate']:,.0f} | "
                f"{q['rate']:,.0f} | {f['accuracy']:.2%} | {q['accuracy']:.2%} | {loss:+.2f} | "
                f"{q['agreement']:.2%} |",
                flush=True,
            )
    verdict = "met" if worst < 0.1 else "MISSED"
    print(f"largest int8 loss: {worst:+.2f} points (target: under 0.1): {verdict}")


if __name__ == "__main__":
    main()
