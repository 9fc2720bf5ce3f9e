"""Finding the digits of a number: pieces of ink, parts put together, dust, lines, cuts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_cli.data import load_split
from mnist_cli.infer.preprocessing import Page
from mnist_cli.infer.segmentation import Piece, find_pieces, join_by_recognition, split_touching


def ink_of(draw_on) -> np.ndarray:
    """The ink of a white 300x120 page that `draw_on(ImageDraw)` drew on in black."""
    page = Image.new("L", (300, 120), 255)
    draw_on(ImageDraw.Draw(page))
    return Page("test", page).ink()[0]


def boxes(lines) -> list[list[tuple[int, int, int, int]]]:
    return [[piece.box for piece in line] for line in lines]


def test_separate_digits_are_found_left_to_right_whatever_their_baseline():
    def draw(page):
        page.line([(200, 30), (200, 100)], fill=0, width=8)  # drawn first, rightmost
        page.ellipse([20, 10, 70, 80], outline=0, width=8)  # higher
        page.line([(120, 40), (120, 110)], fill=0, width=8)  # lower

    (line,) = find_pieces(ink_of(draw))  # boxes in the crop of the ink
    assert [piece.width > 40 for piece in line] == [True, False, False]  # the ring first
    assert [piece.box[0] for piece in line] == sorted(piece.box[0] for piece in line)


def test_the_parts_of_one_digit_are_put_together():
    def five(page):  # a 5 whose top bar was drawn apart from its body
        page.line([(60, 20), (100, 20)], fill=0, width=8)
        page.line([(60, 32), (60, 55)], fill=0, width=8)
        page.arc([50, 45, 110, 105], 250, 160, fill=0, width=8)

    (line,) = find_pieces(ink_of(five))
    assert len(line) == 1


def test_dust_and_a_dot_are_dropped_and_a_stray_part_joins_its_digit():
    def draw(page):
        page.line([(50, 20), (50, 100)], fill=0, width=8)
        page.line([(150, 20), (150, 100)], fill=0, width=8)
        page.ellipse([250, 95, 256, 101], fill=0)  # a dot far from both
        page.point([(100, 5), (290, 110)], fill=0)  # specks
        page.line([(160, 60), (175, 70)], fill=0, width=6)  # a stray tail touching nothing

    (line,) = find_pieces(ink_of(draw))
    assert len(line) == 2 and line[1].width >= 20  # the tail is the second digit's


def test_a_small_digit_among_its_line_is_kept_though_under_half_the_tallest():
    def draw(page):
        page.line([(30, 5), (30, 115)], fill=0, width=8)  # one tall digit, 110 px
        page.ellipse([80, 35, 130, 105], outline=0, width=8)  # two of 70 px
        page.ellipse([160, 35, 210, 105], outline=0, width=8)
        page.ellipse([240, 65, 270, 110], outline=0, width=6)  # a small 0: 45 px, half of 70+
        page.line([(285, 100), (295, 100)], fill=0, width=4)  # a dash: dropped

    (line,) = find_pieces(ink_of(draw))
    assert [piece.height >= 40 for piece in line] == [True] * 4, boxes([line])


def test_digits_whose_baselines_wander_by_over_half_their_height_are_one_line():
    def draw(page):  # 70 px strokes, each 40 px lower than the last: 30 px shared, not half
        for x, y in [(40, 5), (80, 45), (120, 5)]:
            page.line([(x, y), (x, y + 70)], fill=0, width=8)

    (line,) = find_pieces(ink_of(draw))
    assert len(line) == 3


@pytest.mark.parametrize(("drop", "pitch"), [(9, 95), (12, 80), (20, 100), (-12, 80)])
def test_two_slanting_lines_close_together_stay_two(drop, pitch):
    # 8 strokes 60 px tall a line, each `drop` px lower than the last (slopes 0.18 to 0.4, or
    # rising): the end of one line lies level with the start of the next, far across
    page = Image.new("L", (420, 400), 255)
    draw = ImageDraw.Draw(page)
    for row in range(2):
        for index in range(8):
            x, y = 20 + 50 * index, 100 + pitch * row + drop * index
            draw.line([(x, y), (x, y + 60)], fill=0, width=8)
    lines = find_pieces(Page("test", page).ink()[0])
    assert [len(line) for line in lines] == [8, 8], boxes(lines)
    assert all([p.box[0] for p in line] == sorted(p.box[0] for p in line) for line in lines)


def test_two_numbers_far_apart_across_are_one_line():
    def draw(page):  # "11" and "11" with 200 px between: over three heights apart
        for x in (10, 40, 270, 290):
            page.line([(x, 30), (x, 90)], fill=0, width=8)

    (line,) = find_pieces(ink_of(draw))
    assert [piece.box[0] < 150 for piece in line] == [True, True, False, False], boxes([line])


def test_a_number_far_along_is_placed_by_all_its_digits_not_the_nearest_alone():
    # "12", then far to the right "34" written higher, its 4 lower than its 3: the 2 shares
    # under half its rows with the 3 alone, over half with the 3 and the 4
    page = Image.new("L", (640, 140), 255)
    draw = ImageDraw.Draw(page)
    for box in [(20, 53, 55, 111), (72, 52, 109, 111), (497, 20, 536, 80), (550, 33, 593, 91)]:
        draw.ellipse(box, outline=0, width=6)
    (line,) = find_pieces(Page("test", page).ink()[0])
    assert len(line) == 4, boxes([line])


def test_a_digit_that_fits_two_lines_beside_it_makes_them_one():
    # a 4, a 2 lower and a 7 between the two in height: the 7 alone shares too little with
    # the 4 and starts a line; the 2 fits both lines, and the three are one number
    page = Image.new("L", (200, 130), 255)
    draw = ImageDraw.Draw(page)
    for box in [(20, 20, 58, 71), (88, 44, 125, 103), (145, 50, 173, 94)]:
        draw.ellipse(box, outline=0, width=6)
    (line,) = find_pieces(Page("test", page).ink()[0])
    assert len(line) == 3, boxes([line])


def test_a_flat_digit_is_kept_as_a_minor_piece_and_a_dash_dropped():
    def draw(page):
        page.line([(30, 10), (30, 110)], fill=0, width=8)  # two digits 100 px tall
        page.ellipse([60, 10, 120, 110], outline=0, width=8)
        page.ellipse([150, 65, 220, 110], outline=0, width=8)  # 45 px high, 70 wide: flat
        page.line([(240, 90), (280, 90)], fill=0, width=6)  # a dash, far from all

    (line,) = find_pieces(ink_of(draw))
    assert [piece.minor for piece in line] == [False, False, True], boxes([line])


def test_lines_are_read_top_to_bottom():
    page = Image.new("L", (200, 260), 255)
    draw = ImageDraw.Draw(page)
    for x, y in [(30, 150), (100, 20), (30, 20), (100, 150)]:
        draw.line([(x, y), (x, y + 80)], fill=0, width=8)
    lines = find_pieces(Page("test", page).ink()[0])
    assert [[piece.box[0] < 60 for piece in line] for line in lines] == [[True, False]] * 2
    assert lines[0][0].box[1] < lines[1][0].box[1]


def test_a_blank_page_has_no_pieces():
    assert find_pieces(np.zeros((50, 50), np.float32)) == []


def _upright(digit: np.ndarray) -> bool:
    """Whether a 28x28 digit's ink is at most as wide as it is tall."""
    rows, cols = np.flatnonzero(digit.max(1) > 0.5), np.flatnonzero(digit.max(0) > 0.5)
    return np.ptp(cols) <= np.ptp(rows)


