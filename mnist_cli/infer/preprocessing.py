"""Turning a real image into an MNIST-style 28x28 digit, the way MNIST itself was made.

numpy and Pillow only: the onnxruntime path of `mnist predict` must not import torch.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

from mnist_cli.errors import MnistError
from mnist_cli.files import path_problem

# The formats Pillow may decode: raster images only. EPS, PDF and the like are refused, so no
# upload ever reaches Ghostscript or another outside program.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
MAX_PIXELS = 50_000_000  # larger canvases are refused before decoding (decompression bombs)
MAX_SIDE = 1024  # larger images are reduced to about this squared: a digit ends up 20 px tall
_BOX = 20  # MNIST scaled each digit to fit a 20x20 box...
SIZE = 28  # ...then centred it by mass in a 28x28 field
INK = 0.3  # share of the ink's peak above which a pixel counts for the bounding box
_FAINT = INK / 2  # the least ink a digit keeps (fit_digit), and may widen its box with
MIN_CONTRAST = 0.08  # peak ink above the paper, as a share of full scale: below, it is blank


class ImageError(MnistError):
    """One image cannot be used; `mnist predict` reports it and goes on with the others."""


class BlankImage(ImageError):
    """The image holds no ink: nothing to read (not a digit), though the file itself is fine."""


def open_image(path: Path | str) -> Image.Image:
    """Open an image, refusing huge canvases before decoding and shrinking large ones as it does.

    Only regular files are read: a FIFO, socket or device would block or never end.
    """
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise ImageError(f"{path}: {problem}; skipped")
    return _decode(path, str(path))[0]


class PixelBudget:
    """How many pixels one request may still decode, summed over its images (after JPEG's
    draft), so that a request costs at most a known multiple of a normal one."""

    def __init__(self, pixels: int) -> None:
        self.total = self.left = pixels

    def take(self, image: Image.Image, name: str) -> None:
        width, height = image.size
        if width * height > self.left:
            raise ImageError(
                f"{name}: {width}x{height} is more than this request may decode "
                f"({self.left:,} of {self.total:,} pixels left)"
            )
        self.left -= width * height


def _decode(
    source: Path | BinaryIO, name: str, budget: PixelBudget | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode a file or an in-memory upload with the same limits; also its size as stored."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source, formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow's own limit is far above ours: say ours, the one the README gives
        raise ImageError(f"{name}: too large (over {MAX_PIXELS:,} pixels)") from error
    except PermissionError as error:
        raise ImageError(f"{name}: cannot be read (permission denied)") from error
    except (OSError, ValueError) as error:
        empty = getattr(source, "getbuffer", None) and not source.getbuffer().nbytes
        empty = empty or (isinstance(source, Path) and source.stat().st_size == 0)
        what = "an empty file" if empty else f"not a readable image ({_reason(error)})"
        raise ImageError(f"{name}: {what}") from error
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(f"{name}: {width}x{height} is too large (over {MAX_PIXELS:,} pixels)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd files: the result decides
            image.seek(0)  # first frame of an animation
            image.draft("L", (MAX_SIDE, MAX_SIDE))  # JPEG decodes at 1/2, 1/4 or 1/8 scale
            if budget is not None:
                budget.take(image, name)
            image.load()
            return _shrink(image), (width, height)
    except ImageError:
        raise
    except Exception as error:  # Pillow's decoders raise many types on damaged files
        raise ImageError(f"{name}: damaged image ({_reason(error)})") from error


def _shrink(image: Image.Image) -> Image.Image:
    """Reduce a large image by an integer factor before it becomes float arrays, to at most
    about MAX_SIDE x MAX_SIDE pixels: a long strip of small digits keeps its height."""
    width, height = image.size
    factor = math.ceil(math.sqrt(width * height) / MAX_SIDE)
    if factor <= 1:
        return image
    if image.mode in _CHANNEL_OF:
        image = image.getchannel(_CHANNEL_OF[image.mode])
    elif image.mode.startswith("I;16"):  # reduced as 32-bit, read back on the 16-bit scale
        return image.convert("I").reduce(factor).convert("I;16")
    elif image.mode == "F":  # sums of values near float32's limit would overflow to inf
        largest = max(abs(value) for value in image.getextrema())
        if largest > _FLOAT_HEADROOM:  # float pixels are stretched to [0, 1] later anyway
            image = image.point(lambda value: value / largest)
    elif image.mode not in _REDUCIBLE:
        alpha = "A" in image.mode or "transparency" in image.info
        image = image.convert("RGBA" if alpha else "RGB")
    return image.reduce(factor)


_REDUCIBLE = {"L", "LA", "RGB", "RGBA", "I", "F"}
_FLOAT_HEADROOM = 1e30  # well below float32's 3.4e38: a box of pixels sums without overflow


def _reason(error: BaseException) -> str:
    """A library's message in a few words, without the object reprs Pillow puts in them."""
    if isinstance(error, UnidentifiedImageError):
        return f"not one of the formats read here ({', '.join(FORMATS)})"
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return str(error).split(",")[0]  # "Image size (N pixels) exceeds limit of M pixels"
    text = _OBJECT_REPR.sub("", str(error).split(" (")[0]).strip(" :")
    return text or type(error).__name__


