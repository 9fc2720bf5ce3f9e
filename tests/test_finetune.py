"""`mnist train --images DIR --init MODEL`: fine-tuning a model on the user's own digits."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mnist_cli.cli import app
from mnist_cli.data import load_split
from mnist_cli.errors import CheckpointError, TrainingInterrupted
from mnist_cli.infer.backends import BUNDLED_MODELS
from mnist_cli.infer.evaluation import evaluate_model
from mnist_cli.train.checkpoints import load_checkpoint
from mnist_cli.train.finetune import finetune_config
from mnist_cli.train.training import train

runner = CliRunner()


def mirrored_hand(folder: Path, data_dir: Path, indices: range, *, mirror: bool = True) -> Path:
    """MNIST test digits written mirrored, dark on white and three times larger, as a user's
    own folder of 0/ ... 9/: a hand that a model trained on MNIST mostly misreads."""
    test = load_split(data_dir, "test")
    for index in indices:
        label = folder / str(test.labels[index])
        label.mkdir(parents=True, exist_ok=True)
        pixels = test.images[index][:, ::-1] if mirror else test.images[index]
        digit = Image.fromarray(255 - pixels).resize((84, 84))
        digit.save(label / f"{index}.png")
    return folder


def short(tmp_path: Path, **keys: object) -> Path:
    """A --config file that cuts the fine-tuning recipe down to a test's few seconds."""
    path = tmp_path / "short.toml"
    lines = [f"{key} = {value}" for key, value in {"fill": 1000, **keys}.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_finetuning_teaches_the_bundled_model_a_hand_it_misreads(data_dir, tmp_path):
    mine = mirrored_hand(tmp_path / "mine", data_dir, range(200))
    later = mirrored_hand(tmp_path / "later", data_dir, range(600, 800))  # never trained on
    bundled = BUNDLED_MODELS["torch"]
    before = evaluate_model(bundled, images_dir=later, device="cpu")[0].accuracy
    out = tmp_path / "run"
    args = ["train", "--images", str(mine), "--init", "bundled", "--data-dir", str(data_dir)]
    args += ["--out-dir", str(out), "--epochs", "3", "--config", str(short(tmp_path))]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "cnn fine-tuning recipe" in result.output
    said = re.search(r"your 200 digits: (\d+) to learn from, (\d+) held out", result.output)
    assert said and int(said[1]) + int(said[2]) == 200 and 30 <= int(said[2]) <= 50  # a fifth
    after = evaluate_model(out / "best.pt", images_dir=later, device="cpu")[0].accuracy
    assert after >= before + 0.1, (before, after)  # the model learnt the hand
    mnist = evaluate_model(out / "best.pt", data_dir=data_dir, device="cpu")[0].accuracy
    assert mnist >= 0.95  # and still reads MNIST, which was replayed beside it
    tuned = load_checkpoint(out / "best.pt")
    assert tuned.class_labels == load_checkpoint(bundled).class_labels  # "none" kept
    assert tuned.options["init"] == "bundled"
    assert tuned.options["images"] == str(mine.resolve())
    assert "Calibrated best.pt on the validation images" in result.output
    assert "--images OTHER-DIGITS" in result.output  # tested on digits it did not learn from
    for name in ("best.pt", "last.pt", "history.csv", "history.png", "config.toml"):
        assert (out / name).is_file(), name
    # An ordinary model to every other command, and its export says where it started.
    read = runner.invoke(app, ["predict", "-m", str(out / "best.pt"), "--json", str(later)])
    assert read.exit_code == 0, read.output
    onnx = tmp_path / "tuned.onnx"
    exported = runner.invoke(app, ["export", "-m", str(out / "best.pt"), "--out", str(onnx)])
    assert exported.exit_code == 0, exported.output
    from mnist_cli.infer.onnxgraph import metadata

    assert metadata(onnx.read_bytes())["fine_tuned_from"] == "bundled"
    # The run's own config.toml repeats it.
    again = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(out / "config.toml"),
            "--data-dir",
            str(data_dir),
            "--out-dir",
            str(tmp_path / "again"),
            "--print-config",
        ],
    )
    assert again.exit_code == 0, again.output
    assert (out / "config.toml").read_text().splitlines()[1:] == again.stdout.splitlines()[1:]


