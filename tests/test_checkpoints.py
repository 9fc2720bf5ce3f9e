from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mnist_cli.cli import app
from mnist_cli.errors import CheckpointError, OutputError
from mnist_cli.infer.backends import ModelError, open_model
from mnist_cli.train.checkpoints import (
    Checkpoint,
    TrainState,
    load_checkpoint,
    network_from_checkpoint,
    save_checkpoint,
)
from mnist_cli.train.models import Classifier, build_model, default_arguments

runner = CliRunner()


def payload(model):
    return Checkpoint(
        architecture="fc",
        arguments=default_arguments("fc"),
        state_dict=model.state_dict(),
        normalization={"mean": 0.1307, "std": 0.3081},
        class_labels=[str(d) for d in range(10)],
        val_accuracy=0.5,
        options={},
        state=TrainState(),
    )


def test_round_trip_rebuilds_the_same_model(tmp_path):
    model = build_model("fc")
    save_checkpoint(payload(model), tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt")
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(network_from_checkpoint(loaded)(x), model.eval()(x))


def test_missing_checkpoint_says_to_train(tmp_path):
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "none.pt")
    assert "mnist train" in caught.value.hint


def test_text_file_is_not_a_checkpoint(tmp_path):
    (tmp_path / "m.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="m.pt"):
        load_checkpoint(tmp_path / "m.pt")


class Payload:
    def __reduce__(self):
        return (exec, (f"open({str(MARKER)!r}, 'w').write('ran')",))


MARKER = None


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    global MARKER
    MARKER = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as out:
        pickle.dump({"x": Payload()}, out)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not MARKER.exists()


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    model = build_model("fc")
    target = tmp_path / "last.pt"
    save_checkpoint(payload(model), target)
    before = target.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OutputError, match="last.pt: cannot be written .disk full."):
        save_checkpoint(payload(model), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_damaged_training_weights_are_refused_with_their_name(tmp_path):
    from dataclasses import replace

    model = build_model("fc")
    weights = dict(model.state_dict())
    del weights["layers.1.weight"]
    save_checkpoint(replace(payload(model), training_weights=weights), tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="training_weights: layers.1.weight is missing"):
        load_checkpoint(tmp_path / "last.pt")


def test_training_weights_with_nan_or_of_the_wrong_type_are_refused(tmp_path):
    from dataclasses import replace

    model = build_model("fc")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    weights["layers.1.weight"][0, 0] = float("nan")
    save_checkpoint(replace(payload(model), training_weights=weights), tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="training_weights: layers.1.weight holds NaN"):
        load_checkpoint(tmp_path / "nan.pt")
    save_checkpoint(replace(payload(model), training_weights=[1, 2]), tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="'training_weights' is list, not dict"):
        load_checkpoint(tmp_path / "list.pt")


# A checkpoint's fields as open_model checks them (the user's --model).


def _damaged(trained, tmp_path, name="m.pt", **changes):
    """The trained checkpoint with some fields replaced, saved through the one writer."""
    saved = load_checkpoint(trained["checkpoint"])
    path = tmp_path / name
    save_checkpoint(dataclasses.replace(saved, **changes), path)
    return path


def _raw_damaged(trained, tmp_path, name="m.pt", **changes):
    """The checkpoint's on-disk dict with fields replaced, bypassing the typed writer."""
    payload = torch.load(trained["checkpoint"], weights_only=True)
    payload.update(changes)
    torch.save(payload, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"normalization": {}}, "normalization: not an mnist checkpoint (no 'mean' field)"),
        (
            {"normalization": {"mean": 0.1, "std": 0}},
            "'std' is 0.0, expected a number from 0.001 to 1",
        ),
        ({"normalization": {"mean": 0.1, "std": 1e-45}}, "'std' is 1e-45"),
        ({"normalization": {"mean": 1e6, "std": 0.3}}, "'mean' is 1000000.0"),
        ({"class_labels": [str(k) for k in range(20)]}, "mnist works with the digits 0-9"),
        ({"arguments": {**default_arguments("cnn"), "classes": 5}}, "5 outputs"),
        (
            {"arguments": {**default_arguments("cnn"), "channels": [16, 32, "x"]}},
            "'x' is not a whole",
        ),
        ({"format": "mnist_cli.checkpoint/99"}, "format 'mnist_cli.checkpoint/99'"),
        ({"val_accuracy": "high"}, "'val_accuracy' is str"),
        ({"history": [{"epoch": 1}]}, "history: not an mnist checkpoint (no 'train_loss'"),
    ],
)
def test_checkpoints_with_bad_fields_are_refused(trained, tmp_path, changes, fragment):
    path = _raw_damaged(trained, tmp_path, **changes)
    with pytest.raises(ModelError) as caught:
        open_model(path)
    assert str(path) in caught.value.message and fragment in caught.value.message


