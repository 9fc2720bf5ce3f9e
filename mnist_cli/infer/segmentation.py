"""Finding each digit of a written number: the ink's connected parts, the parts of one digit
put back together, specks dropped, touching digits split where the model reads the halves
best, and the digits ordered in lines, left to right.

numpy and Pillow only, like the rest of the reading side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from mnist_cli.infer.preprocessing import INK, fit_digit

# A part is another's piece (a 5's bar, a 9's loose tail, half of a broken 4) when it lies over
# at least this share of the narrower one's width...
_OVERLAP = 0.5
# ...and is shorter than this share of the taller one's height, or lies almost wholly over it,
_PART_HEIGHT = 0.75
_INSIDE = 0.8
# ...and the gap between them is under this share of the taller's height; or their boxes share
# this much of the smaller one's area.
_GAP = 0.25
_SHARED = 0.3
# A piece under this share of the tallest's height is a stray part of the digit it touches or
# nearly touches (within _NEAR of that height), or else dust, a dot or a dash: never a digit.
_SMALL, _NEAR = 0.5, 0.1
# A small piece that joins no digit but is at least this share of the typical height both high
# and wide may be a digit written small or flat (an MNIST 2 or 5 is often half as high as
# wide): it is kept as a minor piece, read only where the model reads it surely.
_MINOR = 0.3
# A piece is in a line when it shares this much of its height, or of the rows of the line's
# pieces within _NEIGHBOURS of the taller's height across (its nearest one, where none is).
_SAME_LINE, _NEIGHBOURS = 0.5, 2.0
# ...and two lines are one where two pieces of them, under _BESIDE of the shorter's height
# apart, share _WANDER of its height: a baseline wanders from digit to digit, not across a page.
_WANDER, _BESIDE = 0.3, 0.5
_SPECK = 0.01  # a part with under this share of the largest part's pixels is noise
MAX_MARKS = 400  # parts left after specks at most: more is noise or text, not a number
# A piece read less surely than this, or lying partly over its neighbour (sharing _STACKED of
# the narrower's columns), or shorter than _SHORT of the line's tallest, is joined to the
# neighbour where the two read together as surely (a 2 whose loop came apart; a 9 whose loop
# and stem read as a 0 over a 1; a 4 whose short arm and stem read as two 1s).
_JOINED, _STACKED, _SHORT = 0.9, 0.3, 0.8
WIDE = 1.1  # width over height from which a piece may be two touching digits
_CUTS = 7  # candidate columns per piece: up to eight touching digits
# A cut must make the reading this many times likelier than the whole read as one digit (the
# product of the parts' confidences): a wide 0 or 2, which the whole reads surely, stays whole.
_SPLIT_GAIN = 10.0
_ONEWIDE, _WIDTH_PENALTY = 1.3, 4.0  # a digit is rarely wider than 1.3 x its height
# How much a reading as no digit weighs against a cut: two touching digits that the model
# calls "none" are cut, a letter whose strokes look like 1s is not.
_NONE_WEIGHT = 0.5


@dataclass(eq=False)  # pieces are told apart by identity, not by their pixels
class Piece:
    """Ink that is read as one digit: its box in the image (left, top, right, bottom) and which
    of the box's pixels are its own."""

    box: tuple[int, int, int, int]
    mask: np.ndarray  # bool, the box's shape
    minor: bool = False  # small for its line: a digit only if read surely, else dropped

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def digit(self, ink: np.ndarray, name: str) -> np.ndarray:
        """This piece as a 28x28 digit: its own ink (and the faint edge around it) in its box,
        scaled and centred as a lone digit is."""
        left, top, right, bottom = self.box
        # within 2 px of its own: a 5x5 box blur is above 0 exactly where a 5x5 maximum is set
        near = Image.fromarray(self.mask.astype(np.uint8) * 255).filter(ImageFilter.BoxBlur(2))
        return fit_digit(np.where(np.asarray(near) > 0, ink[top:bottom, left:right], 0), name)


