from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from mnist_cli.cli import app
from mnist_cli.errors import CheckpointError, OutputError, TrainingInterrupted
from mnist_cli.infer.evaluation import evaluate_model
from mnist_cli.train.checkpoints import load_checkpoint
from mnist_cli.train.recipes import default_config
from mnist_cli.train.step import one_cycle_lr
from mnist_cli.train.training import TrainCallback, train

runner = CliRunner()


def test_one_cycle_rises_then_decays_to_zero():
    lrs = [one_cycle_lr(step, 100, 1.0, 0.25) for step in range(101)]
    assert lrs[0] == pytest.approx(0.04)
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == 25
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)


def test_trained_model_is_far_above_chance(trained):
    report, _ = evaluate_model(trained["checkpoint"], data_dir=trained["data_dir"], device="cpu")
    assert report.accuracy > 0.9  # chance is 0.1; 3 epochs on 3,500 digits


def test_checkpoint_describes_itself(trained):
    saved = load_checkpoint(trained["checkpoint"])
    assert saved.architecture == "cnn"
    assert saved.class_labels == [*(str(d) for d in range(10)), "none"]
    assert saved.normalization == {"mean": 0.1307, "std": 0.3081}
    assert saved.options["epochs"] == 3 and saved.options["seed"] == 0
    assert saved.val_accuracy == max(row.val_accuracy for row in saved.state.history)
    assert not saved.resumable
    last = load_checkpoint(trained["out_dir"] / "last.pt")
    assert last.state.epoch == 3 and len(last.state.history) == 3 and last.resumable
    raw = torch.load(trained["checkpoint"], weights_only=True)  # plain types on disk
    assert raw["format"] == "mnist_cli.checkpoint/1" and isinstance(raw["history"][0], dict)


def _weights(path):
    return load_checkpoint(path).state_dict


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class UsesTheGlobalRng(TrainCallback):
    def on_epoch(self, record, *, best):
        torch.rand(100)  # as a callback building a model would


def test_same_seed_same_weights(data_dir, tmp_path, brief):
    config = brief(epochs=2)
    train(config, data_dir=data_dir, out_dir=tmp_path / "a", device="cpu")
    train(
        config, data_dir=data_dir, out_dir=tmp_path / "b", device="cpu", callback=UsesTheGlobalRng()
    )
    assert _same(_weights(tmp_path / "a/last.pt"), _weights(tmp_path / "b/last.pt"))
    train(
        brief(epochs=2, seed=1),
        data_dir=data_dir,
        out_dir=tmp_path / "c",
        device="cpu",
    )
    assert not _same(_weights(tmp_path / "a/last.pt"), _weights(tmp_path / "c/last.pt"))


def test_ctrl_c_saves_and_resume_gives_the_same_weights(data_dir, tmp_path, brief, interrupt_at):
    config = brief(epochs=2)
    train(config, data_dir=data_dir, out_dir=tmp_path / "whole", device="cpu")
    with pytest.raises(TrainingInterrupted) as caught:
        train(
            config,
            data_dir=data_dir,
            out_dir=tmp_path / "cut",
            device="cpu",
            callback=interrupt_at(epoch=1, step=10),
        )
    assert caught.value.exit_code == 130 and "--resume" in caught.value.hint
    saved = load_checkpoint(tmp_path / "cut/last.pt")
    assert (saved.state.epoch, saved.state.step) == (1, 10)
    result = train(None, data_dir=data_dir, out_dir=tmp_path / "cut", device="cpu", resume=True)
    assert [row.epoch for row in result.history] == [1, 2]
    assert _same(_weights(tmp_path / "whole/last.pt"), _weights(tmp_path / "cut/last.pt"))
    whole, cut = (load_checkpoint(tmp_path / f"{name}/last.pt") for name in ("whole", "cut"))
    assert _same(whole.training_weights, cut.training_weights)  # and the raw weights under it


