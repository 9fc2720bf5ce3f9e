"""Where onnxruntime runs a model, and the warning about a shadowed onnxruntime-gpu."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "installed, providers, warned",
    [
        ({"onnxruntime": "1.22.0", "onnxruntime-gpu": "1.22.0"}, ["CPUExecutionProvider"], True),
        ({"onnxruntime-gpu": "1.22.0"}, ["CUDAExecutionProvider", "CPUExecutionProvider"], False),
        ({"onnxruntime": "1.22.0"}, ["CPUExecutionProvider"], False),
    ],
)
def test_a_cpu_build_shadowing_the_gpu_build_is_named(monkeypatch, installed, providers, warned):
    import onnxruntime

    from mnist_cli.infer import providers as module

    monkeypatch.setattr(module, "installed_version", installed.get)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    note = module.shadowed_gpu_build()
    assert (note is not None) == warned
    if warned:
        assert "onnxruntime-gpu 1.22.0" in note and "pip uninstall" in note


def test_installed_versions_are_those_importlib_metadata_reads():
    # Read from dist-info folder names: importlib.metadata costs ~20 ms at every start.
    from importlib import metadata

    from mnist_cli.infer.providers import installed_version

    for name in ("onnxruntime", "numpy", "pillow"):
        assert installed_version(name) == metadata.version(name)
    assert installed_version("no-such-distribution") is None
