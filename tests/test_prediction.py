from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mnist_cli.cli import app
from mnist_cli.data import load_split
from mnist_cli.errors import MnistError
from mnist_cli.infer.backends import open_model
from mnist_cli.infer.prediction import predict_paths

runner = CliRunner()


@pytest.fixture(scope="module")
def models(trained, exported, tmp_path_factory):
    """The trained checkpoint, its ONNX export and 20 real test digits as inverted PNG 'scans'."""
    root = tmp_path_factory.mktemp("predict")
    onnx_path = exported
    test = load_split(trained["data_dir"], "test")
    images = root / "images"
    (images / "nested").mkdir(parents=True)
    for i in range(20):
        scan = Image.fromarray(255 - test.images[i]).resize((112, 112), Image.BILINEAR)
        folder = images / "nested" if i % 2 else images
        scan.save(folder / f"{i:02d}-label{test.labels[i]}.png")
    return {
        "pt": trained["checkpoint"],
        "onnx": onnx_path,
        "images": images,
        "labels": test.labels[:20],
    }


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_both_backends_read_the_digits(models, backend):
    engine = open_model(models["pt" if backend == "torch" else "onnx"], device="cpu")
    assert engine.name == backend
    results = list(predict_paths(engine, [str(models["images"])], batch_size=8))
    assert len(results) == 20 and all(r.error is None for r in results)
    truth = [int(r.path.split("label")[1][0]) for r in results]
    correct = sum(r.digit == t for r, t in zip(results, truth, strict=True))
    assert correct >= 17
    assert all(abs(sum(r.probabilities) - 1) < 1e-4 for r in results)


def test_backends_agree(models):
    torch_engine = open_model(models["pt"], device="cpu")
    onnx_engine = open_model(models["onnx"], device="cpu")
    paths = [str(models["images"])]
    a = [r.digit for r in predict_paths(torch_engine, paths)]
    b = [r.digit for r in predict_paths(onnx_engine, paths)]
    assert a == b


def test_missing_model_files():
    with pytest.raises(MnistError, match="no model at nowhere.onnx") as caught:
        open_model("nowhere.onnx")
    assert "mnist export" in caught.value.hint
    with pytest.raises(MnistError, match="no model at nowhere.pt") as caught:
        open_model("nowhere.pt")
    assert "mnist train" in caught.value.hint


