from __future__ import annotations

import json
import logging
import os

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from mnist_cli.errors import MnistError
from mnist_cli.train.checkpoints import classifier_from_checkpoint, load_checkpoint
from mnist_cli.train.export import ExportError, export_onnx, sha256_of


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    result = export_onnx(trained["checkpoint"], out, data_dir=trained["data_dir"])
    return result, trained


def test_export_is_checked_against_torch_on_real_images(exported):
    result, _ = exported
    assert result.real_images and result.images == 1000
    assert result.max_probability_diff <= 1e-5 and result.same_predictions
    onnx.checker.check_model(onnx.load(str(result.path)), full_check=True)
    assert [p.name for p in result.path.parent.iterdir()] == ["model.onnx"]  # no side .data file


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch_matches_torch(exported, batch):
    result, trained = exported
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    images = np.random.default_rng(batch).random((batch, 1, 28, 28), dtype=np.float32)
    logits, probabilities = session.run(None, {"image": images})
    classifier = classifier_from_checkpoint(load_checkpoint(trained["checkpoint"]))
    with torch.no_grad():
        expected_logits, expected = classifier(torch.from_numpy(images))
    assert logits.shape == (batch, 11)  # the ten digits and "none"
    assert np.abs(probabilities - expected.numpy()).max() <= 1e-5
    assert np.abs(logits - expected_logits.numpy()).max() <= 1e-3


def test_metadata_describes_the_model(exported):
    result, trained = exported
    meta = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert json.loads(meta["class_labels"]) == [*(str(d) for d in range(10)), "none"]
    assert "[0, 1]" in meta["input"]
    assert json.loads(meta["architecture"])["name"] == "cnn"
    assert meta["source_checkpoint_sha256"] == sha256_of(trained["checkpoint"])
    saved = load_checkpoint(trained["checkpoint"])
    assert float(meta["val_accuracy"]) == pytest.approx(saved.val_accuracy)
    assert meta["mnist_cli_version"]


def test_random_images_when_no_data(trained, tmp_path):
    result = export_onnx(trained["checkpoint"], tmp_path / "m.onnx", data_dir=tmp_path / "none")
    assert not result.real_images and result.same_predictions


def test_mismatch_leaves_no_file(trained, tmp_path, monkeypatch):
    import mnist_cli.train.export as export

    monkeypatch.setattr(
        export.OnnxBackend,
        "probabilities",
        lambda self, images: np.full((len(images), 11), 1 / 11, np.float32),
    )
    with pytest.raises(ExportError, match="disagrees"):
        export_onnx(trained["checkpoint"], tmp_path / "m.onnx", data_dir=trained["data_dir"])
    assert not any(tmp_path.iterdir())


def test_old_opset_refused(trained, tmp_path):
    with pytest.raises(MnistError, match="the exporter needs 18 or newer") as caught:
        export_onnx(trained["checkpoint"], tmp_path / "m.onnx", opset=13)
    assert caught.value.exit_code == 2


def test_int8_export_keeps_accuracy_and_is_smaller(exported, tmp_path, caplog):
    from mnist_cli.infer.evaluation import evaluate_model

    result, trained = exported
    with caplog.at_level(logging.WARNING):
        int8 = export_onnx(
            trained["checkpoint"],
            tmp_path / "q.onnx",
            data_dir=trained["data_dir"],
            quantize="int8",
        )
    assert not caplog.records  # e.g. the quantiser's "Axis 1 is out-of-range" for batch norm
    assert int8.quantization == "int8" and int8.reference == "float onnx"
    assert int8.agreement >= 0.99 and int8.size_bytes < result.size_bytes
    meta = {p.key: p.value for p in onnx.load(str(int8.path)).metadata_props}
    assert meta["quantization"].startswith("int8") and "class_labels" in meta
    float_report, _ = evaluate_model(result.path, data_dir=trained["data_dir"], device="cpu")
    int8_report, _ = evaluate_model(int8.path, data_dir=trained["data_dir"], device="cpu")
    assert abs(float_report.accuracy - int8_report.accuracy) <= 0.005


def test_int8_needs_training_images(trained, tmp_path):
    with pytest.raises(MnistError, match="not found"):
        export_onnx(
            trained["checkpoint"], tmp_path / "q.onnx", data_dir=tmp_path / "none", quantize="int8"
        )
    assert not (tmp_path / "q.onnx").exists()