def test_checkpoint_with_a_20_class_head_is_refused(trained, tmp_path):
    saved = torch.load(trained["checkpoint"], weights_only=True)
    state = dict(saved["state_dict"])
    state["classifier.weight"] = torch.zeros(20, 576)
    state["classifier.bias"] = torch.zeros(20)
    path = _raw_damaged(trained, tmp_path, state_dict=state)
    with pytest.raises(ModelError, match=r"classifier.weight has shape \(20, 576\)"):
        open_model(path)


def test_checkpoint_with_nan_weights_is_refused(trained, tmp_path):
    saved = load_checkpoint(trained["checkpoint"])
    state = dict(saved.state_dict)
    state["classifier.bias"] = torch.full_like(state["classifier.bias"], float("nan"))
    path = _damaged(trained, tmp_path, state_dict=state)
    result = runner.invoke(app, ["test", "--model", str(path), "--data-dir", "nowhere"])
    assert result.exit_code == 1 and "classifier.bias holds NaN" in result.output
    assert "Traceback" not in result.output


def test_absurd_architecture_arguments_are_refused_without_allocating(
    trained, tmp_path, memory_growth
):
    path = _raw_damaged(
        trained,
        tmp_path,
        arguments={**default_arguments("cnn"), "classes": 11, "channels": [16, 32, 60000]},
    )
    message, grown_mib = memory_growth(
        "try:\n    open_model(sys.argv[1])\nexcept ModelError as error:\n    print(error.message)",
        path,
        setup="import torch\nfrom mnist_cli.infer.backends import open_model, ModelError",
    )
    assert "features.2.0.weight has shape (64, 32, 3, 3)" in message
    assert "need (60000, 32, 3, 3)" in message
    assert grown_mib < 200  # building that network would take ~2 GB


@pytest.mark.parametrize(
    "legacy_arguments",
    [
        {"channels": [16, 32, 64], "classes": 10},  # before "convs": one conv per stage
        {"channels": [16, 32, 64], "convs": [1, 2, 2], "classes": 10},  # before "pool_first"
    ],
)
def test_a_checkpoint_of_an_older_cnn_layout_opens_and_runs(trained, tmp_path, legacy_arguments):
    torch.manual_seed(0)
    legacy = build_model("cnn", legacy_arguments).eval()
    path = _damaged(
        trained,
        tmp_path,
        arguments=legacy_arguments,
        state_dict=legacy.state_dict(),
        class_labels=[str(digit) for digit in range(10)],  # before the "none" class
    )
    backend = open_model(path, device="cpu")
    images = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    saved = load_checkpoint(path)
    classifier = Classifier(legacy, **saved.normalization, temperature=saved.temperature)
    with torch.no_grad():
        expected = classifier(torch.from_numpy(images))[0].numpy()
    np.testing.assert_allclose(backend.logits(images), expected, rtol=1e-4, atol=1e-5)


def test_training_options_saved_under_the_old_name_are_read_under_the_new_one(trained, tmp_path):
    # Checkpoints written before TrainConfig.model became `architecture` still resume and test.
    options = dict(load_checkpoint(trained["checkpoint"]).options)
    options["model"] = options.pop("architecture")
    path = _raw_damaged(trained, tmp_path, options=options)
    read = load_checkpoint(path).options
    assert read["architecture"] == "cnn" and "model" not in read
