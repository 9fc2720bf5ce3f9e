"""Hostile and careless inputs replayed against the real `mnist` command, one process each.

Each case checks its exit code, that no traceback was printed, that every file it must not
touch is unchanged (by content), and its own promise. Peak memory is read where a rule bounds
it. The cases of `mnist serve` live in test_server.py.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from mnist_cli.train.checkpoints import load_checkpoint

SUBSET = Path(__file__).parent / "data" / "mnist-subset"

# Runs the CLI in this process and leaves its peak memory (VmHWM, MiB) where the test reads it.
LAUNCH = """
import atexit, os, resource, signal, sys
limit = os.environ.get("HOSTILE_FSIZE")
if limit:  # a "full disk": writes past this many bytes fail with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            open(os.environ["HOSTILE_PEAK"], "w").write(str(int(line.split()[1]) // 1024))
atexit.register(peak)
from mnist_cli.cli import app
app(args=sys.argv[1:], prog_name="mnist")
"""

Check = Callable[[subprocess.CompletedProcess], str | None]


@dataclass
class Case:
    args: list[str]
    expect: int
    protect: list[Path] = field(default_factory=list)
    check: Check | None = None
    env: dict[str, str] = field(default_factory=dict)
    close_stdout: bool = False
    sigterm_after: str | None = None  # the start of a stderr line that triggers SIGTERM
    max_peak_mib: int | None = None


def _digest(paths: list[Path]) -> dict[Path, str | None]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None for p in paths}


def replay(case: Case, work: Path) -> subprocess.CompletedProcess:
    before = _digest(case.protect)
    peak = work / "peak"
    peak.unlink(missing_ok=True)
    wide = {"COLUMNS": "1000"}  # tables show long temporary paths whole
    env = {**os.environ, **wide, "HOSTILE_PEAK": str(peak), **case.env}
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *case.args],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    said = ""
    if case.close_stdout:
        process.stdout.close()
    if case.sigterm_after:
        for line in process.stderr:
            said += line
            if line.startswith(case.sigterm_after):
                process.send_signal(signal.SIGTERM)
                break
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"mnist {' '.join(case.args)} did not end within 240 s")
    done = subprocess.CompletedProcess(case.args, process.returncode, stdout or "", said + stderr)
    assert done.returncode == case.expect, done.stderr
    assert "Traceback" not in done.stderr
    assert _digest(case.protect) == before, "a file that existed before was changed"
    if case.max_peak_mib is not None:
        assert int(peak.read_text()) < case.max_peak_mib
    if case.check is not None:
        problem = case.check(done)
        assert problem is None, problem
    return done


def mnist(*args: object) -> None:
    command = [sys.executable, "-m", "mnist_cli", *map(str, args)]
    subprocess.run(command, check=True, capture_output=True)


def idx_header(count: int, images: bool = True) -> bytes:
    if images:
        return bytes.fromhex("00000803") + b"".join(n.to_bytes(4, "big") for n in (count, 28, 28))
    return bytes.fromhex("00000801") + count.to_bytes(4, "big")


def printed(*names: str) -> Check:
    def check(done: subprocess.CompletedProcess) -> str | None:
        missing = [n for n in names if n not in done.stdout]
        return f"not in the output: {missing}" if missing else None

    return check


def said(*fragments: str) -> Check:
    def check(done: subprocess.CompletedProcess) -> str | None:
        missing = [f for f in fragments if f not in done.stderr]
        return f"not on stderr: {missing}" if missing else None

    return check


def no_folder(path: Path) -> Check:
    return lambda done: f"{path.name} was left behind" if path.exists() else None


def resumable(path: Path) -> Check:
    return lambda done: None if load_checkpoint(path).resumable else "last.pt not resumable"


def no_escape(done: subprocess.CompletedProcess) -> str | None:
    return "ESC reached the terminal" if "\x1b" in done.stdout + done.stderr else None


def _odd_images(folder: Path, scan: Path) -> dict[str, Path]:
    """The odd image files, each beside a good one."""
    folder.mkdir(parents=True)
    digit = np.zeros((40, 40), np.uint8)
    digit[8:32, 17:23] = 255
    names = ("lab.tif", "bad-exif.png", "raw-profile.png", "negative.tif", "nan.tif")
    paths = {name: folder / name for name in (*names, "[bold]seven.png", "[/]odd.png")}
    Image.merge("LAB", [Image.fromarray(digit)] * 3).save(paths["lab.tif"])
    Image.fromarray(digit).save(paths["bad-exif.png"], exif=b"Exif\x00\x00not a tiff")
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", "zz not hex zz")
    Image.fromarray(digit).save(paths["raw-profile.png"], pnginfo=info)
    Image.fromarray(digit.astype(np.int32) - 5000).save(paths["negative.tif"])
    Image.fromarray(np.full((28, 28), np.nan, np.float32), "F").save(paths["nan.tif"])
    Image.fromarray(digit).save(paths["[bold]seven.png"])
    (folder / "[").mkdir()  # so that the path holds "[/]"
    Image.fromarray(digit).save(paths["[/]odd.png"])
    (folder / "good.png").write_bytes(scan.read_bytes())
    return paths


@pytest.fixture(scope="module")
def work(trained, tmp_path_factory) -> Path:
    """A folder of good files (a run, its export, a scan) beside every hostile one."""
    import torch

    from mnist_cli.train.export import export_onnx

    work = tmp_path_factory.mktemp("hostile")
    shutil.copytree(trained["data_dir"], work / "data")
    shutil.copytree(trained["out_dir"], work / "good")
    export_onnx(work / "good" / "best.pt", work / "good.onnx", data_dir=work / "data")
    test = np.frombuffer(
        gzip.decompress((SUBSET / "t10k-images-idx3-ubyte.gz").read_bytes()), np.uint8, offset=16
    ).reshape(-1, 28, 28)
    Image.fromarray(255 - test[0]).resize((112, 112)).save(work / "scan.png")
    _odd_images(work / "odd", work / "scan.png")

    payload = torch.load(work / "good" / "best.pt", weights_only=True)
    payload["state_dict"]["classifier.weight"][0, 0] = float("nan")
    torch.save(payload, work / "nan.pt")
    payload = torch.load(work / "good" / "best.pt", weights_only=True)
    variance = next(k for k in payload["state_dict"] if k.endswith("running_var"))
    payload["state_dict"][variance][0] = -0.5  # every number finite, NaN on every digit
    torch.save(payload, work / "negative-variance.pt")

    fifo = work / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "x.png")
    (fifo / "good.png").write_bytes((work / "scan.png").read_bytes())
    (fifo / "gone.png").symlink_to(fifo / "nowhere.png")
    loops = work / "g" / "sub"
    loops.mkdir(parents=True)
    (loops / "one.png").write_bytes((work / "scan.png").read_bytes())
    (work / "g" / "loop").symlink_to(".")
    (loops / "up").symlink_to("..")

    sparse = work / "sparse"
    shutil.copytree(work / "data", sparse)
    with open(sparse / "MNIST/raw/t10k-images-idx3-ubyte", "wb") as out:
        out.write(idx_header(10000))
        out.truncate(3 << 30)
    piped = work / "piped"
    shutil.copytree(work / "data", piped)
    (piped / "MNIST/raw/t10k-labels-idx1-ubyte").unlink()
    os.mkfifo(piped / "MNIST/raw/t10k-labels-idx1-ubyte")
    empty = work / "empty"
    (empty / "MNIST/raw").mkdir(parents=True)
    (empty / "MNIST/raw/t10k-images-idx3-ubyte").write_bytes(idx_header(0))
    (empty / "MNIST/raw/t10k-labels-idx1-ubyte").write_bytes(idx_header(0, images=False))
    (work / "stale").mkdir()
    (work / "stale" / ".lock").write_text(str(os.getppid()))  # a live process, no lock held

    mine = work / "mine"
    for folder in ("3", "seven", "07", "10"):
        (mine / folder).mkdir(parents=True)
        Image.fromarray(255 - test[0]).save(mine / folder / "a.png")
    (mine / "loose.png").write_bytes((work / "scan.png").read_bytes())
    return work


def _cases(work: Path) -> dict[str, Case]:
    good, data, onnx = work / "good", str(work / "data"), str(work / "good.onnx")
    protect = [good / "best.pt", good / "last.pt", good / "history.csv", work / "good.onnx"]
    model = ["--model", onnx]
    small = ["--epochs", "1", "--validation-size", "500", "--data-dir", data]
    odd = work / "odd"
    return {
        "train --lr inf over a good run": Case(
            ["train", "--lr", "inf", "--out-dir", str(good), "--overwrite", *small], 2, protect
        ),
        "a diverging train (--lr 1e30) over a good run": Case(
            ["train", "--lr", "1e30", "--out-dir", str(good), "--overwrite", *small], 1, protect
        ),
        "train --lr nan leaves no folder": Case(
            ["train", "--lr", "nan", "--out-dir", str(work / "n"), *small],
            2,
            protect,
            no_folder(work / "n"),
        ),
        "a new train on a folder holding a run": Case(
            ["train", "--out-dir", str(good), *small], 1, protect
        ),
        "train --validation-size 60000": Case(
            [
                "train",
                "--validation-size",
                "60000",
                "--out-dir",
                str(work / "v"),
                "--data-dir",
                data,
            ],  # fmt: skip
            2,
            protect,
            no_folder(work / "v"),
        ),
        "a full disk while --overwrite saves the first epoch": Case(
            ["train", "--out-dir", str(good), "--overwrite", *small],
            1,
            protect,
            said("cannot be written", "previous file is unchanged"),
            env={"HOSTILE_FSIZE": "60000"},
        ),
        "SIGTERM in the first epoch of --overwrite over a good run": Case(
            ["train", "--out-dir", str(good), "--overwrite", *small],
            143,
            protect,
            said("nothing was saved", "is unchanged"),
            sigterm_after="Training on",
        ),
        "a history.png folder stops train before the first epoch": Case(
            ["train", "--out-dir", str(odd), *small],
            1,
            check=said("history.png: a folder; cannot write a file there"),
        ),
        "a failed train leaves no empty --out-dir": Case(
            ["train", "--out-dir", str(work / "new"), "--data-dir", str(work / "none")],
            1,
            protect,
            no_folder(work / "new"),
        ),
        "a stale .lock naming a live unrelated process": Case(
            ["train", "--out-dir", str(work / "stale"), *small], 0
        ),
        "SIGTERM during training saves last.pt": Case(
            [
                "train",
                "--out-dir",
                str(work / "term"),
                "--epochs",
                "30",
                "--validation-size",
                "500",
                "--data-dir",
                data,
            ],  # fmt: skip
            143,
            check=resumable(work / "term" / "last.pt"),
            sigterm_after="epoch",
        ),
        "--resume a last.pt whose best accuracy is 200%": Case(
            ["train", "--resume", "--out-dir", str(work / "proud"), "--data-dir", data],
            1,
            check=said("'best_val_accuracy' is 2.0"),
        ),
        "train --model fc (a spelling that is gone)": Case(
            ["train", "--model", "fc", "--arch", "cnn", "--out-dir", str(work / "c"), *small],
            2,
            check=no_folder(work / "c"),
        ),
        "WORLD_SIZE=2 RANK=5": Case(
            ["train", "--out-dir", str(work / "r"), *small],
            2,
            check=said("RANK=5 with WORLD_SIZE=2"),
            env={"WORLD_SIZE": "2", "RANK": "5"},
        ),
        "export a NaN checkpoint over a good .onnx": Case(
            ["export", "--model", str(work / "nan.pt"), "--out", onnx, "--data-dir", data],
            1,
            protect,
        ),
        "export --out the checkpoint itself": Case(
            ["export", "--model", str(good / "best.pt"), "--out", str(good / "best.pt")],
            2,
            protect,
        ),
        "export --out through a folder not made yet onto the checkpoint": Case(
            [
                "export",
                "--model",
                str(good / "best.pt"),
                "--out",
                str(good / "sub" / ".." / "best.pt"),
            ],  # fmt: skip
            2,
            protect,
            no_folder(good / "sub"),
        ),
        "export --checkpoint (a spelling that is gone)": Case(
            ["export", "--checkpoint", str(good / "best.pt"), "--model", str(work / "nan.pt")],
            2,
            protect,
        ),
        "export --opset 99": Case(
            ["export", "--model", str(good / "best.pt"), "--out", onnx, "--opset", "99"],
            2,
            protect,
        ),
        "export --quantize int4": Case(
            ["export", "--model", str(good / "best.pt"), "--quantize", "int4"], 2, protect
        ),
        "export with a 0-image test set": Case(
            [
                "export",
                "--model",
                str(good / "best.pt"),
                "--out",
                str(work / "e.onnx"),
                "--data-dir",
                str(work / "empty"),
            ],  # fmt: skip
            0,
            protect,
        ),
        "test with a 0-image test set": Case(
            ["test", *model, "--data-dir", str(work / "empty")], 1, protect
        ),
        "test --errors without .png": Case(
            ["test", *model, "--data-dir", data, "--errors", str(work / "grid")], 2, protect
        ),
        "test --errors where nothing can be written": Case(
            ["test", *model, "--data-dir", data, "--errors", "/proc/e.png"],
            1,
            protect,
            said("--errors /proc/e.png: cannot write in /proc"),
        ),
        "test --json a model with a negative BatchNorm variance": Case(
            ["test", "--model", str(work / "negative-variance.pt"), "--data-dir", data, "--json"],
            1,
            protect,
            lambda done: "a report was printed" if done.stdout else None,
        ),
        "test on a 3 GB sparse IDX file": Case(
            ["test", *model, "--data-dir", str(work / "sparse")], 1, protect, max_peak_mib=600
        ),
        "test with a FIFO in place of an IDX file": Case(
            ["test", *model, "--data-dir", str(work / "piped")],
            1,
            check=said("t10k-labels-idx1-ubyte: a FIFO (not a regular file)"),
        ),
        "test --images with folders that are no digit": Case(
            ["test", *model, "--images", str(work / "mine"), "--json"],
            1,
            check=said(
                "seven: a folder not named",
                "07: a folder",
                "10: a folder",
                "loose.png: not inside a class folder",
            ),  # fmt: skip
        ),
        "predict a FIFO, a broken link and a folder holding them": Case(
            ["predict", str(work / "fifo" / "x.png"), str(work / "fifo"), *model, "--json"],
            1,
            protect,
            lambda done: (
                printed("good.png")(done)
                or said("x.png: a FIFO (not a regular file)", "gone.png: a broken symbolic link")(
                    done
                )
            ),
        ),
        "predict a glob through symlink loops": Case(
            ["predict", str(work / "g/**/*.png"), *model, "--json"], 0, protect, printed("one.png")
        ),
        "predict LAB TIFF, broken EXIF, raw profile": Case(
            [
                "predict",
                str(odd / "lab.tif"),
                str(odd / "bad-exif.png"),
                str(odd / "raw-profile.png"),
                *model,
            ],  # fmt: skip
            0,
            protect,
            printed("lab.tif", "bad-exif.png", "raw-profile.png"),
        ),
        "predict names with [/] and [bold]": Case(
            ["predict", str(odd / "[bold]seven.png"), str(odd / "[/]odd.png"), *model],
            0,
            protect,
            printed("[bold]seven.png", "[/]odd.png"),
        ),
        "predict a name holding escape sequences": Case(
            ["predict", str(work / "\x1b[31mred\x1b]0;title\x07.png"), *model, "--show"],
            0,
            protect,
            no_escape,
        ),
        "predict --raw a float TIFF of NaN": Case(
            ["predict", str(odd / "nan.tif"), "--raw", *model, "--json"],
            1,
            protect,
            lambda done: "NaN in stdout" if done.stdout else None,
        ),
        "predict a negative int32 TIFF": Case(
            ["predict", str(odd / "negative.tif"), *model], 0, protect, printed("negative.tif")
        ),
        "predict --backend tensorflow": Case(
            ["predict", str(work / "scan.png"), "--backend", "tensorflow"], 2, protect
        ),
        "predict --device tpu": Case(
            ["predict", str(work / "scan.png"), *model, "--device", "tpu"], 2, protect
        ),
        "predict --json into a closed pipe": Case(
            ["predict", str(odd), *model, "--json"], 141, protect, close_stdout=True
        ),
    }


NAMES = list(_cases(Path("/")))


@pytest.fixture(scope="module")
def cases(work: Path) -> dict[str, Case]:
    (work / "odd" / "history.png").mkdir(exist_ok=True)
    Image.open(work / "scan.png").save(work / "\x1b[31mred\x1b]0;title\x07.png")
    proud = work / "proud"
    if not proud.exists():
        import torch

        shutil.copytree(work / "good", proud)
        payload = torch.load(proud / "last.pt", weights_only=True)
        payload["best_val_accuracy"] = 2.0
        torch.save(payload, proud / "last.pt")
    return _cases(work)


@pytest.mark.parametrize("name", NAMES)
def test_hostile_input(name: str, cases: dict[str, Case], work: Path) -> None:
    replay(cases[name], work)


@pytest.mark.slow
def test_a_gzip_bomb_is_refused_after_what_the_official_file_holds(tmp_path):
    source = tmp_path / "bomb"
    shutil.copytree(SUBSET, source)
    with gzip.open(source / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as out:
        out.write(idx_header(60000))
        zeros = bytes(16 << 20)
        for _ in range(192):  # 3 GiB unpacked from ~14 MB
            out.write(zeros)
    replay(
        Case(
            ["download", "--from", str(source), "--no-verify", "--data-dir", str(tmp_path / "d")],
            1,
            max_peak_mib=600,
        ),
        tmp_path,
    )