def find_pieces(ink: np.ndarray) -> list[list[Piece]]:
    """The pieces of ink that look like digits, as lines from top to bottom, each left to
    right; touching digits are still one piece (see `split_touching`).

    Pieces are the 8-connected parts of the clear ink (over INK); specks (_SPECK) are dropped.
    A piece under _SMALL of the typical height (the median of the pieces not under _SMALL of
    the tallest, so a small digit beside large ones stays) joins the digit it nearly touches;
    else it is a dot or dash, dropped, unless it is at least _MINOR of that height both high
    and wide: then it is kept as `minor`. TooManyMarks where there are over MAX_MARKS parts.
    """
    pieces = _join_parts(components(ink > INK))
    if not pieces:
        return []
    tallest = max(piece.height for piece in pieces)
    typical = float(np.median([p.height for p in pieces if p.height >= _SMALL * tallest]))
    kept = [piece for piece in pieces if piece.height >= _SMALL * typical]
    minor = []
    for stray in (piece for piece in pieces if piece.height < _SMALL * typical):
        near = [(_gap(stray, piece), i) for i, piece in enumerate(kept)]
        gap, nearest = min(near)
        if gap <= _NEAR * tallest:
            kept[nearest] = _merged(kept[nearest], stray)
        elif min(stray.height, stray.width) >= _MINOR * typical:
            minor.append(Piece(stray.box, stray.mask, minor=True))
    return _lines(kept + minor)


def _gap(a: Piece, b: Piece) -> float:
    """Pixels between two pieces, across and down (0 where their boxes meet or overlap)."""
    down = max(a.box[1] - b.box[3], b.box[1] - a.box[3], 0)
    return float(np.hypot(_across(a, b), down))


