"""The CUDA figures: what each speed setting is worth, time to 99.0%, and the 30-epoch run.

Run on a machine with an NVIDIA GPU, MNIST already in --data-dir (or --from a folder):

    python benchmarks/gpu_check.py --from ~/mnist-gz

1. Speed of the CUDA recipe per setting (CUDA graphs, channels_last); the first epoch,
   which pays for warm-up and graph capture, is reported apart.
2. The CUDA recipe at its default epochs: test accuracy after every epoch (scored outside the
   timed part), the training seconds to 99.0%, and best.pt's test accuracy.
3. `mnist train --device cuda --epochs N` for N = 1, 2, 3 and 30, seeds 0-2 (`--seeds`):
   training seconds, wall seconds of the whole `train()` call (data loading, graph capture and
   checkpoints included), and best.pt's test accuracy; then the GPU goals: the fewest epochs
   whose median test accuracy reaches 99.0%, in how many seconds, and `--epochs 30`'s seconds.
   The process is warm by then (part 2 paid for CUDA's start-up), as in a long-lived trainer.
   `--batch-size` and `--lr` run parts 2 and 3 with another batch or peak learning rate (run
   the script twice on one machine to compare); `--goals-only` runs part 3 alone.
4. Where a step's GPU time goes (`--profile` alone, about a minute): the captured step with and
   without augmentation, each augmentation stage captured alone, and the busiest kernels.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from train_targets import TestEveryEpoch  # beside this script: on sys.path when it runs

from mnist_cli.data import BLANK_PIXEL, INK_PIXEL, load_split
from mnist_cli.download import import_mnist
from mnist_cli.infer.evaluation import evaluate_model
from mnist_cli.train import augmentation
from mnist_cli.train.acceleration import default_acceleration
from mnist_cli.train.cudagraph import GraphedStep
from mnist_cli.train.models import build_model
from mnist_cli.train.recipes import default_config, describe_recipe
from mnist_cli.train.step import batch_loss, normalize
from mnist_cli.train.training import TrainCallback, train


class EpochTimes(TrainCallback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_epoch(self, record, *, best):
        self.seconds.append(record.seconds)


def settings_table(data_dir: Path, device: torch.device, epochs: int) -> None:
    base = default_acceleration(device, "cnn")
    variants = {
        "eager, fp32, channels_last": replace(base, cuda_graphs=False),
        "CUDA graphs, fp32, channels_last (default)": base,
        "CUDA graphs, fp32, NCHW": replace(base, channels_last=False),
    }
    print(f"\n| settings (default: {base}) | first epoch s | later epochs s/epoch |")
    print("|---|---|---|")
    for name, acceleration in variants.items():
        times = EpochTimes()
        try:
            with tempfile.TemporaryDirectory() as out:
                train(
                    default_config("cnn", "cuda", epochs=epochs),
                    data_dir=data_dir,
                    out_dir=out,
                    device=str(device),
                    callback=times,
                    acceleration=acceleration,
                )
        except Exception as error:  # a report, not a crash: the other rows still count
            print(f"| {name} | failed: {type(error).__name__}: {error} | |", flush=True)
            continue
        later = sum(times.seconds[1:]) / max(1, len(times.seconds) - 1)
        print(f"| {name} | {times.seconds[0]:.2f} | {later:.3f} |", flush=True)


def recipe(
    data_dir: Path,
    device: torch.device,
    epochs: int | None,
    *,
    per_epoch: bool,
    seed: int = 0,
    changes: dict | None = None,
) -> tuple[float, float]:
    """Train the CUDA recipe once; print and return its training seconds and best.pt's test."""
    config = default_config("cnn", "cuda", epochs=epochs, seed=seed, **(changes or {}))
    with tempfile.TemporaryDirectory() as out:
        probe = TestEveryEpoch(Path(out), data_dir, str(device)) if per_epoch else EpochTimes()
        started = time.perf_counter()
        train(config, data_dir=data_dir, out_dir=out, device=str(device), callback=probe)
        wall = time.perf_counter() - started
        best, _ = evaluate_model(Path(out) / "best.pt", data_dir=data_dir, device=str(device))
    if per_epoch:
        reached = next(((r.epoch, t) for r, t, a in probe.rows if a >= 0.99), None)
        when = f"epoch {reached[0]} at {reached[1]:.2f} s of training" if reached else "never"
        print(
            f"\ncnn, CUDA recipe, {config.epochs} epochs: training {probe.elapsed:.2f} s; "
            f"99.0% test: {when}; best.pt test accuracy {best.accuracy:.2%}",
            flush=True,
        )
    else:
        print(
            f"`mnist train --device cuda --epochs {config.epochs} --seed {seed}{_flags(changes)}`: "
            f"training "
            f"{sum(probe.seconds):.2f} s, wall {wall:.2f} s (no per-epoch test scoring); "
            f"best.pt test accuracy {best.accuracy:.2%}",
            flush=True,
        )
    return (probe.elapsed if per_epoch else sum(probe.seconds)), best.accuracy


def _flags(changes: dict | None) -> str:
    """The command-line options that `changes` stands for, as `mnist train` spells them."""
    given = {key: value for key, value in (changes or {}).items() if value is not None}
    return "".join(f" --{key.replace('_', '-')} {value:g}" for key, value in given.items())


