"""The base install, without the train extra: reading digits needs no torch.

CI runs this file in a venv that holds `pip install -e .` alone (no torch, onnx or
matplotlib), then again in the full one. The train extra's absence is also simulated here, so
that its message is checked in both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_cli.infer.prediction import SAMPLES

SAMPLE_DIGITS = {"drawn-7.png": 7, "handwritten-2.png": 2, "photo-4.jpg": 4}


def mnist(*args: object, block: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`mnist ARGS` in a fresh process; `block` makes those modules fail to import there."""
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{name!r}] = None\n" for name in block)
        + "from mnist_cli.cli import app\n"
        + "app(args=sys.argv[1:], prog_name='mnist')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_predict_with_no_paths_reads_the_shipped_samples():
    done = mnist("predict", "--json")
    assert done.returncode == 0, done.stderr
    read = {
        Path(line["path"]).name: line["text"] for line in map(json.loads, done.stdout.splitlines())
    }
    # three digits, a number, and a letter that is refused
    expected = {name: str(digit) for name, digit in SAMPLE_DIGITS.items()}
    assert read == {**expected, "number-2024.jpg": "2024", "drawn-A.png": ""}
    assert "reading the samples shipped in" in done.stderr and "bundled model" in done.stderr


def test_test_on_your_own_folder_with_the_bundled_model(tmp_path):
    for name, digit in SAMPLE_DIGITS.items():
        (tmp_path / str(digit)).mkdir()
        shutil.copy(SAMPLES / name, tmp_path / str(digit) / name)
    done = mnist("test", "--images", tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["images"] == 3 and report["accuracy"] == 1.0
    assert report["backend"] == "onnxruntime"


def test_serve_reads_a_sample_with_the_bundled_model():
    pytest.importorskip("httpx")  # starlette's test client
    from starlette.testclient import TestClient

    from mnist_cli.infer.backends import open_model
    from mnist_cli.infer.server import create_app

    client = TestClient(create_app(open_model()))
    body = (SAMPLES / "drawn-7.png").read_bytes()
    response = client.post("/predict", content=body, headers={"content-type": "image/png"})
    assert response.status_code == 200 and response.json()["results"][0]["digit"] == 7
    assert client.get("/health").json()["bundled"] is True


@pytest.mark.parametrize(
    "args",
    [
        ("train", "--epochs", "1"),
        ("export",),
        ("predict", SAMPLES / "drawn-7.png", "--backend", "torch"),
        ("test", "--images", SAMPLES, "--plot", "confusion.png"),
    ],
)
def test_without_the_train_extra_one_line_says_how_to_get_it(args):
    done = mnist(*args, block=("torch", "onnx", "matplotlib"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert 'pip install "mnist-cli[train]"' in done.stderr
    assert "is not installed: training, export, .pt models and pictures" in done.stderr


def test_reading_digits_never_imports_the_train_extra(fresh_python):
    _, imported = fresh_python(
        "from mnist_cli.infer.backends import open_model\n"
        "from mnist_cli.infer.prediction import SAMPLES, predict_paths\n"
        "from mnist_cli.infer.server import create_app\n"
        "create_app(open_model())\n"
        "list(predict_paths(open_model(), [str(SAMPLES)]))",
        ("torch", "onnx", "matplotlib"),
    )
    assert imported == []


def test_no_module_of_the_light_side_imports_the_train_extra(fresh_python):
    # The light side: the package's top level and `infer/`, found by walking the folders so
    # that a new module is checked too. `train/` may import torch; its `recipes` may not (the
    # CLI's help shows the recipes' defaults).
    _, imported = fresh_python(
        "import importlib, pkgutil\n"
        "import mnist_cli, mnist_cli.infer\n"
        "names = ['mnist_cli.train.recipes']\n"
        "for package in (mnist_cli, mnist_cli.infer):\n"
        "    for found in pkgutil.iter_modules(package.__path__, package.__name__ + '.'):\n"
        "        skip = found.name in ('mnist_cli.train', 'mnist_cli.__main__')  # runs the CLI\n"
        "        names += [] if skip else [found.name]\n"
        "assert {'mnist_cli.cli', 'mnist_cli.infer.server'} <= set(names), names\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n",
        ("torch", "onnx", "matplotlib"),
    )
    assert imported == []