def test_best_pt_holds_the_average_and_last_pt_also_the_raw_weights(trained):
    best = load_checkpoint(trained["checkpoint"])
    last = load_checkpoint(trained["out_dir"] / "last.pt")
    assert best.training_weights is None and last.training_weights is not None
    assert not _same(last.state_dict, last.training_weights)
    # The saved validation scores are the average's: score it again from the file. (The loss
    # tells the two apart; accuracy on 500 images often does not. One image of margin for
    # rounding, which differs between CPUs.)
    from mnist_cli.data import load_split, split_train_validation
    from mnist_cli.train.checkpoints import network_from_checkpoint
    from mnist_cli.train.step import normalize

    held = split_train_validation(load_split(trained["data_dir"], "train"), 500, 0)[1]
    labels = torch.from_numpy(held.labels)
    with torch.no_grad():
        logits = network_from_checkpoint(last)(normalize(torch.from_numpy(held.images)))
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert loss == pytest.approx(last.state.history[-1].val_loss, rel=1e-4)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(last.val_accuracy, abs=1.01 / 500)


def test_without_a_weight_average_the_raw_weights_are_saved(data_dir, tmp_path, brief):
    config = brief(weight_average=0.0)
    train(config, data_dir=data_dir, out_dir=tmp_path, device="cpu")
    last = load_checkpoint(tmp_path / "last.pt")
    assert last.resumable and last.training_weights is None


