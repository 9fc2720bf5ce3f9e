"""Reading digits from image files, in batches, through any opened model (see `backends`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from mnist_cli.data import NONE_INDEX
from mnist_cli.infer.backends import Backend, answers
from mnist_cli.infer.imagefiles import expand_paths
from mnist_cli.infer.preprocessing import MIN_CONTRAST, BlankImage, ImageError, Page, load_page
from mnist_cli.infer.segmentation import (
    WIDE,
    Piece,
    Scorer,
    TooManyMarks,
    find_pieces,
    join_by_recognition,
    split_touching,
    surely_whole,
)
from mnist_cli.options import PACKAGE_DIR

# A drawing, a photo and a stranger's handwriting: what `mnist predict` reads when given nothing.
SAMPLES = PACKAGE_DIR / "samples"


NOT_A_DIGIT = "not a digit"  # the reason given where no digit was read
# ...and where a digit was refused only for being read under --min-confidence: a number with
# such a digit is not given at all, rather than given short of it
UNDER_MIN = "read under --min-confidence"
WORD_GAP = 1.5  # digits further apart than 1.5 times their line's height are two numbers


@dataclass
class Reading:
    """One digit found in an image, or a part of it that is no digit (`digit` None)."""

    digit: int | None
    probabilities: list[float]  # of the ten digits
    box: tuple[int, int, int, int]  # left, top, right, bottom in the image file's pixels
    line: int = 0  # which line of writing, from the top
    image: np.ndarray | None = None  # the 28x28 digit the model saw, with keep_digits=True
    under_min: bool = False  # refused only for being read under --min-confidence

    @property
    def is_digit(self) -> bool:
        """Read as a digit: given, or refused only for being read under --min-confidence."""
        return self.digit is not None or self.under_min

    @property
    def reason(self) -> str | None:
        """Why this part was refused, where it was."""
        if self.digit is not None:
            return None
        return UNDER_MIN if self.under_min else NOT_A_DIGIT

    @property
    def confidence(self) -> float:
        return max(self.probabilities) if self.probabilities else 0.0

    def top(self, k: int) -> list[tuple[int, float]]:
        """The k likeliest digits of this reading, likeliest first."""
        order = np.argsort(self.probabilities)[::-1][:k]
        return [(int(d), self.probabilities[d]) for d in order]


@dataclass
class Prediction:
    """What was read in one file: its digits in reading order, or why none, or why the file
    could not be read."""

    path: str
    readings: list[Reading] = field(default_factory=list)
    error: str | None = None
    blank: bool = False  # no ink at all

    @property
    def digits(self) -> list[Reading]:
        """The readings that are digits (not refused)."""
        return [reading for reading in self.readings if reading.digit is not None]

    @property
    def text(self) -> str:
        """The digits read: "2024", "" when none. A space parts lines, digits far apart (over
        WORD_GAP of the line's height), and digits with something refused between them; ""
        where a digit was read under --min-confidence (UNDER_MIN)."""
        if self.doubted:
            return ""
        words = []
        for line in sorted({reading.line for reading in self.readings}):
            row = [reading for reading in self.readings if reading.line == line]
            height = float(np.median([reading.box[3] - reading.box[1] for reading in row]))
            word, last, apart = "", None, False
            for reading in row:
                if reading.digit is None:
                    apart = True
                    continue
                if last is not None and (apart or reading.box[0] - last.box[2] > WORD_GAP * height):
                    words.append(word)
                    word = ""
                word, last, apart = word + str(reading.digit), reading, False
            words += [word] if word else []
        return " ".join(words)

    @property
    def doubted(self) -> bool:
        """Whether a digit was refused for being read under --min-confidence."""
        return any(reading.under_min for reading in self.readings)

    @property
    def reason(self) -> str | None:
        """Why no text was read, where none was."""
        if self.error is not None:
            return None
        if self.doubted:
            return UNDER_MIN
        if self.digits:
            return None
        return f"{NOT_A_DIGIT} (blank)" if self.blank else NOT_A_DIGIT

    @property
    def one(self) -> Reading | None:
        """The digit, where exactly one was read (and none doubted)."""
        digits = self.digits
        return digits[0] if len(digits) == 1 and not self.doubted else None

    @property
    def digit(self) -> int | None:
        return self.one.digit if self.one else None

    @property
    def probabilities(self) -> list[float]:
        return self.one.probabilities if self.one else []

    @property
    def image(self) -> np.ndarray | None:
        return self.one.image if self.one else None

    @property
    def confidence(self) -> float:
        """How sure the reading is: that of its least sure digit (0 when none was read)."""
        return min((reading.confidence for reading in self.digits), default=0.0)

    def top(self, k: int) -> list[tuple[int, float]]:
        """The k likeliest digits of a one-digit reading ([] for none or several)."""
        return self.one.top(k) if self.one else []

    def to_dict(self) -> dict:
        """The JSON of `mnist predict --json` and of serve's /predict."""
        result: dict = {"path": self.path, "text": self.text}
        result["digits"] = [
            {
                "digit": reading.digit,
                "confidence": reading.confidence,
                "box": list(reading.box),
                "probabilities": reading.probabilities,
            }
            for reading in self.readings
        ]
        result["digit"] = self.digit
        if self.one:
            result["probabilities"] = self.probabilities
        if self.reason:
            result["reason"] = self.reason
        return result


def _batches(items: Iterable[tuple[str, str | None]], size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_pages(
    model: Backend,
    pages: Sequence[Page],
    *,
    single: bool = False,
    min_confidence: float = 0.0,
    keep_digits: bool = False,
) -> list[Prediction]:
    """Read each page's digits, all pages' digits run through the model as one batch.

    `single=True` reads each page as one digit, as a page that holds one digit is read anyway.
    A piece refused as no digit that could be two touching digits is tried cut, on its own; a
    small mark (`Piece.minor`) is a digit only where read surely beside digits, else dropped;
    a digit of a number read under _READ_AGAIN is read again shifted (_read_unsure_again).
    """
    if not 0 <= min_confidence <= 1:  # NaN too
        raise ValueError(f"min_confidence must be a probability from 0 to 1, not {min_confidence}")
    score = _scorer(model)
    found: list[list[_Segment] | None | str] = []
    for page in pages:
        try:
            found.append(_segments(page, score, single=single))
        except ImageError as error:  # too many pieces to read
            found.append(error.message.removeprefix(f"{page.name}: "))
    segments = [
        s for page_segments in found if isinstance(page_segments, list) for s in page_segments
    ]
    probabilities = _probabilities(model, [segment.digit for segment in segments])
    # What is no digit decides what is cut, joined and dropped; --min-confidence only whether
    # a digit read is given or refused (under_min).
    best, confidence, no_digit, under_min = _verdicts(probabilities, min_confidence)
    results, k = [], 0
    for page, page_segments in zip(pages, found, strict=True):
        if not isinstance(page_segments, list):
            blank = page_segments is None
            results.append(
                Prediction(page.name, error=None if blank else page_segments, blank=blank)
            )
            continue
        readings = []
        alone = len(page_segments) == 1
        page_refused = no_digit[k : k + len(page_segments)]
        read_lines = {
            s.line
            for s, no in zip(page_segments, page_refused, strict=True)
            if not no and not s.minor
        }
        for segment in page_segments:
            if segment.minor and (
                no_digit[k] or confidence[k] < _MINOR_SURE or segment.line not in read_lines
            ):
                k += 1  # a dot, a dash or a stray mark: neither a digit nor a refusal
                continue
            look = _Look(bool(no_digit[k]), float(confidence[k]), alone, segment.line in read_lines)
            parts = [] if segment.minor else _second_look(segment, look, score, page.name)
            if parts:
                cut = [_moved(part, segment, page.name) for part in parts]
                readings += _readings(model, cut, page.scale, min_confidence)
            else:
                digit = None if no_digit[k] or under_min[k] else int(best[k])
                doubt = bool(under_min[k])
                readings.append(_reading(digit, probabilities[k], segment, page.scale, doubt))
            k += 1
        results.append(Prediction(page.name, readings))
    _read_unsure_again(model, results, min_confidence)
    if not keep_digits:
        for result in results:
            for reading in result.readings:
                reading.image = None
    return results


# A digit of a number read less surely than this is read again, shifted by a pixel or two
# each way, and given the mean of the readings: a shift is all the difference between the
# seven and the four of a blurred photograph (never a lone digit: it reads as with --single).
_READ_AGAIN = 0.9
_SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1), (2, 0), (-2, 0), (0, 2), (0, -2))


