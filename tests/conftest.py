from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SUBSET = Path(__file__).parent / "data" / "mnist-subset"  # 4,000 train + 1,000 test real digits


@pytest.fixture(scope="session")
def subset_dir() -> Path:
    return SUBSET


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data folder with the shipped subset imported, as `mnist download --from` does."""
    from mnist_cli.download import import_mnist

    folder = tmp_path / "datafiles"
    import_mnist(folder, SUBSET, verify_md5=False)
    return folder


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A cnn trained briefly on the subset, shared by tests that only read it."""
    from mnist_cli.download import import_mnist
    from mnist_cli.train.recipes import default_config
    from mnist_cli.train.training import train

    root = tmp_path_factory.mktemp("trained")
    import_mnist(root / "datafiles", SUBSET, verify_md5=False)
    config = default_config("cnn", epochs=3, validation_size=500)
    train(config, data_dir=root / "datafiles", out_dir=root / "params", device="cpu")
    return {
        "data_dir": root / "datafiles",
        "checkpoint": root / "params" / "best.pt",
        "out_dir": root / "params",
    }


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained cnn's ONNX export, shared by tests that only read it."""
    from mnist_cli.train.export import export_onnx

    path = tmp_path_factory.mktemp("exported") / "model.onnx"
    export_onnx(trained["checkpoint"], path, data_dir=trained["data_dir"])
    return path


@pytest.fixture(scope="session")
def interrupt_at():
    """`interrupt_at(epoch=E, step=S)`: a training callback that sends this process a real
    SIGINT at one batch, as Ctrl-C would."""
    import os
    import signal

    from mnist_cli.train.training import TrainCallback

    class InterruptAt(TrainCallback):
        def __init__(self, epoch: int, step: int):
            self.at = (epoch, step)

        def on_batch(self, *, epoch, step, steps, loss, rate):
            if (epoch, step) == self.at:
                os.kill(os.getpid(), signal.SIGINT)

    return InterruptAt


@pytest.fixture(scope="session")
def brief():
    """`brief(**changes)`: the cnn's CPU recipe cut to one epoch and 500 validation images, the
    run a test trains when it needs one of its own."""
    from mnist_cli.train.recipes import default_config

    def config(**changes: object):
        return default_config("cnn", "cpu", **{"epochs": 1, "validation_size": 500, **changes})

    return config


_MEASURED = """
import sys
def hwm():  # peak resident memory of this process in MiB (VmHWM starts afresh at exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) // 1024
{setup}
before = hwm()
{body}
print(hwm() - before)
"""


def _memory_growth(body: str, *args: object, setup: str = "") -> tuple[str, int]:
    """Run `body` in a fresh Python process; its output and how far its peak memory grew (MiB).

    `setup` runs before the first reading (imports whose cost is not the point).
    """
    code = _MEASURED.format(setup=setup, body=body)
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True
    )
    *said, grown = done.stdout.strip().splitlines()
    return "\n".join(said), int(grown)


@pytest.fixture(scope="session")
def memory_growth():
    """Measures a snippet's peak memory growth in a fresh process (see `_memory_growth`)."""
    return _memory_growth


_REPORT_IMPORTS = """
import sys as _sys
_watched = {watched!r}
_sys.stderr.write("\\nIMPORTED:" + " ".join(m for m in _watched if m in _sys.modules) + "\\n")
"""


def _fresh_python(code: str, watched: tuple[str, ...] = ("torch",)) -> tuple[str, list[str]]:
    """Run `code` in a fresh Python; its stdout and which of `watched` it imported.

    A `SystemExit` with code 0 or None (a Typer command that ended well) counts as success.
    """
    body = "try:\n" + "".join(f"    {line}\n" for line in code.splitlines())
    body += "except SystemExit as _exit:\n    assert _exit.code in (0, None), _exit.code\n"
    done = subprocess.run(
        [sys.executable, "-c", body + _REPORT_IMPORTS.format(watched=watched)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    imported = done.stderr.rpartition("IMPORTED:")[2].split()
    return done.stdout, imported


@pytest.fixture(scope="session")
def fresh_python():
    """Runs a snippet in a fresh process: (stdout, heavy modules it imported); the one probe
    behind every 'never imports torch' test."""
    return _fresh_python
