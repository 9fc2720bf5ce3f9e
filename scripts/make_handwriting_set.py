"""Build benchmarks/handwriting/: digits in the styles and media that MNIST lacks.

python scripts/make_handwriting_set.py --uci-digits sklearn/datasets/data/digits.csv.gz

Four kinds, each image labelled in labels.csv with its digit, kind and style:
- other-writers: real handwriting of 13 people who are not MNIST's writers (the UCI optical
  digits test set, 8x8 counts of 4x4 blocks, as shipped inside scikit-learn's wheel);
- printed: digits set in the fonts installed here (DejaVu, Liberation, STIX, Computer Modern);
- drawings: digits drawn stroke by stroke as on the serve page, from hand-made templates with
  random jitter, slant and pen width: flagged and footed 1s, crossed 7s, open and closed 4s,
  slashed and dotted 0s, thin and thick pens;
- photos: printed and drawn digits made to look photographed: grey paper, uneven light, blur,
  noise, a small rotation, JPEG.
None of these images, and none of these fonts, is used in training.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

OUT = Path(__file__).resolve().parent.parent / "benchmarks" / "handwriting"

# Strokes in a unit box (x right, y down); ("ellipse", cx, cy, rx, ry) or a polyline.
TEMPLATES: dict[tuple[int, str], list] = {
    (0, "plain"): [("ellipse", 0.5, 0.5, 0.3, 0.45)],
    (0, "slashed"): [("ellipse", 0.5, 0.5, 0.3, 0.45), [(0.78, 0.08), (0.22, 0.92)]],
    (0, "dotted"): [("ellipse", 0.5, 0.5, 0.3, 0.45), ("ellipse", 0.5, 0.5, 0.04, 0.04)],
    (1, "plain"): [[(0.5, 0.05), (0.5, 0.95)]],
    (1, "flag"): [[(0.28, 0.28), (0.55, 0.05), (0.55, 0.95)]],
    (1, "flag-foot"): [[(0.28, 0.28), (0.55, 0.05), (0.55, 0.95)], [(0.25, 0.95), (0.85, 0.95)]],
    (2, "plain"): [
        [
            (0.2, 0.25),
            (0.35, 0.08),
            (0.6, 0.05),
            (0.78, 0.2),
            (0.75, 0.42),
            (0.2, 0.95),
            (0.85, 0.95),
        ]
    ],
    (3, "plain"): [
        [
            (0.2, 0.12),
            (0.45, 0.04),
            (0.72, 0.14),
            (0.7, 0.36),
            (0.45, 0.47),
            (0.75, 0.6),
            (0.78, 0.82),
            (0.5, 0.96),
            (0.2, 0.86),
        ]
    ],
    (4, "open"): [[(0.3, 0.05), (0.2, 0.62), (0.85, 0.62)], [(0.68, 0.1), (0.68, 0.95)]],
    (4, "closed"): [[(0.68, 0.95), (0.68, 0.05), (0.15, 0.65), (0.88, 0.65)]],
    (5, "plain"): [
        [
            (0.78, 0.05),
            (0.32, 0.05),
            (0.26, 0.45),
            (0.55, 0.38),
            (0.78, 0.55),
            (0.76, 0.82),
            (0.5, 0.96),
            (0.2, 0.86),
        ]
    ],
    (6, "plain"): [
        [
            (0.72, 0.05),
            (0.38, 0.32),
            (0.22, 0.65),
            (0.3, 0.9),
            (0.55, 0.96),
            (0.76, 0.8),
            (0.72, 0.58),
            (0.5, 0.5),
            (0.25, 0.62),
        ]
    ],
    (7, "plain"): [[(0.15, 0.06), (0.85, 0.06), (0.4, 0.95)]],
    (7, "crossed"): [[(0.15, 0.06), (0.85, 0.06), (0.4, 0.95)], [(0.35, 0.5), (0.82, 0.5)]],
    (8, "plain"): [("ellipse", 0.5, 0.27, 0.22, 0.22), ("ellipse", 0.5, 0.72, 0.27, 0.24)],
    (9, "plain"): [("ellipse", 0.48, 0.3, 0.25, 0.23), [(0.73, 0.3), (0.68, 0.96)]],
}
PENS = {"thin": (0.012, 0.022), "normal": (0.04, 0.065), "thick": (0.1, 0.13)}  # of the canvas

SYSTEM_FONTS = Path("/usr/share/fonts/truetype")


def fonts() -> list[Path]:
    """The font files used for `printed`: matplotlib's bundled ones and the system's."""
    import matplotlib

    bundled = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"
    names = [
        "DejaVuSans.ttf",
        "DejaVuSans-Bold.ttf",
        "DejaVuSansMono.ttf",
        "DejaVuSerif.ttf",
        "DejaVuSerif-Bold.ttf",
        "DejaVuSerif-Italic.ttf",
        "STIXGeneral.ttf",
        "STIXGeneralItalic.ttf",
        "cmr10.ttf",
        "cmss10.ttf",
        "cmtt10.ttf",
    ]
    found = [bundled / name for name in names]
    found += sorted(SYSTEM_FONTS.glob("liberation*/Liberation*-Regular.ttf"))
    return [path for path in found if path.is_file()]


def _points(stroke, box: tuple[float, float, float], rng: random.Random, shear: float):
    """A stroke in canvas pixels: jittered, slanted, placed in the box (x, y, size)."""
    x0, y0, size = box
    if isinstance(stroke, tuple):
        _, cx, cy, rx, ry = stroke
        count = max(8, int(40 * max(rx, ry)))
        ring = [
            (
                cx + rx * math.cos(2 * math.pi * k / count),
                cy + ry * math.sin(2 * math.pi * k / count),
            )
            for k in range(count + 1)
        ]
        start = rng.uniform(0, 2 * math.pi)
        spin = int(start / (2 * math.pi) * count)
        unit = ring[spin:-1] + ring[: spin + 1]
    else:
        unit = stroke
    out = []
    for x, y in unit:
        x, y = x + rng.gauss(0, 0.025), y + rng.gauss(0, 0.025)
        x += shear * (0.5 - y)
        out.append((x0 + x * size * 0.75 + size * 0.125, y0 + y * size))
    return out


def drawing(template: list, pen: float, rng: random.Random, canvas: int = 280) -> Image.Image:
    """Dark strokes on white, as a person draws on the serve page."""
    image = Image.new("L", (canvas, canvas), 255)
    draw = ImageDraw.Draw(image)
    size = canvas * rng.uniform(0.55, 0.8)
    box = (rng.uniform(0.05, 0.95 * canvas - size), rng.uniform(0.05, 0.95 * canvas - size), size)
    shear = rng.uniform(-0.25, 0.25)
    width = max(1, round(pen * canvas))
    for stroke in template:
        points = _points(stroke, box, rng, shear)
        draw.line(points, fill=0, width=width, joint="curve")
        for x, y in (points[0], points[-1]):  # round pen ends
            draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=0)
    image = image.rotate(rng.uniform(-8, 8), resample=Image.BICUBIC, fillcolor=255)
    return image.resize((canvas // 2, canvas // 2), Image.LANCZOS)  # the page's canvas, halved


def printed(font: Path, digit: int, rng: random.Random) -> Image.Image:
    size = rng.choice([48, 72, 120])
    face = ImageFont.truetype(str(font), size)
    image = Image.new("L", (size * 2, size * 2), 255)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=face)
    x = rng.uniform(0.2, 0.8) * (image.width - (right - left)) - left
    y = rng.uniform(0.2, 0.8) * (image.height - (bottom - top)) - top
    draw.text((x, y), str(digit), fill=0, font=face)
    return image


def photographed(image: Image.Image, rng: random.Random) -> Image.Image:
    """Grey paper, light from one side, a little blur and noise, a tilt, JPEG."""
    gray = np.asarray(image.convert("L"), dtype=np.float32) / 255
    h, w = gray.shape
    paper, ink = rng.uniform(0.65, 0.92), rng.uniform(0.08, 0.3)
    ramp = np.linspace(-1, 1, w)[None, :] * rng.uniform(0.05, 0.18)
    photo = (ink + (paper - ink) * gray) * (1 + ramp)
    photo += np.random.default_rng(rng.randrange(1 << 30)).normal(
        0, rng.uniform(0.02, 0.05), gray.shape
    )
    out = Image.fromarray((np.clip(photo, 0, 1) * 255).astype(np.uint8))
    out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.8)))
    out = out.rotate(rng.uniform(-6, 6), resample=Image.BICUBIC, fillcolor=int(paper * 255))
    buffer = io.BytesIO()
    out.convert("RGB").save(buffer, "JPEG", quality=rng.randint(35, 75))
    return Image.open(io.BytesIO(buffer.getvalue()))


def uci_digits(path: Path, per_digit: int) -> list[tuple[int, Image.Image]]:
    """The UCI optical digits (8x8, counts 0-16), white ink on black, scaled to 32x32."""
    with gzip.open(path, "rt") as handle:
        rows = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    taken: dict[int, int] = {}
    out = []
    for row in rows:
        label = int(row[-1])
        if taken.get(label, 0) < per_digit:
            taken[label] = taken.get(label, 0) + 1
            pixels = (row[:64].reshape(8, 8) * 255 // 16).astype(np.uint8)
            out.append((label, Image.fromarray(pixels).resize((32, 32), Image.BICUBIC)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uci-digits", type=Path, required=True, help="sklearn's digits.csv.gz")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows: list[tuple[str, int, str, str]] = []

    def save(image: Image.Image, kind: str, digit: int, style: str, suffix: str = "png") -> None:
        name = f"{kind}/{digit}-{style}-{sum(1 for r in rows if r[2] == kind):04d}.{suffix}"
        (OUT / kind).mkdir(parents=True, exist_ok=True)
        image.save(OUT / name, quality=90) if suffix == "jpg" else image.save(OUT / name)
        rows.append((name, digit, kind, style))

    for digit, image in uci_digits(args.uci_digits, per_digit=40):
        save(image, "other-writers", digit, "handwritten")
    sources = []
    for font in fonts():
        for digit in range(10):
            image = printed(font, digit, rng)
            save(image, "printed", digit, font.stem)
            sources.append((digit, "printed", image))
    for (digit, style), template in TEMPLATES.items():
        for index in range(30):
            pen = "thin" if index < 8 else "thick" if index >= 22 else "normal"
            pen = "normal" if (style, pen) == ("dotted", "thick") else pen  # a blob, not a 0
            image = drawing(template, rng.uniform(*PENS[pen]), rng)
            tag = style if pen == "normal" else f"{style}-{pen}" if style != "plain" else pen
            save(image, "drawings", digit, tag)
            sources.append((digit, tag, image))
    for digit, tag, image in rng.sample(sources, 240):
        save(photographed(image, rng), "photos", digit, tag, suffix="jpg")
    write_list(OUT / "labels.csv", ["file", "label", "kind", "style"], rows)


def write_list(path: Path, header: list[str], rows: list[tuple]) -> None:
    """The set's list of images as CSV, and a line saying how many."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    print(f"{len(rows)} images in {path.parent}")


if __name__ == "__main__":
    main()
