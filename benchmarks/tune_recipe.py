"""Choose recipe values on the validation split only: candidates side by side, several seeds.

Each candidate is the CPU recipe with a few values changed, trained through the core `train()`
in its own process (several at once on a GPU, whose small steps leave it mostly idle). The
table shows validation accuracy only: the test set picks nothing, hyperparameters included.

    python benchmarks/tune_recipe.py --device cuda --jobs 12 --from ~/Downloads/mnist
    python benchmarks/tune_recipe.py --device cpu --jobs 1 --only one-epoch
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_AT_28, _LAST = [True, False, False], [False, False, False]  # where a stage pools before BN

# name: (group, epochs, changes to the CPU recipe, variant of the network or of the schedule)
# A variant is tried here before it could become a recipe value: {"channels": [...]},
# {"convs": [...]} and {"pool_first": [...]} replace the cnn's widths, convolutions and pooling
# order per stage, {"plain_tail": K} trains the last K epochs without augmentation, {"warp": {...}}
# replaces the affine warp's ranges (max_degrees, max_scale, max_shift_pixels).
CANDIDATES: dict[str, tuple[str, int, dict, dict]] = {
    "cpu 1 ep, recipe": ("one-epoch", 1, {}, {}),
    "cpu 1 ep, augmented from the start": ("one-epoch", 1, {"plain_epochs": 0}, {}),
    "cpu 1 ep, lr 1.2e-2": ("one-epoch", 1, {"lr": 1.2e-2}, {}),
    "cpu 1 ep, batch 64, lr 6e-3": ("one-epoch", 1, {"batch_size": 64, "lr": 6e-3}, {}),
    "cpu 1 ep, pool first at 28x28": ("one-epoch", 1, {}, {"pool_first": _AT_28}),
    "cpu 1 ep, pooled after BN-ReLU": ("one-epoch", 1, {}, {"pool_first": _LAST}),
    "cpu 30 ep, recipe (16-32-64, convs 1-2-2, pool first)": ("thirty", 30, {}, {}),
    "cpu 30 ep, one conv per stage": ("thirty", 30, {}, {"convs": [1, 1, 1]}),
    "cpu 30 ep, warps only": ("thirty", 30, {"thickness": 0.0, "styles": 0.0}, {}),
    "cpu 30 ep, lr 3e-3": ("thirty", 30, {"lr": 3e-3}, {}),
    "cpu 30 ep, lr 1.2e-2": ("thirty", 30, {"lr": 1.2e-2}, {}),
    "cpu 30 ep, 20-40-80": ("thirty", 30, {}, {"channels": [20, 40, 80]}),
    "cpu 30 ep, 16-32-96": ("thirty", 30, {}, {"channels": [16, 32, 96]}),
    "cpu 30 ep, 24-48-96": ("thirty", 30, {}, {"channels": [24, 48, 96]}),
    "cpu 30 ep, 32-64-128": ("thirty", 30, {}, {"channels": [32, 64, 128]}),
    "cpu 30 ep, weight decay 0.01": ("thirty", 30, {"weight_decay": 0.01}, {}),
    "cpu 30 ep, weight decay 0.05": ("thirty", 30, {"weight_decay": 0.05}, {}),
    "cpu 30 ep, two convs in the last stage": ("thirty", 30, {}, {"convs": [1, 1, 2]}),
    "cpu 30 ep, two convs in every stage": ("thirty", 30, {}, {"convs": [2, 2, 2]}),
    "cpu 30 ep, last 4 epochs plain": ("thirty", 30, {}, {"plain_tail": 4}),
    "cpu 30 ep, stronger warps (15 deg, 15%, 3 px)": (
        "thirty",
        30,
        {},
        {"warp": {"max_degrees": 15.0, "max_scale": 0.15, "max_shift_pixels": 3.0}},
    ),
    "cpu 30 ep, weaker warps (5 deg, 5%, 1 px)": (
        "thirty",
        30,
        {},
        {"warp": {"max_degrees": 5.0, "max_scale": 0.05, "max_shift_pixels": 1.0}},
    ),
    "cpu 30 ep, styles and thickness 0.15": ("thirty", 30, {"styles": 0.15, "thickness": 0.15}, {}),
    "cpu 30 ep, pool first at 28x28": ("thirty", 30, {}, {"pool_first": _AT_28}),
    "cpu 30 ep, pooled after BN-ReLU": ("thirty", 30, {}, {"pool_first": _LAST}),
    "cpu 30 ep, weight average 0.9995": ("thirty", 30, {"weight_average": 0.9995}, {}),
    "cpu 30 ep, label smoothing 0.05": ("thirty", 30, {"label_smoothing": 0.05}, {}),
    "cpu 30 ep, batch 64, lr 6e-3": ("thirty", 30, {"batch_size": 64, "lr": 6e-3}, {}),
    "cuda 15 ep, lr 4e-3": ("cuda", 15, {"batch_size": 512, "lr": 4e-3}, {}),
    "cuda 15 ep, lr 6e-3": ("cuda", 15, {"batch_size": 512, "lr": 6e-3}, {}),
    "cuda 15 ep, lr 8e-3": ("cuda", 15, {"batch_size": 512, "lr": 8e-3}, {}),
    "cuda 30 ep, batch 512, lr 6e-3": ("cuda", 30, {"batch_size": 512, "lr": 6e-3}, {}),
    "cuda 30 ep, batch 1024, lr 8e-3": ("cuda", 30, {"batch_size": 1024, "lr": 8e-3}, {}),
    "cuda 30 ep, batch 1024, lr 1.2e-2": ("cuda", 30, {"batch_size": 1024, "lr": 1.2e-2}, {}),
    "cuda 30 ep, batch 2048, lr 1.2e-2": ("cuda", 30, {"batch_size": 2048, "lr": 1.2e-2}, {}),
    "cuda 30 ep, batch 2048, lr 1.6e-2": ("cuda", 30, {"batch_size": 2048, "lr": 1.6e-2}, {}),
    "cuda 30 ep, batch 1024, lr 8e-3, pool first at 28x28": (
        "cuda",
        30,
        {"batch_size": 1024, "lr": 8e-3},
        {"pool_first": _AT_28},
    ),
    "cuda 30 ep, batch 1024, lr 8e-3, pooled after BN-ReLU": (
        "cuda",
        30,
        {"batch_size": 1024, "lr": 8e-3},
        {"pool_first": _LAST},
    ),
}


def work(spec: dict) -> dict:
    """Train one candidate with one seed (in this process) and return its validation scores."""
    import torch

    from mnist_cli.train import training
    from mnist_cli.train.recipes import default_config
    from mnist_cli.train.training import TrainCallback, train

    torch.set_num_threads(1)
    variant = spec["variant"]
    _apply_network_variant(variant)
    if "warp" in variant:  # looked up by `augment` at each call, so the patch reaches it
        from functools import partial

        from mnist_cli.train import augmentation

        augmentation.random_affine = partial(augmentation.random_affine, **variant["warp"])
    plain_from = spec["epochs"] - variant.get("plain_tail", 0)  # first epoch (0-based) unaugmented
    if plain_from < spec["epochs"]:
        loss = training.batch_loss
        training.batch_loss = lambda *args, augmenting, **kwargs: loss(
            *args, augmenting=augmenting and len(record.val) < plain_from, **kwargs
        )

    class Record(TrainCallback):
        def __init__(self) -> None:
            self.val: list[float] = []
            self.seconds = 0.0

        def on_epoch(self, record, *, best):
            self.val.append(record.val_accuracy)
            self.seconds += record.seconds

    config = default_config(
        "cnn", "cpu", epochs=spec["epochs"], seed=spec["seed"], **spec["changes"]
    )
    record = Record()
    with tempfile.TemporaryDirectory() as out:
        train(
            config, data_dir=spec["data_dir"], out_dir=out, device=spec["device"], callback=record
        )
    return {**spec, "best": max(record.val), "last": record.val[-1], "seconds": record.seconds}


def _apply_network_variant(variant: dict) -> None:
    """Make every cnn this process builds the candidate's: its keys that are cnn arguments."""
    from mnist_cli.train import models, training

    changes = {
        key: value for key, value in variant.items() if key in models.default_arguments("cnn")
    }
    if changes:
        default = models.default_arguments
        models.default_arguments = lambda arch: (
            {**default(arch), **changes} if arch == "cnn" else default(arch)
        )
        training.default_arguments = models.default_arguments


