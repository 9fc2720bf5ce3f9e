from __future__ import annotations

import pytest

from mnist_cli.files import atomic_write


def test_atomic_write_replaces_the_file(tmp_path):
    target = tmp_path / "sub" / "model.onnx"
    atomic_write(target, lambda out: out.write(b"first"))
    atomic_write(target, lambda out: out.write(b"second"))
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]
    assert target.stat().st_mode & 0o777 != 0o600  # usual permissions, not mkstemp's


def test_crash_while_writing_keeps_the_previous_file(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")

    def crash(out):
        out.write(b"half of the new")
        raise KeyboardInterrupt  # even Ctrl-C in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
