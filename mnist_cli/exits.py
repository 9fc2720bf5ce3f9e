"""How a command ends when something fails: one line and an exit code, never a traceback."""

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import typer

# What `pip install "mnist-cli[train]"` adds: training, export, .pt models, the run's pictures.
TRAIN_EXTRA = {"torch", "torchvision", "onnx", "onnxscript", "matplotlib"}
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head -1`


@contextmanager
def user_errors(*, quiet: bool = False) -> Iterator[None]:
    """Turn the core's errors into a message and an exit code instead of a traceback."""
    from mnist_cli import console
    from mnist_cli.errors import MnistError

    console.set_quiet(quiet)
    try:
        yield
    except MnistError as error:
        console.print_error(error)
        raise typer.Exit(code=error.exit_code) from None
    except KeyboardInterrupt:
        console.err.print("Interrupted.")
        raise typer.Exit(code=EXIT_INTERRUPTED) from None
    except ModuleNotFoundError as error:
        missing = (error.name or "").partition(".")[0]
        if missing not in TRAIN_EXTRA:
            raise
        console.print_error(
            MnistError(
                f"{missing} is not installed: training, export, .pt models and pictures "
                "(--plot) need the train extra",
                hint='pip install "mnist-cli[train]" (from a clone: pip install -e ".[train]")',
            )
        )
        raise typer.Exit(code=1) from None
    except BrokenPipeError:  # the reader went away (`| head -1`): stop quietly
        _silence_stdout()
        raise typer.Exit(code=EXIT_BROKEN_PIPE) from None
    except OSError as error:  # a file or folder the core could not read or write
        where = f": {error.filename}" if error.filename else ""
        console.print_error(MnistError(f"{error.strerror or error}{where}"))
        raise typer.Exit(code=1) from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    with suppress(OSError, ValueError, AttributeError):  # no real descriptor under test runners
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def end_now(code: int) -> None:
    """End the process with `code` at once, its output flushed, skipping the interpreter's
    teardown: after Ctrl-C, onnxruntime may still be stopping a run in a thread, and a teardown
    that meets it aborts ("terminate called without an active exception", exit 134)."""
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):  # a closed pipe: nothing more can reach it
            stream.flush()
    os._exit(code)


def watch_interrupts() -> Callable[[], bool]:
    """Note each Ctrl-C (then raise KeyboardInterrupt as Python does) and return whether one
    came: an interrupt that lands in a library's import surfaces as its ImportError."""
    seen: list[bool] = []
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored, not taken

        def noted(signum: int, frame: object) -> None:
            seen.append(True)
            signal.default_int_handler(signum, frame)

        signal.signal(signal.SIGINT, noted)
    return lambda: bool(seen)
