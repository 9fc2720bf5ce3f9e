"""Add numbers and things that are no digit to benchmarks/handwriting/ (listed in numbers.csv).

python scripts/make_numbers_set.py --data-dir datafiles

Three kinds, each image listed in numbers.csv with the text it holds ("" for none), its kind
and style, all photographed as make_handwriting_set.py's photos are (grey paper, uneven light,
blur, noise, a tilt, JPEG):
- numbers-mnist: 2 to 6 MNIST *test* digits side by side, with uneven gaps (0 to 8 px at
  MNIST's 28 px; one neighbour in ten touches or overlaps) and wandering baselines;
- numbers-printed: 2 to 6 digit numbers set in the printed kind's fonts;
- not-a-digit: letters and symbols in fonts that training never uses (STIX, Computer Modern,
  Liberation), scribbles drawn as on the serve page, and blank or textured paper.
None of these images is used in training; the none class trains on DejaVu fonts only.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from make_handwriting_set import OUT, fonts, photographed, write_list
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from mnist_cli.data import load_split, split_train_validation
from mnist_cli.train.negatives import LETTERS, SYMBOLS

COUNTS = {"numbers-mnist": 300, "numbers-printed": 150}
TOUCHING = 0.1  # the share of neighbours that touch or overlap (a gap of -1 to 0 px at 28 px)
BUNDLED_SEED = 4  # the seed of the bundled model's run: its validation split is unseen by it
NOT_A_DIGIT = {"letter": 100, "symbol": 100, "scribble": 100, "paper": 100}


def mnist_number(
    images: np.ndarray, labels: np.ndarray, rng: random.Random
) -> tuple[Image.Image, str]:
    """MNIST test digits side by side on white, each shifted up or down, with uneven gaps."""
    count = rng.randint(2, 6)
    picks = [rng.randrange(len(labels)) for _ in range(count)]
    scale = rng.uniform(2, 4)
    size = round(28 * scale)
    canvas = np.zeros((size + round(16 * scale), size * count + round(20 * scale)), np.float32)
    x = round(6 * scale)
    for index in picks:
        digit = np.asarray(Image.fromarray(images[index]).resize((size, size), Image.BILINEAR))
        columns = np.flatnonzero(digit.max(0) > 60)
        digit = digit[:, columns[0] : columns[-1] + 1].astype(np.float32) / 255
        y = round((8 + rng.uniform(-4, 4)) * scale)
        width = digit.shape[1]
        canvas[y : y + size, x : x + width] = np.maximum(canvas[y : y + size, x : x + width], digit)
        touching = rng.random() < TOUCHING
        x += width + round((rng.uniform(-1, 0) if touching else rng.uniform(0, 8)) * scale)
    canvas = canvas[:, : x + round(6 * scale)]
    image = Image.fromarray(np.round((1 - canvas) * 255).astype(np.uint8))
    return image, "".join(str(labels[index]) for index in picks)


def printed_text(text: str, font: Path, rng: random.Random) -> Image.Image:
    """`text` in `font`, dark on white, with a margin."""
    face = ImageFont.truetype(str(font), rng.choice([40, 64, 96]))
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=face)
    margin = (bottom - top) // 2 + 4
    image = Image.new("L", (right - left + 2 * margin, bottom - top + 2 * margin), 255)
    ImageDraw.Draw(image).text((margin - left, margin - top), text, fill=0, font=face)
    return image


def scribble(rng: random.Random) -> Image.Image:
    """Two to four jittered strokes of a pen on the page's canvas, dark on white, halved."""
    image = Image.new("L", (280, 280), 255)
    draw = ImageDraw.Draw(image)
    width = rng.randint(8, 20)
    for _ in range(rng.randint(2, 4)):
        x, y = rng.uniform(40, 240), rng.uniform(40, 240)
        points = [(x, y)]
        for _ in range(rng.randint(6, 14)):
            x = min(max(x + rng.gauss(0, 45), 20), 260)
            y = min(max(y + rng.gauss(0, 45), 20), 260)
            points.append((x, y))
        draw.line(points, fill=0, width=width, joint="curve")
    return image.resize((140, 140), Image.LANCZOS)


def paper(rng: random.Random) -> Image.Image:
    """White, or with a texture of fibres and blotches, before it is photographed."""
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 1, (160, 160))
    texture = Image.fromarray(np.clip(128 + 60 * noise, 0, 255).astype(np.uint8))
    texture = texture.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 4)))
    strength = rng.choice([0.0, 0.0, rng.uniform(0.1, 0.5)])
    values = 255 - strength * np.abs(np.asarray(texture, np.float32) - 128)
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))


def held_out_fonts() -> list[Path]:
    """The printed kind's fonts that the none class never trains on (it uses DejaVu)."""
    return [path for path in fonts() if not path.name.startswith("DejaVu")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="MNIST, for its test digits")
    parser.add_argument("--seed", type=int, default=2029)
    parser.add_argument("--out", type=Path, default=OUT, help="another folder, for a dev set")
    parser.add_argument(
        "--split",
        default="test",
        choices=["test", "train", "validation"],
        help="MNIST's split to take digits from; a dev set takes 'validation', the training "
        "digits the bundled model held out (as --validation-seed and --validation-size pick)",
    )
    parser.add_argument("--validation-seed", type=int, default=BUNDLED_SEED)
    parser.add_argument("--validation-size", type=int, default=5_000)
    args = parser.parse_args()
    out = args.out
    rng = random.Random(args.seed)
    if args.split == "validation":
        train = load_split(args.data_dir, "train")
        _, digits = split_train_validation(train, args.validation_size, args.validation_seed)
    else:
        digits = load_split(args.data_dir, args.split)
    rows: list[tuple[str, str, str, str]] = []

    def save(image: Image.Image, kind: str, text: str, style: str) -> None:
        name = f"{kind}/{text or 'none'}-{style}-{len(rows):04d}.jpg"
        (out / kind).mkdir(parents=True, exist_ok=True)
        photographed(image, rng).save(out / name, quality=90)
        rows.append((name, text, kind, style))

    for _ in range(COUNTS["numbers-mnist"]):
        image, text = mnist_number(digits.images, digits.labels, rng)
        save(image, "numbers-mnist", text, "mnist")
    faces = fonts()
    for index in range(COUNTS["numbers-printed"]):
        text = "".join(str(rng.randrange(10)) for _ in range(rng.randint(2, 6)))
        font = faces[index % len(faces)]
        save(printed_text(text, font, rng), "numbers-printed", text, font.stem)
    others = held_out_fonts()
    for kind, count in NOT_A_DIGIT.items():
        for index in range(count):
            font = others[index % len(others)]
            if kind == "letter":
                image, style = printed_text(rng.choice(LETTERS), font, rng), font.stem
            elif kind == "symbol":
                image, style = printed_text(rng.choice(SYMBOLS), font, rng), font.stem
            else:
                image, style = (scribble(rng) if kind == "scribble" else paper(rng)), kind
            save(image, "not-a-digit", "", f"{kind}-{style}")
    write_list(out / "numbers.csv", ["file", "text", "kind", "style"], rows)


if __name__ == "__main__":
    main()
