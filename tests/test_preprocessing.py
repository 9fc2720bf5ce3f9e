from __future__ import annotations

import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from PIL import Image, ImageDraw

from mnist_cli.infer.preprocessing import (
    ImageError,
    digit_from_array,
    load_digit,
    open_image,
    to_grayscale,
)


def centre_of_mass(digit: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(digit.shape)
    return (rows * digit).sum() / digit.sum(), (cols * digit).sum() / digit.sum()


def drawn_seven(size=(200, 160), ink=0, paper=255, offset=(0, 0), mode="L") -> Image.Image:
    image = Image.new(mode, size, paper)
    draw = ImageDraw.Draw(image)
    x, y = offset
    draw.line([(40 + x, 30 + y), (120 + x, 30 + y), (70 + x, 140 + y)], fill=ink, width=12)
    return image


def test_result_is_mnist_shaped():
    digit = digit_from_array(np.asarray(drawn_seven(), dtype=np.float32) / 255)
    assert digit.shape == (28, 28) and digit.dtype == np.float32
    assert digit.min() >= 0 and digit.max() == pytest.approx(1.0)


def test_polarity_detected_both_ways():
    dark_on_light = digit_from_array(np.asarray(drawn_seven(ink=0, paper=255)) / 255)
    light_on_dark = digit_from_array(np.asarray(drawn_seven(ink=255, paper=0)) / 255)
    assert np.abs(dark_on_light - light_on_dark).max() < 1e-5
    assert dark_on_light[0, 0] == 0  # background is black, as in MNIST


def test_off_centre_digit_is_centred_by_mass():
    image = np.zeros((300, 300), dtype=np.float32)
    image[20:80, 200:230] = 1.0  # a bar in the top right corner
    image[20:30, 200:260] = 1.0
    row, col = centre_of_mass(digit_from_array(image))
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5


def test_aspect_ratio_is_kept_and_fits_20():
    image = np.zeros((100, 100), dtype=np.float32)
    image[10:90, 45:55] = 1.0  # 80 tall, 10 wide
    digit = digit_from_array(image)
    rows, cols = np.nonzero(digit > 0.05)
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert height == 20 and 2 <= width <= 4


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "I;16", "L"])
def test_image_modes(tmp_path, mode):
    base = drawn_seven()
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base, dtype=np.uint16) * 257)
        assert image.mode == "I;16"
    else:
        image = base.convert(mode)
    path = tmp_path / f"seven-{mode.replace(';', '')}.png"
    image.save(path)
    reference = digit_from_array(np.asarray(base, dtype=np.float32) / 255)
    assert np.abs(load_digit(path) - reference).mean() < 0.02


def test_light_strokes_on_a_transparent_canvas(tmp_path):
    canvas = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).line([(200, 50), (210, 200)], fill=(255, 255, 255, 255), width=15)
    canvas.save(tmp_path / "stroke.png")
    digit = load_digit(tmp_path / "stroke.png")
    assert digit[0, 0] == 0 and digit.max() == pytest.approx(1.0)
    assert abs(centre_of_mass(digit)[1] - 14) <= 0.5


def test_one_pixel_and_very_large_images(tmp_path):
    Image.new("L", (1, 1), 255).save(tmp_path / "dot.png")
    with pytest.raises(ImageError, match="no digit found"):
        load_digit(tmp_path / "dot.png")  # one pixel: no contrast, so blank
    drawn_seven(size=(4000, 3000), offset=(3000, 2000)).save(tmp_path / "big.png")
    digit = load_digit(tmp_path / "big.png")
    assert digit.shape == (28, 28) and digit.sum() > 10


def test_blank_image_is_rejected(tmp_path):
    Image.new("RGB", (64, 64), (240, 230, 200)).save(tmp_path / "blank.jpg")
    with pytest.raises(ImageError, match="no digit found"):
        load_digit(tmp_path / "blank.jpg")


def test_raw_takes_mnist_style_images_as_they_are(tmp_path):
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[5:20, 13:15] = 255
    Image.fromarray(pixels).save(tmp_path / "raw.png")
    assert np.array_equal(load_digit(tmp_path / "raw.png", raw=True), pixels / 255)
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="needs a 28x28"):
        load_digit(tmp_path / "big.png", raw=True)