def test_finetuning_without_mnist_learns_from_your_digits_alone_and_says_so(
    data_dir, tmp_path, capsys
):
    mine = mirrored_hand(tmp_path / "mine", data_dir, range(30), mirror=False)  # MNIST's own
    empty = tmp_path / "no-data"
    empty.mkdir()
    args = ["train", "--images", str(mine), "--init", "bundled", "--data-dir", str(empty)]
    args += ["--out-dir", str(tmp_path / "run"), "--epochs", "1"]
    result = runner.invoke(app, [*args, "--config", str(short(tmp_path, fill=200))])
    assert result.exit_code == 0, result.output
    warning = f"Warning: no MNIST in {empty}: fine-tuning on your digits alone"
    assert warning in " ".join(result.output.split())
    # A few held-out digits read right hold no mistakes to fit a temperature on: the bundled
    # model's stays.
    start = load_checkpoint(BUNDLED_MODELS["torch"]).temperature
    assert f"keeps its starting model's calibration (logits / {start:g})" in result.output
    assert load_checkpoint(tmp_path / "run" / "best.pt").temperature == start
    args[args.index(str(tmp_path / "run"))] = str(tmp_path / "quiet")
    quiet = runner.invoke(app, [*args, "-q", "--config", str(short(tmp_path, fill=200))])
    assert quiet.exit_code == 0 and warning in " ".join(quiet.output.split())  # said even so


def _nine_images(tmp_path: Path, data_dir: Path) -> list[str]:
    return ["--images", str(mirrored_hand(tmp_path / "nine", data_dir, range(9)))]


def _loose_files(tmp_path: Path, data_dir: Path) -> list[str]:
    folder = tmp_path / "loose"
    folder.mkdir()
    Image.new("L", (28, 28), 255).save(folder / "a.png")
    return ["--images", str(folder)]


def _mine(tmp_path: Path, data_dir: Path) -> list[str]:
    return ["--images", str(mirrored_hand(tmp_path / "mine", data_dir, range(20)))]