def test_onnx_is_evaluated_like_its_checkpoint(exported):
    from mnist_cli.infer.evaluation import evaluate_model

    result, trained = exported
    from_onnx, wrong = evaluate_model(result.path, data_dir=trained["data_dir"], device="cpu")
    from_pt, _ = evaluate_model(trained["checkpoint"], data_dir=trained["data_dir"], device="cpu")
    assert from_onnx.confusion == from_pt.confusion
    assert from_onnx.loss == pytest.approx(from_pt.loss, abs=1e-4)
    assert len(wrong.labels) == from_onnx.errors


def _invoke_export(*args):
    from typer.testing import CliRunner

    from mnist_cli.cli import app

    return CliRunner().invoke(app, ["export", *map(str, args)])


def test_a_nan_checkpoint_never_replaces_a_good_export(exported, tmp_path):
    import dataclasses

    from mnist_cli.train.checkpoints import save_checkpoint

    result, trained = exported
    good = tmp_path / "model.onnx"
    good.write_bytes(result.path.read_bytes())
    saved = load_checkpoint(trained["checkpoint"])
    weights = {k: v.clone() for k, v in saved.state_dict.items()}
    weights["classifier.weight"][0, 0] = float("nan")
    save_checkpoint(dataclasses.replace(saved, state_dict=weights), tmp_path / "nan.pt")
    run = _invoke_export("--model", tmp_path / "nan.pt", "--out", good)
    assert run.exit_code == 1 and "NaN" in run.output
    assert good.read_bytes() == result.path.read_bytes()


def test_export_never_writes_over_its_input_or_a_foreign_file(trained, tmp_path):
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(trained["checkpoint"].read_bytes())
    run = _invoke_export("--model", checkpoint, "--out", checkpoint)
    assert run.exit_code == 2 and "is the checkpoint being exported" in run.output
    assert checkpoint.read_bytes() == trained["checkpoint"].read_bytes()
    foreign = tmp_path / "notes.onnx"
    foreign.write_text("my notes")
    run = _invoke_export("--model", checkpoint, "--out", foreign, "--data-dir", tmp_path)
    assert run.exit_code == 1 and "--overwrite" in run.output
    assert foreign.read_text() == "my notes"
    run = _invoke_export(
        "--model", checkpoint, "--out", foreign, "--data-dir", tmp_path, "--overwrite"
    )
    assert run.exit_code == 0, run.output
    again = _invoke_export("--model", checkpoint, "--out", foreign, "--data-dir", tmp_path)
    assert again.exit_code == 0, again.output  # a file export wrote itself is replaced


@pytest.mark.parametrize(
    "option, fragment",
    [
        (["--opset", "99"], "--opset 99"),
        (["--opset", "7"], "--opset"),
        (["--quantize", "int4"], "'int4' is not"),
        (["--format", "tflite"], "'tflite' is not"),
        (["--out", "."], "is a folder"),
    ],
)
def test_bad_export_options_exit_2_and_write_nothing(trained, tmp_path, option, fragment):
    run = _invoke_export("--model", trained["checkpoint"], "--out", tmp_path / "m.onnx", *option)
    assert run.exit_code == 2 and fragment in run.output
    assert "Traceback" not in run.output and not (tmp_path / "m.onnx").exists()


def test_an_empty_test_set_falls_back_to_random_check_images(trained, tmp_path):
    from mnist_cli.data import raw_dir

    folder = raw_dir(tmp_path / "data")
    folder.mkdir(parents=True)
    (folder / "t10k-images-idx3-ubyte").write_bytes(
        bytes.fromhex("00000803") + bytes(4) + (28).to_bytes(4, "big") * 2
    )
    (folder / "t10k-labels-idx1-ubyte").write_bytes(bytes.fromhex("00000801") + bytes(4))
    result = export_onnx(trained["checkpoint"], tmp_path / "m.onnx", data_dir=tmp_path / "data")
    assert not result.real_images and result.same_predictions


