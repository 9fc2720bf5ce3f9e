from __future__ import annotations

import pytest
import torch

from mnist_cli.devices import resolve_device
from mnist_cli.errors import DeviceError


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_falls_back_to_cpu(no_accelerator):
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "mps"])
def test_missing_accelerator_is_a_clear_error(no_accelerator, name):
    with pytest.raises(DeviceError, match="not available") as caught:
        resolve_device(name)
    assert caught.value.exit_code == 2


def test_cuda_index_beyond_the_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match="only 1 CUDA device"):
        resolve_device("cuda:3")


def test_unknown_device_name():
    with pytest.raises(DeviceError, match="not one of"):
        resolve_device("tpu")