_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Luminance in [0, 1] as float32; transparency flattened onto a contrasting background."""
    gray = _luminance(image)
    return _LEVELS[np.asarray(gray)] if isinstance(gray, Image.Image) else gray


# uint8 level -> float32 in [0, 1], as `uint8 array / 255` in float32 gives it
_LEVELS = np.arange(256, dtype=np.float32) / 255


def _luminance(image: Image.Image) -> Image.Image | np.ndarray:
    """`to_grayscale`, left as an 8-bit "L" image where the image is 8-bit and opaque (most
    are): the digit is then found by Pillow's C code over 256 levels, not by numpy over pixels.
    """
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in _CHANNEL_OF:  # colour spaces Pillow cannot convert to "L"
        image = image.getchannel(_CHANNEL_OF[image.mode])
    if image.mode in ("RGBA", "LA") and image.getchannel("A").getextrema() == (255, 255):
        image = image.convert("L")  # opaque (a canvas): its alpha changes nothing
    if image.mode.startswith("I;16"):
        return (np.asarray(image, dtype=np.float32) / 65535).astype(np.float32)
    if image.mode in ("I", "F"):
        return _scaled(np.asarray(image, dtype=np.float64))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255
        gray = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        alpha = rgba[..., 3]
        if alpha.min() < 0.99:
            # Strokes drawn on a transparent canvas: put them on the opposite of their own shade.
            weight = alpha.sum()
            shade = float((gray * alpha).sum() / weight) if weight > 0 else 0.0
            background = 0.0 if shade > 0.5 else 1.0
            gray = gray * alpha + background * (1 - alpha)
        return gray.astype(np.float32)
    return image if image.mode == "L" else image.convert("L")


_CHANNEL_OF = {"LAB": "L", "HSV": "V"}  # the band that carries lightness


def _scaled(values: np.ndarray) -> np.ndarray:
    """Integer or float pixels into [0, 1]: kept if already there, else stretched to fit."""
    if not np.isfinite(values).all():
        return values.astype(np.float32)  # NaN stays NaN, for load_digit to refuse
    low, high = float(values.min()), float(values.max())
    if low >= 0 and high <= 1:
        scaled = values
    elif low >= 0:
        scaled = values / high
    else:
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return scaled.astype(np.float32)


def _ink_box(mask: Image.Image) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of a 0/255 mask's set pixels, or None. On large photos and
    scans, isolated specks of noise are dropped first (when anything is left): nothing outside
    the mask's box can pass a 5x5 median, so only the box and 2 px around it are filtered."""
    box = mask.getbbox()
    if box is None or min(mask.size) <= 2 * SIZE:
        return box
    left, top = max(box[0] - 2, 0), max(box[1] - 2, 0)
    right, bottom = min(box[2] + 2, mask.width), min(box[3] + 2, mask.height)
    kept = despeckle(np.asarray(mask.crop((left, top, right, bottom))) > 127)
    rows, cols = np.flatnonzero(kept.any(1)), np.flatnonzero(kept.any(0))
    if not len(rows):
        return box
    return left + cols[0], top + rows[0], left + cols[-1] + 1, top + rows[-1] + 1


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """Place `digit` (at most 20x20) in a 28x28 field with its centre of mass at (14, 14)."""
    height, width = digit.shape
    total = digit.sum()
    rows, cols = np.indices(digit.shape)
    centre_row, centre_col = (rows * digit).sum() / total, (cols * digit).sum() / total
    top = int(round(SIZE / 2 - centre_row))
    left = int(round(SIZE / 2 - centre_col))
    top = min(max(top, 0), SIZE - height)  # a lopsided digit may not fit: keep all its ink
    left = min(max(left, 0), SIZE - width)
    field = np.zeros((SIZE, SIZE), dtype=np.float32)
    field[top : top + height, left : left + width] = digit
    return field


