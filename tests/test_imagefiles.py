"""Finding image files: named files, folders, globs and class folders, never through links."""

from __future__ import annotations

import os

from PIL import Image

from mnist_cli.infer.imagefiles import class_folders, expand_paths


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8)).save(path)
    return path


def test_expand_files_folders_and_globs(tmp_path):
    for i in range(20):
        _png(tmp_path / "images" / ("nested" if i % 2 else "") / f"{i:02d}.png")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    folder = str(tmp_path / "images")
    found = [p for p, problem in expand_paths([folder]) if problem is None]
    assert len(found) == 20 and found == sorted(found)
    assert len([p for p, _ in expand_paths([folder + "/*.png"])]) == 10
    assert len([p for p, _ in expand_paths([folder + "/**/*.png"])]) == 20
    problems = dict(expand_paths([str(tmp_path / "missing.png"), str(tmp_path / "*.jpg")]))
    assert set(problems.values()) == {"no such file or folder", "no file matches this pattern"}


def test_globs_and_folders_do_not_follow_symlink_loops(tmp_path):
    _png(tmp_path / "g" / "sub" / "one.png")
    (tmp_path / "g" / "loop").symlink_to(".")
    (tmp_path / "g" / "sub" / "up").symlink_to("..")
    found = [p for p, _ in expand_paths([str(tmp_path / "g" / "**" / "*.png")])]
    assert found == [str(tmp_path / "g" / "sub" / "one.png")]
    assert [p for p, _ in expand_paths([str(tmp_path / "g")])] == found


def test_special_files_in_a_folder_come_with_a_reason(tmp_path):
    _png(tmp_path / "good.png")
    os.mkfifo(tmp_path / "pipe.png")
    reasons = dict(expand_paths([str(tmp_path)]))
    assert reasons[str(tmp_path / "good.png")] is None
    assert "not a regular file" in reasons[str(tmp_path / "pipe.png")]


def test_class_folders_take_only_the_named_labels(tmp_path):
    _png(tmp_path / "3" / "a.png")
    _png(tmp_path / "7" / "deep" / "b.png")
    _png(tmp_path / "notes" / "c.png")
    found = list(class_folders(tmp_path, ["3", "7"]))
    assert [(os.path.basename(p), label) for p, label, why in found if why is None] == [
        ("a.png", "3"),
        ("b.png", "7"),
    ]
    skipped = {os.path.basename(p): why for p, _, why in found if why is not None}
    assert skipped == {"notes": "a folder not named after a class (3 to 7); skipped"}


def test_a_broken_link_is_named_as_one(tmp_path):
    _png(tmp_path / "good.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    reasons = dict(expand_paths([str(tmp_path)]))
    assert reasons[str(tmp_path / "good.png")] is None
    assert reasons[str(tmp_path / "gone.png")].startswith("a broken symbolic link")
    assert "FIFO" not in reasons[str(tmp_path / "gone.png")]


def test_every_entry_of_a_class_folder_tree_is_used_or_named(tmp_path):
    for folder in ("3", "seven", "07", "10", ".git"):
        _png(tmp_path / folder / "a.png")
    _png(tmp_path / "loose.png")
    (tmp_path / "3" / "notes.txt").write_text("")
    (tmp_path / "3" / ".DS_Store").write_text("")
    found = {
        os.path.relpath(p, tmp_path): why for p, _, why in class_folders(tmp_path, "0123456789")
    }
    assert found == {
        "07": "a folder not named after a class (0 to 9); skipped",
        "10": "a folder not named after a class (0 to 9); skipped",
        "3/a.png": None,
        "3/notes.txt": "not an image file name (.png, .jpg, ...); skipped",
        "loose.png": "not inside a class folder; skipped",
        "seven": "a folder not named after a class (0 to 9); skipped",
    }


def test_a_linked_folder_inside_a_class_folder_is_named_not_dropped(tmp_path):
    _png(tmp_path / "elsewhere" / "x.png")
    _png(tmp_path / "digits" / "3" / "a.png")
    (tmp_path / "digits" / "3" / "more").symlink_to(tmp_path / "elsewhere")
    found = {os.path.basename(p): why for p, _, why in class_folders(tmp_path / "digits", "3")}
    assert found["a.png"] is None
    assert found["more"].startswith("a symbolic link to a folder, not followed")