def goals(data_dir: Path, device: torch.device, seeds: int, changes: dict | None = None) -> None:
    """Short runs over several seeds, then the GPU goals: 99.0% in <= 1 s, 30 epochs in <= 5 s."""
    print()
    runs = {
        epochs: [
            recipe(data_dir, device, epochs, per_epoch=False, seed=s, changes=changes)
            for s in range(seeds)
        ]
        for epochs in (1, 2, 3, 30)
    }
    medians = {
        epochs: (statistics.median(t for t, _ in rows), statistics.median(a for _, a in rows))
        for epochs, rows in runs.items()
    }
    print(f"\nGPU goals ({torch.cuda.get_device_name(device)}, medians of {seeds} seeds):")
    first = next((e for e, (_, accuracy) in medians.items() if accuracy >= 0.99), None)
    if first is None:
        print("- 99.0% test: not reached (goal <= 1 s): MISSED")
    else:
        seconds, accuracy = medians[first]
        print(
            f"- 99.0% test: `--epochs {first}` gives {accuracy:.2%} after {seconds:.2f} s of "
            f"training (goal <= 1 s): {'met' if seconds <= 1 else 'MISSED'}"
        )
    seconds, accuracy = medians[30]
    print(
        f"- `--epochs 30`: {seconds:.2f} s of training, best.pt {accuracy:.2%} test "
        f"(goal <= 5 s): {'met' if seconds <= 5 else 'MISSED'}"
    )


def _replay_ms(graph: torch.cuda.CUDAGraph, replays: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / replays


def _captured(function) -> torch.cuda.CUDAGraph:
    """`function` captured alone (after one warm-up call on a side stream)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        function()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        function()
    return graph


def step_profile(data_dir: Path, device: torch.device, replays: int = 300) -> None:
    """GPU milliseconds of the CUDA recipe's captured step, whole and by augmentation stage."""
    config = default_config("cnn", "cuda")
    split = load_split(data_dir, "train")
    batch = config.batch_size
    images = normalize(torch.from_numpy(split.images[:batch]).to(device))
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.from_numpy(split.labels[:batch]).to(device)
    noise = torch.rand(batch, augmentation.NOISE_COLUMNS, device=device)
    blank = BLANK_PIXEL
    stages = {
        "style strokes": lambda: augmentation.add_style_strokes(
            images, labels, background=blank, ink=INK_PIXEL, share=config.styles, noise=noise[:, :3]
        ),
        "thickness": lambda: augmentation.random_thickness(
            images, background=blank, share=config.thickness, noise=noise[:, 3]
        ),
        "affine warp": lambda: augmentation.random_affine(
            images, background=blank, noise=noise[:, 4:]
        ),
    }
    print(f"\n| batch {batch}, {replays} replays | GPU ms |\n|---|---|")
    for augmenting in (False, True):
        model = build_model("cnn").to(device).to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=torch.tensor(config.lr, device=device),
            weight_decay=config.weight_decay,
            capturable=True,
        )

        def loss_of(*batch, model=model, augmenting=augmenting):  # the trainer's own loss
            return batch_loss(model, *batch, config=config, augmenting=augmenting)

        step = GraphedStep(model, optimizer, loss_of, (images, labels, noise), augments=augmenting)
        name = "whole step, augmented" if augmenting else "whole step, plain"
        print(f"| {name} | {_replay_ms(step.graph, replays):.3f} |", flush=True)
    for name, function in stages.items():
        print(f"| {name} alone | {_replay_ms(_captured(function), replays):.3f} |", flush=True)
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(10):  # eager: the same kernels as the graph's, each one named
            optimizer.zero_grad(set_to_none=True)
            loss_of(images, labels, noise).backward()
            optimizer.step()
        torch.cuda.synchronize()
    print("busiest kernels of 10 eager augmented steps:")
    print(profile.key_averages().table(sort_by="self_device_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("datafiles"))
    parser.add_argument("--from", dest="source", type=Path)
    parser.add_argument("--settings-epochs", type=int, default=3)
    parser.add_argument("--skip-settings", action="store_true", help="only the recipes")
    parser.add_argument("--profile", action="store_true", help="only where a step's time goes")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per short run")
    parser.add_argument("--batch-size", type=int, help="try another batch (the recipe's otherwise)")
    parser.add_argument("--lr", type=float, help="try another peak learning rate")
    parser.add_argument("--goals-only", action="store_true", help="only the seeds and the goals")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    changes = {"batch_size": args.batch_size, "lr": args.lr}
    try:
        default_config("cnn", "cuda", **changes)
    except ValueError as error:
        parser.error(str(error))
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here")
    if args.source:
        import_mnist(args.data_dir, args.source)
    device = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}")
    print(describe_recipe(default_config("cnn", "cuda", **changes), "cuda"))
    if args.profile:
        step_profile(args.data_dir, device)
        return
    if not (args.skip_settings or args.goals_only):
        settings_table(args.data_dir, device, args.settings_epochs)
    if not args.goals_only:
        recipe(args.data_dir, device, None, per_epoch=True, changes=changes)
    goals(args.data_dir, device, args.seeds, changes)


if __name__ == "__main__":
    main()
