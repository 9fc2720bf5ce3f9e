"""The `mnist` command as a user meets it: conventions, help, errors and each command's surface."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import typing
from enum import Enum
from pathlib import Path

import numpy as np
import pytest
import torch
import typer.main
from PIL import Image
from typer.testing import CliRunner

from mnist_cli.cli import app
from mnist_cli.data import load_split
from mnist_cli.infer.backends import BUNDLED_MODELS

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def commands():
    import typer.main

    return sorted(typer.main.get_command(app).commands)


def test_all_commands_are_registered():
    assert {"download", "train", "test"} <= set(commands())


@pytest.mark.parametrize("command", commands())
def test_every_command_help_shows_an_example(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Example: mnist " + command in result.output


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag):
    result = run(flag)
    assert result.exit_code == 0 and result.output.startswith("mnist ")


def test_help_does_not_import_torch(fresh_python):
    heavy = ("torch", "numpy", "onnxruntime", "matplotlib")
    stdout, imported = fresh_python("from mnist_cli.cli import app\napp(['--help'])", heavy)
    assert imported == [] and "Usage" in stdout


def test_python_dash_m_is_the_same_command():
    done = subprocess.run(
        [sys.executable, "-m", "mnist_cli", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "download" in done.stdout


def assert_clean_failure(result, code: int, *fragments: str):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output


def test_train_without_data(tmp_path):
    result = run("train", "--data-dir", tmp_path / "none", "--out-dir", tmp_path / "p")
    assert_clean_failure(result, 1, "not found", "mnist download")


def test_train_with_a_corrupt_file_names_it(data_dir, tmp_path):
    images = data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    result = run("train", "--data-dir", data_dir, "--out-dir", tmp_path / "p")
    assert_clean_failure(result, 1, "train-images-idx3-ubyte", "truncated", "mnist download")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_train_on_missing_cuda(data_dir, tmp_path):
    result = run("train", "--device", "cuda", "--data-dir", data_dir, "--out-dir", tmp_path / "p")
    assert_clean_failure(result, 2, "CUDA is not available")
    assert not (tmp_path / "p").exists()


def test_resume_refuses_new_options(tmp_path):
    result = run("train", "--resume", "--epochs", "3", "--out-dir", tmp_path)
    assert_clean_failure(result, 2, "drop --epochs")


def test_bad_option_value(data_dir, tmp_path):
    result = run("train", "--epochs", "0", "--data-dir", data_dir, "--out-dir", tmp_path / "p")
    assert_clean_failure(result, 2, "epochs must be at least 1")


def test_test_without_checkpoint(tmp_path):
    result = run("test", "--model", tmp_path / "best.pt")
    assert_clean_failure(result, 1, "no model at", "mnist train")


def test_download_offline_suggests_from(tmp_path, monkeypatch):
    import mnist_cli.download

    monkeypatch.setattr(mnist_cli.download, "MIRRORS", ["http://127.0.0.1:9/"])
    result = run("download", "--data-dir", tmp_path)
    assert_clean_failure(result, 1, "127.0.0.1:9", "--from")


def test_download_from_a_bad_folder(tmp_path):
    result = run("download", "--from", tmp_path / "nowhere", "--data-dir", tmp_path / "d")
    assert_clean_failure(result, 1, "not a folder")


def test_end_to_end_import_train_test(tmp_path, subset_dir):
    data, out = tmp_path / "data", tmp_path / "params"
    result = run("download", "--from", subset_dir, "--no-verify", "--data-dir", data)
    assert result.exit_code == 0 and "imported" in result.output
    result = run("download", "--from", subset_dir, "--no-verify", "--data-dir", data)
    assert "already present and valid" in result.output
    result = run(
        "train",
        "--epochs",
        "2",
        "--validation-size",
        "500",
        "--device",
        "cpu",
        "--data-dir",
        data,
        "--out-dir",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "epoch   2" in result.output and (out / "best.pt").is_file()
    result = runner.invoke(
        app,
        [
            "test",
            "--model",
            str(out / "best.pt"),
            "--data-dir",
            str(data),
            "--json",
            "--errors",
            str(tmp_path / "e.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 1000 and report["accuracy"] > 0.9
    assert len(report["confusion"]) == 10 and (tmp_path / "e.png").is_file()
    result = run("test", "--model", out / "best.pt", "--data-dir", data)
    assert "Confusion" in result.output and "precision" in result.output


def train_command(data_dir, out, *extra):
    return [
        sys.executable,
        "-m",
        "mnist_cli",
        "train",
        "--epochs",
        "20",
        "--validation-size",
        "3000",
        "--batch-size",
        "100",
        "--device",
        "cpu",
        "--data-dir",
        str(data_dir),
        "--out-dir",
        str(out),
        *extra,
    ]


def test_sigint_saves_last_pt_and_resume_ends_with_the_same_weights(data_dir, tmp_path):
    from mnist_cli.train.checkpoints import load_checkpoint

    whole = subprocess.run(train_command(data_dir, tmp_path / "whole"), capture_output=True)
    assert whole.returncode == 0, whole.stderr
    cut = tmp_path / "cut"
    process = subprocess.Popen(train_command(data_dir, cut), stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if line.startswith("epoch   2"):
            break
    # While it runs, a second run on the same folder is refused.
    second = run("train", "--data-dir", data_dir, "--out-dir", cut, "--device", "cpu")
    assert_clean_failure(second, 1, "another `mnist train`")
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 130, rest
    assert "--resume" in rest and "Traceback" not in rest
    saved = load_checkpoint(cut / "last.pt")
    assert 2 <= saved.state.epoch < 20
    resumed = subprocess.run(
        train_command(data_dir, cut)[:4]
        + ["--resume", "--data-dir", str(data_dir), "--out-dir", str(cut), "--device", "cpu"],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(tmp_path / "whole" / "last.pt").state_dict
    b = load_checkpoint(cut / "last.pt").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_out_that_cannot_be_written_fails_before_training(data_dir, tmp_path):
    (tmp_path / "file").write_text("")
    result = run("train", "--data-dir", data_dir, "--out-dir", tmp_path / "file" / "params")
    assert_clean_failure(result, 1, "cannot create the folder")
    # /proc takes no new file, even from root (CI runs as root: a chmod would not stop it)
    result = run("train", "--data-dir", data_dir, "--out-dir", "/proc/params")
    assert_clean_failure(result, 1, "--out-dir /proc/params: cannot create the folder")


def test_unwritable_output_file_is_a_message(trained, tmp_path):
    (tmp_path / "file").write_text("")
    result = run(
        "test",
        "--model",
        trained["checkpoint"],
        "--data-dir",
        trained["data_dir"],
        "--errors",
        tmp_path / "file" / "errors.png",
    )
    assert_clean_failure(result, 1, "Error:", "file")


def test_test_accepts_an_onnx_file(trained, tmp_path):
    out = tmp_path / "m.onnx"
    assert (
        run(
            "export",
            "--model",
            trained["checkpoint"],
            "--out",
            out,
            "--data-dir",
            trained["data_dir"],
        ).exit_code
        == 0
    )
    result = runner.invoke(
        app, ["test", "--model", str(out), "--data-dir", str(trained["data_dir"]), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 1000


def test_testing_an_onnx_file_never_imports_torch(trained, tmp_path, fresh_python):
    out = tmp_path / "m.onnx"
    assert (
        run(
            "export",
            "--model",
            trained["checkpoint"],
            "--out",
            out,
            "--data-dir",
            trained["data_dir"],
        ).exit_code
        == 0
    )
    stdout, imported = fresh_python(
        "from mnist_cli.cli import app\n"
        f"app(['test', '--model', {str(out)!r}, '--data-dir', {str(trained['data_dir'])!r}, "
        "'--json'])"
    )
    assert imported == [] and json.loads(stdout)["images"] == 1000


@pytest.mark.parametrize("target", ["grid", "folder"])
def test_a_bad_errors_path_is_refused_before_the_evaluation(trained, tmp_path, target):
    path = tmp_path if target == "folder" else tmp_path / "grid"
    result = run(
        "test", "--model", trained["checkpoint"], "--data-dir", "nowhere", "--errors", path
    )
    assert_clean_failure(result, 2, "--errors")
    assert "MNIST test data not found" not in result.output  # refused before reading data


@pytest.mark.parametrize(
    "option, value, fragment",
    [
        ("--lr", "nan", "lr must be a positive finite number"),
        ("--lr", "inf", "lr must be a positive finite number"),
        ("--validation-size", "60000", "--validation-size 60000"),
    ],
)
def test_bad_train_values_exit_2(data_dir, tmp_path, option, value, fragment):
    result = run("train", option, value, "--data-dir", data_dir, "--out-dir", tmp_path / "p")
    assert_clean_failure(result, 2, fragment)
    assert not (tmp_path / "p").exists()


def test_markup_in_file_names_is_shown_as_written(tmp_path):
    result = run("test", "--model", tmp_path / "[/]odd[bold].pt")
    assert_clean_failure(result, 1, "[/]odd[bold].pt")


def test_an_empty_test_set_is_a_clear_error(trained, tmp_path):
    from mnist_cli.data import raw_dir

    folder = raw_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "t10k-images-idx3-ubyte").write_bytes(
        bytes.fromhex("00000803") + bytes(4) + (28).to_bytes(4, "big") * 2
    )
    (folder / "t10k-labels-idx1-ubyte").write_bytes(bytes.fromhex("00000801") + bytes(4))
    result = run("test", "--model", trained["checkpoint"], "--data-dir", tmp_path)
    assert_clean_failure(result, 1, "the test set holds no images")


def test_train_help_states_each_recipes_values():
    wide = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "300"}).output
    help_text = " ".join(wide.split())
    for shown in (
        "cnn 15; fc 20",  # epochs
        "cnn 128 on CPU, 2048 on CUDA; fc 256",  # batch size
        "cnn 0.008 on CPU, 0.012 on CUDA; fc 0.001",  # peak lr
        "[default: cnn on; fc off]",  # augment
        "[default: 5000]",  # validation size
    ):
        assert shown in help_text, shown


@pytest.mark.parametrize(
    "args",
    [["train", "--model", "fc"], ["train", "--out", "a"], ["export", "--checkpoint", "a.pt"]],
)
def test_the_spellings_before_0_1_0_are_gone(tmp_path, args):
    result = runner.invoke(app, args)
    assert_clean_failure(result, 2, "No such option")


def test_control_characters_in_file_names_never_reach_the_terminal(trained, tmp_path, monkeypatch):
    from pathlib import Path

    from PIL import Image

    from mnist_cli.data import load_split

    monkeypatch.chdir(tmp_path)  # short names: the table shows them whole
    digit = 255 - load_split(trained["data_dir"], "test").images[0]
    red = Path("\x1b[31mred\x1b]0;pwned\x07.png")
    Image.fromarray(digit).save(red)
    broken = Path("\x1b[2Jbroken.png")
    broken.write_bytes(b"not an image")
    result = run("predict", red, broken, "-m", trained["checkpoint"], "--show", "--top-k", "2")
    assert result.exit_code == 1
    assert "\x1b" not in result.stdout and "\x1b" not in result.stderr
    assert "\\x1b[31mred\\x1b]0;pwned\\x07.png" in result.stdout
    assert "\\x1b[2Jbroken.png" in result.stderr
    as_json = run("predict", red, "-m", trained["checkpoint"], "--json")
    assert json.loads(as_json.stdout)["path"] == str(red)  # JSON keeps the name exact


def test_library_warnings_do_not_print_raw(trained, tmp_path):
    import struct

    import numpy as np
    from PIL import Image

    # An EXIF block whose tag points past its end: Pillow warns "Tag data larger than file".
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x010F, 2, 400, 500) + bytes(4)
    exif = b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd
    digit = np.zeros((40, 40), np.uint8)
    digit[8:32, 17:23] = 255
    Image.fromarray(digit).save(tmp_path / "odd-exif.png", exif=exif)
    done = subprocess.run(
        [sys.executable, "-m", "mnist_cli", "predict", str(tmp_path / "odd-exif.png"),
         "-m", str(trained["checkpoint"]), "--json"],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "default"},
    )  # fmt: skip
    assert done.returncode == 0 and json.loads(done.stdout)["digit"] in range(10)
    assert "Warning" not in done.stderr and "warnings.warn" not in done.stderr


def test_a_model_that_gives_nan_on_ink_is_refused_in_one_line(trained, tmp_path):
    """Finite weights, positive std, but a BatchNorm variance below zero: NaN on every digit."""
    payload = torch.load(trained["checkpoint"], weights_only=True)
    name = next(k for k in payload["state_dict"] if k.endswith("running_var"))
    payload["state_dict"][name][0] = -1.0
    torch.save(payload, tmp_path / "negative.pt")
    for command in (["test", "--data-dir", trained["data_dir"], "--json"], ["predict", tmp_path]):
        result = run(*command, "-m", tmp_path / "negative.pt")
        assert_clean_failure(result, 1, f"{name} holds a negative variance")
        assert "nan" not in result.stdout.lower()


def test_print_config_is_a_config_file_and_options_win_over_it(tmp_path):
    printed = run("train", "--print-config", "--arch", "fc", "--epochs", "3", "--device", "cpu")
    assert printed.exit_code == 0 and 'arch = "fc"' in printed.stdout
    (tmp_path / "fc.toml").write_text(printed.stdout)
    again = run("train", "--config", tmp_path / "fc.toml", "--print-config")
    assert again.stdout == printed.stdout  # the file reads back as the same recipe
    changed = run("train", "-c", tmp_path / "fc.toml", "--lr", "0.5", "--print-config")
    assert "lr = 0.5" in changed.stdout and "epochs = 3" in changed.stdout


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('epochs = "ten"', "key 'epochs': epochs must be an int, not 'ten'"),
        ("epoch = 3", "unknown key 'epoch'"),
        ("weight_average = 2", "key 'weight_average': weight-average must be between"),
        ('device = "tpu"', "key 'device': --device 'tpu' is not one of"),
        ('arch = "rnn"', "key 'arch': choose from cnn, fc, not 'rnn'"),
        ("epochs = ", "not a TOML file"),
    ],
)
def test_a_bad_config_file_names_the_file_and_the_key(tmp_path, text, fragment):
    (tmp_path / "bad.toml").write_text(text + "\n")
    result = run("train", "--config", tmp_path / "bad.toml", "--out-dir", tmp_path / "run")
    assert_clean_failure(result, 2, f"--config {tmp_path / 'bad.toml'}: ", fragment)
    assert not (tmp_path / "run").exists()


def test_each_run_keeps_its_config_and_it_repeats_the_run(data_dir, tmp_path):
    out = tmp_path / "run"
    first = run("train", "--data-dir", data_dir, "--out-dir", out, "--epochs", "1",
                "--validation-size", "500", "--seed", "3", "-q")  # fmt: skip
    assert first.exit_code == 0, first.output
    kept = (out / "config.toml").read_text()
    assert "seed = 3" in kept and "validation_size = 500" in kept and "epochs = 1" in kept
    repeat = run("train", "--config", out / "config.toml", "--print-config")
    assert repeat.stdout == kept


def test_training_says_what_it_does_in_short_lines_and_what_to_run_next(data_dir, tmp_path):
    result = run("train", "--data-dir", data_dir, "--out-dir", tmp_path / "run", "--epochs", "1",
                 "--validation-size", "500")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if str(tmp_path) not in line]
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert any(line.startswith("cnn recipe for cpu: 1 epoch,") for line in lines)
    assert "train loss: the epoch's mean" in result.stderr
    assert f"Next: mnist test -m {tmp_path / 'run' / 'best.pt'}" in result.stderr


def test_a_resumed_run_says_where_it_resumes(capsys):
    from mnist_cli.console import TrainProgress
    from mnist_cli.train.recipes import default_config

    with TrainProgress() as progress:
        progress.on_start(config=default_config("cnn"), device="cpu", where="cpu", start_epoch=2,
                          start_step=17, steps=40)  # fmt: skip
    assert "Resuming at epoch 3, step 17 of 40" in capsys.readouterr().err


def test_predict_on_several_images_ends_with_a_summary(trained, tmp_path):
    from PIL import Image

    from mnist_cli.data import load_split

    test = load_split(trained["data_dir"], "test")
    for i in range(3):
        Image.fromarray(255 - test.images[i]).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"no image")
    result = run("predict", tmp_path, "-m", trained["checkpoint"], "--json")
    assert result.exit_code == 1
    assert "4 images: 3 read (" in result.stderr and "1 could not be read" in result.stderr


def test_names_with_stray_bytes_and_invisible_marks_are_escaped(trained, tmp_path, monkeypatch):
    import os

    from PIL import Image

    from mnist_cli.data import load_split

    monkeypatch.chdir(tmp_path)
    digit = 255 - load_split(trained["data_dir"], "test").images[0]
    raw = os.fsencode("raw") + b"\x9b31m" + os.fsencode("C1.png")  # an 8-bit CSI, not UTF-8
    Image.fromarray(digit).save(raw.decode(errors="surrogateescape"))
    Image.fromarray(digit).save("mark\u061c\u2028\u200b.png")
    done = subprocess.run(
        [sys.executable, "-m", "mnist_cli", "predict", ".", "-m", str(trained["checkpoint"]),
         "--show"],
        capture_output=True, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 0
    for stream in (done.stdout, done.stderr):
        assert b"\x9b" not in stream and "\u061c\u2028\u200b".encode() not in stream
    assert b"raw\\udc9b31mC1.png" in done.stdout and b"mark\\u061c\\u2028\\u200b.png" in done.stdout


def test_a_seed_past_2_to_the_32_is_a_usage_error(tmp_path):
    result = run("train", "--seed", str(2**63), "--out-dir", tmp_path / "run")
    assert_clean_failure(result, 2, "seed must be at most 4,294,967,295")


# The user's surface across commands: choices, help, the bundled model, pictures, own digits.
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
            # train's --images turns a run into fine-tuning: no variable may do that unseen.
            if (name, param.name) == ("train", "images"):
                assert param.envvar is None
            elif param.name in ("data_dir", "out_dir", "images", "source"):
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

    from mnist_cli.train.checkpoints import load_checkpoint
    from mnist_cli.train.recipes import default_config

    # A recipe change must come with `python scripts/make_pretrained.py`, or the model is stale
    # (which may train it for more epochs than the recipe's default, and keep the best seed).
    options = load_checkpoint(BUNDLED_MODELS["torch"]).options
    recipe = asdict(default_config("cnn", "cpu", epochs=options["epochs"], seed=options["seed"]))
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


def test_own_digits_in_a_csv_and_every_mistake_named(trained, tmp_path):
    test = load_split(trained["data_dir"], "test")
    (tmp_path / "pics").mkdir()
    rows = ["file,label,kind"]  # a header, and a column more
    for i in range(30):
        Image.fromarray(255 - test.images[i]).resize((64, 64)).save(tmp_path / "pics" / f"{i}.png")
        wrong = i < 3  # labelled wrongly on purpose: three sure mistakes
        rows.append(f"pics/{i}.png,{(test.labels[i] + 1) % 10 if wrong else test.labels[i]},x")
    rows += ["pics/missing.png,4,x", "pics/0.png,../../x,x", "pics/1.png,10,x", "lonely"]
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    args = ["test", "-m", str(trained["checkpoint"]), "--images", str(tmp_path / "mine.csv")]
    result = runner.invoke(app, [*args, "--json", "--errors", str(tmp_path / "e.png")])
    assert result.exit_code == 1  # rows were skipped, each named
    report = json.loads(result.stdout)
    assert report["images"] == 30
    assert len(report["mistakes"]) == report["errors"] >= 3
    named = {Path(m["path"]).name: m for m in report["mistakes"]}
    assert {"0.png", "1.png", "2.png"} <= set(named)
    assert named["0.png"]["label"] == (test.labels[0] + 1) % 10
    assert all(set(m) == {"path", "label", "digit", "confidence"} for m in report["mistakes"])
    reasons = [why for _, why in report["skipped"]]
    assert any("missing" in why or "no such" in why for why in reasons)
    assert sum("is not a digit 0-9" in why for why in reasons) == 2
    assert any("not a `file,label` row" in why for why in reasons)
    grid = Image.open(tmp_path / "e.png")
    assert grid.height % (84 + 51) == 0  # a caption line more: the file's name
    table = runner.invoke(app, args)
    assert "Misread (" in table.stdout and "0.png" in table.stdout


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
    from mnist_cli.infer.backends import open_model
    from mnist_cli.infer.prediction import predict_paths

    _digit_pngs(tmp_path, trained["data_dir"], 2)
    engine = open_model(trained["checkpoint"], device="cpu")
    kept = list(predict_paths(engine, [str(tmp_path)], keep_digits=True))
    assert all(r.image.shape == (28, 28) and np.isfinite(r.image).all() for r in kept)
    assert all(r.image is None for r in predict_paths(engine, [str(tmp_path)]))


def test_a_csv_whose_first_row_is_a_bad_row_names_it(trained, tmp_path):
    test = load_split(trained["data_dir"], "test")
    Image.fromarray(255 - test.images[0]).save(tmp_path / "a.png")
    (tmp_path / "mine.csv").write_text(f"a.png,x\na.png,{test.labels[0]}\n")
    args = ["test", "-m", str(trained["checkpoint"]), "--images", str(tmp_path / "mine.csv")]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["images"] == 1
    assert "label 'x' is not a digit 0-9" in result.stderr