def test_huge_canvas_refused_before_decoding(tmp_path, monkeypatch):
    import mnist_cli.infer.preprocessing as preprocessing

    Image.new("L", (200, 200)).save(tmp_path / "wide.png")
    monkeypatch.setattr(preprocessing, "MAX_PIXELS", 100 * 100)
    with pytest.raises(ImageError, match="too large"):
        open_image(tmp_path / "wide.png")


def test_not_an_image(tmp_path):
    (tmp_path / "fake.png").write_text("hello")
    with pytest.raises(ImageError, match="not a readable image"):
        load_digit(tmp_path / "fake.png")


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas: a decompression bomb's calling card."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [8_000, 10_000, 50_000])  # ours, Pillow's warning, its error
def test_decompression_bomb_refused_before_decoding(tmp_path, side):
    (tmp_path / "bomb.png").write_bytes(png_declaring(side, side))
    with pytest.raises(ImageError, match=r"too large \(over 50,000,000 pixels\)"):
        open_image(tmp_path / "bomb.png")


def test_broken_files_each_get_a_reason(tmp_path):
    drawn_seven().save(tmp_path / "ok.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "ok.png").read_bytes()[:200])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    for name, reason in [
        ("truncated.png", "damaged image"),
        ("empty.jpg", "an empty file"),
        ("folder.png", "a folder"),
    ]:
        with pytest.raises(ImageError, match=reason):
            load_digit(tmp_path / name)


def test_unreadable_file(tmp_path, monkeypatch):
    drawn_seven().save(tmp_path / "secret.png")
    if os.geteuid() == 0:  # root reads anything: make the open fail as it would for a user
        real_open = Image.open

        def denied(path, *args, **kwargs):
            if str(path).endswith("secret.png"):
                raise PermissionError(13, "Permission denied")
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(Image, "open", denied)
    else:
        (tmp_path / "secret.png").chmod(0)
    with pytest.raises(ImageError, match="permission denied"):
        load_digit(tmp_path / "secret.png")


@settings(max_examples=150, deadline=None)
@given(
    arrays(
        np.float32,
        array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=80),
        elements=st.floats(0, 1, width=32),
    )
)
def test_any_array_gives_a_digit_or_no_digit_found(gray):
    try:
        digit = digit_from_array(gray)
    except ImageError as error:
        assert "no digit found" in error.message
        return
    assert digit.shape == (28, 28) and digit.dtype == np.float32
    assert digit.min() >= 0 and digit.max() <= 1


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["L", "RGB", "RGBA", "LA", "P", "I;16", "1", "CMYK", "F", "I"]),
    st.integers(1, 120),
    st.integers(1, 120),
    st.integers(0, 2**32 - 1),
)
def test_any_mode_and_size(mode, width, height, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    try:
        digit = digit_from_array(to_grayscale(image))
    except ImageError as error:
        assert "no digit found" in error.message
        return
    assert digit.shape == (28, 28) and digit.min() >= 0 and digit.max() <= 1


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 300), st.integers(0, 200))
def test_translation_does_not_change_the_result(dx, dy):
    reference = digit_from_array(np.asarray(drawn_seven(size=(500, 400))) / 255)
    moved = digit_from_array(np.asarray(drawn_seven(size=(500, 400), offset=(dx, dy))) / 255)
    assert np.abs(moved - reference).max() < 0.05


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    noise=st.floats(0, 0.2),
    seed=st.integers(0, 2**16),
)
def test_levels_and_floats_read_the_same(width, height, noise, seed):
    # 8-bit images are read as uint8 levels (counted, not sorted): the same digit as floats.
    rng = np.random.default_rng(seed)
    levels = np.asarray(drawn_seven().resize((width, height)), dtype=np.uint8)
    specks = rng.random(levels.shape) < noise
    levels = np.where(specks, rng.integers(0, 256, levels.shape), levels).astype(np.uint8)
    try:
        expected = digit_from_array(levels.astype(np.float32) / 255)
    except ImageError as error:
        with pytest.raises(ImageError, match=re.escape(error.message)):
            digit_from_array(levels)
        return
    assert np.array_equal(digit_from_array(levels), expected)


