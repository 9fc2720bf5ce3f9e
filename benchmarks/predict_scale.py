"""Peak memory and throughput of `mnist predict` over a folder of 1,000 and 10,000 images.

Each run is a whole `mnist predict` process; its peak resident memory is read from the kernel
(getrusage of the finished child). Memory that does not grow from 1,000 to 10,000 images
shows that predictions stream in batches.

    python benchmarks/predict_scale.py --data-dir datafiles
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import peak_and_seconds
from PIL import Image

from mnist_cli.data import load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("datafiles"))
    parser.add_argument("--checkpoint", type=Path, default=Path("params/best.pt"))
    parser.add_argument("--onnx", type=Path, default=Path("exported/model.onnx"))
    args = parser.parse_args()
    test = load_split(args.data_dir, "test")
    with tempfile.TemporaryDirectory() as scratch:
        small, large = Path(scratch, "1k"), Path(scratch, "10k")
        for folder, count in ((small, 1000), (large, 10_000)):
            folder.mkdir()
            for i in range(count):  # dark ink on white, 56x56: a small scan
                image = Image.fromarray(255 - test.images[i]).resize((56, 56), Image.BILINEAR)
                image.save(folder / f"{i:05d}.png")
        print("| backend | output | images | peak RSS (MiB) | wall s | images/s |")
        print("|---|---|---|---|---|---|")
        for backend, model in (("onnxruntime", args.onnx), ("torch", args.checkpoint)):
            for folder, count in ((small, 1000), (large, 10_000)):
                for output in (["--json"], []):
                    command = [
                        sys.executable,
                        "-m",
                        "mnist_cli",
                        "predict",
                        str(folder),
                        "--backend",
                        backend,
                        "--model",
                        str(model),
                        *output,
                    ]
                    if backend == "torch":
                        command += ["--device", "cpu"]
                    peak, seconds = peak_and_seconds(command)
                    label = "json" if output else "table"
                    print(
                        f"| {backend} | {label} | {count:,} | {peak:.0f} | {seconds:.1f} | "
                        f"{count / seconds:,.0f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
