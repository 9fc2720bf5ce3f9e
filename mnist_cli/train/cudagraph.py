"""A whole training step (augment, forward, backward, AdamW) captured once as a CUDA graph.

A small cnn on a GPU is bound by kernel launches: one replay of the captured graph issues the
~100 kernels of a step at once. Inputs go through fixed buffers; the random numbers of the
augmentation are drawn outside the graph into one of them, from the run's own generator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

StepLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_WARMUP_STEPS = 3  # eager steps on a side stream before capture, as the CUDA-graph docs ask


class GraphedStep:
    """Replays one captured optimiser step on batches of exactly the captured size."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_of: StepLoss,
        example: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        *,
        augments: bool,
    ):
        self.augments = augments  # whether `loss_of` augments: a graph cannot change its mind
        self.inputs = tuple(tensor.clone() for tensor in example)  # images, labels, noise
        with untouched(model, optimizer):  # the warm-up steps must leave no trace
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(_WARMUP_STEPS):
                    optimizer.zero_grad(set_to_none=True)
                    loss_of(*self.inputs).backward()
                    optimizer.step()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(self.graph):
                self.loss = loss_of(*self.inputs)
                self.loss.backward()
                optimizer.step()

    @property
    def batch_size(self) -> int:
        return len(self.inputs[1])

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor):
        """One step on this batch; returns the loss tensor, overwritten by the next replay."""
        for buffer, value in zip(self.inputs, (images, labels, noise), strict=True):
            buffer.copy_(value)
        self.graph.replay()
        return self.loss


@contextmanager
def untouched(model: nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Steps taken inside leave the weights and optimiser state as they were, in place."""
    saved = _snapshot(model, optimizer)
    yield
    _restore(model, optimizer, saved)


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    tensors = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{id(parameter)}.{key}"] = value.detach().clone()
    return tensors


def _restore(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Put weights and optimiser state back in place (the graph holds their addresses)."""
    with torch.no_grad():
        for key, value in model.state_dict().items():
            value.copy_(saved[f"model.{key}"])
        for parameter, state in optimizer.state.items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    before = saved.get(f"optim.{id(parameter)}.{key}")  # none: a fresh state
                    value.copy_(before) if before is not None else value.zero_()
