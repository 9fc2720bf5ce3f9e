"""Images per second of `mnist train` under torchrun with 1, 2, ... processes on this machine.

Each run is `torchrun --standalone --nproc-per-node N -m mnist_cli train` for a few epochs;
the figure is the images-per-second column of its history.csv (training only), the mean of
the epochs after the first. The global batch stays the recipe's, so N processes each compute
1/N of every step and add an all-reduce of the gradients.

    python benchmarks/distributed_scaling.py --data-dir datafiles --processes 1 2
    python benchmarks/distributed_scaling.py --device cuda --processes 1 2 4 8   # a multi-GPU box
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(processes: int, args: argparse.Namespace) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(processes), "-m", "mnist_cli", "train",
            "--data-dir", str(args.data_dir), "--out-dir", out, "--device", args.device,
            "--epochs", str(args.epochs), "--quiet",
        ]  # fmt: skip
        threads = max(1, (os.cpu_count() or 1) // processes)  # the cores split between them
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        started = time.perf_counter()
        subprocess.run(command, check=True, env=env)
        wall = time.perf_counter() - started
        with open(Path(out) / "history.csv", newline="") as handle:
            rates = [float(row["images_per_second"]) for row in csv.DictReader(handle)]
    later = rates[1:] or rates
    return sum(later) / len(later), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("datafiles"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores; device {args.device}; {args.epochs} epochs per run")
    print("\n| processes | images/s (training) | ratio to 1 process | wall s |")
    print("|---|---|---|---|")
    base = None
    for processes in args.processes:
        rate, wall = run(processes, args)
        base = base or rate
        print(f"| {processes} | {rate:,.0f} | {rate / base:.2f} | {wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