def test_cli_json_lines_and_bad_files(models, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    Image.new("L", (40, 40), 255).save(tmp_path / "blank.png")
    good = sorted(models["images"].glob("*.png"))[:3]
    args = [
        "predict",
        *map(str, good),
        str(tmp_path / "broken.png"),
        str(tmp_path / "blank.png"),
        str(tmp_path / "missing.png"),
        "--backend",
        "onnxruntime",
        "--model",
        str(models["onnx"]),
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(p) for p in good]
    assert all(len(line["probabilities"]) == 10 for line in lines)
    assert "broken.png: not a readable image" in result.stderr
    assert "blank.png: no digit found" in result.stderr
    assert "missing.png: no such file or folder" in result.stderr
    assert "Traceback" not in result.output


def test_cli_table_with_top_k(models):
    result = runner.invoke(
        app,
        [
            "predict",
            str(models["images"]),
            "--model",
            str(models["pt"]),
            "--device",
            "cpu",
            "--top-k",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "top 3" in result.stdout and "confidence" in result.stdout
    assert "torch on cpu" in result.stderr


def test_onnxruntime_path_never_imports_torch(models, fresh_python):
    image = next(models["images"].glob("*.png"))
    stdout, imported = fresh_python(
        "from mnist_cli.cli import app\n"
        f"app(['predict', {str(image)!r}, '--backend', 'onnxruntime', "
        f"'--model', {str(models['onnx'])!r}, '--json'])"
    )
    assert imported == [] and json.loads(stdout)["digit"] in range(10)


def test_broken_model_files_are_named(models, tmp_path):
    onnx_bytes = models["onnx"].read_bytes()
    cases = {
        "text.onnx": b"just some text",
        "truncated.onnx": onnx_bytes[: len(onnx_bytes) // 2],
        "tampered.onnx": onnx_bytes[:200]
        + bytes(b ^ 0xFF for b in onnx_bytes[200:400])
        + onnx_bytes[400:],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(MnistError) as caught:
            open_model(tmp_path / name)
        assert name in caught.value.message
    pt_bytes = models["pt"].read_bytes()
    (tmp_path / "truncated.pt").write_bytes(pt_bytes[: len(pt_bytes) // 2])
    with pytest.raises(MnistError, match="truncated.pt"):
        open_model(tmp_path / "truncated.pt")
    with pytest.raises(MnistError, match="model.onnx") as caught:
        open_model(models["onnx"], backend="torch")
    assert "--backend onnxruntime" in caught.value.hint


def test_onnx_model_with_the_wrong_input_shape(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["probabilities"])],
        "flat",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 784])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 784])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(model, tmp_path / "flat.onnx")
    with pytest.raises(MnistError, match="flat.onnx: expects input"):
        open_model(tmp_path / "flat.onnx")


def _predict(models, *paths, extra=()):
    args = ["predict", *map(str, paths), "--model", str(models["onnx"]), "--json", *extra]
    return runner.invoke(app, args)


def test_fifos_are_skipped_and_the_rest_still_predicted(models, tmp_path):
    import os

    good = sorted(models["images"].glob("*.png"))[0]
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "good.png").write_bytes(good.read_bytes())
    os.mkfifo(folder / "x.png")
    result = _predict(models, folder / "x.png", folder)
    assert result.exit_code == 1
    assert [json.loads(line)["path"] for line in result.stdout.splitlines()] == [
        str(folder / "good.png")
    ]
    assert result.stderr.count("not a regular file") == 2


def _odd_images(folder):
    """Images that once crashed the whole run: each is now a result or one error line."""
    from PIL import PngImagePlugin

    digit = np.zeros((40, 40), np.uint8)
    digit[8:32, 17:23] = 255
    Image.merge("LAB", [Image.fromarray(digit)] * 3).save(folder / "lab.tif")
    Image.fromarray(digit).save(folder / "bad-exif.png", exif=b"Exif\x00\x00not a tiff")
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", "zz not hex zz")
    Image.fromarray(digit).save(folder / "raw-profile.png", pnginfo=info)
    Image.fromarray(digit.astype(np.int32) - 5000).save(folder / "negative.tif")
    Image.fromarray(digit).save(folder / "[bold]seven.png")
    (folder / "[").mkdir()
    Image.fromarray(digit).save(folder / "[" / "]odd[-].png")  # the path holds "[/]"


def test_odd_images_and_names_never_crash_the_run(models, tmp_path):
    _odd_images(tmp_path)
    result = _predict(models, tmp_path)
    assert "Traceback" not in result.output
    lines = {Path(json.loads(line)["path"]).name for line in result.stdout.splitlines()}
    assert {"lab.tif", "negative.tif", "[bold]seven.png", "]odd[-].png"} <= lines
    assert {"bad-exif.png", "raw-profile.png"} <= lines  # a broken EXIF block is ignored
    table = runner.invoke(app, ["predict", str(tmp_path), "--model", str(models["onnx"])])
    assert "[bold]seven.png" in table.stdout and "[/]odd[-].png" in table.stdout


def test_nan_pixels_with_raw_are_an_error_not_a_digit(models, tmp_path):
    Image.fromarray(np.full((28, 28), np.nan, np.float32), "F").save(tmp_path / "nan.tif")
    result = _predict(models, tmp_path / "nan.tif", extra=["--raw"])
    assert result.exit_code == 1 and result.stdout == ""
    assert "NaN or infinite pixel values" in result.stderr


def test_a_device_onnxruntime_cannot_use_is_a_usage_error(models, tmp_path):
    result = _predict(models, tmp_path, extra=["--device", "tpu"])
    assert result.exit_code == 2 and "--device 'tpu'" in result.output


def test_a_large_rgba_canvas_is_reduced_before_it_becomes_arrays(tmp_path, memory_growth):
    from PIL import ImageDraw

    canvas = Image.new("RGBA", (7000, 7000), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).line([(3500, 1000), (3500, 6000)], fill=(0, 0, 0, 255), width=400)
    canvas.save(tmp_path / "big.png")
    _, grown_mib = memory_growth(
        "load_digit(sys.argv[1])",
        tmp_path / "big.png",
        setup="from mnist_cli.infer.preprocessing import load_digit",
    )
    assert grown_mib < 600  # was 1.8 GB; the decoded canvas alone is 196 MB


def test_a_closed_output_pipe_exits_quietly(models):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mnist_cli",
            "predict",
            str(models["images"]),
            "--json",
            "--model",
            str(models["onnx"]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # as `| head -0` would, before anything is written
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    assert "Error" not in stderr and "Traceback" not in stderr
    assert "images:" not in stderr  # no summary of the part that was read before the pipe closed
