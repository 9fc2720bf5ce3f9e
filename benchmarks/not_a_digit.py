"""How far the model's own confidence goes at refusing what is no digit (issue 29's baseline).

Images that hold no digit are made in memory (never written, never trained on): letters and
symbols in the fonts the printed digits of benchmarks/handwriting use, scribbles drawn like the
serve page's strokes, and blank or textured paper. Each goes through `mnist predict`'s
preprocessing and the model. A refusal threshold on the top probability is set where it refuses
1% of the model's validation digits (the real digits it never trained on); the script prints
what that threshold refuses of each kind, of the MNIST test set and of benchmarks/handwriting.

    python benchmarks/not_a_digit.py --data-dir datafiles [--model mnist_cli/pretrained/cnn.onnx]
"""

from __future__ import annotations

import argparse
import csv
import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mnist_cli.data import load_split, split_train_validation
from mnist_cli.infer.backends import BUNDLED_MODELS, open_model
from mnist_cli.infer.preprocessing import ImageError, digit_from_array, load_digit
from mnist_cli.options import BackendName

HANDWRITING = Path(__file__).resolve().parent / "handwriting"
SYMBOLS = "+-=×÷%&@#?!*/()<>[]{}$€£^~|\\;:"


def fonts() -> list[Path]:
    """TrueType fonts found where the printed digits' fonts come from."""
    import matplotlib

    found = sorted(Path(matplotlib.__file__).parent.glob("mpl-data/fonts/ttf/*.ttf"))
    found += sorted(Path("/usr/share/fonts/truetype/liberation").glob("*.ttf"))
    return [path for path in found if "Display" not in path.name][:12]


def rendered(text: str, font: Path, rng: np.random.Generator) -> np.ndarray:
    size = int(rng.integers(80, 140))
    canvas = Image.new("L", (200, 200), int(rng.integers(200, 256)))
    draw = ImageDraw.Draw(canvas)
    face = ImageFont.truetype(str(font), size)
    x, y = int(rng.integers(20, 60)), int(rng.integers(0, 40))
    draw.text((x, y), text, fill=int(rng.integers(0, 60)), font=face)
    return np.asarray(canvas)


def scribble(rng: np.random.Generator) -> np.ndarray:
    canvas = Image.new("L", (280, 280), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 4))):
        points = [
            tuple(int(v) for v in rng.integers(40, 240, 2)) for _ in range(rng.integers(3, 9))
        ]
        draw.line(points, fill=255, width=int(rng.integers(10, 24)), joint="curve")
    return np.asarray(canvas)


def paper(rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.linspace(0, 1, 200)[:, None], np.linspace(0, 1, 200)[None, :]
    shade = 200 + rng.uniform(-30, 30) * rows + rng.uniform(-30, 30) * cols
    grain = rng.normal(0, rng.uniform(2, 15), (200, 200))
    return np.clip(shade + grain, 0, 255).astype(np.uint8)


def negatives(rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    faces = fonts()
    kinds: dict[str, list[np.ndarray]] = {"letters": [], "symbols": [], "scribbles": []}
    for font in faces:
        for letter in string.ascii_letters:
            kinds["letters"].append(rendered(letter, font, rng))
        for symbol in SYMBOLS:
            kinds["symbols"].append(rendered(symbol, font, rng))
    kinds["scribbles"] = [scribble(rng) for _ in range(300)]
    kinds["blank or textured paper"] = [paper(rng) for _ in range(100)]
    return kinds


def top_probability(model, digits: list[np.ndarray]) -> np.ndarray:
    if not digits:
        return np.zeros(0)
    return model.probabilities(np.stack(digits)[:, None].astype(np.float32)).max(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("datafiles"))
    parser.add_argument("--model", type=Path, default=BUNDLED_MODELS[BackendName.onnxruntime])
    args = parser.parse_args()
    model = open_model(args.model)
    _, validation = split_train_validation(load_split(args.data_dir, "train"), 5000, 0)
    scores = top_probability(model, list(validation.images.astype(np.float32) / 255))
    threshold = float(np.quantile(scores, 0.01))
    print(
        f"model {args.model}; threshold {threshold:.4f}: refuses 1% of its 5,000 validation digits"
    )
    print()
    print("| images | count | refused (blank, or top probability under the threshold) |")
    print("|---|---|---|")
    test = load_split(args.data_dir, "test")
    refused = top_probability(model, list(test.images.astype(np.float32) / 255)) < threshold
    print(f"| MNIST test digits | {len(refused):,} | {refused.mean():.2%} |")
    with open(HANDWRITING / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for kind in sorted({row["kind"] for row in rows}):
        digits = [load_digit(HANDWRITING / row["file"]) for row in rows if row["kind"] == kind]
        refused = top_probability(model, digits) < threshold
        print(f"| handwriting set, {kind} | {len(refused):,} | {refused.mean():.2%} |")
    for kind, images in negatives(np.random.default_rng(0)).items():
        digits, blank = [], 0
        for image in images:
            try:
                digits.append(digit_from_array(image))
            except ImageError:
                blank += 1  # "no digit found": refused before the model
        refused = blank + int((top_probability(model, digits) < threshold).sum())
        print(f"| not a digit: {kind} | {len(images):,} | {refused / len(images):.2%} |")


if __name__ == "__main__":
    main()
