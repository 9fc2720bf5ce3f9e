"""Start-up cost of `mnist predict` through onnxruntime and of `mnist --help`, against a floor.

The floor is a bare Python process that imports only what that path needs: Typer, Rich,
Pillow and onnxruntime. Medians of whole-process runs, all measured in this one run. The
runs may write bytecode (PYTHONDONTWRITEBYTECODE is dropped for them), as an installed package
has it: without it mnist_cli's modules would be compiled anew on every start, and the floor's
libraries would not.

python benchmarks/startup.py [--runs 9] [--model mnist_cli/pretrained/cnn.onnx]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mnist_cli.infer.backends import BUNDLED_MODELS, BackendName

FLOOR = "import typer, rich.console, PIL.Image, onnxruntime"


_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def median_seconds(commands: dict[str, list[str]], runs: int) -> dict[str, float]:
    """Median wall time of each command; rounds interleave them so that drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(runs + 1):
        for name, command in commands.items():
            started = time.perf_counter()
            subprocess.run(command, capture_output=True, check=False, env=_ENV)
            if round_:  # the first round only warms the file cache
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--model", type=Path, default=BUNDLED_MODELS[BackendName.onnxruntime])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        image = Path(scratch, "one.png")
        digit = np.zeros((64, 64), np.uint8)
        digit[12:52, 28:36] = 255
        Image.fromarray(digit).save(image)
        mnist = [sys.executable, "-m", "mnist_cli"]
        rows = {
            "floor (typer, rich, PIL, onnxruntime)": [sys.executable, "-c", FLOOR],
            "bare python": [sys.executable, "-c", "pass"],
            "mnist --help": [*mnist, "--help"],
            "mnist predict one.png --backend onnxruntime": [
                *mnist,
                "predict",
                str(image),
                "--backend",
                "onnxruntime",
                "--model",
                str(args.model),
            ],
        }
        seconds = median_seconds(rows, args.runs)
    floor = seconds["floor (typer, rich, PIL, onnxruntime)"]
    print(f"| command (median of {args.runs}) | seconds | ratio to floor |")
    print("|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.3f} | {value / floor:.2f} |")
    ratio = seconds["mnist predict one.png --backend onnxruntime"] / floor
    print(f"predict start-up: {ratio:.2f}x the floor (target: at most 1.25x)")


if __name__ == "__main__":
    main()
