"""The user's surface: conventions of every command, the bundled model, pictures, own digits."""

from __future__ import annotations

import json
import typing
from enum import Enum
from pathlib import Path

import numpy as np
import pytest
import typer.main
from PIL import Image
from typer.testing import CliRunner

from mnist_cli.backends import BUNDLED_MODELS
from mnist_cli.cli import app
from mnist_cli.data import load_split

runner = CliRunner()
COMMANDS = typer.main.get_command(app).commands


def _enum_of(annotation):
    """The Enum inside Annotated[Enum | None, ...], or None."""
    for kind in typing.get_args(annotation) or (annotation,):
        if isinstance(kind, type) and issubclass(kind, Enum):
            return kind
        inner = _enum_of(kind) if typing.get_args(kind) else None
        if inner is not None:
            return inner
    return None


def _choice_options():
    """(command, option, Enum) for every option whose type is an Enum, from the signatures."""
    for info in app.registered_commands:
        hints = typing.get_type_hints(info.callback, include_extras=True)
        for parameter, annotation in hints.items():
            kind = _enum_of(annotation)
            option = next(
                (m for m in typing.get_args(annotation)[1:] if hasattr(m, "param_decls")), None
            )
            if kind is not None and option is not None and not option.hidden:
                names = option.param_decls or ("--" + parameter.replace("_", "-"),)
                flag = next((n for n in names if n.startswith("--")), "--" + parameter)
                yield info.callback.__name__, flag, kind


CHOICES = list(_choice_options())


def test_the_choices_are_enums():
    found = {(command, option) for command, option, _ in CHOICES}
    assert {("train", "--arch"), ("predict", "--backend"), ("export", "--quantize")} <= found
    assert ("export", "--format") in found


@pytest.mark.parametrize("command, option, kind", CHOICES, ids=str)
def test_every_choice_is_listed_in_help_and_a_bad_one_exits_2(command, option, kind):
    help_text = runner.invoke(app, [command, "--help"], terminal_width=200).output
    assert all(choice.value in help_text for choice in kind)
    result = runner.invoke(app, [command, option, "bogus", *_required(command)])
    assert result.exit_code == 2 and "bogus" in result.output


