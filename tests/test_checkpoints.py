from __future__ import annotations

import pickle

import pytest
import torch

from mnist_cli.checkpoints import (
    Checkpoint,
    TrainState,
    load_checkpoint,
    network_from_checkpoint,
    save_checkpoint,
)
from mnist_cli.errors import CheckpointError, OutputError
from mnist_cli.models import build_model, default_arguments


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
