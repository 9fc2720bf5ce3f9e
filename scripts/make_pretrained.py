"""Reproduce the bundled model: train the default cnn on MNIST, export it, copy both in.

python scripts/make_pretrained.py --data-dir datafiles [--epochs 30] [--device cuda --recipe cpu]
python scripts/make_pretrained.py --data-dir datafiles --from-checkpoint runs/seed-4/best.pt

The bundled model (benchmarks/RESULTS.md, "The bundled model") came from one GPU:
python scripts/make_pretrained.py --data-dir datafiles --device cuda --recipe cpu --epochs 100 \
    --seeds 0 1 2 3 4 5 6 --jobs 7 --keep runs
A GPU does not repeat its weights to the bit, so a rerun gives a model close to it, not it.

Writes mnist_cli/pretrained/cnn.pt (best.pt of `mnist train` with the default recipe, without
optimiser state) and mnist_cli/pretrained/cnn.onnx (its checked `mnist export`). With several
`--seeds` each seed trains in its own process (`--jobs` at once: a GPU runs several small
trainings side by side) and the run with the best validation accuracy is kept: the test set
picks nothing. `--keep DIR` keeps every run's folder; `--from-checkpoint` installs a best.pt
trained elsewhere (on a GPU machine, say) without training.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mnist_cli.data import load_split
from mnist_cli.errors import MnistError
from mnist_cli.infer.evaluation import evaluate_model
from mnist_cli.options import BUNDLED_MODELS, BackendName
from mnist_cli.train.checkpoints import load_checkpoint
from mnist_cli.train.export import export_onnx
from mnist_cli.train.recipes import default_config, recipe_kind
from mnist_cli.train.training import train


def train_seed(spec: dict) -> dict:
    """Train one seed (in this process) into spec["out"]; its best validation accuracy."""
    import torch

    torch.set_num_threads(spec["threads"])
    config = default_config("cnn", spec["recipe"], epochs=spec["epochs"], seed=spec["seed"])
    run = train(config, data_dir=spec["data_dir"], out_dir=spec["out"], device=spec["device"])
    return {"seed": spec["seed"], "best": str(run.best_path), "val": run.best_val_accuracy}


def _launch(spec: dict) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(spec["threads"])},
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        message = re.sub(r"^[\w.]+(Error|Exception|Missing): ", "", last)  # the exception's words
        print(f"  seed {spec['seed']}: failed: {message}", flush=True)
        return {"seed": spec["seed"], "error": message}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  seed {result['seed']}: best validation {result['val']:.2%}", flush=True)
    return result


def best_of_seeds(args: argparse.Namespace, runs: Path) -> Path:
    """Train every seed (one process each) and return the best.pt with the best validation."""
    threads = 1 if args.jobs > 1 else (os.cpu_count() or 1)
    specs = [
        {
            "seed": seed,
            "epochs": args.epochs or default_config("cnn", args.recipe).epochs,
            "recipe": args.recipe,
            "device": args.device,
            "data_dir": str(args.data_dir),
            "out": str(runs / f"seed-{seed}"),
            "threads": threads,
        }
        for seed in args.seeds
    ]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = [r for r in pool.map(_launch, specs) if "error" not in r]
    if not results:
        sys.exit("every seed failed")
    chosen = max(results, key=lambda r: (r["val"], -r["seed"]))  # a tie: the lower seed
    print(f"kept seed {chosen['seed']} ({chosen['val']:.2%} validation, best of {len(results)})")
    return Path(chosen["best"])


def check_bundleable(checkpoint: Path) -> None:
    """Refuse what `mnist` should not ship: another network, or a last.pt (optimiser state,
    weights not averaged, no calibration)."""
    loaded = load_checkpoint(checkpoint)
    if loaded.architecture != "cnn":
        raise MnistError(f"{checkpoint}: a {loaded.architecture} model; the bundled one is a cnn")
    if loaded.resumable:
        raise MnistError(
            f"{checkpoint}: a checkpoint to resume from, with optimiser state and no calibration",
            hint="install the run's best.pt",
        )


def install(checkpoint: Path, data_dir: Path) -> None:
    """Export `checkpoint` to checked ONNX and copy both over the bundled models; nothing is
    replaced unless the checkpoint and MNIST's test set (scored after) are both in order."""
    check_bundleable(checkpoint)
    load_split(data_dir, "test")
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = Path(scratch) / "cnn.onnx"
        export_onnx(checkpoint, onnx_path, data_dir=data_dir)
        target = BUNDLED_MODELS[BackendName.torch]
        target.parent.mkdir(exist_ok=True)
        if not (target.exists() and target.samefile(checkpoint)):
            shutil.copyfile(checkpoint, target)
        shutil.copyfile(onnx_path, BUNDLED_MODELS[BackendName.onnxruntime])
    for path in BUNDLED_MODELS.values():
        report, _ = evaluate_model(path, data_dir=data_dir, device="cpu")
        print(f"{path}: {path.stat().st_size / 1024:.0f} KiB, test accuracy {report.accuracy:.2%}")


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
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="train each; keep the best validation (default: 0)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once")
    parser.add_argument("--keep", type=Path, help="keep every seed's run folder here")
    parser.add_argument(
        "--no-install", action="store_true", help="with --keep: train and choose, copy nothing"
    )
    parser.add_argument(
        "--from-checkpoint", type=Path, help="install this best.pt instead of training"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(train_seed(json.loads(args.worker))))
        return
    if args.jobs < 1 or (args.epochs is not None and args.epochs < 1):
        parser.error("--jobs and --epochs take a whole number from 1")
    if args.no_install and not args.keep:
        parser.error("--no-install keeps the runs only with --keep DIR")
    if args.from_checkpoint and (args.keep or args.no_install or args.seeds or args.epochs):
        parser.error(
            "--from-checkpoint trains nothing: leave out --keep, --no-install, --seeds, --epochs"
        )
    args.seeds = args.seeds or [0]
    if len(set(args.seeds)) < len(args.seeds):
        parser.error("--seeds takes each seed once")
    args.recipe = args.recipe or recipe_kind(args.device)
    for seed in args.seeds:  # the recipe's own checks, before any training
        try:
            default_config("cnn", args.recipe, epochs=args.epochs, seed=seed)
        except ValueError as error:
            parser.error(str(error))
    if args.keep:
        taken = [seed for seed in args.seeds if (args.keep / f"seed-{seed}").exists()]
        if taken:
            parser.error(f"{args.keep}/seed-{taken[0]} already holds a run: choose another --keep")
    try:
        make(args)
    except MnistError as error:  # a bad checkpoint, --data-dir or --keep: one line, no traceback
        sys.exit(f"Error: {error}" + (f"\nHint: {error.hint}" if error.hint else ""))


def make(args: argparse.Namespace) -> None:
    """Train (or take --from-checkpoint) and install, as the options say."""
    if args.from_checkpoint:
        install(args.from_checkpoint, args.data_dir)
        return
    load_split(args.data_dir, "train")  # one error here, not one per seed
    if args.keep:
        try:
            args.keep.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise MnistError(f"--keep {args.keep}: {error.strerror or error}") from None
        best = best_of_seeds(args, args.keep)
        if not args.no_install:
            install(best, args.data_dir)
        return
    with tempfile.TemporaryDirectory() as scratch:
        install(best_of_seeds(args, Path(scratch)), args.data_dir)


if __name__ == "__main__":
    main()