def test_out_that_is_a_file_fails_before_training(data_dir, tmp_path, brief):
    (tmp_path / "taken").write_text("")
    with pytest.raises(OutputError, match="is a file"):
        train(
            brief(epochs=2),
            data_dir=data_dir,
            out_dir=tmp_path / "taken",
            device="cpu",
        )


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, str(os.getpid()).encode())
print("held", flush=True)
time.sleep(30)
"""


def test_a_running_train_holds_the_out_folder(data_dir, tmp_path, brief):
    out = tmp_path / "params"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=f"another `mnist train` \\(process {holder.pid}\\)"):
            train(brief(epochs=2), data_dir=data_dir, out_dir=out, device="cpu")
    finally:
        holder.kill()
        holder.wait()
    # The holder died: the kernel freed its lock, so the folder is free again.
    result = train(
        brief(),
        data_dir=data_dir,
        out_dir=out,
        device="cpu",
    )
    assert result.best_path.is_file() and not (out / ".lock").exists()


def test_a_stale_lock_naming_a_live_unrelated_process_does_not_block(data_dir, tmp_path, brief):
    out = tmp_path / "params"
    out.mkdir()
    (out / ".lock").write_text(str(os.getppid()))  # alive, but holds no lock
    result = train(
        brief(),
        data_dir=data_dir,
        out_dir=out,
        device="cpu",
    )
    assert result.best_path.is_file()


def test_a_failed_run_leaves_no_empty_out_folder(tmp_path, brief):
    from mnist_cli.errors import DataError

    with pytest.raises(DataError):
        train(brief(epochs=2), data_dir=tmp_path / "none", out_dir=tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_the_fused_optimizer_path_trains(data_dir, tmp_path, brief):
    from mnist_cli.train.acceleration import Acceleration

    fused = Acceleration(channels_last=True, compile=False, fused_optimizer=True)
    result = train(
        brief(),
        data_dir=data_dir,
        out_dir=tmp_path,
        device="cpu",
        acceleration=fused,
    )
    assert result.best_val_accuracy > 0.5
    saved = load_checkpoint(result.last_path)
    assert saved.options["acceleration"]["fused_optimizer"] is True


def test_a_diverging_run_stops_and_keeps_the_good_best_pt(data_dir, tmp_path, brief):
    from mnist_cli.errors import TrainingDiverged

    out = tmp_path / "params"
    train(brief(), data_dir=data_dir, out_dir=out)
    before = {name: (out / name).read_bytes() for name in ("best.pt", "last.pt")}
    with pytest.raises(TrainingDiverged) as caught:
        train(
            default_config("cnn", epochs=2, validation_size=500, lr=1e30),
            data_dir=data_dir,
            out_dir=out,
            overwrite=True,
        )
    assert "diverged" in caught.value.message and "--lr" in caught.value.hint
    assert caught.value.exit_code == 1
    assert {name: (out / name).read_bytes() for name in before} == before


def test_a_new_run_refuses_an_out_that_holds_one(data_dir, tmp_path, brief):
    out = tmp_path / "params"
    config = brief()
    train(config, data_dir=data_dir, out_dir=out)
    before = (out / "best.pt").read_bytes()
    with pytest.raises(OutputError, match="already holds a run") as caught:
        train(config, data_dir=data_dir, out_dir=out)
    assert "--overwrite" in caught.value.hint and "--resume" in caught.value.hint
    assert (out / "best.pt").read_bytes() == before
    from mnist_cli.errors import OptionError

    with pytest.raises(OptionError):
        train(None, data_dir=data_dir, out_dir=out, resume=True, overwrite=True)
    train(
        brief(seed=3),
        data_dir=data_dir,
        out_dir=out,
        overwrite=True,
    )
    assert (out / "best.pt").read_bytes() != before


def test_sigterm_saves_last_pt_and_exits_143(data_dir, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mnist_cli",
            "train",
            "--data-dir",
            str(data_dir),
            "--out-dir",
            str(out),
            "--device",
            "cpu",
            "--epochs",
            "50",
            "--validation-size",
            "500",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stderr:  # wait for the first finished epoch
        if line.startswith("epoch"):
            break
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 143, rest
    assert "--resume" in rest and "Traceback" not in rest
    assert load_checkpoint(out / "last.pt").state.epoch >= 1


def test_a_full_disk_while_saving_is_a_clear_error(data_dir, tmp_path, monkeypatch, brief):
    out = tmp_path / "params"
    config = brief()
    train(config, data_dir=data_dir, out_dir=out)
    before = (out / "last.pt").read_bytes()

    def full_disk(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed")

    monkeypatch.setattr(torch, "save", full_disk)
    best = (out / "best.pt").read_bytes()
    with pytest.raises(OutputError, match="cannot be written") as caught:
        train(config, data_dir=data_dir, out_dir=out, overwrite=True)
    assert "previous file is unchanged" in caught.value.message
    assert (out / "last.pt").read_bytes() == before and (out / "best.pt").read_bytes() == best
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pt") == ["best.pt", "last.pt"]
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize(
    "override, fragment",
    [
        ({"thickness": 1.5}, "thickness"),
        ({"styles": -0.1}, "styles"),
        ({"plain_epochs": -1}, "plain"),
    ],
)
def test_augmentation_values_out_of_range_are_refused(override, fragment):
    with pytest.raises(ValueError, match=fragment):
        default_config("cnn", **override)


def test_the_first_epoch_is_plain_and_augmentation_starts_after_it(data_dir, tmp_path, brief):
    def history(**changes):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        return train(brief(**changes), data_dir=data_dir, out_dir=out, device="cpu").history

    never = history(epochs=2, augment=False)
    after_one = history(epochs=2)  # the recipe: plain_epochs=1
    from_start = history(epochs=1, plain_epochs=0)
    assert after_one[0].val_loss == never[0].val_loss  # epoch 1: the same steps exactly
    assert after_one[1].val_loss != never[1].val_loss  # epoch 2: augmented
    assert from_start[0].val_loss != never[0].val_loss


def _resumed_into(optimizer: torch.optim.Optimizer, saved: dict) -> torch.optim.Optimizer:
    """`optimizer` after --resume restored the optimiser state `saved` into it."""
    from mnist_cli.train.checkpoints import Checkpoint, TrainState
    from mnist_cli.train.resume import restore_optimizer

    checkpoint = Checkpoint(
        architecture="fc",
        arguments={},
        state_dict={},
        normalization={},
        class_labels=[],
        val_accuracy=0.0,
        options={},
        state=TrainState(),
        optimizer=saved,
    )
    restore_optimizer(optimizer, checkpoint)
    return optimizer


def test_resume_keeps_the_running_optimisers_device_settings():
    weight = torch.nn.Parameter(torch.ones(3))
    first = torch.optim.AdamW([weight], lr=0.01)
    weight.grad = torch.ones(3)
    first.step()
    saved = first.state_dict()  # as a CUDA-graph run writes it: capturable, lr in a tensor
    saved["param_groups"][0].update(capturable=True, lr=torch.tensor(0.02))
    saved["state"][0]["step"] = saved["state"][0]["step"].float()
    restored = _resumed_into(torch.optim.AdamW([weight], lr=0.01), saved)
    group = restored.param_groups[0]
    assert group["capturable"] is False and group["lr"] == pytest.approx(0.02)
    assert not isinstance(group["lr"], torch.Tensor)
    restored.step()  # a CPU step works: no capturable state left behind


@pytest.mark.parametrize("saved_fused, running_fused", [(False, True), (True, False)])
def test_resume_crosses_between_fused_and_looped_adamw(saved_fused, running_fused):
    # last.pt files from before CPU runs used the fused AdamW hold the looped one's state.
    weight = torch.nn.Parameter(torch.ones(3))
    first = torch.optim.AdamW([weight], lr=0.01, fused=saved_fused or None)
    weight.grad = torch.ones(3)
    first.step()
    saved = copy.deepcopy(first.state_dict())  # as read back from a file
    resumed = _resumed_into(
        torch.optim.AdamW([weight], lr=0.01, fused=running_fused or None), saved
    )
    assert bool(resumed.param_groups[0]["fused"]) is running_fused
    resumed.step()
    first.step()  # the same second step, taken by the optimiser that saved the state
    assert float(resumed.state[weight]["step"]) == 2.0
    assert torch.allclose(resumed.state[weight]["exp_avg"], first.state[weight]["exp_avg"])


def test_graph_warmup_leaves_weights_and_optimiser_state_as_they_were():
    from mnist_cli.train.cudagraph import untouched

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with untouched(model, optimizer):  # a fresh optimiser: no state yet
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(8, 4)).sum().backward()
            optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for state in optimizer.state.values():
        assert all(not v.any() for v in state.values() if isinstance(v, torch.Tensor))


def _old_run(trained, folder):
    """A copy of a finished run, and the bytes of each of its files."""
    import shutil

    shutil.copytree(trained["out_dir"], folder)
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_overwrite_stopped_in_its_first_epoch_leaves_the_old_run_whole(
    trained, tmp_path, sig, code, brief
):
    out = tmp_path / "run"
    before = _old_run(trained, out)

    class StopAt(TrainCallback):
        def on_batch(self, *, epoch, step, steps, loss, rate):
            if step == 10:
                os.kill(os.getpid(), sig)

    config = brief(epochs=2)
    with pytest.raises(TrainingInterrupted) as caught:
        train(config, data_dir=trained["data_dir"], out_dir=out, overwrite=True, callback=StopAt())
    assert caught.value.exit_code == code
    assert "nothing was saved" in caught.value.message and "unchanged" in caught.value.message
    after = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    assert after == before


def test_a_write_failing_mid_set_leaves_every_file_as_it_was(trained, tmp_path, monkeypatch, brief):
    out = tmp_path / "run"
    before = _old_run(trained, out)
    real_save, calls = torch.save, []

    def second_fails(obj, handle, *args, **kwargs):  # last.pt is written, then best.pt fails
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", second_fails)
    config = brief()
    with pytest.raises(OutputError, match="best.pt: cannot be written"):
        train(config, data_dir=trained["data_dir"], out_dir=out, overwrite=True)
    after = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    assert after == before
    assert (
        load_checkpoint(out / "best.pt").val_accuracy
        == load_checkpoint(out / "last.pt").state.best_val_accuracy
    )


def _damaged_last(trained, folder, change):
    """The trained run's last.pt with `change(payload)` applied, in `folder`."""
    import shutil

    shutil.copytree(trained["out_dir"], folder)
    payload = torch.load(folder / "last.pt", weights_only=True)
    change(payload)
    torch.save(payload, folder / "last.pt")


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda p: p.update(best_val_accuracy=2.0), "'best_val_accuracy' is 2.0"),
        (lambda p: p.update(val_accuracy=-0.5), "'val_accuracy' is -0.5"),
        (lambda p: p.update(epoch=10**9), "epoch 1000000000 is past the run's 3 epochs"),
        (lambda p: p.update(best_epoch=7), "best epoch 7 is past epoch 3"),
        (lambda p: p["history"][0].update(val_loss=float("nan")), "'val_loss' is nan"),
        (lambda p: p["history"].pop(), "epoch 3 does not match its 2 history rows"),
        (lambda p: p.update(options={}), "holds no training options"),
        (lambda p: p.update(best_val_accuracy=0.999), "is not what its history says"),
        (lambda p: p["history"][0].update(epoch=99), "not epochs 1, 2, ... in order"),
        (lambda p: p["history"][0].update(lr=-5.0), "'lr' is -5.0"),
        (lambda p: p["options"].update(epochs=10**15), "epochs must be at most 100,000"),
        (lambda p: p["options"].update(seed=2**70), "seed must be at most"),
        (
            lambda p: next(iter(p["optimizer"]["state"].values()))["exp_avg"].fill_(float("nan")),
            "exp_avg of parameter 0 holds NaN",
        ),
        (
            lambda p: p["optimizer"]["param_groups"][0].update(betas=(5.0, -3.0)),
            "optimiser state is damaged (betas (5.0, -3.0)",
        ),
    ],
)
def test_resume_refuses_damaged_progress(trained, tmp_path, change, fragment):
    from mnist_cli.errors import CheckpointError

    out = tmp_path / "run"
    _damaged_last(trained, out, change)
    with pytest.raises(CheckpointError, match="--resume") as caught:
        train(None, data_dir=trained["data_dir"], out_dir=out, resume=True)
    assert fragment in caught.value.message and "last.pt" in caught.value.message


