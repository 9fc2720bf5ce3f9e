"""How a run computes, not what: memory layout, fused kernels, CUDA graphs, torch.compile.

None of these changes the recipe; `default_acceleration` picks what was measured to help on a
device (benchmarks/gpu_check.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Acceleration:
    """How to compute, not what: none of these changes the recipe."""

    channels_last: bool  # (bool) NHWC convolutions: faster for the cnn on CPU and CUDA alike
    compile: bool  # (bool) torch.compile the network (opt-in: it costs start-up time)
    fused_optimizer: bool  # (bool) AdamW in one kernel, not a Python loop over the weights
    cuda_graphs: bool = False  # (bool) replay each whole step as one CUDA graph (CUDA only)


def default_acceleration(
    device: torch.device, architecture: str, *, compile: bool = False
) -> Acceleration:
    """The settings measured to help on `device` (benchmarks/gpu_check.py for CUDA)."""
    # On a GPU this small net is bound by kernel launches, not arithmetic: one CUDA graph per
    # step helps there. On a CPU the unfused AdamW is a loop of small operations per tensor.
    return Acceleration(
        channels_last=architecture == "cnn",
        compile=compile,
        fused_optimizer=device.type == "cpu",
        cuda_graphs=device.type == "cuda" and not compile,
    )