def _shifted(digit: np.ndarray, right: int, down: int) -> np.ndarray:
    """A 28x28 digit moved `right` and `down` pixels (negative: left, up), blank filling in."""
    moved = np.zeros_like(digit)
    height, width = digit.shape
    moved[max(down, 0) : height + min(down, 0), max(right, 0) : width + min(right, 0)] = digit[
        max(-down, 0) : height + min(-down, 0), max(-right, 0) : width + min(-right, 0)
    ]
    return moved


def _read_unsure_again(model: Backend, results: list[Prediction], min_confidence: float) -> None:
    """Read each digit of a number read under _READ_AGAIN again, as the mean over shifts of it:
    which digit it is, and how sure (so refused only where that mean is under
    `min_confidence`); "none" had its say at the first reading."""
    unsure = [
        reading
        for result in results
        if len(result.readings) > 1
        for reading in result.readings
        if reading.is_digit and reading.confidence < _READ_AGAIN
    ]
    if not unsure:
        return
    images = [_shifted(reading.image, *shift) for reading in unsure for shift in ((0, 0), *_SHIFTS)]
    probabilities = _probabilities(model, images)
    mean = probabilities.reshape(len(unsure), 1 + len(_SHIFTS), -1).mean(1)[:, :NONE_INDEX]
    for reading, p in zip(unsure, mean, strict=True):  # "none" is not asked again
        reading.probabilities = [float(x) for x in p]
        reading.digit = int(p.argmax()) if p.max() >= min_confidence else None
        reading.under_min = reading.digit is None