def test_touching_digits_are_cut_where_the_scorer_reads_both_sides_best():
    def two_ones(page):  # two strokes joined by a bridge: one piece, wider than tall
        page.line([(40, 30), (40, 70)], fill=0, width=8)
        page.line([(100, 30), (100, 70)], fill=0, width=8)
        page.line([(40, 50), (100, 50)], fill=0, width=3)

    ink = ink_of(two_ones)
    ((piece,),) = find_pieces(ink)
    assert piece.width > 1.1 * piece.height

    def upright_is_sure(digits):  # a "model" sure of upright shapes only
        sure = np.array([0.99 if _upright(digit) else 0.05 for digit in digits])
        return sure, 1 - sure

    parts = split_touching(piece, ink, upright_is_sure, "test")
    assert len(parts) == 2 and parts[0].box[2] <= parts[1].box[0] + 1
    assert parts[0].box[0] == piece.box[0] and parts[1].box[2] == piece.box[2]

    def wide_is_sure(digits):  # a "model" that reads the whole surely: it stays one piece
        sure = np.array([0.01 if _upright(digit) else 0.99 for digit in digits])
        return sure, 1 - sure

    assert [part.box for part in split_touching(piece, ink, wide_is_sure, "test")] == [piece.box]


def test_a_piece_read_unsure_is_joined_to_its_neighbour_where_the_two_read_surely():
    def nine(page):  # a 9's ring and, 4 px to its right, its tail come apart
        page.arc([40, 20, 90, 90], 60, 300, fill=0, width=8)
        page.line([(88, 20), (88, 100)], fill=0, width=8)

    ink = ink_of(nine)
    (line,) = find_pieces(ink)
    assert len(line) == 2

    def scorer(stroke: float):
        def score(digits):  # by the ink's width over its height: stroke, ring, both
            ratios = [np.ptp(np.flatnonzero(d.max(0) > 0.5)) / 20 for d in digits]
            sure = np.array([stroke if r < 0.3 else 0.95 if r < 0.65 else 0.97 for r in ratios])
            return sure, 1 - sure

        return score

    assert len(join_by_recognition(line, ink, scorer(0.6), "test")) == 1  # an unsure stroke
    assert len(join_by_recognition(line, ink, scorer(0.95), "test")) == 2  # a sure 1 stays

    def two(page):  # two digits 4 px apart, the pair half as wide again as tall
        page.ellipse([20, 20, 70, 90], outline=0, width=8)
        page.ellipse([74, 20, 124, 90], outline=0, width=8)

    ink = ink_of(two)
    (line,) = find_pieces(ink)

    def unsure_of_each(digits):  # each read at 78%, the pair as a digit at 97%
        wide = [np.ptp(np.flatnonzero(d.max(0) > 0.5)) > 16 for d in digits]
        sure = np.array([0.97 if w else 0.78 for w in wide])
        return sure, 1 - sure

    assert len(line) == 2 and len(join_by_recognition(line, ink, unsure_of_each, "test")) == 2