def despeckle(mask: np.ndarray) -> np.ndarray:
    """A 5x5 median filter of a boolean mask, edges repeated outward (what Pillow's
    MedianFilter(5) gives, ~15x faster): on a 0/255 image a 5x5 box blur above 127 is the
    median, a pixel kept where 13 or more of its 25 are set."""
    blurred = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.BoxBlur(2))
    return np.asarray(blurred) > 127


def _median(values: np.ndarray) -> float:
    """np.median without its import of numpy.ma, which costs every start of `mnist predict`."""
    flat = values.ravel()
    half = flat.size // 2
    if flat.size % 2:
        return float(np.partition(flat, half)[half])
    low, high = np.partition(flat, [half - 1, half])[half - 1 : half + 1]
    return (float(low) + float(high)) / 2


def _array_ink(gray: np.ndarray, name: str) -> np.ndarray:
    """Float32 grayscale -> ink over the paper's median, light on dark, peak 1 (or ImageError)."""
    if gray.ndim != 2 or gray.size == 0 or not np.isfinite(gray).all():
        raise ImageError(f"{name}: no digit found (not a finite 2-D image)")
    paper = _median(gray)
    if paper > 0.5:  # dark ink on light paper: MNIST is light ink on black
        gray, paper = 1 - gray, 1 - paper
    ink = np.clip(gray - paper, 0, None)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise BlankImage(f"{name}: no digit found (blank image)")
    ink /= peak
    return ink


