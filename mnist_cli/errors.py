"""Errors a user can act on; the CLI prints them without a traceback and exits with their code."""

from __future__ import annotations


def first_line(error: BaseException, limit: int = 300) -> str:
    """An exception's first line (libraries' messages can run to pages), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


class MnistError(Exception):
    """Base error: a message for the user and an optional hint on how to fix it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class DataError(MnistError):
    """A dataset file is missing, corrupt or not MNIST."""


class DataMissing(DataError):
    """The dataset files are not there at all (not there and damaged: that is DataError)."""


class DownloadError(MnistError):
    """Every mirror failed, or an imported file is not the official one."""


class CheckpointError(MnistError):
    """A checkpoint is missing or cannot be used."""


class OutputError(MnistError):
    """An output location cannot be written, or is in use by another run."""


class OptionError(MnistError):
    """An option value that cannot work (out of range, contradicting another): exit 2."""

    exit_code = 2


class DeviceError(OptionError):
    """The requested device is not available on this machine."""


class TrainingDiverged(MnistError):
    """The loss became NaN or infinite; nothing from the diverging epoch was saved."""


class TrainingInterrupted(MnistError):
    """Training stopped on Ctrl-C (exit 130) or SIGTERM (exit 143) after saving its state."""

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = 130) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code