def test_pieces_one_partly_over_the_other_are_joined_though_each_reads_surely():
    # A 9 whose loop and stem came apart reads as a sure 0 and a sure 1; digits of a line sit
    # side by side, so the stem lying partly under the loop is what gives it away.
    def ink_and_pieces(stem_left: int):
        page = Image.new("L", (200, 120), 0)
        draw = ImageDraw.Draw(page)
        draw.ellipse([10, 10, 60, 60], outline=255, width=8)
        draw.line([(stem_left + 15, 64), (stem_left + 15, 110)], fill=255, width=8)
        ink = np.asarray(page, np.float32) / 255
        boxes = [(10, 10, 61, 61), (stem_left + 11, 62, stem_left + 20, 111)]
        return ink, [Piece(b, ink[b[1] : b[3], b[0] : b[2]] > 0.5) for b in boxes]

    def score(digits):  # each part read at 95%, the two together at 97%
        wide = [np.ptp(np.flatnonzero(d.max(0) > 0.5)) > 12 for d in digits]
        tall = [np.ptp(np.flatnonzero(d.max(1) > 0.5)) > 19 for d in digits]
        sure = np.array([0.97 if w and t else 0.95 for w, t in zip(wide, tall, strict=True)])
        return sure, 1 - sure

    under, beside = ink_and_pieces(40), ink_and_pieces(62)  # under the loop's right side; not
    assert len(join_by_recognition(under[1], under[0], score, "test")) == 1
    assert len(join_by_recognition(beside[1], beside[0], score, "test")) == 2


def test_a_short_piece_read_surely_is_joined_to_its_neighbour_where_the_two_read_surely():
    # A 4 whose short arm came apart from its stem reads as two sure 1s; two 1s of a number
    # are each as tall as the line, and stay two.
    def pieces_of(arm_top: int):
        def draw(page):
            page.line([(40, arm_top), (40, 100)], fill=0, width=8)  # the arm (or a 1)
            page.line([(52, 20), (52, 100)], fill=0, width=8)  # the stem, 4 px to its right

        ink = ink_of(draw)
        (line,) = find_pieces(ink)
        return ink, line

    def score(digits):  # every piece, and any two together, read at 97%
        return np.full(len(digits), 0.97), np.full(len(digits), 0.03)

    ink, line = pieces_of(arm_top=55)  # the arm 45 px of the stem's 80
    assert len(line) == 2 and len(join_by_recognition(line, ink, score, "test")) == 1
    ink, line = pieces_of(arm_top=20)  # as tall as the stem: a 1 beside a 1
    assert len(line) == 2 and len(join_by_recognition(line, ink, score, "test")) == 2


def test_mnist_digits_each_make_one_piece(data_dir):
    test = load_split(data_dir, "test")
    for image in test.images[:50]:
        scan = Image.fromarray(255 - image).resize((112, 112), Image.BILINEAR)
        assert [len(line) for line in find_pieces(Page("test", scan).ink()[0])] == [1]


def test_the_near_ink_of_a_piece_is_its_5x5_dilation():
    from PIL import ImageFilter

    rng = np.random.default_rng(0)
    for _ in range(100):  # a 5x5 box blur is above 0 exactly where a 5x5 maximum is set
        mask = rng.random(tuple(rng.integers(3, 60, 2))) < rng.uniform(0.01, 0.3)
        image = Image.fromarray(mask.astype(np.uint8) * 255)
        dilated = np.asarray(image.filter(ImageFilter.MaxFilter(5))) > 0
        assert np.array_equal(np.asarray(image.filter(ImageFilter.BoxBlur(2))) > 0, dilated)


def _flood_count(mask: np.ndarray) -> int:
    """8-connected parts of a mask, by a plain flood fill."""
    seen, parts = np.zeros_like(mask), 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        parts, stack = parts + 1, [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            for ny in range(max(y - 1, 0), min(y + 2, mask.shape[0])):
                for nx in range(max(x - 1, 0), min(x + 2, mask.shape[1])):
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
    return parts


def test_the_parts_found_are_those_a_flood_fill_finds(monkeypatch):
    from mnist_cli.infer import segmentation

    monkeypatch.setattr(segmentation, "_SPECK", 0.0)  # count every part, specks too
    rng = np.random.default_rng(1)
    for _ in range(200):
        mask = rng.random(tuple(rng.integers(1, 30, 2))) < rng.uniform(0.05, 0.6)
        parts = segmentation.components(mask)
        assert len(parts) == _flood_count(mask)
        assert sum(part.area for part in parts) == mask.sum()
