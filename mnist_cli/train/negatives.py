"""Images that hold no digit, made in memory, for the "none" class: letters, symbols, scribbles,
textured paper, and two training digits run together (what a number's segmentation must cut
apart). Each goes through `mnist predict`'s own preprocessing, so the model learns to refuse
exactly what it would be shown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from mnist_cli.data import NONE_INDEX, Split
from mnist_cli.infer.preprocessing import INK, ImageError, digit_from_array

# Letters that no one would take for a digit: O, I, l, S, Z, B, g, q and their like are left out.
LETTERS = "ACEFHKMNPRUVWXYacdefhkmnprtuvwx"
SYMBOLS = "+=×÷%&@#?*<>$€£^~;:"
_KINDS = ("letter", "symbol", "scribble", "paper", "pair")
_SHARES = (0.3, 0.15, 0.2, 0.1, 0.25)  # how often each kind is drawn


def font_files(families: tuple[str, ...] = ("DejaVu",)) -> list[Path]:
    """TrueType files of `families` that matplotlib ships (in the train extra); DejaVu trains,
    the other families are left for benchmarks to test with."""
    import matplotlib

    folder = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"
    return [
        path
        for path in sorted(folder.glob("*.ttf"))
        if path.name.startswith(families) and "Display" not in path.name
    ]


def text_image(text: str, font: Path, rng: np.random.Generator) -> np.ndarray:
    """`text` in `font` at a random size, place, pen and tilt, dark on light paper."""
    canvas = Image.new("L", (200, 200), int(rng.integers(190, 256)))
    face = ImageFont.truetype(str(font), int(rng.integers(70, 150)))
    draw = ImageDraw.Draw(canvas)
    place = (int(rng.integers(10, 70)), int(rng.integers(-10, 40)))
    pen = int(rng.integers(0, 4))
    draw.text(place, text, fill=int(rng.integers(0, 70)), font=face, stroke_width=pen)
    canvas = canvas.rotate(float(rng.uniform(-15, 15)), fillcolor=int(np.median(canvas)))
    return np.asarray(canvas)


def scribble(rng: np.random.Generator) -> np.ndarray:
    """Tangled strokes, as a pen on the serve page's canvas draws them: light ink on black."""
    canvas = Image.new("L", (280, 280), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 5))):
        count = int(rng.integers(5, 11))
        points = [tuple(int(v) for v in rng.integers(30, 250, 2)) for _ in range(count)]
        draw.line(points, fill=255, width=int(rng.integers(8, 24)), joint="curve")
    return np.asarray(canvas)


def paper(rng: np.random.Generator) -> np.ndarray:
    """Blank paper with light falling off, grain and blotches, and no ink."""
    rows, cols = np.linspace(0, 1, 200)[:, None], np.linspace(0, 1, 200)[None, :]
    shade = rng.uniform(150, 240) + rng.uniform(-40, 40) * rows + rng.uniform(-40, 40) * cols
    grain = rng.normal(0, rng.uniform(2, 20), (200, 200))
    blotches = Image.fromarray((rng.normal(0, 1, (200, 200)) * 60 + 128).clip(0, 255).astype("u1"))
    blotches = blotches.filter(ImageFilter.GaussianBlur(float(rng.uniform(1, 6))))
    texture = (np.asarray(blotches, dtype=np.float64) - 128) * rng.uniform(0, 1.5)
    return np.clip(shade + grain + texture, 0, 255).astype(np.uint8)


def pair(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two of `digits` (N x 28 x 28) side by side, touching or nearly: one piece of ink that
    is no one digit."""
    first, second = (digits[i] for i in rng.integers(len(digits), size=2))
    columns = [np.flatnonzero(d.max(0) > INK * 255) for d in (first, second)]
    if not all(len(c) for c in columns):
        return np.zeros((28, 28), np.uint8)
    left, right = (
        first[:, columns[0][0] : columns[0][-1] + 1],
        second[:, columns[1][0] : columns[1][-1] + 1],
    )
    gap = int(rng.integers(-3, 2))
    canvas = np.zeros((28, left.shape[1] + right.shape[1] + max(gap, 0) + 8), np.uint8)
    canvas[:, 4 : 4 + left.shape[1]] = left
    start = 4 + left.shape[1] + gap
    canvas[:, start : start + right.shape[1]] = np.maximum(
        canvas[:, start : start + right.shape[1]], right
    )
    return canvas


def draw(
    kind: str, rng: np.random.Generator, fonts: list[Path], digits: np.ndarray | None = None
) -> np.ndarray:
    """One image of `kind` (letter, symbol, scribble, paper, or a pair of `digits`)."""
    if kind == "pair":
        return pair(digits, rng) if digits is not None and len(digits) else paper(rng)
    if kind == "letter":
        return text_image(str(rng.choice(list(LETTERS))), fonts[rng.integers(len(fonts))], rng)
    if kind == "symbol":
        return text_image(str(rng.choice(list(SYMBOLS))), fonts[rng.integers(len(fonts))], rng)
    return scribble(rng) if kind == "scribble" else paper(rng)


def negative_digits(count: int, seed: int, digits: np.ndarray | None = None) -> np.ndarray:
    """`count` 28x28 uint8 images of no digit, as the preprocessing hands them to the model
    (blank ones, which it refuses before any model, are drawn again); pairs come from
    `digits` (uint8 N x 28 x 28), the training images."""
    rng = np.random.default_rng([seed, 29])
    fonts = font_files()
    if not fonts:
        from mnist_cli.errors import MnistError

        raise MnistError(
            "no DejaVu fonts in matplotlib's mpl-data/fonts/ttf: cannot draw letters for the "
            '"none" class',
            hint="reinstall matplotlib, or train with negatives = 0 in a --config file",
        )
    images = np.zeros((count, 28, 28), np.uint8)
    made = 0
    while made < count:
        kind = _KINDS[rng.choice(len(_KINDS), p=_SHARES)]
        try:
            digit = digit_from_array(draw(kind, rng, fonts, digits))
        except ImageError:
            continue
        images[made] = np.round(digit * 255).astype(np.uint8)
        made += 1
    return images


def with_negatives(split: Split, share: float, seed: int) -> Split:
    """`split` and `share` x its size images of no digit, labelled NONE_INDEX."""
    count = round(len(split) * share)
    if not count:
        return split
    images = negative_digits(count, seed, split.images)
    labels = np.full(count, NONE_INDEX, dtype=split.labels.dtype)
    return Split(np.concatenate([split.images, images]), np.concatenate([split.labels, labels]))
