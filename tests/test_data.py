from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mnist_cli.data import load_split, parse_idx, raw_dir, split_train_validation
from mnist_cli.errors import DataError


def idx(array: np.ndarray, magic: int) -> bytes:
    return (
        magic.to_bytes(4, "big")
        + b"".join(n.to_bytes(4, "big") for n in array.shape)
        + array.tobytes()
    )


def test_parses_images_and_labels():
    images = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    assert np.array_equal(parse_idx(idx(images, 0x803), name="x", labels=False), images)
    labels = parse_idx(idx(np.array([3, 9], dtype=np.uint8), 0x801), name="y", labels=True)
    assert labels.tolist() == [3, 9] and labels.dtype == np.int64


@pytest.mark.parametrize(
    ("data", "labels", "fragment"),
    [
        (b"\x00\x00", False, "truncated"),
        (idx(np.zeros((2, 28, 28), np.uint8), 0x801), False, "magic number"),
        (idx(np.zeros((2, 28, 28), np.uint8), 0x803)[:-5], False, "truncated"),
        (idx(np.zeros((2, 28, 28), np.uint8), 0x803) + b"x", False, "longer than"),
        (idx(np.zeros((2, 32, 32), np.uint8), 0x803), False, "expected 28x28"),
        (idx(np.array([1, 10], np.uint8), 0x801), True, "not a digit"),
    ],
)
def test_rejects_corrupt_files_naming_them(data, labels, fragment):
    with pytest.raises(DataError) as caught:
        parse_idx(data, name="some-file", labels=labels)
    assert "some-file" in caught.value.message and fragment in caught.value.message
    assert "mnist download" in caught.value.hint


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as caught:
        load_split(tmp_path, "train")
    assert "mnist download" in caught.value.hint


def test_mismatched_counts_are_refused(data_dir):
    labels = raw_dir(data_dir) / "t10k-labels-idx1-ubyte"
    labels.write_bytes(idx(np.zeros(5, np.uint8), 0x801))
    with pytest.raises(DataError, match="1000 test images but 5 labels"):
        load_split(data_dir, "test")


def test_validation_split_is_fixed_by_seed_and_disjoint(data_dir):
    train = load_split(data_dir, "train")
    kept, held = split_train_validation(train, 500, seed=1)
    again_kept, again_held = split_train_validation(train, 500, seed=1)
    _, other_held = split_train_validation(train, 500, seed=2)
    assert len(kept) == 3500 and len(held) == 500
    assert np.array_equal(held.images, again_held.images)
    assert not np.array_equal(held.images, other_held.images)
    kept_rows = {row.tobytes() for row in kept.images}
    assert sum(row.tobytes() in kept_rows for row in held.images) < 5  # only true duplicates


def test_a_full_size_file_with_wrong_bytes_fails_the_md5(tmp_path):
    labels = np.zeros(10_000, np.uint8)  # the official test-labels size, but not its bytes
    images = np.zeros((10_000, 28, 28), np.uint8)
    folder = raw_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "t10k-images-idx3-ubyte").write_bytes(idx(images, 0x803))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx(labels, 0x801))
    with pytest.raises(DataError, match="MD5 does not match") as caught:
        load_split(tmp_path, "test")
    assert "t10k-images-idx3-ubyte" in caught.value.message
    assert "mnist download" in caught.value.hint


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_idx_reader_on_arbitrary_bytes(data, labels):
    try:
        array = parse_idx(data, name="fuzz", labels=labels)
    except DataError:
        return
    assert array.ndim == (1 if labels else 3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=3, max_size=3), st.binary(max_size=64))
def test_idx_reader_on_hostile_headers(dims, tail):
    header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    try:
        array = parse_idx(header + tail, name="fuzz", labels=False)
    except DataError:
        return
    assert array.shape == tuple(dims) and dims[1:] == [28, 28]


def test_a_fifo_in_place_of_an_idx_file_is_named_as_one(tmp_path):
    import os

    folder = raw_dir(tmp_path)
    folder.mkdir(parents=True)
    os.mkfifo(folder / "t10k-images-idx3-ubyte")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: a FIFO \(not a regular file\)"):
        load_split(tmp_path, "test")
