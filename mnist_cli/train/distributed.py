"""Training across processes with torchrun: joining the group, sharding batches, agreeing to stop.

`torchrun --nproc-per-node N -m mnist_cli train ...` starts N copies of `mnist train` with
RANK, WORLD_SIZE, LOCAL_RANK and a rendezvous address in their environment; `join` turns
that into a process group (NCCL on CUDA, gloo on the CPU) and DistributedDataParallel
averages the gradients. Rank 0 alone validates, prints and writes files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta

import torch

from mnist_cli.errors import MnistError, OptionError

# A rank that stops answering (killed, hung) makes the others fail after this many seconds
# instead of waiting forever; torchrun usually ends them sooner.
DEFAULT_TIMEOUT_SECONDS = 120


class RankFailed(MnistError):
    """Another process of the run died or stopped answering."""


@dataclass(frozen=True)
class Cluster:
    """This process's place in a torchrun job; one process alone is a cluster of one (`SOLO`),
    whose collectives return at once, so the loop needs no "if distributed" branches."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def alone(self) -> bool:
        return self.world_size == 1

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch: every world_size-th image, disjoint across ranks."""
        return index[self.rank :: self.world_size]

    def agree(self, device: torch.device, *flags: bool) -> list[bool]:
        """Each flag, true on every rank if it is true on any (one small all-reduce)."""
        return list(flags) if self.alone else _agree(device, *flags)

    def total(self, device: torch.device, value: float) -> float:
        """The sum of `value` over all ranks."""
        return value if self.alone else _total(device, value)

    def barrier(self) -> None:
        if not self.alone:
            _collective(_dist().barrier)

    def leave(self) -> None:
        if not self.alone and _dist().is_initialized():
            _dist().destroy_process_group()


SOLO = Cluster(rank=0, world_size=1, local_rank=0, backend="none")


def _dist():
    import torch.distributed as dist

    return dist


def _number(name: str, default: int, *, least: int = 0) -> int:
    """A whole number from the environment, or OptionError naming the variable."""
    text = os.environ.get(name, str(default))
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise OptionError(f"{name}={text!r} is not a whole number of at least {least}")
    return value


def world_size() -> int:
    """How many processes the torchrun job has (1 outside torchrun)."""
    world = _number("WORLD_SIZE", 1, least=1)
    rank = _number("RANK", 0)
    if rank >= world:
        raise OptionError(
            f"RANK={rank} with WORLD_SIZE={world}: a rank counts from 0 to WORLD_SIZE - 1",
            hint="start it with torchrun (see `mnist train --help`), or unset WORLD_SIZE and RANK",
        )
    return world


def launched_by_torchrun() -> bool:
    """True in a process that torchrun started as one of several."""
    return world_size() > 1


def is_main_process() -> bool:
    """False in a torchrun process other than rank 0 (read from the environment alone)."""
    world_size()  # refuses a RANK past the world size at once, before anything waits on it
    return _number("RANK", 0) == 0


def join(device: torch.device) -> tuple[Cluster, torch.device]:
    """Join the torchrun job: NCCL on CUDA (one GPU per local rank), gloo on the CPU."""
    import torch.distributed as dist

    rank, world = _number("RANK", 0), world_size()
    local_rank = _number("LOCAL_RANK", 0)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise OptionError(
                f"local rank {local_rank} has no GPU: this machine has "
                f"{torch.cuda.device_count()}; start at most that many processes per node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    seconds = _number("MNIST_DIST_TIMEOUT", DEFAULT_TIMEOUT_SECONDS, least=1)
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=seconds))
    except (RuntimeError, ValueError) as error:  # no rendezvous address, nobody answering
        raise OptionError(
            f"WORLD_SIZE={world} says this is one of several processes, but they could not meet "
            f"({str(error).strip().splitlines()[0]})",
            hint="start it with torchrun (see `mnist train --help`), or unset WORLD_SIZE and RANK",
        ) from None
    return Cluster(rank, world, local_rank, backend), device


def _agree(device: torch.device, *flags: bool) -> list[bool]:
    dist = _dist()
    values = torch.tensor([float(flag) for flag in flags], device=device)
    _collective(lambda: dist.all_reduce(values, op=dist.ReduceOp.MAX))
    return [bool(value) for value in values.tolist()]


def _total(device: torch.device, value: float) -> float:
    summed = torch.tensor([value], dtype=torch.float64, device=device)
    _collective(lambda: _dist().all_reduce(summed))
    return float(summed.item())


def _collective(call) -> None:
    """Run a collective; a dead or silent peer becomes RankFailed, not a traceback or a hang."""
    try:
        call()
    except (RuntimeError, ValueError) as error:  # gloo and NCCL report peers lost this way
        raise peer_lost(error) from None


def peer_lost(error: Exception) -> RankFailed:
    """The error to show when a collective failed: its first meaningful line, and what to do."""
    lines = (re.sub(r"^\[[^\]]*\]\s*", "", line).strip() for line in str(error).splitlines())
    reason = next((line[:160] for line in lines if line), type(error).__name__)
    return RankFailed(
        f"another process of this torchrun job stopped answering ({reason}); this one stops too",
        hint="look at the first error torchrun printed",
    )
