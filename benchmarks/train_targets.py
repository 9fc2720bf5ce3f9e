"""Measure the training targets: time to 99.0% test accuracy, final accuracy of each recipe.

Runs the default recipe of each model through the same core `train()` that `mnist train` uses,
and after every epoch scores `last.pt` on the 10,000 test images. That scoring is outside the
timed part: "seconds" is training plus validation time only. The test set picks nothing here.

    python benchmarks/train_targets.py --data-dir datafiles         # data already downloaded
    python benchmarks/train_targets.py --from ~/Downloads/mnist      # import it first
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch

from mnist_cli.download import import_mnist
from mnist_cli.infer.evaluation import evaluate_model
from mnist_cli.train.checkpoints import EpochRecord
from mnist_cli.train.recipes import default_config
from mnist_cli.train.training import TrainCallback, train

TARGET_SECONDS, TARGET_EARLY = 30.0, 0.990
TARGET_FINAL = {"cnn": 0.995, "fc": 0.980}


class TestEveryEpoch(TrainCallback):
    """Scores last.pt on the test set after each epoch and keeps a table of it."""

    def __init__(self, out_dir: Path, data_dir: Path, device: str):
        self.out_dir, self.data_dir, self.device = out_dir, data_dir, device
        self.rows: list[tuple[EpochRecord, float, float]] = []
        self.elapsed = 0.0

    def on_epoch(self, record: EpochRecord, *, best: bool) -> None:
        self.elapsed += record.seconds
        report, _ = evaluate_model(
            self.out_dir / "last.pt", data_dir=self.data_dir, device=self.device
        )
        self.rows.append((record, self.elapsed, report.accuracy))
        print(
            f"  epoch {record.epoch:>2}  {record.seconds:5.1f}s  total {self.elapsed:6.1f}s  "
            f"{record.images_per_second:7,.0f} img/s  val {record.val_accuracy:.2%}  "
            f"test {report.accuracy:.2%}",
            flush=True,
        )


def run(model: str, data_dir: Path, device: str, epochs: int | None, augment: bool | None) -> dict:
    with tempfile.TemporaryDirectory() as out:
        out_dir = Path(out)
        config = default_config(model, device, epochs=epochs, augment=augment)
        print(f"{model}: {config}", flush=True)
        probe = TestEveryEpoch(out_dir, data_dir, device)
        train(config, data_dir=data_dir, out_dir=out_dir, device=device, callback=probe)
        best, _ = evaluate_model(out_dir / "best.pt", data_dir=data_dir, device=device)
    reached = next(((e, t) for r, t, a in probe.rows if a >= TARGET_EARLY for e in [r.epoch]), None)
    per_epoch = sum(r.seconds for r, _, _ in probe.rows) / len(probe.rows)
    return {
        "model": model,
        "epochs": config.epochs,
        "seconds": probe.elapsed,
        "per_epoch": per_epoch,
        "reached": reached,
        "best_test": best.accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("datafiles"))
    parser.add_argument("--from", dest="source", type=Path, help="import MNIST from this folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="cnn,fc")
    parser.add_argument("--epochs", type=int, help="override every recipe's epochs")
    parser.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        default=None,
        help="turn augmentation off, to measure what it is worth",
    )
    args = parser.parse_args()
    if args.source:
        import_mnist(args.data_dir, args.source)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor()}")
    results = [
        run(m, args.data_dir, args.device, args.epochs, args.augment)
        for m in args.models.split(",")
    ]

    print("\n| model | epochs | s/epoch | total s | first >= 99.0% test | best.pt test acc |")
    print("|---|---|---|---|---|---|")
    for r in results:
        reached = f"epoch {r['reached'][0]} ({r['reached'][1]:.1f} s)" if r["reached"] else "no"
        print(
            f"| {r['model']} | {r['epochs']} | {r['per_epoch']:.1f} | {r['seconds']:.1f} | "
            f"{reached} | {r['best_test']:.2%} |"
        )
    for r in results:
        target = TARGET_FINAL[r["model"]]
        verdict = "met" if r["best_test"] >= target else "MISSED"
        print(
            f"{r['model']}: best.pt test accuracy {r['best_test']:.2%} "
            f"(target {target:.1%}: {verdict})"
        )
        if r["model"] == "cnn":
            ok = r["reached"] is not None and r["reached"][1] <= TARGET_SECONDS
            print(
                f"cnn: 99.0% within {TARGET_SECONDS:.0f} s of training: {'met' if ok else 'MISSED'}"
            )


if __name__ == "__main__":
    main()
