"""Where onnxruntime runs a model: the CUDA provider on the GPU a `--device` names, the CPU
otherwise, and a warning when a CPU build of onnxruntime shadows onnxruntime-gpu."""

from __future__ import annotations

import os
from typing import Any

from mnist_cli.devices import check_device_name
from mnist_cli.errors import DeviceError


def providers_for(device: str) -> list[Any]:
    """onnxruntime's providers for `device`, the CPU last; DeviceError when CUDA is asked for
    by name and this onnxruntime has none."""
    import onnxruntime

    providers: list[Any] = ["CPUExecutionProvider"]
    if device != "cpu" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, _cuda_provider(device))
    elif device.startswith("cuda"):  # asked for by name: not a quiet run on the CPU
        raise DeviceError(
            f"--device {device}: this onnxruntime has no CUDA provider",
            hint="install onnxruntime-gpu in place of onnxruntime (see the README), or use "
            "--device auto or cpu",
        )
    return providers


def shadowed_gpu_build() -> str | None:
    """A warning when onnxruntime-gpu is installed but the CPU build's files took its place."""
    import onnxruntime

    installed = [(name, installed_version(name)) for name in ("onnxruntime", "onnxruntime-gpu")]
    if not all(version for _, version in installed):
        return None
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return None
    both = " and ".join(f"{name} {version}" for name, version in installed)
    return (
        f"{both} are installed and the CPU build answers, so onnxruntime runs on the CPU; "
        "`pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu` "
        "keeps only the CUDA build"
    )


def installed_version(name: str) -> str | None:
    """The version of a distribution installed beside onnxruntime, read from its .dist-info
    folder's name: importlib.metadata would add ~20 ms to every start of `mnist predict`."""
    import onnxruntime

    prefix = name.replace("-", "_").lower() + "-"
    folder = os.path.dirname(os.path.dirname(onnxruntime.__file__))  # site-packages
    try:
        entries = os.listdir(folder)
    except OSError:
        return None
    for entry in entries:
        if entry.lower().startswith(prefix) and entry.endswith(".dist-info"):
            return entry[len(prefix) : -len(".dist-info")]
    return None


def _cuda_provider(device: str) -> tuple[str, dict[str, int]]:
    """onnxruntime's CUDA provider on the GPU that `device` names ("auto" and "cuda": the first).

    torch is imported first: onnxruntime-gpu's CUDA provider needs the CUDA and cuDNN libraries,
    and where they are not installed system-wide it finds torch's copies only once torch has
    loaded them (onnxruntime's documentation: import torch before the session). Without them it
    falls back to the CPU, and `provider` says so.
    """
    import torch  # loads libcudart, libcublas and libcudnn into the process

    from mnist_cli.devices import resolve_device

    name = check_device_name(device)
    index = int(name.partition(":")[2] or 0) if name.startswith("cuda") else 0
    if index and torch.cuda.is_available():
        resolve_device(name)  # "only 1 CUDA device(s) here", as for a checkpoint, not an EP Error
    return "CUDAExecutionProvider", {"device_id": index}
