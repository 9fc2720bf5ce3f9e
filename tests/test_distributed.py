"""torchrun with 2 CPU processes (gloo) on the shipped subset: one model, clean stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mnist_cli.infer.evaluation import evaluate_model
from mnist_cli.train.checkpoints import load_checkpoint
from mnist_cli.train.distributed import SOLO, Cluster
from mnist_cli.train.recipes import default_config
from mnist_cli.train.training import train

RUN = ["--validation-size", "500", "--batch-size", "64", "--device", "cpu", "--quiet"]


def _torchrun(
    data_dir: Path, out_dir: Path, *args: str, resume: bool = False, **popen
) -> subprocess.Popen:
    options = ["--resume", "--device", "cpu", "--quiet"] if resume else [*RUN, *args]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "mnist_cli", "train", "--data-dir", str(data_dir), "--out-dir", str(out_dir),
        *options,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MNIST_DIST_TIMEOUT": "30"}
    return subprocess.Popen(command, env=env, text=True, start_new_session=True, **popen)


def test_ranks_take_disjoint_shares_that_cover_the_global_batch():
    batch = torch.randperm(1000)[:64]
    parts = [Cluster(rank, 2, rank, "gloo").shard(batch) for rank in range(2)]
    assert sorted(torch.cat(parts).tolist()) == sorted(batch.tolist())
    assert not set(parts[0].tolist()) & set(parts[1].tolist())
    assert len(parts[0]) == len(parts[1]) == 32


def test_one_process_is_a_cluster_of_one():
    batch = torch.randperm(1000)[:64]
    assert torch.equal(SOLO.shard(batch), batch) and SOLO.main and SOLO.alone
    assert SOLO.agree(torch.device("cpu"), True, False) == [True, False]
    assert SOLO.total(torch.device("cpu"), 2.5) == 2.5
    SOLO.barrier()  # returns at once: no process group is needed
    SOLO.leave()


def test_two_processes_train_one_model_like_one_process(data_dir, tmp_path):
    done = _torchrun(data_dir, tmp_path / "ddp", "--epochs", "2", stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT)  # fmt: skip
    output, _ = done.communicate(timeout=300)
    assert done.returncode == 0, output
    files = sorted(p.name for p in (tmp_path / "ddp").iterdir())
    assert files == ["best.pt", "config.toml", "history.csv", "history.png", "last.pt"]  # rank 0
    assert output.count("Saved") <= 1 and "Traceback" not in output
    saved = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert [row.epoch for row in saved.state.history] == [1, 2]
    ddp, _ = evaluate_model(tmp_path / "ddp" / "best.pt", data_dir=data_dir, device="cpu")
    config = default_config("cnn", epochs=2, validation_size=500, batch_size=64)
    single = train(config, data_dir=data_dir, out_dir=tmp_path / "one", device="cpu")
    alone, _ = evaluate_model(single.best_path, data_dir=data_dir, device="cpu")
    # Same global batch and schedule; batch norm sees 32 images per process instead of 64 and
    # augmentation draws differ, so the runs are not identical: 3,500 training digits leave a
    # few points of spread between seeds, and a broken average would land far below.
    assert ddp.accuracy > 0.9 and abs(ddp.accuracy - alone.accuracy) < 0.04


def test_sigterm_to_torchrun_stops_every_rank_and_saves_once(data_dir, tmp_path):
    out = tmp_path / "run"
    job = _torchrun(data_dir, out, "--epochs", "8", stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT)  # fmt: skip
    _wait_for(out / "history.csv", job)
    job.send_signal(signal.SIGTERM)
    output, _ = job.communicate(timeout=60)
    assert job.returncode != 0
    saved = load_checkpoint(out / "last.pt")
    assert saved.resumable and 1 <= saved.state.epoch < 8
    assert output.count("interrupted") == 1, output  # rank 0's message; the others say nothing
    assert "[rank" not in output, output  # no rank died with a traceback (torchrun's is its own)
    resumed = _torchrun(
        data_dir, out, resume=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output  # --resume under torchrun continues the run
    assert load_checkpoint(out / "last.pt").state.epoch == 8


def test_a_rank_that_dies_ends_the_run_with_a_message(data_dir, tmp_path):
    out = tmp_path / "run"
    job = _torchrun(data_dir, out, "--epochs", "8", stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT)  # fmt: skip
    _wait_for(out / "history.csv", job)
    victim = next(pid for pid, rank in _ranks(job.pid) if rank == "1")
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    output, _ = job.communicate(timeout=90)
    assert time.monotonic() - killed < 60  # ended, not hung until some long timeout
    assert job.returncode != 0
    assert "SIGKILL" in output or "Signal 9" in output or "stopped answering" in output, output
    assert load_checkpoint(out / "last.pt").resumable  # what was saved before stays usable


def _wait_for(path: Path, job: subprocess.Popen, limit: float = 180) -> None:
    start = time.monotonic()
    while not path.exists():
        if job.poll() is not None:
            pytest.fail(f"torchrun ended early: {job.communicate()[0]}")
        if time.monotonic() - start > limit:
            job.kill()
            pytest.fail(f"no {path.name} after {limit} s")
        time.sleep(0.2)


def _ranks(parent: int) -> list[tuple[int, str]]:
    """(pid, RANK) of every process under `parent` that torchrun started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == parent:
            ranks = [v[5:].decode() for v in environ if v.startswith(b"RANK=")]
            if ranks:
                found.append((int(entry.name), ranks[0]))
    return found


def test_distributed_variables_without_torchrun_are_a_clear_error(data_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mnist_cli.cli import app

    for name in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    arguments = ["train", "--data-dir", str(data_dir), "--out-dir", str(tmp_path / "o"), *RUN]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2, result.output
    assert "torchrun" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "variables, fragment",
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a whole number"),
        ({"WORLD_SIZE": "2", "RANK": "0", "MNIST_DIST_TIMEOUT": "soon"}, "MNIST_DIST_TIMEOUT"),
        ({"WORLD_SIZE": "3", "RANK": "0"}, "must split evenly over the 3 processes"),
        ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK=5 with WORLD_SIZE=2"),  # it waited for ever
        ({"WORLD_SIZE": "1", "RANK": "1"}, "RANK=1 with WORLD_SIZE=1"),  # it trained silently
    ],
)
def test_bad_distributed_settings_are_usage_errors(
    data_dir, tmp_path, monkeypatch, variables, fragment
):
    from typer.testing import CliRunner

    from mnist_cli.cli import app

    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    arguments = ["train", "--data-dir", str(data_dir), "--out-dir", str(tmp_path / "o"), *RUN]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_a_lost_peer_suggests_resume_only_when_there_is_a_last_pt(tmp_path):
    from mnist_cli.train.training import peer_lost

    gone = RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer")
    fresh = peer_lost(gone, tmp_path)
    assert "Connection closed by peer" in fresh.message and "--resume" not in fresh.hint
    assert "no last.pt was saved" in fresh.hint
    (tmp_path / "last.pt").write_bytes(b"")
    assert "continue with `mnist train --resume" in peer_lost(gone, tmp_path).hint