def _required(command):
    return ["x.png"] if command == "predict" else []


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_dash_h_is_help_everywhere(command):
    args = ([command] if command else []) + ["-h"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "Usage:" in result.output


def test_shell_completion_is_offered():
    assert "--install-completion" in runner.invoke(app, ["--help"], terminal_width=200).output


def test_every_command_has_quiet_and_folder_options_read_the_environment():
    for name, command in COMMANDS.items():
        options = {opt for param in command.params for opt in param.opts}
        assert "--quiet" in options, name
        for param in command.params:
            if param.name in ("data_dir", "out_dir", "images", "source"):
                assert param.envvar, f"{name} {param.opts[0]}"


def _digit_pngs(folder: Path, data_dir: Path, count: int) -> list[int]:
    test = load_split(data_dir, "test")
    for i in range(count):
        Image.fromarray(255 - test.images[i]).resize((84, 84)).save(folder / f"{i}.png")
    return [int(label) for label in test.labels[:count]]


@pytest.mark.skipif(not BUNDLED_MODELS["onnxruntime"].is_file(), reason="no bundled model")
def test_the_bundled_model_works_without_params_and_says_so(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fresh folder: no params/, no exported/
    labels = _digit_pngs(tmp_path, trained["data_dir"], 10)
    for extra in ([], ["--backend", "torch"]):
        result = runner.invoke(app, ["predict", str(tmp_path), "--json", *extra])
        assert result.exit_code == 0, result.output
        assert "Using the bundled model" in result.stderr
        digits = [json.loads(line)["digit"] for line in result.stdout.splitlines()]
        assert sum(d == t for d, t in zip(digits, labels, strict=True)) >= 8  # margin: CPUs differ
    result = runner.invoke(app, ["test", "--data-dir", str(trained["data_dir"]), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["accuracy"] > 0.97 and "pretrained" in report["model"]
    export = runner.invoke(app, ["export"])
    assert export.exit_code == 1 and "no model at params/best.pt" in export.output


@pytest.mark.skipif(not BUNDLED_MODELS["torch"].is_file(), reason="no bundled model")
def test_the_bundled_model_was_trained_with_the_current_cpu_recipe():
    from dataclasses import asdict

    from mnist_cli.checkpoints import load_checkpoint
    from mnist_cli.recipes import default_config

    # A recipe change must come with `python scripts/make_pretrained.py`, or the model is stale.
    options = load_checkpoint(BUNDLED_MODELS["torch"]).options
    recipe = asdict(default_config("cnn", "cpu"))
    assert {name: options.get(name) for name in recipe} == recipe


def test_training_writes_its_history_as_csv_and_png(trained):
    rows = (trained["out_dir"] / "history.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["epoch", "train_loss", "val_loss", "val_accuracy"]
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3"]
    assert "images_per_second" in rows[0] and "lr" in rows[0]
    with Image.open(trained["out_dir"] / "history.png") as picture:
        assert picture.format == "PNG" and picture.width > 500


def test_plot_saves_the_confusion_matrix(trained, tmp_path):
    result = runner.invoke(
        app,
        [
            "test",
            "-m",
            str(trained["checkpoint"]),
            "--data-dir",
            str(trained["data_dir"]),
            "--plot",
            str(tmp_path / "c.png"),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "c.png") as picture:
        assert picture.format == "PNG"
    assert "Saved" not in result.stderr  # --quiet: results only


def test_own_digits_in_class_folders(trained, tmp_path, monkeypatch):
    test = load_split(trained["data_dir"], "test")
    for i in range(60):
        folder = tmp_path / "mine" / str(test.labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - test.images[i]).resize((64, 64)).save(folder / f"{i}.png")
    (tmp_path / "mine" / "3" / "broken.png").write_bytes(b"\x89PNG nope")
    (tmp_path / "mine" / "notes").mkdir()  # not a digit: named among the skipped
    monkeypatch.setenv("MNIST_IMAGES_DIR", str(tmp_path / "mine"))
    result = runner.invoke(
        app,
        ["test", "-m", str(trained["checkpoint"]), "--json", "--errors", str(tmp_path / "e.png")],
    )
    assert result.exit_code == 1  # one file could not be read
    report = json.loads(result.stdout)
    assert report["images"] == 60 and report["accuracy"] > 0.8
    assert sum(c["support"] for c in report["classes"]) == 60
    assert [Path(p).name for p, _ in report["skipped"]] == ["broken.png", "notes"]
    assert "broken.png" in result.stderr and (tmp_path / "e.png").is_file()


def test_show_draws_the_digit_the_model_saw(trained, tmp_path):
    _digit_pngs(tmp_path, trained["data_dir"], 1)
    result = runner.invoke(
        app, ["predict", str(tmp_path / "0.png"), "-m", str(trained["checkpoint"]), "--show"]
    )
    assert result.exit_code == 0, result.output
    picture = [line[:28] for line in result.stdout.splitlines()[:14]]
    assert all(set(line) <= set(" ▀▄█") for line in picture)
    assert sum(len(line.strip()) for line in picture) > 20  # the digit's ink is drawn
    assert "%" in result.stdout


def test_predicted_digit_pixels_are_kept_only_when_asked(trained, tmp_path):
    from mnist_cli.backends import open_model
    from mnist_cli.prediction import predict_paths

    _digit_pngs(tmp_path, trained["data_dir"], 2)
    engine = open_model(trained["checkpoint"], device="cpu")
    kept = list(predict_paths(engine, [str(tmp_path)], keep_digits=True))
    assert all(r.image.shape == (28, 28) and np.isfinite(r.image).all() for r in kept)
    assert all(r.image is None for r in predict_paths(engine, [str(tmp_path)]))
