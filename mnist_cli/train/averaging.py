"""An exponential moving average of a network's weights: the model that is validated and saved.

The raw weights jump with each batch; their average over the last steps wanders less, so
validation compares epochs by how good they are rather than by the luck of the last batches,
and best.pt is picked from a steadier signal.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """A copy of `network` whose weights and batch-norm statistics follow it step by step.

    Build it once the network sits on its device in its memory format: it keeps the
    network's tensors, and moving the network afterwards would leave it holding old copies.
    """

    def __init__(self, network: nn.Module, decay: float):
        self.network = copy.deepcopy(network).eval().requires_grad_(False)
        self.decay = decay
        pairs = zip(
            self.network.state_dict(keep_vars=True).values(),
            network.state_dict(keep_vars=True).values(),
            strict=True,
        )
        self._floats: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._counts: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        for average, source in pairs:  # counters such as batch norm's are copied, not averaged
            kind = self._floats if average.is_floating_point() else self._counts
            kind[0].append(average)
            kind[1].append(source)

    def weight(self, step: int) -> float:
        """The share of the newest weights after optimiser step `step` (0-based).

        The decay ramps up as (1 + step) / (10 + step), so the first steps' random weights
        are soon forgotten and a one-epoch run is not held back by them.
        """
        return 1 - min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the average towards the network after its optimiser step `step`."""
        torch._foreach_lerp_(*self._floats, self.weight(step))
        if self._counts[0]:
            torch._foreach_copy_(*self._counts)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.network.state_dict()
