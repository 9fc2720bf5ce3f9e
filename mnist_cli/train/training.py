"""Training from Python: `train()` checks the run folder, starts or resumes a run, returns."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from mnist_cli.devices import resolve_device
from mnist_cli.errors import OptionError
from mnist_cli.files import exclusive_folder
from mnist_cli.options import DATA_DIR, RUN_DIR
from mnist_cli.train import distributed, runfolder
from mnist_cli.train.acceleration import Acceleration, default_acceleration
from mnist_cli.train.checkpoints import EpochRecord, TrainState
from mnist_cli.train.finetune import check_pairing
from mnist_cli.train.loop import Run
from mnist_cli.train.recipes import TrainConfig, default_config
from mnist_cli.train.resume import resume_point, saved_config
from mnist_cli.train.stopping import StopFlag


@dataclass
class TrainResult:
    """What a finished run produced."""

    best_path: Path
    last_path: Path
    best_epoch: int
    best_val_accuracy: float
    device: str
    history: list[EpochRecord] = field(default_factory=list)
    temperature: float | None = 1.0  # best.pt's calibration (None: none could be fitted)
    start_temperature: float = 1.0  # what best.pt holds when none could be: its starting model's
    images: str = ""  # the digits a fine-tuning run learnt from ("": MNIST's run)

    @classmethod
    def of(
        cls,
        out_dir: Path,
        device: str,
        state: TrainState,
        temperatures: tuple[float | None, float],
    ) -> TrainResult:
        """The result of the run in `out_dir` that ended with `state`; `temperatures`: the one
        fitted for best.pt (None: none could be), and the one it started with."""
        best, last = out_dir / "best.pt", out_dir / "last.pt"
        accuracy = state.best_val_accuracy
        return cls(best, last, state.best_epoch, accuracy, device, state.history, *temperatures)


class TrainCallback:
    """Hooks the loop calls so that it never prints; override the ones you need."""

    def on_start(
        self,
        *,
        config: TrainConfig,
        device: str,
        where: str,
        about: str = "",
        warning: str = "",
        start_epoch: int,
        start_step: int,
        steps: int,
    ) -> None:
        """`device` is the torch device's name; `where` says it for people (with torchrun's
        processes); `about`, the images a fine-tuning run learns from; `warning`, what in them
        is not as asked (no MNIST to replay)."""

    def on_batch(self, *, epoch: int, step: int, steps: int, loss: float, rate: float) -> None:
        pass

    def on_epoch(self, record: EpochRecord, *, best: bool) -> None:
        pass


def train(
    config: TrainConfig | None = None,
    *,
    data_dir: Path | str = DATA_DIR,
    out_dir: Path | str = RUN_DIR,
    device: str = "auto",
    resume: bool = False,
    callback: TrainCallback | None = None,
    compile: bool = False,
    acceleration: Acceleration | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train a model, writing `last.pt` every epoch and `best.pt` at the best validation score.

    With `resume=True` the run continues from `out_dir/last.pt` with its saved config. A new
    run refuses an `out_dir` that holds one unless `overwrite=True`; the old files are then
    replaced when the new run saves its first epoch.
    """
    if resume and overwrite:
        raise OptionError("--resume continues the run in --out-dir; --overwrite starts it again")
    if config is not None:
        check_pairing(config.images, config.init)
    out_dir = Path(out_dir)
    torch_device = resolve_device(device)
    saved = resume_point(out_dir / "last.pt") if resume else None
    config = saved_config(saved, out_dir / "last.pt") if saved else (config or default_config())
    if acceleration is None:
        acceleration = default_acceleration(torch_device, config.architecture, compile=compile)
    cluster = distributed.SOLO
    if distributed.launched_by_torchrun():
        cluster, torch_device, acceleration = _join(config, torch_device, acceleration)
    try:
        owned = exclusive_folder(out_dir) if cluster.main else nullcontext()  # rank 0 writes
        with owned, StopFlag() as stop:
            old_run = cluster.main and runfolder.holds_a_run(out_dir)
            if cluster.main:
                runfolder.check_folder(out_dir, continuing=resume or overwrite)
            run = Run(
                config,
                acceleration,
                torch_device,
                Path(data_dir),
                out_dir=out_dir,
                callback=callback or TrainCallback(),
                stop=stop,
                cluster=cluster,
                saved=saved,
                replacing=overwrite and old_run,
            )
            cluster.barrier()  # rank 0 has checked the folder before anyone trains
            state = run.loop()
            temperatures = (run.temperature, run.start_temperature)
            result = TrainResult.of(out_dir, str(run.device), state, temperatures)
            return replace(result, images=config.images)
    except (RuntimeError, distributed.RankFailed) as error:
        if cluster.alone:
            raise
        raise peer_lost(error, out_dir) from None
    finally:
        cluster.leave()


def _join(
    config: TrainConfig, device: torch.device, acceleration: Acceleration
) -> tuple[distributed.Cluster, torch.device, Acceleration]:
    """This process's place among torchrun's, its device, and what acceleration it keeps."""
    if config.batch_size % distributed.world_size():
        raise OptionError(
            f"--batch-size {config.batch_size} is the global batch: it must split evenly "
            f"over the {distributed.world_size()} processes"
        )
    cluster, device = distributed.join(device)
    # DDP's gradient hooks run outside a captured graph: distributed steps run eagerly.
    return cluster, device, replace(acceleration, cuda_graphs=False, compile=False)


def peer_lost(error: Exception, out_dir: Path) -> distributed.RankFailed:
    """What to say when another torchrun process died: --resume only if a last.pt exists."""
    lost = error if isinstance(error, distributed.RankFailed) else distributed.peer_lost(error)
    lost.hint = f"{lost.hint}; " + (
        f"then continue with `mnist train --resume --out-dir {out_dir}`"
        if (out_dir / "last.pt").is_file()
        else f"no last.pt was saved in {out_dir}: start the run again"
    )
    return lost
