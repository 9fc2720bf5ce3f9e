"""How fast digits are read, each figure beside the floor of its own job, in one run.

1. Preprocessing, ms per image (median), by kind: a 28x28 PNG, the serve page's 280x280 canvas,
   a 3000x4000 phone photo (JPEG), each against Pillow alone opening, graying and shrinking it
   to 28x28.
2. `mnist predict DIR` as a whole process, against a process that only opens, decodes, grays
   and shrinks the same files with Pillow (best of 3, interleaved), on two folders: 650 scans
   and drawings made from MNIST test digits (60 to 1,000 px, PNG and JPEG, as
   predict_images.py makes them), and benchmarks/handwriting (1,270 real images, most 140 px).
3. `mnist test` on the 10,000 MNIST test images with an ONNX model (evaluate_model, in this
   process), against a bare onnxruntime session over the same arrays in batches of 1,000.

    python benchmarks/read_speed.py --data-dir datafiles [--model mnist_cli/pretrained/cnn.onnx]

Machines differ 3-4x in absolute speed: read the ratios.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from predict_images import make_drawing, make_scan

from mnist_cli.data import load_split
from mnist_cli.infer.backends import BUNDLED_MODELS, open_model
from mnist_cli.infer.evaluation import evaluate_model
from mnist_cli.infer.preprocessing import digit_from_bytes
from mnist_cli.options import BackendName

HANDWRITING = Path(__file__).resolve().parent / "handwriting"
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

# The floor of `mnist predict DIR`: open, decode, gray and shrink every image file, nothing else.
DECODE_ONLY = """
import sys
from pathlib import Path
from PIL import Image
for path in sorted(Path(sys.argv[1]).rglob("*")):
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        with Image.open(path) as image:
            image.convert("L").resize((28, 28), Image.BILINEAR)
"""


def samples() -> dict[str, bytes]:
    """One image of each kind, as bytes."""
    rng = np.random.default_rng(0)
    small = np.zeros((28, 28), np.uint8)
    small[4:24, 12:16] = 255
    canvas = Image.new("RGBA", (280, 280), (0, 0, 0, 255))
    line = [(120, 40), (160, 60), (130, 240)]
    ImageDraw.Draw(canvas).line(line, fill=(255, 255, 255, 255), width=20, joint="curve")
    rows, cols = np.linspace(0, 1, 4000)[:, None], np.linspace(0, 1, 3000)[None, :]
    paper = 200 + 30 * rows - 20 * cols + rng.normal(0, 6, (4000, 3000))
    photo = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)).convert("RGB")
    stroke = [(1300, 1500), (1700, 1450), (1450, 2500)]
    ImageDraw.Draw(photo).line(stroke, fill=(40, 40, 60), width=60, joint="curve")
    encoded = {}
    for name, image, kind in [
        ("28x28 PNG", Image.fromarray(small), "PNG"),
        ("280x280 canvas PNG", canvas, "PNG"),
        ("3000x4000 photo JPEG", photo, "JPEG"),
    ]:
        buffer = io.BytesIO()
        image.save(buffer, format=kind, quality=90)
        encoded[name] = buffer.getvalue()
    return encoded


def median_ms(work, data: bytes, seconds: float = 1.5) -> float:
    work(data)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        started = time.perf_counter()
        work(data)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def pillow_only(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        image.convert("L").resize((28, 28), Image.BILINEAR)


def best_of(command: list[str], runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_ENV)
        if done.returncode not in (0, 1):  # 1: an image could not be read (the set has none)
            raise SystemExit(f"{command} exited {done.returncode}: {done.stderr[-300:]}")
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("datafiles"))
    parser.add_argument("--model", type=Path, default=BUNDLED_MODELS[BackendName.onnxruntime])
    args = parser.parse_args()

    print("| image | mnist preprocessing ms | Pillow decode+gray+shrink ms | ratio |")
    print("|---|---|---|---|")
    for name, data in samples().items():
        ours, floor = median_ms(digit_from_bytes, data), median_ms(pillow_only, data)
        print(f"| {name} | {ours:.2f} | {floor:.2f} | {ours / floor:.2f} |")

    test = load_split(args.data_dir, "test")
    rng = np.random.default_rng(0)
    print()
    print("| folder (whole processes, best of 3) | mnist predict DIR s | decode only s | ratio |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        made = Path(scratch)
        for n, i in enumerate(rng.choice(len(test.labels), 325, replace=False)):
            make_scan(test.images[i], rng, made / f"scan-{n:04d}")
            make_drawing(test.images[i], rng, made / f"drawing-{n:04d}")
        folders = {"650 scans and drawings": made, "benchmarks/handwriting": HANDWRITING}
        for label, folder in folders.items():
            files = sum(1 for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
            predict = [sys.executable, "-m", "mnist_cli", "predict", str(folder), "--json"]
            predict += ["--quiet", "--model", str(args.model)]
            decode = [sys.executable, "-c", DECODE_ONLY, str(folder)]
            times = {"predict": float("inf"), "decode": float("inf")}
            for _ in range(3):  # interleaved, so that drift hits both alike
                times["predict"] = min(times["predict"], best_of(predict, 1))
                times["decode"] = min(times["decode"], best_of(decode, 1))
            ratio = times["predict"] / times["decode"]
            print(
                f"| {label} ({files:,} files) | {times['predict']:.2f} | {times['decode']:.2f} "
                f"| {ratio:.2f} |"
            )

    model = open_model(args.model)
    split = test
    started = time.perf_counter()
    evaluate_model(args.model, data_dir=args.data_dir)
    ours = len(split.labels) / (time.perf_counter() - started)
    session = model.session
    name = session.get_inputs()[0].name
    started = time.perf_counter()
    pixels = (split.images.astype(np.float32) / 255)[:, None]
    for start in range(0, len(pixels), 1000):
        session.run(None, {name: pixels[start : start + 1000]})
    bare = len(split.labels) / (time.perf_counter() - started)
    print()
    print(f"| {len(split.labels):,} MNIST test images | images/s |")
    print("|---|---|")
    print(f"| mnist test (evaluate_model: load, check, run, report) | {ours:,.0f} |")
    print(f"| bare onnxruntime session, same arrays, batches of 1,000 | {bare:,.0f} |")
    print(f"| ratio | {ours / bare:.2f} |")


if __name__ == "__main__":
    main()