def test_out_through_a_folder_not_made_yet_is_resolved_before_the_checks(trained, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    checkpoint = run_dir / "best.pt"
    checkpoint.write_bytes(trained["checkpoint"].read_bytes())
    before = checkpoint.read_bytes()
    result = _invoke_export("--model", checkpoint, "--out", run_dir / "sub" / ".." / "best.pt")
    assert result.exit_code == 2 and "is the checkpoint being exported" in result.output
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    result = _invoke_export("--model", checkpoint, "--out", tmp_path / "new" / ".." / "notes.txt")
    assert result.exit_code == 1 and "not written by `mnist export`" in result.output
    assert checkpoint.read_bytes() == before and notes.read_text() == "mine"
    assert not (run_dir / "sub").exists() and not (tmp_path / "new").exists()


def test_out_is_compared_with_the_checkpoint_by_identity(trained, tmp_path):
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(trained["checkpoint"].read_bytes())
    before = checkpoint.read_bytes()
    os.link(checkpoint, tmp_path / "hard.onnx")
    (tmp_path / "soft.onnx").symlink_to(checkpoint)
    for alias in ("hard.onnx", "soft.onnx"):
        result = _invoke_export("--model", checkpoint, "--out", tmp_path / alias)
        assert result.exit_code == 2 and "is the checkpoint being exported" in result.output
    assert checkpoint.read_bytes() == before


def test_an_out_folder_that_cannot_be_written_fails_before_exporting(trained, tmp_path):
    (tmp_path / "file").write_text("")
    result = _invoke_export("--model", trained["checkpoint"], "--out", tmp_path / "file" / "m.onnx")
    assert result.exit_code == 1 and "is not a folder" in result.output
    result = _invoke_export("--model", trained["checkpoint"], "--out", "/proc/m.onnx")
    assert result.exit_code == 1 and "cannot write in /proc" in result.output


def test_a_checkpoint_that_fails_its_check_is_blamed_not_the_file_it_would_replace(
    exported, tmp_path
):
    import dataclasses

    from mnist_cli.train.checkpoints import save_checkpoint

    result, trained = exported
    good = tmp_path / "model.onnx"
    good.write_bytes(result.path.read_bytes())
    saved = load_checkpoint(trained["checkpoint"])
    weights = {k: v.clone() for k, v in saved.state_dict.items()}
    weights["classifier.weight"] *= 1e30  # finite, yet no score is
    save_checkpoint(dataclasses.replace(saved, state_dict=weights), tmp_path / "huge.pt")
    run = _invoke_export("--model", tmp_path / "huge.pt", "--out", good)
    assert run.exit_code == 1 and "huge.pt: gave NaN, infinite or absurd scores" in run.output
    assert "model.onnx" not in run.output and good.read_bytes() == result.path.read_bytes()


def test_damaged_check_data_is_named_not_replaced_by_random_images(trained, tmp_path):
    import shutil

    from mnist_cli.data import raw_dir
    from mnist_cli.errors import DataError

    shutil.copytree(trained["data_dir"], tmp_path / "data")
    labels = raw_dir(tmp_path / "data") / "t10k-labels-idx1-ubyte"
    labels.unlink()
    os.mkfifo(labels)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: a FIFO"):
        export_onnx(trained["checkpoint"], tmp_path / "m.onnx", data_dir=tmp_path / "data")
    assert not (tmp_path / "m.onnx").exists()


def test_export_never_replaces_a_model_shipped_in_the_package(trained):
    from mnist_cli.infer.backends import BUNDLED_MODELS

    bundled = BUNDLED_MODELS["onnxruntime"]
    before = bundled.read_bytes()
    for extra in ((), ("--overwrite",)):
        result = _invoke_export("--model", trained["checkpoint"], "--out", bundled, *extra)
        assert result.exit_code == 2 and "a model shipped in the package" in result.output
    assert bundled.read_bytes() == before


def test_export_command_rejects_unknown_format(trained, tmp_path):
    result = _invoke_export(
        "--format", "tflite", "--model", trained["checkpoint"], "--out", tmp_path / "m"
    )
    assert result.exit_code == 2 and "'tflite'" in result.output and "'onnx'" in result.output


def test_export_command_prints_its_checks(trained, tmp_path):
    out = tmp_path / "m.onnx"
    result = _invoke_export(
        "--model", trained["checkpoint"], "--out", out, "--data-dir", trained["data_dir"]
    )
    assert result.exit_code == 0, result.output
    assert "onnx.checker: passed" in result.output and "1000 MNIST test images" in result.output
    assert out.is_file()
