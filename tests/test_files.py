from __future__ import annotations

import os
from pathlib import Path

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


def test_a_set_of_files_changes_as_one(tmp_path):
    from mnist_cli.errors import OutputError
    from mnist_cli.files import atomic_write_all

    first, second = tmp_path / "last.pt", tmp_path / "best.pt"
    atomic_write_all(
        {first: lambda out: out.write(b"old last"), second: lambda out: out.write(b"old best")}
    )

    def full_disk(out):
        out.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(
        OutputError, match=r"best.pt: cannot be written \(No space left on device\)"
    ):
        atomic_write_all({first: lambda out: out.write(b"new last"), second: full_disk})
    assert first.read_bytes() == b"old last" and second.read_bytes() == b"old best"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_paths_are_named_by_what_they_are(tmp_path):
    from mnist_cli.files import MISSING, path_problem

    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    assert path_problem(tmp_path / "file") is None
    assert path_problem(tmp_path / "nothing") == MISSING
    assert path_problem(tmp_path / "file" / "below") == MISSING
    assert path_problem(tmp_path) == "a folder"
    assert path_problem(tmp_path / "fifo") == "a FIFO (not a regular file)"
    assert path_problem("/dev/null") == "a device (not a regular file)"
    assert path_problem(tmp_path / "dangling").startswith("a broken symbolic link (to ")


def test_outputs_are_tried_before_the_work(tmp_path):
    from mnist_cli.errors import OutputError
    from mnist_cli.files import check_writable

    check_writable(tmp_path / "new" / "deeper" / "e.png", option="--errors")  # made later
    assert not (tmp_path / "new").exists() and not list(tmp_path.iterdir())
    (tmp_path / "file").write_text("")
    (tmp_path / "history.png").mkdir()
    for path, fragment in [
        (tmp_path / "history.png", "a folder; cannot write a file there"),
        (tmp_path / "file" / "e.png", "is not a folder"),
        (Path("/proc/e.png"), "cannot write in /proc"),
    ]:
        with pytest.raises(OutputError, match=fragment):
            check_writable(path, option="--errors")


def test_the_real_target_resolves_links_and_folders_not_made_yet(tmp_path):
    from mnist_cli.files import real_target

    (tmp_path / "run").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "run")
    assert real_target(tmp_path / "run" / "sub" / ".." / "best.pt") == tmp_path / "run" / "best.pt"
    assert real_target(tmp_path / "link" / "best.pt") == tmp_path / "run" / "best.pt"


def test_the_longest_name_a_folder_takes_is_written_and_a_longer_one_refused_early(tmp_path):
    from mnist_cli.errors import OutputError
    from mnist_cli.files import atomic_write, check_writable

    longest = tmp_path / ("b" * 250 + ".onnx")  # 255 bytes: the temporary name must fit too
    check_writable(longest, option="--out")
    atomic_write(longest, lambda out: out.write(b"ok"))
    assert longest.read_bytes() == b"ok"
    with pytest.raises(OutputError, match="the file name is longer than 255 bytes"):
        check_writable(tmp_path / ("b" * 256), option="--out")


def test_tidying_the_lock_never_hides_the_error_of_the_block(tmp_path, monkeypatch):
    from pathlib import Path

    from mnist_cli.files import exclusive_folder

    def refused(self, missing_ok=False):
        raise PermissionError(13, "Permission denied", str(self))

    with pytest.raises(ValueError, match="the real error"), exclusive_folder(tmp_path / "run"):
        monkeypatch.setattr(Path, "unlink", refused)  # the folder turned read-only
        raise ValueError("the real error")