def test_specks_far_from_a_large_digit_do_not_move_it():
    clean = np.asarray(drawn_seven(size=(600, 500)), dtype=np.uint8)
    speckled = clean.copy()
    for row, col in [(10, 10), (580, 20), (300, 480), (590, 490)]:
        speckled[row : row + 2, col : col + 2] = 0  # dark specks on the light paper
    assert np.array_equal(digit_from_array(speckled), digit_from_array(clean))


def test_an_opaque_canvas_reads_as_its_luminance(tmp_path):
    # The serve page sends opaque RGBA: read as gray, the same as the same drawing in RGB.
    drawing = drawn_seven(size=(280, 280), ink=255, paper=0)
    drawing.convert("RGBA").save(tmp_path / "canvas.png")
    drawing.convert("RGB").save(tmp_path / "rgb.png")
    assert np.array_equal(load_digit(tmp_path / "canvas.png"), load_digit(tmp_path / "rgb.png"))


@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.7])
def test_the_speck_filter_is_a_5x5_median_filter(density):
    # Running sums give what Pillow's MedianFilter(5) gives, 15x faster on a 280x280 canvas.
    from PIL import ImageFilter

    from mnist_cli.infer.preprocessing import despeckle

    rng = np.random.default_rng(int(density * 100))
    for height, width in [(57, 57), (90, 200), (281, 263)]:
        mask = rng.random((height, width)) < density
        pillow = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MedianFilter(5))
        assert np.array_equal(despeckle(mask), np.asarray(pillow) > 127)


@pytest.mark.parametrize("side", [1000, 1100])  # under and over MAX_SIDE: shrunk or not
def test_a_16_bit_image_reads_the_same_at_any_size(tmp_path, side):
    # A 12-bit digit (0-4080) in a 16-bit PNG is on the 16-bit scale whether shrunk or not.
    seven = np.asarray(drawn_seven(size=(side, side), ink=255, paper=0).convert("L"))
    path = tmp_path / "twelve-bit.png"
    Image.fromarray(seven.astype(np.uint16) * 16).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I;16")
    with pytest.raises(ImageError, match="no digit found"):  # 4080 of 65535: too faint
        load_digit(path)


@pytest.mark.parametrize("side", [200, 2000])  # under and over MAX_SIDE: shrunk or not
def test_float_pixels_near_the_float32_limit_read_at_any_size(tmp_path, side):
    seven = np.asarray(drawn_seven(size=(side, side), ink=255, paper=0).convert("L"))
    values = np.where(seven > 127, 3e38, -3e38).astype(np.float32)  # finite, no NaN
    Image.fromarray(values, mode="F").save(tmp_path / "huge.tif")
    digit = load_digit(tmp_path / "huge.tif")
    assert digit.shape == (28, 28) and digit.max() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("label", "pen", "strokes"),
    [
        (2, 2, [[(0.3, 0.3), (0.5, 0.15), (0.7, 0.3), (0.3, 0.82), (0.72, 0.82)]]),
        (7, 3, [[(0.28, 0.2), (0.72, 0.2), (0.45, 0.85)]]),
    ],
)
def test_a_fine_pens_faint_strokes_stay_part_of_the_digit(label, pen, strokes):
    # Drawn with a fine pen on the 280 px pad and saved at 140 px, some lines run between
    # pixels and stay under a third of the ink's peak: the digit's box must still hold them.
    from mnist_cli.infer.backends import BUNDLED_MODELS, open_model
    from mnist_cli.infer.preprocessing import digit_from_array

    pad = Image.new("L", (280, 280), 255)
    for stroke in strokes:
        ImageDraw.Draw(pad).line([(x * 280, y * 280) for x, y in stroke], fill=0, width=pen)
    saved = np.asarray(pad.resize((140, 140), Image.BOX))
    digit = digit_from_array(saved)
    rows = np.flatnonzero(digit.max(1) > 0.1)
    assert rows[-1] - rows[0] >= 15  # the whole digit's height, not one stroke's
    assert np.array_equal(digit, digit_from_array(saved.astype(np.float32) / 255))  # both paths
    probabilities = open_model(BUNDLED_MODELS["onnxruntime"]).probabilities(digit[None, None])
    assert probabilities[0].argmax() == label