@dataclass(frozen=True)
class _Look:
    """What the batch said of a segment, and where it stands, for its second look."""

    refused: bool
    confidence: float
    alone: bool  # the page's only piece
    beside_digits: bool  # its line holds a piece read as a digit


def _second_look(segment: _Segment, look: _Look, score: Scorer, name: str) -> list[Piece]:
    """The parts a piece is cut into once the batch has read it, or [] to keep it whole: a
    page's only piece, if wide and not read surely whole, is tried cut as the wide pieces of a
    number were before the batch; a narrower one refused as no digit may be touching digits."""
    piece, ink = segment.piece, segment.ink
    if piece is None or ink is None:
        return []
    if look.alone and piece.width >= WIDE * piece.height:  # as wide pieces of a number are
        whole = surely_whole(piece, look.confidence)
        parts = [] if whole else split_touching(piece, ink, score, name)
    elif look.refused and look.beside_digits:
        # Digits that touch were taught to the model as "none": beside digits that is what a
        # refused piece most likely is, so its "none" does not count against a cut into parts
        # that each read as sure digits.
        parts = split_touching(
            piece,
            ink,
            score,
            name,
            wide=_BESIDE_WIDE,
            none_weight=0.0,
            cuts=_BESIDE_CUTS,
            part_sure=_BESIDE_PART_SURE,
        )
    elif look.refused:  # alone, a letter or a scribble as likely: its "none" counts in full
        parts = split_touching(
            piece, ink, score, name, wide=_MAYBE_TWO, none_weight=_REFUSED_NONE_WEIGHT
        )
    else:
        return []
    return parts if len(parts) > 1 else []


def _moved(part: Piece, segment: _Segment, name: str) -> _Segment:
    """A part of a segment's piece as a segment: its box moved from the ink's crop to the page
    as the piece's was."""
    assert segment.piece is not None and segment.ink is not None
    dx, dy = segment.box[0] - segment.piece.box[0], segment.box[1] - segment.piece.box[1]
    x0, y0, x1, y1 = part.box
    return _Segment(
        (x0 + dx, y0 + dy, x1 + dx, y1 + dy), segment.line, part.digit(segment.ink, name)
    )


MAX_PIECES = 100  # digits read in one image at most

# A piece refused as no digit is tried cut when this wide for its height: two touching digits
# can be narrower than the wide pieces tried always (segmentation.split_touching).
_MAYBE_TWO = 0.7
_REFUSED_NONE_WEIGHT = 1.0
# A refused piece beside digits is tried cut from this wide for its height (a 1 run into its
# neighbour makes a pair narrower than tall); each part of a cut must be read this surely (less
# reads a letter's stem beside digits as a 1), and more columns are tried (the pair's joint is
# seldom at its thinnest column).
_BESIDE_WIDE = 0.3
_BESIDE_PART_SURE = 0.98
_BESIDE_CUTS = 12
_MINOR_SURE = 0.9  # a piece small for its line is read as a digit when this sure, else dropped


@dataclass
class _Segment:
    """A digit's place in the page and what the model is shown; with the piece of ink it came
    from, and the page's ink, where it may be cut further."""

    box: tuple[int, int, int, int]
    line: int
    digit: np.ndarray
    piece: Piece | None = None
    ink: np.ndarray | None = None

    @property
    def minor(self) -> bool:
        """A small mark: a digit only where read surely beside digits (Piece.minor)."""
        return self.piece is not None and self.piece.minor


def _probabilities(model: Backend, digits: list[np.ndarray]) -> np.ndarray:
    if not digits:
        return np.zeros((0, len(model.labels)), np.float32)
    return model.probabilities(np.stack(digits)[:, None])


def _readings(
    model: Backend,
    segments: list[_Segment],
    scale: tuple[float, float],
    min_confidence: float,
) -> list[Reading]:
    probabilities = _probabilities(model, [segment.digit for segment in segments])
    best, _, no_digit, under_min = _verdicts(probabilities, min_confidence)
    return [
        _reading(None if no or doubt else int(digit), p, segment, scale, bool(doubt))
        for digit, no, doubt, p, segment in zip(
            best, no_digit, under_min, probabilities, segments, strict=True
        )
    ]


