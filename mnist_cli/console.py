"""Everything the user sees: Rich consoles, progress bars, tables. The core never prints."""

from __future__ import annotations

import sys
import unicodedata
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from mnist_cli.download import FileOutcome
    from mnist_cli.errors import MnistError
    from mnist_cli.infer.backends import Backend
    from mnist_cli.infer.evaluation import Report
    from mnist_cli.infer.prediction import Prediction, Reading
    from mnist_cli.train.checkpoints import EpochRecord
    from mnist_cli.train.export import ExportResult
    from mnist_cli.train.recipes import TrainConfig
    from mnist_cli.train.training import TrainResult


class _Console(Console):
    """A Rich console whose closed pipe ends the command as any closed pipe does (exit 141,
    exits.user_errors), not with Rich's own exit 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True  # nothing more to write where nobody reads
        raise BrokenPipeError


out = _Console(highlight=False, emoji=False)  # results: tables and JSON
err = _Console(stderr=True, highlight=False, emoji=False)  # progress, notes and errors
_quiet = False  # --quiet: results and errors only


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


# User text (paths, model metadata, error messages) reaches Rich only as Text, never as markup,
# and only through `printable`: a file name may hold escape sequences for the terminal.
# Control and format characters (C0, C1, bidi marks and overrides, zero widths), lone
# surrogates (a file name's undecodable bytes) and line or paragraph separators.
_HIDDEN = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def printable(text: object) -> str:
    """`text` with every control, format or undecodable character written as an escape (ESC
    as \\x1b, a newline as \\n, a stray byte as \\udc9b), so that it shows as what it is and
    the terminal never acts on it."""
    return "".join(
        char.encode("unicode_escape", "backslashreplace").decode()
        if unicodedata.category(char) in _HIDDEN
        else char
        for char in str(text)
    )


def print_error(error: MnistError) -> None:
    from mnist_cli.errors import TrainingInterrupted

    label = ("Stopped:", "bold yellow") if isinstance(error, TrainingInterrupted) else None
    label = label or ("Error:", "bold red")
    err.print(Text.assemble(label, " ", printable(error.message)), soft_wrap=True)
    if error.hint:
        err.print(Text.assemble(("Hint:", "dim"), " ", printable(error.hint)), soft_wrap=True)


def note(message: str) -> None:
    if not _quiet:
        err.print(Text(printable(message)), soft_wrap=True)


def warn(message: str) -> None:
    """What the user must hear even with --quiet: the work goes on, but not as asked."""
    err.print(Text.assemble(("Warning:", "bold yellow"), " ", printable(message)), soft_wrap=True)


def print_json(data: Any) -> None:
    import json

    sys.stdout.write(json.dumps(data, allow_nan=False) + "\n")  # strict JSON: no NaN
    sys.stdout.flush()


def print_text(text: str) -> None:
    """Plain text for scripts and files on stdout, as it is: no wrapping, no markup."""
    sys.stdout.write(text)
    sys.stdout.flush()


def show_downloads(outcomes: list[FileOutcome]) -> None:
    states = {
        "present": "already present and valid",
        "kept": "kept the official file already there (the imported one is not official)",
    }
    for outcome in outcomes:
        note(f"{outcome.name}: {states.get(outcome.status, outcome.status)} ({outcome.path})")


def show_training(result: TrainResult) -> None:
    out.print(
        Text(
            printable(
                f"Best validation accuracy {result.best_val_accuracy:.2%} at epoch "
                f"{result.best_epoch}: {result.best_path}"
            )
        ),
        soft_wrap=True,
    )
    folder, best = result.best_path.parent, result.best_path
    if result.temperature is None:
        fewer = (
            "no temperature could be fitted on its validation images (too few wrong answers, "
            "or a fit at the end of the range)"
        )
        note(
            f"best.pt keeps its starting model's calibration (logits / "
            f"{result.start_temperature:g}): {fewer}"
            if result.start_temperature != 1.0
            else f"best.pt is not calibrated: {fewer} (a larger --validation-size gives more)"
        )
    else:
        note(f"Calibrated best.pt on the validation images: logits / {result.temperature:g}")
    note(f"In {folder}: best.pt, last.pt, history.csv, history.png (curves), config.toml (recipe)")
    if result.images:  # the digits it learnt from say little: others of the same hand do
        note(
            f"Next: mnist test -m {best} --images OTHER-DIGITS (of your hand, not in "
            f"{result.images})   then   mnist export -m {best}"
        )
    else:
        note(f"Next: mnist test -m {best}   then   mnist export -m {best}")


def show_export(result: ExportResult) -> None:
    source = "MNIST test images" if result.real_images else "random images (no MNIST data)"
    note(
        f"onnx.checker: passed. onnxruntime vs {result.reference} on {result.images} {source}: "
        f"max |probability difference| {result.max_probability_diff:.2e}, "
        f"same predictions: {result.agreement:.2%}"
    )
    out.print(
        Text(
            printable(
                f"Wrote {result.path} ({result.size_bytes / 1024:.0f} KiB, opset {result.opset})"
            )
        ),
        soft_wrap=True,
    )


def show_model(model: Backend) -> None:
    what = "the bundled model" if model.bundled else "model"
    note(f"Using {what} {model.path} ({model.name.value} on {model.provider})")
    if model.note:  # shown even with --quiet: results would come slower than asked for
        err.print(
            Text.assemble(("Warning:", "bold yellow"), " ", printable(model.note)), soft_wrap=True
        )


class DownloadProgress:
    """One progress bar per downloaded file; a download callback for `download_mnist`."""

    def __init__(self) -> None:
        from rich.progress import (  # only downloads show these bars: not on every start
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=_quiet or not err.is_terminal,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> DownloadProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(name, total=total)
        self._progress.update(self._tasks[name], completed=done, total=total)


class TrainProgress:
    """Rich bars over epochs and batches on a terminal; one plain line per epoch elsewhere."""

    def __init__(self, *, verbose: bool = False) -> None:
        from rich.progress import (  # only training shows these bars: not on every start
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.live, self.verbose = err.is_terminal and not _quiet, verbose
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=not self.live,
            transient=True,  # the epoch lines stay; the bars go when training ends or stops
        )
        self._epochs: Any = None
        self._batches: Any = None

    def __enter__(self) -> TrainProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def on_start(
        self,
        *,
        config: TrainConfig,
        device: str,
        where: str,
        about: str = "",
        warning: str = "",
        start_epoch: int,
        start_step: int,
        steps: int,
    ) -> None:
        from mnist_cli.train.recipes import describe_recipe

        note(f"Training on {where}")
        for line in describe_recipe(config, device).splitlines():
            note(line)
        if about:
            note(f"  {about}")
        if warning:
            warn(warning)
        if start_epoch or start_step:
            note(f"Resuming at epoch {start_epoch + 1}, step {start_step} of {steps}")
        if self.verbose:
            note("Recipe: " + ", ".join(f"{k}={v}" for k, v in asdict(config).items()))
        note("(train loss: the epoch's mean, smoothed and augmented; the bar: the last batch)")
        self._epochs = self._progress.add_task(
            "epochs", total=config.epochs, completed=start_epoch, status=""
        )
        self._batches = self._progress.add_task(
            "batches", total=steps, completed=start_step, status=""
        )

    def on_batch(self, *, epoch: int, step: int, steps: int, loss: float, rate: float) -> None:
        if self.live:
            self._progress.update(
                self._batches,
                completed=step,
                description=f"epoch {epoch + 1}",
                status=f"batch loss {loss:.4f}  {rate:,.0f} img/s",
            )

    def on_epoch(self, record: EpochRecord, *, best: bool) -> None:
        self._progress.update(self._epochs, completed=record.epoch)
        line = (
            f"epoch {record.epoch:>3}  train loss {record.train_loss:.4f}  "
            f"val acc {record.val_accuracy:.2%}  {record.seconds:.1f}s  "
            f"{record.images_per_second:,.0f} img/s" + ("  best" if best else "")
        )
        if self.live:
            self._progress.console.print(Text(line))
        elif not _quiet:
            print(line, file=sys.stderr, flush=True)


def _shade(count: int, largest: int, diagonal: bool) -> str:
    if count == 0:
        return "dim"
    strength = 0.25 + 0.75 * count / max(largest, 1)
    level = int(40 + 160 * strength)
    return f"on rgb(0,{level},0)" if diagonal else f"on rgb({level},0,0)"


def show_report(report: Report, *, json_output: bool = False) -> None:
    """Print accuracy, per-class scores and the confusion matrix shaded by count (or JSON)."""
    if json_output:
        print_json(report.to_dict())
        return
    out.print(
        Text.assemble(
            (printable(report.model), "bold"),
            ": accuracy ",
            (f"{report.accuracy:.2%}", "bold"),
            f" ({report.images - report.errors}/{report.images}), mean loss {report.loss:.4f}, "
            f"calibration error {report.ece:.2%}",
        ),
        soft_wrap=True,
    )
    if report.coverage < 1:  # a model with a "none" class refused some
        out.print(
            f"refused as no digit: {1 - report.coverage:.2%} of the images; "
            f"accuracy on the rest {report.answered_accuracy:.2%}",
            soft_wrap=True,
        )
    scores = Table(title="Per class", title_justify="left")
    for column in ("digit", "precision", "recall", "F1", "support"):
        scores.add_column(column, justify="right")
    for row in report.classes:
        scores.add_row(
            row.label,
            f"{row.precision:.4f}",
            f"{row.recall:.4f}",
            f"{row.f1:.4f}",
            str(row.support),
        )
    out.print(scores)
    confusion = Table(title="Confusion (rows: true, columns: predicted)", title_justify="left")
    confusion.add_column("")
    labels = [row.label for row in report.classes]
    for label in labels:
        confusion.add_column(label, justify="right")
    off_diagonal = max(
        (n for i, row in enumerate(report.confusion) for j, n in enumerate(row) if i != j),
        default=0,
    )
    on_diagonal = max((report.confusion[i][i] for i in range(len(labels))), default=0)
    for i, row in enumerate(report.confusion):
        cells = [
            f"[{_shade(n, on_diagonal if i == j else off_diagonal, i == j)}]{n}[/]"
            for j, n in enumerate(row)
        ]
        confusion.add_row(labels[i], *cells)
    out.print(confusion)
    if report.mistakes:
        out.print(_mistakes_table(report))


_MISTAKES_SHOWN = 50  # rows of the mistakes table; --json lists them all


def _mistakes_table(report: Report) -> Table:
    """Each misread image: its file, true label, the digit read and the model's confidence."""
    shown = report.mistakes[:_MISTAKES_SHOWN]
    more = len(report.mistakes) - len(shown)
    title = f"Misread ({len(report.mistakes)}" + (
        f", the first {len(shown)}; --json has all)" if more else ")"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("file", overflow="fold")
    for column in ("label", "read", "confidence"):
        table.add_column(column, justify="right")
    for mistake in shown:
        table.add_row(
            Text(printable(mistake.path)),
            str(mistake.label),
            "-" if mistake.digit is None else str(mistake.digit),
            f"{mistake.confidence:.1%}",
        )
    return table


UNSURE = 0.5  # a top score below this is counted as a guess in predict's summary


class PredictionOutput:
    """Predictions as a table on stdout (or JSON lines); per-file errors on stderr."""

    def __init__(self, *, json_output: bool, top_k: int, show: bool = False) -> None:
        self.json_output, self.top_k, self.show = json_output, top_k, show
        self.table = Table()
        self.table.add_column("file", overflow="fold")
        self.table.add_column("digits", justify="right")
        self.table.add_column("confidence", justify="right")
        if top_k > 1:
            self.table.add_column(f"top {top_k}")
        self.rows = 0
        self.read = self.unsure = self.failed = self.refused = self.doubted = 0

    def __enter__(self) -> PredictionOutput:
        return self

    def add(self, result: Prediction) -> None:
        self.failed += result.error is not None
        self.read += result.error is None
        self.refused += result.reason is not None and not result.doubted
        self.doubted += result.doubted
        self.unsure += result.error is None and result.reason is None and result.confidence < UNSURE
        if result.error is not None:
            message = Text.assemble((printable(result.path), "red"), f": {printable(result.error)}")
            err.print(message, soft_wrap=True)
            return
        if self.show:  # beside JSON the pictures go to stderr, so stdout stays parseable
            for reading in result.readings:
                picture = digit_picture(result.path, reading, max(self.top_k, 3))
                (err if self.json_output else out).print(picture)
        if self.json_output:
            print_json(result.to_dict())
            return
        if result.reason is not None:
            cells = [Text(printable(result.path)), "-", Text(result.reason, "yellow")]
        else:
            cells = [Text(printable(result.path)), result.text, f"{result.confidence:.2%}"]
        if self.top_k > 1:  # a line per digit read: a number's digits each show theirs
            lines = [reading.top(self.top_k) for reading in result.readings if reading.is_digit]
            cells.append("\n".join("  ".join(f"{d}: {p:.2%}" for d, p in top) for top in lines))
        self.table.add_row(*cells)
        self.rows += 1

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:  # a closed pipe or Ctrl-C: no table, no summary of a part
            return
        if not self.json_output and self.rows:
            out.print(self.table)
        if self.read + self.failed > 1:
            note(
                f"{self.read + self.failed} images: {self.read} read ({self.unsure} below "
                f"{UNSURE:.0%} confidence, {self.refused} not a digit"
                + (f", {self.doubted} under --min-confidence" if self.doubted else "")
                + "), "
                f"{self.failed} could not be read"
            )


_HALF_BLOCKS = " ▄▀█"  # (top pixel, bottom pixel): neither, bottom, top, both


def digit_picture(path: str, reading: Reading, top: int) -> Table:
    """The 28x28 digit the model saw, in half-block characters, beside its top guesses.

    Plain characters, no colour: it reads the same over SSH, in a pipe and in a log.
    """
    ink = reading.image >= 0.35
    rows = []
    for upper, lower in zip(ink[0::2], ink[1::2], strict=True):  # a cell holds two pixel rows
        cells = zip(upper, lower, strict=True)
        rows.append("".join(_HALF_BLOCKS[2 * bool(a) + bool(b)] for a, b in cells))
    lines = Text("\n".join(rows))
    where = " ".join(map(str, reading.box))
    guesses = Text.assemble((printable(path), "bold"), f"  [{where}]\n")
    if reading.reason is not None:
        guesses.append(f"{reading.reason}\n", "yellow")
    probabilities = reading.probabilities
    for digit in sorted(range(len(probabilities)), key=lambda d: -probabilities[d])[:top]:
        probability = probabilities[digit]
        bar = "█" * round(probability * 20)
        guesses.append(f"{digit}  {bar:<20} {probability:7.2%}\n")
    grid = Table.grid(padding=(0, 2))
    grid.add_row(lines, guesses)
    return grid