def _with_a_broken_file(tmp_path: Path, data_dir: Path) -> list[str]:
    folder = mirrored_hand(tmp_path / "mine", data_dir, range(20))
    (folder / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    return ["--images", str(folder)]


def _with_a_device(tmp_path: Path, data_dir: Path) -> list[str]:
    folder = mirrored_hand(tmp_path / "mine", data_dir, range(20))
    (folder / "3" / "zero.png").symlink_to("/dev/zero")  # endless: must never be read
    return ["--images", str(folder)]


def _fifo(tmp_path: Path) -> str:
    path = tmp_path / "model.pt"
    os.mkfifo(path)  # opening it would wait for a writer for ever
    return str(path)


def _text_file(tmp_path: Path) -> str:
    path = tmp_path / "model.pt"
    path.write_text("not a model")
    return str(path)


REFUSALS = {
    "fewer than ten images": (
        lambda t, d: [*_nine_images(t, d), "--init", "bundled"],
        1,
        "9 readable labelled images; fine-tuning needs at least 10",
    ),
    "no digit folders": (
        lambda t, d: [*_loose_files(t, d), "--init", "bundled"],
        1,
        "no readable labelled images",
    ),
    "an init that is no model": (
        lambda t, d: [*_mine(t, d), "--init", _text_file(t)],
        1,
        "model.pt: a text file, not an mnist checkpoint",
    ),
    "an init that is not there": (
        lambda t, d: [*_mine(t, d), "--init", str(t / "missing.pt")],
        1,
        "no checkpoint at",
    ),
    "an onnx init": (
        lambda t, d: [*_mine(t, d), "--init", str(BUNDLED_MODELS["onnxruntime"])],
        1,
        "an ONNX model, not an mnist checkpoint",
    ),
    "an unreadable file among them": (
        lambda t, d: [*_with_a_broken_file(t, d), "--init", "bundled"],
        1,
        "1 cannot be read:",
    ),
    "a link to a device among them": (
        lambda t, d: [*_with_a_device(t, d), "--init", "bundled"],
        1,
        "zero.png (a device (not a regular file)",
    ),
    "a fifo for init": (
        lambda t, d: [*_mine(t, d), "--init", _fifo(t)],
        1,
        "model.pt: a FIFO (not a regular file), not an mnist checkpoint",
    ),
    "a folder for init": (
        lambda t, d: [*_mine(t, d), "--init", str(t)],
        1,
        "a folder, not an mnist checkpoint",
    ),
    "a fill beyond memory": (
        lambda t, d: [*_mine(t, d), "--init", "bundled", "--config", str(short(t, fill=10**6))],
        2,
        "fill must be at most 200,000",
    ),
    "images without init": (lambda t, d: _mine(t, d), 2, "add --init MODEL"),
    "init without images": (lambda t, d: ["--init", "bundled"], 2, "add --images DIR"),
    "another network": (
        lambda t, d: [*_mine(t, d), "--init", "bundled", "--arch", "fc"],
        2,
        "has the cnn network; fine-tuning keeps it",
    ),
    "dropping the none class": (
        lambda t, d: [*_mine(t, d), "--init", "bundled", "--config", str(short(t, negatives=0))],
        2,
        'has the class "none"',
    ),
    "images that are not there": (
        lambda t, d: ["--images", str(t / "nowhere"), "--init", "bundled"],
        1,
        "nowhere: no such file",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_finetuning_refuses_what_cannot_work_before_any_training(case, data_dir, tmp_path):
    make_args, code, fragment = REFUSALS[case]
    out = tmp_path / "run"
    args = ["train", *make_args(tmp_path, data_dir), "--data-dir", str(data_dir)]
    result = runner.invoke(app, [*args, "--out-dir", str(out)])
    assert result.exit_code == code, result.output
    assert fragment in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and "epoch" not in result.output
    assert not out.exists()  # nothing written


def test_resume_refuses_finetuning_options():
    result = runner.invoke(app, ["train", "--resume", "--images", "x", "--init", "bundled"])
    assert result.exit_code == 2 and "drop --images, --init" in result.output


def test_an_interrupted_finetuning_resumes_to_the_same_weights_on_the_same_images(
    data_dir, tmp_path, interrupt_at
):
    mine = mirrored_hand(tmp_path / "mine", data_dir, range(40))
    config = finetune_config(init="bundled", images=mine, epochs=2, fill=1200)
    where = {"data_dir": data_dir, "device": "cpu"}
    train(config, out_dir=tmp_path / "whole", **where)
    with pytest.raises(TrainingInterrupted):
        train(config, out_dir=tmp_path / "cut", callback=interrupt_at(epoch=1, step=10), **where)
    assert load_checkpoint(tmp_path / "cut/last.pt").state.epoch == 1
    next(mine.rglob("*.png")).unlink()  # the images change meanwhile ...
    with pytest.raises(CheckpointError, match="changed since the run started"):
        train(None, out_dir=tmp_path / "cut", resume=True, **where)
    mirrored_hand(mine, data_dir, range(40))  # ... and are put back
    (tmp_path / "no-mnist").mkdir()  # nor may the MNIST it replays go missing
    with pytest.raises(CheckpointError, match="changed since the run started"):
        train(None, out_dir=tmp_path / "cut", resume=True, data_dir=tmp_path / "no-mnist")
    train(None, out_dir=tmp_path / "cut", resume=True, **where)
    whole, cut = (load_checkpoint(tmp_path / f"{run}/last.pt") for run in ("whole", "cut"))
    assert all(torch.equal(whole.state_dict[k], cut.state_dict[k]) for k in whole.state_dict)
    assert cut.state.epoch == 2


def test_a_finetuned_model_starts_from_its_init_not_from_random_weights(data_dir, tmp_path):
    mine = mirrored_hand(tmp_path / "mine", data_dir, range(20))
    config = finetune_config(init="bundled", images=mine, epochs=1, fill=20, lr=1e-9)
    train(config, data_dir=data_dir, out_dir=tmp_path / "run", device="cpu")
    start, tuned = (
        load_checkpoint(BUNDLED_MODELS["torch"]),
        load_checkpoint(tmp_path / "run/last.pt"),
    )
    weights = [
        k for k, v in start.state_dict.items() if v.is_floating_point() and "running" not in k
    ]
    close = [np.allclose(start.state_dict[k], tuned.state_dict[k], atol=1e-4) for k in weights]
    assert all(close)  # a learning rate of nothing leaves the bundled weights


def test_a_model_without_the_none_class_is_fine_tuned_without_it(data_dir, tmp_path, brief):
    ten = brief(negatives=0.0)  # a model of the ten digits alone, as runs before "none" were
    train(ten, data_dir=data_dir, out_dir=tmp_path / "ten", device="cpu")
    mine = mirrored_hand(tmp_path / "mine", data_dir, range(20))
    config = finetune_config(init=str(tmp_path / "ten/best.pt"), images=mine, epochs=1, fill=100)
    assert config.negatives == 0
    train(config, data_dir=data_dir, out_dir=tmp_path / "run", device="cpu")
    assert load_checkpoint(tmp_path / "run/best.pt").class_labels == [str(d) for d in range(10)]


def test_the_held_out_part_keeps_every_digit_to_learn_from():
    from mnist_cli.data import Split
    from mnist_cli.train.datasets import hold_out

    labels = np.array([0] * 8 + [1] * 2 + [2])  # a digit drawn once is never held out
    yours = Split(np.arange(len(labels))[:, None, None].astype(np.uint8), labels)
    kept, held = hold_out(yours, 0.2, seed=0)
    assert sorted(held.labels.tolist()) == [0, 0] and sorted(set(kept.labels.tolist())) == [0, 1, 2]
    lone = Split(np.zeros((3, 1, 1), np.uint8), np.array([4, 5, 6]))
    kept, held = hold_out(lone, 0.2, seed=0)
    assert len(held) == 1 and len(kept) == 2  # one at least, even then