def test_an_output_that_cannot_be_written_stops_train_before_the_first_epoch(
    data_dir, tmp_path, brief
):
    out = tmp_path / "run"
    (out / "history.png").mkdir(parents=True)
    with pytest.raises(OutputError, match="history.png: a folder; cannot write a file there"):
        train(brief(epochs=2), data_dir=data_dir, out_dir=out)
    assert [p.name for p in out.iterdir()] == ["history.png"]


RESUME_DAMAGE = [
    ({"options": "fast"}, "field 'options' is str"),
    ({"options": {"batch_size": 0}}, "batch-size must be at least 1"),
    ({"options": {"lr": "0.1"}}, "lr must be a float"),
    ({"history": "broken"}, "field 'history' is str"),
    ({"history": [{"epoch": "one"}]}, "history:"),
    ({"optimizer": {"state": {}, "param_groups": []}}, "optimiser state is damaged"),
    ({"step": 10_000}, "past the"),
]


@pytest.mark.parametrize("changes, fragment", RESUME_DAMAGE)
def test_damaged_last_pt_is_refused_by_resume(trained, tmp_path, changes, fragment):
    out = tmp_path / "run"
    out.mkdir()
    payload = torch.load(trained["out_dir"] / "last.pt", weights_only=True)
    if isinstance(changes.get("options"), dict):
        changes = {"options": {**payload["options"], **changes["options"]}}
    torch.save({**payload, **changes}, out / "last.pt")
    with pytest.raises(CheckpointError) as caught:
        train(None, data_dir=trained["data_dir"], out_dir=out, device="cpu", resume=True)
    assert fragment in caught.value.message and caught.value.exit_code == 1
    result = runner.invoke(
        app, ["train", "--resume", "--out-dir", str(out), "--data-dir", str(trained["data_dir"])]
    )
    assert result.exit_code == 1 and "--resume" in result.output
    assert "Traceback" not in result.output
