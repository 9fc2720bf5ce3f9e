"""Peak memory and throughput of `mnist predict` over a folder of 1,000 and 10,000 images.

Each run is a whole `mnist predict` process; its peak resident memory is read from the kernel
(getrusage of the finished child). Memory that does not grow from 1,000 to 10,000 images
shows that predictions stream in batches.

    python benchmarks/predict_scale.py --data-dir datafiles
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from mnist_cli.data import load_split

_MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak_and_seconds(command: list[str]) -> tuple[float, float]:
    """Peak RSS in MiB of `command` (run in a fresh measuring parent) and its wall time."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True, check=True
    )
    seconds = time.perf_counter() - started
    code, kib = done.stdout.split()
    if code != "0":
        raise SystemExit(f"{' '.join(command)} exited {code}: {done.stderr}")
    return int(kib) / 1024, seconds


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
