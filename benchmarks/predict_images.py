"""Measure `mnist predict` on images as users supply them, and the start-up time of each backend.

The images are made from MNIST test digits (never seen in training), so the accuracy can be set
beside the model's MNIST test accuracy:
  scan     dark ink on tinted paper, any size and position, noise, JPEG or PNG, RGB
  drawing  light strokes on a transparent (RGBA) or black canvas, off-centre, PNG

    python benchmarks/predict_images.py --count 2000
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from mnist_cli.data import load_split
from mnist_cli.infer.backends import open_model
from mnist_cli.infer.prediction import predict_paths


def _place(digit: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Scale a 28x28 digit up and put it somewhere on a larger canvas (ink in [0, 1])."""
    side = int(rng.integers(60, 400))
    canvas_w, canvas_h = side + int(rng.integers(0, 600)), side + int(rng.integers(0, 600))
    scaled = Image.fromarray(digit).resize((side, side), Image.BICUBIC)
    canvas = Image.new("L", (canvas_w, canvas_h), 0)
    canvas.paste(
        scaled,
        (int(rng.integers(0, canvas_w - side + 1)), int(rng.integers(0, canvas_h - side + 1))),
    )
    return np.asarray(canvas, dtype=np.float32) / 255, side


def make_scan(digit: np.ndarray, rng: np.random.Generator, path: Path) -> Path:
    ink, side = _place(digit, rng)
    paper = rng.uniform(170, 255, size=3)  # white, cream, grey or coloured paper
    pen = rng.uniform(0, 80, size=3)  # black or dark blue ink
    rgb = paper * (1 - ink[..., None]) + pen * ink[..., None]
    rgb += rng.normal(0, rng.uniform(2, 12), size=rgb.shape)  # sensor noise
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5) * side / 100))
    if rng.random() < 0.5:
        path = path.with_suffix(".jpg")
        image.save(path, quality=int(rng.integers(60, 95)))
    else:
        path = path.with_suffix(".png")
        image.save(path)
    return path


def make_drawing(digit: np.ndarray, rng: np.random.Generator, path: Path) -> Path:
    ink, _ = _place(digit, rng)
    colour = rng.uniform(200, 255, size=3)  # white or pale pen
    if rng.random() < 0.5:  # transparent canvas: the stroke lives in the alpha channel
        rgba = np.zeros(ink.shape + (4,), dtype=np.float32)
        rgba[..., :3] = colour
        rgba[..., 3] = ink * 255
        Image.fromarray(rgba.astype(np.uint8), "RGBA").save(path.with_suffix(".png"))
    else:
        rgb = ink[..., None] * colour
        Image.fromarray(rgb.astype(np.uint8)).save(path.with_suffix(".png"))
    return path.with_suffix(".png")


def accuracy_by_kind(results, truth: dict[str, int]) -> dict[str, tuple[int, int]]:
    counts: dict[str, list[int]] = {}
    for result in results:
        kind = Path(result.path).name.split("-")[0]
        right = result.digit == truth[result.path]
        counts.setdefault(kind, [0, 0])
        counts[kind][0] += bool(right)
        counts[kind][1] += 1
    return {k: (v[0], v[1]) for k, v in counts.items()}


def whole_process_seconds(args: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("datafiles"))
    parser.add_argument("--checkpoint", type=Path, default=Path("params/best.pt"))
    parser.add_argument("--onnx", type=Path, default=Path("exported/model.onnx"))
    parser.add_argument("--count", type=int, default=2000, help="images of each kind")
    parser.add_argument("--repeats", type=int, default=7, help="runs for start-up timing")
    parser.add_argument("--keep", type=Path, help="keep the generated images in this folder")
    args = parser.parse_args()

    test = load_split(args.data_dir, "test")
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(test), args.count, replace=False)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        truth = {}
        for n, i in enumerate(chosen):
            for kind, make in (("scan", make_scan), ("drawing", make_drawing)):
                path = make(test.images[i], rng, folder / f"{kind}-{n:05d}")
                truth[str(path)] = int(test.labels[i])
        paths = sorted(truth)
        print(f"{len(paths)} images in {folder}")

        digits = {}
        for backend, model in (("torch", args.checkpoint), ("onnxruntime", args.onnx)):
            engine = open_model(model, backend=backend, device="cpu")
            started = time.perf_counter()
            results = list(predict_paths(engine, paths))
            seconds = time.perf_counter() - started
            failed = [r for r in results if r.error]
            digits[backend] = [r.digit for r in results]
            print(
                f"\n{backend}: {len(paths) / seconds:,.0f} images/s (reading and "
                f"preprocessing included), {len(failed)} failed"
            )
            for kind, (right, total) in accuracy_by_kind(results, truth).items():
                print(f"  {kind:8} accuracy {right / total:.2%} ({right}/{total})")
        agree = np.mean(
            [a == b for a, b in zip(digits["torch"], digits["onnxruntime"], strict=True)]
        )
        print(f"\nbackends agree on {agree:.2%} of images")

        one = paths[0]
        command = [sys.executable, "-m", "mnist_cli", "predict", one]
        onnx_s = whole_process_seconds(
            command + ["--backend", "onnxruntime", "--model", str(args.onnx)], args.repeats
        )
        torch_s = whole_process_seconds(
            command + ["--backend", "torch", "--model", str(args.checkpoint), "--device", "cpu"],
            args.repeats,
        )
        print(f"\nwhole process, one image (median of {args.repeats}):")
        print(
            f"  onnxruntime {onnx_s:.3f} s, torch {torch_s:.3f} s, "
            f"ratio {onnx_s / torch_s:.2f} (target: at most 0.5 s and 0.25)"
        )


if __name__ == "__main__":
    main()