def _verdicts(
    probabilities: np.ndarray, min_confidence: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the likeliest digit and its probability, whether it is no digit ("none"), and
    whether it is a digit refused only for being read under `min_confidence`."""
    best, confidence, refused = answers(probabilities, min_confidence)
    no_digit = answers(probabilities)[2]
    return best, confidence, no_digit, refused & ~no_digit


def _reading(
    digit: int | None,
    probabilities: np.ndarray,
    segment: _Segment,
    scale: tuple[float, float],
    under_min: bool = False,
) -> Reading:
    return Reading(
        digit,
        [float(x) for x in probabilities[:NONE_INDEX]],
        _stored(segment.box, scale),
        segment.line,
        segment.digit,
        under_min,
    )


def _segments(page: Page, score: Scorer, *, single: bool) -> list[_Segment] | None:
    """Where the page's digits are and what each looks like to the model; None when the page
    holds no ink. A page of one digit gives exactly the lone-digit reading."""
    whole = (0, 0, *_size(page.gray))
    try:
        if single or page.raw:
            digit = page.digit()
            return [_Segment(whole, 0, digit)] if digit.max() >= MIN_CONTRAST else None
        ink, (left, top) = page.ink()
    except BlankImage:
        return None
    try:
        lines = find_pieces(ink)
        count = sum(not piece.minor for line in lines for piece in line)  # marks read once
        if count == 1:  # one digit among small marks: the page is read whole, as one digit
            lines = [[piece for line in lines for piece in line if not piece.minor]]
    except TooManyMarks as many:
        count = many.count
    if count > MAX_PIECES:  # each may cost dozens of model runs: a request's work is bounded
        raise ImageError(
            f"{page.name}: {count} separate marks, more than the {MAX_PIECES} digits an image "
            "is read for; crop it, or read it whole with --single"
        )

    def on_page(piece: Piece) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = piece.box
        return (x0 + left, y0 + top, x1 + left, y1 + top)

    if count == 1:  # read whole in the batch; cut after it if need be (_second_look)
        piece = lines[0][0]
        return [_Segment(on_page(piece), 0, page.digit(), piece, ink)]
    lines = [join_by_recognition(line, ink, score, page.name) for line in lines]
    found = [
        (number, part)
        for number, line in enumerate(lines)
        for piece in line
        for part in ([piece] if piece.minor else split_touching(piece, ink, score, page.name))
    ]
    segments = []
    for number, part in found:
        try:
            digit = part.digit(ink, page.name)
        except ImageError:  # a sliver with no ink left once faint edges are dropped
            continue
        segments.append(_Segment(on_page(part), number, digit, part, ink))
    return segments or None


def _scorer(model: Backend) -> Scorer:
    """How sure the model is that each 28x28 image is a digit (0 where it refuses it), and
    that it is none."""

    def score(digits: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        probabilities = model.probabilities(np.stack(digits)[:, None])
        _, confidence, refused = answers(probabilities)
        none = probabilities[:, NONE_INDEX] if model.refuses else np.zeros(len(digits))
        return np.where(refused, 0.0, confidence), none

    return score


def _size(gray) -> tuple[int, int]:
    return (
        gray.size
        if hasattr(gray, "size") and not isinstance(gray, np.ndarray)
        else gray.shape[::-1]
    )


def _stored(
    box: tuple[int, int, int, int], scale: tuple[float, float]
) -> tuple[int, int, int, int]:
    """A box in the decoded image's pixels, in the stored image's."""
    x, y = scale
    return (round(box[0] * x), round(box[1] * y), round(box[2] * x), round(box[3] * y))


def predict_paths(
    model: Backend,
    paths: Sequence[str],
    *,
    raw: bool = False,
    single: bool = False,
    min_confidence: float = 0.0,
    batch_size: int = 256,
    keep_digits: bool = False,
) -> Iterator[Prediction]:
    """Yield one Prediction per image file (or per bad path), reading and running in batches.

    `keep_digits=True` keeps each preprocessed 28x28 digit on its Reading (`image`).
    """
    for chunk in _batches(expand_paths(paths), batch_size):
        ready: list[Page] = []
        failed: dict[int, Prediction] = {}
        for position, (path, problem) in enumerate(chunk):
            if problem is not None:
                failed[position] = Prediction(path, error=problem)
                continue
            try:
                ready.append(load_page(path, raw=raw))
            except (ImageError, OSError) as error:
                message = getattr(error, "message", None) or f"{path}: {error}"
                failed[position] = Prediction(path, error=message.removeprefix(f"{path}: "))
        results = iter(
            read_pages(
                model, ready, single=single, min_confidence=min_confidence, keep_digits=keep_digits
            )
        )
        for position in range(len(chunk)):
            yield failed[position] if position in failed else next(results)
