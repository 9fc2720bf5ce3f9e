"""Errors a user can act on; the CLI prints them without a traceback and exits with their code."""

from __future__ import annotations


class MnistError(Exception):
    """Base error: a message for the user and an optional hint on how to fix it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class DataError(MnistError):
    """A dataset file is missing, corrupt or not MNIST."""


class DownloadError(MnistError):
    """Every mirror failed, or an imported file is not the official one."""


class CheckpointError(MnistError):
    """A checkpoint is missing or cannot be used."""


class OutputError(MnistError):
    """An output location cannot be written, or is in use by another run."""


class DeviceError(MnistError):
    """The requested device is not available on this machine."""

    exit_code = 2


class TrainingInterrupted(MnistError):
    """Training stopped on Ctrl-C after saving its state."""

    exit_code = 130
