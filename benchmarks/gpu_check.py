"""The CUDA figures: what each speed setting is worth, time to 99.0%, and the 30-epoch recipe.

Run on a machine with an NVIDIA GPU, MNIST already in --data-dir (or --from a folder):

    python benchmarks/gpu_check.py --from ~/mnist-gz

1. Speed of one epoch of the default recipe for each setting (fp32 or bf16 autocast,
   channels_last or not, torch.compile or not); the first epoch, which pays for warm-up and
   compilation, is reported apart.
2. The default recipe with the default settings: test accuracy after every epoch, the time
   to 99.0%, and the final test accuracy.
3. The 30-epoch recipe (`mnist train --device cuda --epochs 30`): time and test accuracy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from mnist_cli.download import import_mnist
from mnist_cli.evaluation import evaluate_model
from mnist_cli.training import (
    TrainCallback,
    default_acceleration,
    default_config,
    train,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark script
from train_targets import TestEveryEpoch  # noqa: E402


class EpochTimes(TrainCallback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_epoch(self, record, *, best):
        self.seconds.append(record.seconds)


def settings_table(data_dir: Path, device: torch.device, epochs: int) -> None:
    base = default_acceleration(device, "cnn")
    variants = {
        "fp32, NCHW": replace(base, bf16=False, channels_last=False),
        "fp32, channels_last": replace(base, bf16=False, channels_last=True),
        "bf16, NCHW": replace(base, bf16=True, channels_last=False),
        "bf16, channels_last": replace(base, bf16=True, channels_last=True),
        "fp32, channels_last, fused AdamW": replace(base, bf16=False, fused_optimizer=True),
        "fp32, channels_last + compile": replace(base, bf16=False, compile=True),
        "bf16, channels_last + compile": replace(base, bf16=True, compile=True),
    }
    print(f"\n| settings (default: {base}) | first epoch s | later epochs s/epoch |")
    print("|---|---|---|")
    for name, acceleration in variants.items():
        times = EpochTimes()
        with tempfile.TemporaryDirectory() as out:
            train(
                default_config("cnn", epochs=epochs),
                data_dir=data_dir,
                out_dir=out,
                device=str(device),
                callback=times,
                acceleration=acceleration,
            )
        later = sum(times.seconds[1:]) / max(1, len(times.seconds) - 1)
        print(f"| {name} | {times.seconds[0]:.2f} | {later:.2f} |", flush=True)


def recipe(data_dir: Path, device: torch.device, epochs: int | None, compile: bool) -> None:
    config = default_config("cnn", epochs=epochs)
    with tempfile.TemporaryDirectory() as out:
        probe = TestEveryEpoch(Path(out), data_dir, str(device))
        started = time.perf_counter()
        train(
            config,
            data_dir=data_dir,
            out_dir=out,
            device=str(device),
            callback=probe,
            compile=compile,
        )
        wall = time.perf_counter() - started
        best, _ = evaluate_model(Path(out) / "best.pt", data_dir=data_dir, device=str(device))
    reached = next(((r.epoch, t) for r, t, a in probe.rows if a >= 0.99), None)
    when = f"epoch {reached[0]} at {reached[1]:.1f} s of training" if reached else "not reached"
    print(
        f"\ncnn, {config.epochs} epochs, compile={compile}: training {probe.elapsed:.1f} s "
        f"({wall:.1f} s wall with per-epoch test scoring); 99.0% test: {when}; "
        f"best.pt test accuracy {best.accuracy:.2%}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("datafiles"))
    parser.add_argument("--from", dest="source", type=Path)
    parser.add_argument("--settings-epochs", type=int, default=3)
    parser.add_argument("--skip-settings", action="store_true", help="only the recipes")
    parser.add_argument("--skip-compile", action="store_true", help="no compiled 30-epoch run")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here")
    if args.source:
        import_mnist(args.data_dir, args.source)
    device = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}")
    if not args.skip_settings:
        settings_table(args.data_dir, device, args.settings_epochs)
    recipe(args.data_dir, device, None, compile=False)
    recipe(args.data_dir, device, 30, compile=False)
    if not args.skip_compile:
        recipe(args.data_dir, device, 30, compile=True)


if __name__ == "__main__":
    main()
