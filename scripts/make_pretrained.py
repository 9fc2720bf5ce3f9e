"""Reproduce the bundled model: train the default cnn on MNIST, export it, copy both in.

python scripts/make_pretrained.py --data-dir datafiles [--epochs 30] [--device cuda --recipe cpu]

Writes mnist_cli/pretrained/cnn.pt (best.pt of `mnist train` with the default recipe, without
optimiser state) and mnist_cli/pretrained/cnn.onnx (its checked `mnist export`).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from mnist_cli.infer.backends import BUNDLED_MODELS, BackendName
from mnist_cli.infer.evaluation import evaluate_model
from mnist_cli.train.export import export_onnx
from mnist_cli.train.recipes import default_config
from mnist_cli.train.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("datafiles"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--recipe",
        choices=["cpu", "cuda"],
        help="the recipe to train with (default: the device's); the CPU recipe runs on a GPU too",
    )
    parser.add_argument("--epochs", type=int, help="passes over the data (default: the recipe's)")
    args = parser.parse_args()
    config = default_config("cnn", args.recipe or args.device)
    if args.epochs:
        config = replace(config, epochs=args.epochs)
    with tempfile.TemporaryDirectory() as scratch:
        run = train(
            config,
            data_dir=args.data_dir,
            out_dir=scratch,
            device=args.device,
        )
        onnx_path = Path(scratch) / "cnn.onnx"
        export_onnx(run.best_path, onnx_path, data_dir=args.data_dir)
        target = BUNDLED_MODELS[BackendName.torch]
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(run.best_path, target)
        shutil.copyfile(onnx_path, BUNDLED_MODELS[BackendName.onnxruntime])
    for path in BUNDLED_MODELS.values():
        report, _ = evaluate_model(path, data_dir=args.data_dir, device="cpu")
        print(f"{path}: {path.stat().st_size / 1024:.0f} KiB, test accuracy {report.accuracy:.2%}")


if __name__ == "__main__":
    main()