def _launch(spec: dict) -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if done.returncode != 0:
        return {**spec, "error": done.stderr.strip().splitlines()[-1:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"  {result['name']} seed {result['seed']}: best val {result['best']:.2%}, "
        f"last {result['last']:.2%}, training {result['seconds']:.2f} s "
        f"(wall {time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    return result


def _regex(text: str) -> re.Pattern:
    try:
        return re.compile(text)
    except re.error as error:
        raise argparse.ArgumentTypeError(f"not a regular expression: {error}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("datafiles"))
    parser.add_argument("--from", dest="source", type=Path, help="import MNIST from here first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--only", choices=["one-epoch", "thirty", "cuda"], help="one group of candidates"
    )
    parser.add_argument(
        "--match", type=_regex, default="", help="only candidates whose name has this regex"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(work(json.loads(args.worker))))
        return
    if args.source:
        from mnist_cli.download import import_mnist

        import_mnist(args.data_dir, args.source)
    specs = [
        {
            "name": name,
            "epochs": epochs,
            "changes": changes,
            "variant": variant,
            "seed": seed,
            "device": args.device,
            "data_dir": str(args.data_dir),
        }
        for name, (group, epochs, changes, variant) in CANDIDATES.items()
        if args.only in (None, group) and re.search(args.match, name)
        for seed in range(args.seeds)
    ]
    specs.sort(key=lambda spec: -spec["epochs"])  # the long ones first
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(_launch, specs))
    print("\n| candidate | seeds | best val accuracy per seed | mean best | mean last |")
    print("|---|---|---|---|---|")
    for name in CANDIDATES:
        rows = [r for r in results if r["name"] == name]
        if not rows:
            continue
        failed = [r["error"] for r in rows if "error" in r]
        ok = [r for r in rows if "error" not in r]
        if failed:
            print(f"| {name} | failed: {failed[0]} | | | |")
            continue
        per_seed = " ".join(f"{r['best']:.2%}" for r in ok)
        best = statistics.mean(r["best"] for r in ok)
        last = statistics.mean(r["last"] for r in ok)
        print(f"| {name} | {len(ok)} | {per_seed} | {best:.2%} | {last:.2%} |", flush=True)


if __name__ == "__main__":
    main()