def components(mask: np.ndarray) -> list[Piece]:
    """The 8-connected parts of a mask, found over its runs of set pixels (union-find)."""
    height, width = mask.shape
    padded = np.zeros((height, width + 2), np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)
    ends = np.nonzero(edges == -1)[1]
    count = len(rows)
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(height + 1)).tolist()
    starts_l, ends_l = starts.tolist(), ends.tolist()
    for row in range(1, height):
        above, here = first[row - 1], first[row]
        above_end, here_end = here, first[row + 1]
        while above < above_end and here < here_end:
            # runs [s, e) touch, diagonals included, when each starts at or before the other's end
            if starts_l[above] <= ends_l[here] and starts_l[here] <= ends_l[above]:
                a, b = root(above), root(here)
                if a != b:
                    parent[b] = a
            if ends_l[above] < ends_l[here]:
                above += 1
            else:
                here += 1
    if not count:
        return []
    labels = np.array([root(i) for i in range(count)], dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    firsts = np.flatnonzero(np.diff(labels[order], prepend=-1))  # each part's first run
    areas = np.add.reduceat((ends - starts)[order], firsts)
    groups = np.split(order, firsts[1:])
    kept = [
        group for group, area in zip(groups, areas, strict=True) if area >= _SPECK * areas.max()
    ]
    if len(kept) > MAX_MARKS:  # noise or a page of text: refused before any pairwise work
        raise TooManyMarks(len(kept))
    if len(groups) == 1:  # one part (a lone digit, mostly): the mask is its own
        top, left = int(rows[0]), int(starts.min())
        bottom, right = int(rows[-1]) + 1, int(ends.max())
        return [Piece((left, top, right, bottom), mask[top:bottom, left:right])]
    return [_piece(rows[group], starts[group], ends[group]) for group in kept]


class TooManyMarks(Exception):
    """More separate marks than a reading of digits should look at."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} separate marks")
        self.count = count


def _piece(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> Piece:
    top, bottom = int(rows.min()), int(rows.max()) + 1
    left, right = int(starts.min()), int(ends.max())
    mask = np.zeros((bottom - top, right - left), bool)
    for row, start, end in zip(
        (rows - top).tolist(), (starts - left).tolist(), (ends - left).tolist(), strict=True
    ):
        mask[row, start:end] = True
    return Piece((left, top, right, bottom), mask)


def _merged(a: Piece, b: Piece) -> Piece:
    left, top = min(a.box[0], b.box[0]), min(a.box[1], b.box[1])
    right, bottom = max(a.box[2], b.box[2]), max(a.box[3], b.box[3])
    mask = np.zeros((bottom - top, right - left), bool)
    for piece in (a, b):
        x, y = piece.box[0] - left, piece.box[1] - top
        mask[y : y + piece.height, x : x + piece.width] |= piece.mask
    return Piece((left, top, right, bottom), mask, minor=a.minor and b.minor)


def _columns_shared(a: Piece, b: Piece) -> int:
    """How many columns two pieces' boxes share (negative: how far apart they are)."""
    return min(a.box[2], b.box[2]) - max(a.box[0], b.box[0])


def _belong_together(a: Piece, b: Piece) -> bool:
    """Whether two pieces are parts of one digit: one lies over the other, close above or
    below it, and is a part (shorter), or nearly inside its columns."""
    overlap = _columns_shared(a, b)
    narrower = min(a.width, b.width)
    if overlap < _OVERLAP * narrower:
        return False
    shared = overlap * (min(a.box[3], b.box[3]) - max(a.box[1], b.box[1]))
    if shared >= _SHARED * min(a.width * a.height, b.width * b.height):
        return True  # tangled in one another, as the strokes of one shape
    taller = max(a.height, b.height)
    gap = max(a.box[1], b.box[1]) - min(a.box[3], b.box[3])
    if gap > _GAP * taller:
        return False
    return min(a.height, b.height) < _PART_HEIGHT * taller or overlap >= _INSIDE * narrower


def _join_parts(pieces: list[Piece]) -> list[Piece]:
    """Put the parts of each digit together, until no two belong together."""
    pieces = sorted(pieces, key=lambda piece: -piece.area)
    joined = True
    while joined:
        joined = False
        for i, a in enumerate(pieces):
            for j in range(i + 1, len(pieces)):
                if _belong_together(a, pieces[j]):
                    pieces[i] = _merged(a, pieces.pop(j))
                    joined = True
                    break
            if joined:
                break
    return pieces


def _lines(pieces: list[Piece]) -> list[list[Piece]]:
    """Pieces grouped in lines (each sharing half its height with the line's pieces near it
    across, or whose neighbours share less: _WANDER), top to bottom; each line left to right.
    Baselines may wander and digits differ in size within a line; a line may slant, as close
    as the line under it, without the two running together."""
    lines: list[list[Piece]] = []
    for piece in sorted(pieces, key=lambda piece: piece.box[1] + piece.box[3]):
        beside, far = [], []  # lines it shares its rows with: near it across, or only far off
        for number, line in enumerate(lines):
            apart = [_across(piece, other) for other in line]
            reach = [_NEIGHBOURS * max(piece.height, other.height) for other in line]
            nearest = min(apart)
            close = [o for o, a, r in zip(line, apart, reach, strict=True) if a <= r]
            # else the line's nearest digits: a number further along the line
            near = close or [
                o for o, a, r in zip(line, apart, reach, strict=True) if a <= nearest + r
            ]
            top, bottom = min(p.box[1] for p in near), max(p.box[3] for p in near)
            shared = min(bottom, piece.box[3]) - max(top, piece.box[1])
            if shared < _SAME_LINE * min(piece.height, bottom - top):
                continue
            if close:
                beside.append(line)
            else:
                far.append((nearest, number, line))
        if beside:  # a piece between two lines' digits makes them one
            first, *others = beside
            for other in others:
                first.extend(other)
            lines = [line for line in lines if not any(line is other for other in others)]
            first.append(piece)
        elif far:
            min(far)[2].append(piece)
        else:
            lines.append([piece])
    if len(lines) > 1:
        lines = _wandering(lines)
    lines.sort(key=lambda line: min(p.box[1] for p in line))
    return [sorted(line, key=lambda piece: piece.box[0] + piece.box[2]) for line in lines]


def _across(a: Piece, b: Piece) -> int:
    """Columns between two pieces (0 where their boxes share a column)."""
    return max(a.box[0] - b.box[2], b.box[0] - a.box[2], 0)


def _wandering(lines: list[list[Piece]]) -> list[list[Piece]]:
    """Lines joined where a piece of one and a piece of the other are neighbours (under
    _BESIDE of the shorter's height apart across) sharing _WANDER of the shorter's height."""
    pieces = [piece for line in lines for piece in line]
    label = np.repeat(np.arange(len(lines)), [len(line) for line in lines])
    left, top, right, bottom = np.array([piece.box for piece in pieces], float).T
    shorter = np.minimum.outer(bottom - top, bottom - top)
    apart = np.subtract.outer(left, right)  # [i, j]: how far j's right end is left of i
    across = np.maximum(apart, apart.T)
    shared = np.minimum.outer(bottom, bottom) - np.maximum.outer(top, top)
    near = (across <= _BESIDE * shorter) & (shared >= _WANDER * shorter)
    parent = list(range(len(lines)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(near & (label[:, None] != label[None, :])), strict=True):
        a, b = root(int(label[i])), root(int(label[j]))
        if a != b:
            parent[max(a, b)] = min(a, b)
    joined: dict[int, list[Piece]] = {}
    for index, line in enumerate(lines):
        joined.setdefault(root(index), []).extend(line)
    return list(joined.values())


def _span(piece: Piece, start: int, end: int) -> Piece | None:
    """The piece's columns [start, end) as a piece trimmed to its ink; None if they hold none."""
    mask = piece.mask[:, start:end]
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    trimmed = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    left, top = piece.box[0] + start + int(cols[0]), piece.box[1] + int(rows[0])
    return Piece((left, top, left + trimmed.shape[1], top + trimmed.shape[0]), trimmed)


def _candidate_columns(piece: Piece, count: int = _CUTS) -> list[int]:
    """Where touching digits most likely meet: the `count` columns of least ink, a few apart,
    leaving each side at least a thin 1's width."""
    profile = np.convolve(piece.mask.sum(0).astype(float), np.ones(3) / 3, mode="same")
    margin = max(2, round(0.1 * piece.height))
    inner = np.arange(margin, piece.width - margin)
    chosen: list[int] = []
    for column in inner[np.argsort(profile[inner], kind="stable")].tolist():
        if all(abs(column - other) >= margin for other in chosen):
            chosen.append(column)
        if len(chosen) == count:
            break
    return sorted(chosen)


def _shape_odds(part: Piece) -> float:
    """How likely a piece this wide is one digit: 1 up to a little wider than tall, falling
    fast beyond (two digits side by side are about twice as wide as tall)."""
    return float(np.exp(-_WIDTH_PENALTY * max(0.0, part.width / part.height - _ONEWIDE)))


# 28x28 images -> how sure the model is that each is a digit (0 where it refuses it), and
# that each is none (0 for a model without the class)
Scorer = Callable[[list[np.ndarray]], tuple[np.ndarray, np.ndarray]]


def join_by_recognition(
    line: list[Piece], ink: np.ndarray, score: Scorer, name: str
) -> list[Piece]:
    """A line's pieces, each that the model calls no digit or reads under _JOINED, or that lies
    partly over its neighbour, or is short for the line (_SHORT), joined to the neighbour it
    touches or nearly touches where the two read together as a digit at least _JOINED surely,
    times how likely their width is for one digit (a 9 whose tail came apart, a broken 0; not
    a 2 and a 4 that the model reads together as a wide 4)."""
    if len(line) < 2:
        return line
    sure, _ = score([piece.digit(ink, name) for piece in line])
    tallest = max(piece.height for piece in line)
    pieces, sure = list(line), list(sure)
    index = 0
    while index < len(pieces):
        options = [
            other
            for other in (index - 1, index + 1)
            if 0 <= other < len(pieces)
            and _gap(pieces[index], pieces[other]) <= _NEAR * tallest
            and (
                sure[index] < _JOINED
                or _stacked(pieces[index], pieces[other])
                or pieces[index].height < _SHORT * tallest
            )
        ]
        if not options:
            index += 1
            continue
        unions = [_merged(pieces[index], pieces[other]) for other in options]
        together, _ = score([union.digit(ink, name) for union in unions])
        together = together * np.array([_shape_odds(union) for union in unions])
        best = int(np.argmax(together))
        if together[best] >= _JOINED:
            low = min(index, options[best])
            pieces[low : low + 2] = [unions[best]]
            sure[low : low + 2] = [float(together[best])]
            index = low + 1
            continue
        index += 1
    return pieces


def _stacked(a: Piece, b: Piece) -> bool:
    """Whether one piece lies partly over the other: they share _STACKED of the narrower's
    columns, as two parts of one digit do and two digits of a line seldom do."""
    return _columns_shared(a, b) >= _STACKED * min(a.width, b.width)


def surely_whole(piece: Piece, sure: float) -> bool:
    """Whether a piece read as a digit this surely is one: no cut could beat it."""
    return sure * _shape_odds(piece) >= 1 / _SPLIT_GAIN


def split_touching(
    piece: Piece,
    ink: np.ndarray,
    score: Scorer,
    name: str,
    *,
    wide: float = WIDE,
    none_weight: float = _NONE_WEIGHT,
    cuts: int = _CUTS,
    part_sure: float = 0.0,
) -> list[Piece]:
    """A piece at least `wide` times as wide as tall cut into the digits the model reads best
    (segmentation by recognition). Of all ways to cut it at its likeliest columns, the one
    whose parts' confidences (times how likely each part's width is) multiply highest, each
    part after the first costing _SPLIT_GAIN; it is taken if it beats reading the piece whole
    as one digit, and as no digit at all (weighed by `none_weight`, and even with a cut in two
    parts: a scribble cut into six "digits" loses). At most `cuts` columns are tried; a part
    read less surely than `part_sure` is no part of any cut."""
    if piece.width < wide * piece.height:
        return [piece]
    sure, _ = score([piece.digit(ink, name)])
    if surely_whole(piece, float(sure[0])):
        return [piece]
    cuts = [0, *_candidate_columns(piece, cuts), piece.width]
    last = len(cuts) - 1
    spans = {}
    for i in range(len(cuts)):
        for j in range(i + 1, len(cuts)):
            part = _span(piece, cuts[i], cuts[j])
            if part is not None and part.height >= _SMALL * piece.height:  # else no digit
                spans[i, j] = part
    if (0, last) not in spans:
        return [piece]
    sure, none = score([part.digit(ink, name) for part in spans.values()])
    odds = {
        span: max(float(p), 1e-9) * _shape_odds(part)
        for (span, part), p in zip(spans.items(), sure, strict=True)
        if p >= part_sure or span == (0, last)
    }
    whole = list(spans).index((0, last))
    gain = np.log(_SPLIT_GAIN)
    # cut index -> (log likelihood, each part after the first costing `gain`; parts so far),
    # over two parts or more at the end
    best: dict[int, tuple[float, list[Piece]]] = {0: (gain, [])}
    for j in range(1, len(cuts)):
        options = [
            (best[i][0] + np.log(odds[i, j]) - gain, [*best[i][1], spans[i, j]])
            for i in range(j)
            if i in best and (i, j) in odds and (i, j) != (0, last)
        ]
        if options:
            best[j] = max(options, key=lambda option: option[0])
    if last not in best:
        return [piece]
    cut, parts = best[last]
    as_digit = np.log(odds[0, last])
    as_none = np.log(max(none_weight * float(none[whole]), 1e-9)) - gain  # two parts: even
    return parts if cut > max(as_digit, as_none) else [piece]
