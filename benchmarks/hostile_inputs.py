"""Replay hostile and careless inputs against the real `mnist` command, one line per case.

Each case runs `mnist` in a fresh process and prints its exit code, its peak resident memory
(VmHWM), whether every file that existed before is unchanged, and the first line it printed.

python benchmarks/hostile_inputs.py [--full-data ../shared/mnist]

Without --full-data the shipped test subset is used, and the case that needs the official
files is reported as skipped.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin

SUBSET = Path(__file__).resolve().parent.parent / "tests" / "data" / "mnist-subset"

# Runs the CLI in this process and leaves its peak memory where the benchmark can read it.
LAUNCH = """
import atexit, os, resource, signal, sys
limit = os.environ.get("HOSTILE_FSIZE")
if limit:  # a "full disk": writes past this many bytes fail with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            open(os.environ["HOSTILE_PEAK"], "w").write(line.split()[1])
atexit.register(peak)
from mnist_cli.cli import app
app(args=sys.argv[1:], prog_name="mnist")
"""


@dataclass
class Case:
    name: str
    args: list[str]
    expect: set[int]
    protect: list[Path] = field(default_factory=list)
    check: Callable[[subprocess.CompletedProcess], str | None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    close_stdout: bool = False
    send_sigterm_after: str | None = None  # a line on stderr that triggers SIGTERM


def digest(paths: list[Path]) -> dict[Path, str | None]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None for p in paths}


def run_case(case: Case, work: Path) -> str:
    before = digest(case.protect)
    peak_file = work / "peak"
    peak_file.unlink(missing_ok=True)
    env = {**os.environ, "HOSTILE_PEAK": str(peak_file), **case.env}
    command = [sys.executable, "-c", LAUNCH, *case.args]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if case.close_stdout:
        process.stdout.close()
    if case.send_sigterm_after:
        for line in process.stderr:
            if line.startswith(case.send_sigterm_after):
                process.send_signal(signal.SIGTERM)
                break
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    done = subprocess.CompletedProcess(command, process.returncode, stdout or "", stderr or "")
    peak = int(peak_file.read_text()) // 1024 if peak_file.exists() else -1
    problems = []
    if done.returncode not in case.expect:
        problems.append(f"exit {done.returncode}, expected {sorted(case.expect)}")
    if "Traceback" in done.stderr:
        problems.append("traceback")
    if digest(case.protect) != before:
        problems.append("a file that existed before was changed")
    if case.check and (problem := case.check(done)):
        problems.append(problem)
    said = next((line for line in done.stderr.splitlines() if line.strip()), "")
    said = said if len(said) < 90 else said[:87] + "..."
    verdict = "clean" if not problems else "FAILED: " + "; ".join(problems)
    return (
        f"{case.name:<44} exit {done.returncode:>3}  peak {peak:>5} MiB  {seconds:5.1f} s  "
        f"{verdict}  | {said}"
    )


def mnist(*args: object) -> None:
    subprocess.run(
        [sys.executable, "-m", "mnist_cli", *map(str, args)], check=True, capture_output=True
    )


def idx_header(count: int, images: bool = True) -> bytes:
    if images:
        return bytes.fromhex("00000803") + b"".join(n.to_bytes(4, "big") for n in (count, 28, 28))
    return bytes.fromhex("00000801") + count.to_bytes(4, "big")


def make_images(folder: Path, good: Path) -> dict[str, Path]:
    """The odd image files, each beside a good one."""
    folder.mkdir(parents=True, exist_ok=True)
    digit = np.zeros((40, 40), np.uint8)
    digit[8:32, 17:23] = 255
    paths = {
        name: folder / name
        for name in (
            "lab.tif",
            "bad-exif.png",
            "raw-profile.png",
            "negative.tif",
            "nan.tif",
            "[bold]seven.png",
            "[/]odd.png",
            "big-rgba.png",
        )
    }
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
    canvas = Image.new("RGBA", (7000, 7000), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).line([(3500, 1000), (3500, 6000)], fill=(0, 0, 0, 255), width=400)
    canvas.save(paths["big-rgba.png"])
    (folder / "good.png").write_bytes(good.read_bytes())
    return paths


def build(work: Path, full_data: Path | None) -> list[Case]:
    data, good = work / "data", work / "good"
    mnist("download", "--from", SUBSET, "--no-verify", "--data-dir", data)
    mnist(
        "train",
        "--epochs",
        "2",
        "--validation-size",
        "500",
        "--data-dir",
        data,
        "--out-dir",
        good,
        "--device",
        "cpu",
    )
    onnx = work / "good.onnx"
    mnist("export", "--model", good / "best.pt", "--out", onnx, "--data-dir", data)
    protect = [good / "best.pt", good / "last.pt", onnx]
    test = np.frombuffer(
        gzip.decompress((SUBSET / "t10k-images-idx3-ubyte.gz").read_bytes()), np.uint8, offset=16
    ).reshape(-1, 28, 28)
    Image.fromarray(255 - test[0]).resize((112, 112)).save(work / "scan.png")
    images = make_images(work / "odd", work / "scan.png")

    nan_ckpt = work / "nan.pt"
    import torch

    payload = torch.load(good / "best.pt", weights_only=True)
    payload["state_dict"]["classifier.weight"][0, 0] = float("nan")
    torch.save(payload, nan_ckpt)

    fifo_dir = work / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "x.png")
    (fifo_dir / "good.png").write_bytes((work / "scan.png").read_bytes())
    loops = work / "g" / "sub"
    loops.mkdir(parents=True)
    (loops / "one.png").write_bytes((work / "scan.png").read_bytes())
    (work / "g" / "loop").symlink_to(".")
    (loops / "up").symlink_to("..")

    bomb_src = work / "bomb"
    bomb_src.mkdir()
    for item in SUBSET.iterdir():
        (bomb_src / item.name).write_bytes(item.read_bytes())
    with gzip.open(bomb_src / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as out:
        out.write(idx_header(60000))
        zeros = bytes(16 << 20)
        for _ in range(192):  # 3 GiB unpacked from ~14 MB
            out.write(zeros)
    sparse = work / "sparse"
    mnist("download", "--from", SUBSET, "--no-verify", "--data-dir", sparse)
    with open(sparse / "MNIST/raw/t10k-images-idx3-ubyte", "wb") as out:
        out.write(idx_header(10000))
        out.truncate(3 << 30)
    empty = work / "empty"
    (empty / "MNIST/raw").mkdir(parents=True)
    (empty / "MNIST/raw/t10k-images-idx3-ubyte").write_bytes(idx_header(0))
    (empty / "MNIST/raw/t10k-labels-idx1-ubyte").write_bytes(idx_header(0, images=False))
    stale = work / "stale"
    stale.mkdir()
    (stale / ".lock").write_text(str(os.getppid()))  # a live process that holds no lock

    model = ["--model", str(onnx)]
    train_small = ["--epochs", "1", "--validation-size", "500", "--data-dir", str(data)]

    def printed(*names: str) -> Callable[[subprocess.CompletedProcess], str | None]:
        def check(done: subprocess.CompletedProcess) -> str | None:
            missing = [n for n in names if n not in done.stdout]
            return f"not in the output: {missing}" if missing else None

        return check

    def no_folder(path: Path) -> Callable[[subprocess.CompletedProcess], str | None]:
        return lambda done: f"{path.name} was left behind" if path.exists() else None

    def loads(path: Path) -> Callable[[subprocess.CompletedProcess], str | None]:
        def check(done: subprocess.CompletedProcess) -> str | None:
            from mnist_cli.checkpoints import load_checkpoint

            return None if load_checkpoint(path).resumable else "last.pt not resumable"

        return check

    cases = [
        Case(
            "train --lr inf over a good run",
            ["train", "--lr", "inf", "--out-dir", str(good), "--overwrite", *train_small],
            {2},
            protect,
        ),
        Case(
            "train that diverges (--lr 1e30) over a good run",
            ["train", "--lr", "1e30", "--out-dir", str(good), "--overwrite", *train_small],
            {1},
            protect,
        ),
        Case(
            "train --lr nan",
            ["train", "--lr", "nan", "--out-dir", str(work / "n"), *train_small],
            {2},
            protect,
            no_folder(work / "n"),
        ),
        Case(
            "new train on an --out holding a run",
            ["train", "--out-dir", str(good), *train_small],
            {1},
            protect,
        ),
        Case(
            "train --validation-size 60000",
            [
                "train",
                "--validation-size",
                "60000",
                "--out-dir",
                str(work / "v"),
                "--data-dir",
                str(data),
            ],
            {2},
            protect,
            no_folder(work / "v"),
        ),
        Case(
            "full disk while saving a checkpoint",
            ["train", "--out-dir", str(good), "--overwrite", *train_small],
            {1},
            protect,
            env={"HOSTILE_FSIZE": "60000"},
        ),
        Case(
            "failed train leaves no empty --out",
            ["train", "--out-dir", str(work / "new"), "--data-dir", str(work / "none")],
            {1},
            protect,
            no_folder(work / "new"),
        ),
        Case(
            "stale .lock naming a live unrelated pid",
            ["train", "--out-dir", str(stale), *train_small],
            {0},
        ),
        Case(
            "SIGTERM during training",
            [
                "train",
                "--out-dir",
                str(work / "term"),
                "--epochs",
                "30",
                "--validation-size",
                "500",
                "--data-dir",
                str(data),
            ],
            {143},
            check=loads(work / "term" / "last.pt"),
            send_sigterm_after="epoch",
        ),
        Case(
            "export a NaN checkpoint over a good .onnx",
            ["export", "--model", str(nan_ckpt), "--out", str(onnx), "--data-dir", str(data)],
            {1},
            protect,
        ),
        Case(
            "export --out X --checkpoint X",
            ["export", "--model", str(good / "best.pt"), "--out", str(good / "best.pt")],
            {2},
            protect,
        ),
        Case(
            "export --opset 99",
            ["export", "--model", str(good / "best.pt"), "--out", str(onnx), "--opset", "99"],
            {2},
            protect,
        ),
        Case(
            "export --opset 7",
            ["export", "--model", str(good / "best.pt"), "--opset", "7"],
            {2},
            protect,
        ),
        Case(
            "export --quantize int4",
            ["export", "--model", str(good / "best.pt"), "--quantize", "int4"],
            {2},
            protect,
        ),
        Case(
            "export with a 0-image test set",
            [
                "export",
                "--model",
                str(good / "best.pt"),
                "--out",
                str(work / "e.onnx"),
                "--data-dir",
                str(empty),
            ],
            {0},
            protect,
        ),
        Case(
            "export --quantize int8 (2-epoch model)",
            [
                "export",
                "--model",
                str(good / "best.pt"),
                "--out",
                str(work / "q.onnx"),
                "--quantize",
                "int8",
                "--data-dir",
                str(data),
            ],
            {0},
            protect,
        ),
        Case(
            "test with a 0-image test set", ["test", *model, "--data-dir", str(empty)], {1}, protect
        ),
        Case(
            "test --errors grid (no .png)",
            ["test", *model, "--data-dir", str(data), "--errors", str(work / "grid")],
            {2},
            protect,
        ),
        Case(
            "test --errors a folder",
            ["test", *model, "--data-dir", str(data), "--errors", str(work)],
            {2},
            protect,
        ),
        Case(
            "test on a 3 GB sparse IDX file",
            ["test", *model, "--data-dir", str(sparse)],
            {1},
            protect,
        ),
        Case(
            "download --from a 3 GiB gzip bomb",
            [
                "download",
                "--from",
                str(bomb_src),
                "--no-verify",
                "--data-dir",
                str(work / "bombed"),
            ],
            {1},
            protect,
        ),
        Case(
            "predict a FIFO and a folder holding one",
            ["predict", str(fifo_dir / "x.png"), str(fifo_dir), *model, "--json"],
            {1},
            protect,
            printed("good.png"),
        ),
        Case(
            "predict a glob through symlink loops",
            ["predict", str(work / "g/**/*.png"), *model, "--json"],
            {0},
            protect,
            printed("one.png"),
        ),
        Case(
            "predict LAB TIFF, broken EXIF, raw profile",
            [
                "predict",
                str(images["lab.tif"]),
                str(images["bad-exif.png"]),
                str(images["raw-profile.png"]),
                *model,
            ],
            {0},
            protect,
            printed("lab.tif", "bad-exif.png", "raw-profile.png"),
        ),
        Case(
            "predict names with [/] and [bold]",
            ["predict", str(images["[bold]seven.png"]), str(images["[/]odd.png"]), *model],
            {0},
            protect,
            printed("[bold]seven.png", "[/]odd.png"),
        ),
        Case(
            "predict a 7000x7000 RGBA PNG",
            ["predict", str(images["big-rgba.png"]), *model],
            {0},
            protect,
            printed("big-rgba.png"),
        ),
        Case(
            "predict --raw a float TIFF of NaN",
            ["predict", str(images["nan.tif"]), "--raw", *model, "--json"],
            {1},
            protect,
            lambda d: "NaN in stdout" if d.stdout else None,
        ),
        Case(
            "predict a negative int32 TIFF",
            ["predict", str(images["negative.tif"]), *model],
            {0},
            protect,
            printed("negative.tif"),
        ),
        Case(
            "predict --backend tensorflow",
            ["predict", str(work / "scan.png"), "--backend", "tensorflow"],
            {2},
            protect,
        ),
        Case(
            "predict --device tpu (onnxruntime)",
            ["predict", str(work / "scan.png"), *model, "--device", "tpu"],
            {2},
            protect,
        ),
        Case(
            "predict --json into a closed pipe",
            ["predict", str(work / "odd"), *model, "--json"],
            {141},
            protect,
            close_stdout=True,
        ),
    ]
    if full_data is not None:
        full = work / "full"
        mnist("download", "--from", full_data, "--data-dir", full)
        official = sorted((full / "MNIST/raw").iterdir())
        cases.append(
            Case(
                "download --from SUBSET --no-verify over the full set",
                ["download", "--from", str(SUBSET), "--no-verify", "--data-dir", str(full)],
                {0},
                official,
            )
        )
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-data", type=Path, help="A folder holding the official files.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        cases = build(work, args.full_data.resolve() if args.full_data else None)
        lines = []
        for case in cases:
            lines.append(run_case(case, work))
            print(lines[-1], flush=True)
    if args.full_data is None:
        print("download --from SUBSET --no-verify over the full set: skipped (needs --full-data)")
    failed = sum("FAILED" in line for line in lines)
    print(f"{len(lines) - failed} clean, {failed} failed")


if __name__ == "__main__":
    main()