def _level_ink(image: Image.Image, name: str) -> np.ndarray:
    """`_array_ink` worked out once per level of an 8-bit "L" image: the ink of each of the 256
    levels (the same float32 arithmetic), for Pillow to apply to the pixels."""
    counts = np.array(image.histogram())
    below = np.cumsum(counts)
    low, high = np.searchsorted(below, [(below[-1] - 1) // 2 + 1, below[-1] // 2 + 1])
    paper = (float(_LEVELS[low]) + float(_LEVELS[high])) / 2  # the median, as _median gives it
    gray = _LEVELS
    if paper > 0.5:  # dark ink on light paper: MNIST is light ink on black
        gray, paper = 1 - gray, 1 - paper
    ink = np.clip(gray - paper, 0, None)
    peak = float(ink[counts > 0].max())
    if peak < MIN_CONTRAST:
        raise BlankImage(f"{name}: no digit found (blank image)")
    ink /= peak
    return ink


def digit_from_array(gray: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Grayscale array of any size (float in [0, 1], or uint8 levels) -> 28x28 float32
    MNIST-style digit, or ImageError."""
    gray = np.asarray(gray)
    if gray.dtype == np.uint8 and gray.ndim == 2 and gray.size > 0:
        return _digit_from_levels(Image.fromarray(gray), name)
    return _digit_from_ink(_array_ink(gray.astype(np.float32, copy=False), name), name)


def _digit_from_ink(ink: np.ndarray, name: str) -> np.ndarray:
    clear = ink > INK
    box = _ink_box(Image.fromarray(clear.astype(np.uint8) * 255))
    if box is None:
        raise BlankImage(f"{name}: no digit found (blank image)")
    faint = ink > _FAINT
    if _faint_strokes_likely(int(faint.sum()), int(clear.sum())):
        outer = Image.fromarray(faint.astype(np.uint8) * 255).getbbox()
        if not _holds(box, outer):
            box = _with_faint_strokes(box, faint, clear)
    left, top, right, bottom = box
    return fit_digit(ink[top:bottom, left:right], name)


def _digit_from_levels(image: Image.Image, name: str, ink: np.ndarray | None = None) -> np.ndarray:
    """`digit_from_array` for an 8-bit "L" image, to the last bit: each step is worked out once
    per level (256 values, the same float32 arithmetic), then applied to the pixels by Pillow
    (histogram, lookup table, bounding box), in C and outside the GIL."""
    ink = _level_ink(image, name) if ink is None else ink
    box = _ink_box(image.point(_table(ink > INK)))
    if box is None:
        raise BlankImage(f"{name}: no digit found (blank image)")
    counts = np.array(image.histogram())
    if _faint_strokes_likely(int(counts[ink > _FAINT].sum()), int(counts[ink > INK].sum())):
        faint = image.point(_table(ink > _FAINT))
        if not _holds(box, faint.getbbox()):  # else nothing faint lies outside: no arrays
            clear = np.asarray(image.point(_table(ink > INK))) > 127
            box = _with_faint_strokes(box, np.asarray(faint) > 127, clear)
    return fit_digit(ink[np.asarray(image.crop(box))], name)


# A fine pen's lines, scaled down, fall below INK where they run between pixels, and a digit's
# box would lose them (a 4 kept as its bar). Faint ink joined to the clear ink belongs to the
# digit, where it adds little to it: shading and noise add much.
# Faint-or-clear pixels per clear one: a stroke's soft edge adds under _SOFT_EDGE, a fine pen's
# lines more, and shading or noise more than _FAINT_SHARE.
_SOFT_EDGE = 1.08
_FAINT_SHARE = 1.5
_EDGE = 0.05  # of the digit's size: faint ink this close to its box is its strokes' soft edge


def _faint_strokes_likely(faint: int, clear: int) -> bool:
    """From the pixel counts alone (no pass over the image): faint strokes may lie outside."""
    return _SOFT_EDGE * clear < faint <= _FAINT_SHARE * clear


def _holds(box: tuple[int, int, int, int], other: tuple[int, int, int, int] | None) -> bool:
    """Whether `other` reaches past `box` by no more than a stroke's soft edge."""
    if other is None:
        return True
    edge = max(2, round(_EDGE * max(box[2] - box[0], box[3] - box[1])))
    return (
        other[0] >= box[0] - edge
        and other[1] >= box[1] - edge
        and other[2] <= box[2] + edge
        and other[3] <= box[3] + edge
    )


def _with_faint_strokes(
    box: tuple[int, int, int, int], faint: np.ndarray, clear: np.ndarray
) -> tuple[int, int, int, int]:
    """`box` (of the clear ink) grown over every part of the faint mask that holds clear ink
    inside the box: the strokes a fine pen drew beyond it."""
    from mnist_cli.infer.segmentation import components

    left, top, right, bottom = box
    inside = np.zeros_like(clear)
    inside[top:bottom, left:right] = clear[top:bottom, left:right]
    for part in components(faint):
        x0, y0, x1, y1 = part.box
        if (inside[y0:y1, x0:x1] & part.mask).any():
            left, top = min(left, x0), min(top, y0)
            right, bottom = max(right, x1), max(bottom, y1)
    return left, top, right, bottom


def _table(levels: np.ndarray) -> list[int]:
    """A boolean per level as the 0/255 lookup table of Image.point."""
    return [255 if value else 0 for value in levels]


def fit_digit(ink: np.ndarray, name: str) -> np.ndarray:
    """The ink inside its box (float32, peak 1) scaled to fit 20x20 and centred by mass."""
    crop = np.where(ink > _FAINT, ink, 0)
    height, width = crop.shape
    scale = _BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.BOX if scale < 1 else Image.BILINEAR  # area-average when shrinking
    digit = np.asarray(Image.fromarray(crop.astype(np.float32)).resize(size, resample))
    digit = np.clip(digit, 0, 1)
    if digit.sum() <= 0:
        raise BlankImage(f"{name}: no digit found (blank image)")
    return _centre_by_mass(digit / digit.max())


def load_digit(path: Path | str, *, raw: bool = False) -> np.ndarray:
    """Read an image file as a 28x28 float32 digit in [0, 1] (light ink on black, like MNIST).

    `raw=True` takes an image that is MNIST-style already: 28x28, light on dark, unchanged.
    """
    return load_page(path, raw=raw).digit()


def digit_from_bytes(
    data: bytes, *, name: str = "upload", raw: bool = False, budget: PixelBudget | None = None
) -> np.ndarray:
    """The same as `load_digit`, for an image held in memory (an HTTP upload)."""
    return page_from_bytes(data, name=name, raw=raw, budget=budget).digit()


def load_page(path: Path | str, *, raw: bool = False) -> Page:
    """An image file, decoded and ready to be read as one digit or as a number."""
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise ImageError(f"{path}: {problem}; skipped")
    return _page(*_decode(path, str(path)), str(path), raw=raw)


def gray_from_bytes(data: bytes, *, name: str, budget: PixelBudget | None = None) -> Image.Image:
    """An image held in memory as 8-bit grayscale, upright as its EXIF says, decoded with the
    limits of every upload (and shrunk as they are): what `mnist predict` reads of it, ready
    to be stored as a PNG. ImageError if it cannot be."""
    image = _upright(_decode(io.BytesIO(data), name, budget)[0])
    try:
        gray = to_grayscale(image)
    except Exception as error:  # Pillow raises ValueError, OSError, ... for modes it cannot map
        raise ImageError(f"{name}: unsupported image ({_reason(error)})") from error
    if not np.isfinite(gray).all():
        raise ImageError(f"{name}: holds NaN or infinite pixel values")
    return Image.fromarray(np.round(np.clip(gray, 0, 1) * 255).astype(np.uint8))


def page_from_bytes(
    data: bytes, *, name: str = "upload", raw: bool = False, budget: PixelBudget | None = None
) -> Page:
    """The same as `load_page`, for an image held in memory (an HTTP upload)."""
    return _page(*_decode(io.BytesIO(data), name, budget), name, raw=raw)


@dataclass
class Page:
    """A decoded image in grayscale: `digit()` reads it as one digit, `ink()` gives what
    segmentation looks at; `scale` turns its pixels into the stored image's (x, y)."""

    name: str
    gray: Image.Image | np.ndarray  # an 8-bit "L" image, or float32 in [0, 1]
    scale: tuple[float, float] = (1.0, 1.0)
    raw: bool = False

    def digit(self) -> np.ndarray:
        """The whole image as one 28x28 digit (the preprocessing MNIST's digits had)."""
        if isinstance(self.gray, Image.Image):
            return (
                _LEVELS[np.asarray(self.gray)]
                if self.raw
                else _digit_from_levels(self.gray, self.name, self._levels)
            )
        return self.gray if self.raw else _digit_from_ink(self._float_ink, self.name)

    def ink(self) -> tuple[np.ndarray, tuple[int, int]]:
        """Ink over the paper, float32 in [0, 1] with its peak at 1, light on dark, within the
        box of the clear ink (over INK), and that box's (left, top); BlankImage when there is
        none. An 8-bit image's box is found by Pillow, so only the ink becomes an array."""
        if isinstance(self.gray, Image.Image):
            levels = self._levels
            box = self.gray.point(_table(levels > INK)).getbbox()
            if box is None:
                raise BlankImage(f"{self.name}: no digit found (blank image)")
            return levels[np.asarray(self.gray.crop(box))], (box[0], box[1])
        ink = self._float_ink
        rows, cols = np.flatnonzero((ink > INK).any(1)), np.flatnonzero((ink > INK).any(0))
        if not len(rows):
            raise BlankImage(f"{self.name}: no digit found (blank image)")
        return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], (int(cols[0]), int(rows[0]))

    @cached_property
    def _levels(self) -> np.ndarray:  # an 8-bit image's ink per level, for digit() and ink()
        assert isinstance(self.gray, Image.Image)
        return _level_ink(self.gray, self.name)

    @cached_property
    def _float_ink(self) -> np.ndarray:  # worked out once for digit() and ink()
        return _array_ink(self.gray.astype(np.float32, copy=False), self.name)


def _page(image: Image.Image, stored: tuple[int, int], name: str, *, raw: bool) -> Page:
    if raw and image.size != (SIZE, SIZE):
        raise ImageError(
            f"{name}: --raw needs a 28x28 image, this one is {image.size[0]}x{image.size[1]}"
        )
    try:
        shrunk = image.size
        if not raw:
            image = _upright(image)
            if image.size != shrunk:  # turned a quarter: the stored size turns with it
                stored, shrunk = stored[::-1], shrunk[::-1]
        gray = _luminance(image)
    except Exception as error:  # Pillow raises ValueError, OSError, ... for modes it cannot map
        raise ImageError(f"{name}: unsupported image ({_reason(error)})") from error
    if not isinstance(gray, Image.Image) and not np.isfinite(gray).all():
        raise ImageError(f"{name}: holds NaN or infinite pixel values")
    scale = (stored[0] / shrunk[0], stored[1] / shrunk[1])
    return Page(name, gray, scale, raw)


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF rotation of phone photos; a damaged EXIF block is ignored, not fatal."""
    try:
        if not image.getexif():  # most images carry none: no need to import ImageOps
            return image
        from PIL import ImageOps

        return ImageOps.exif_transpose(image)
    except Exception:  # SyntaxError, ValueError, ... from malformed EXIF data
        return image
