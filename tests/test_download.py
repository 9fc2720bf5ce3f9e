from __future__ import annotations

import gzip
import shutil

import pytest

from mnist_cli import data
from mnist_cli.data import OFFICIAL_MD5, md5_of, raw_dir
from mnist_cli.download import download_mnist, import_mnist
from mnist_cli.errors import DownloadError


def test_import_writes_the_torchvision_layout(tmp_path, subset_dir):
    outcomes = import_mnist(tmp_path, subset_dir, verify_md5=False)
    assert [o.status for o in outcomes] == ["imported"] * 4
    for name in OFFICIAL_MD5:
        assert (tmp_path / "MNIST" / "raw" / name).is_file()
    assert len(data.load_split(tmp_path, "test")) == 1000


def test_import_again_changes_nothing(tmp_path, subset_dir):
    import_mnist(tmp_path, subset_dir, verify_md5=False)
    before = {p: p.stat().st_mtime_ns for p in raw_dir(tmp_path).iterdir()}
    outcomes = import_mnist(tmp_path, subset_dir, verify_md5=False)
    assert {o.status for o in outcomes} == {"present"}
    assert {p: p.stat().st_mtime_ns for p in raw_dir(tmp_path).iterdir()} == before


def test_import_checks_official_md5_and_writes_nothing(tmp_path, subset_dir):
    with pytest.raises(DownloadError, match="not the official MNIST file"):
        import_mnist(tmp_path / "out", subset_dir)
    assert not (tmp_path / "out").exists()


def test_import_accepts_uncompressed_dotted_names(tmp_path, subset_dir):
    source = tmp_path / "src"
    source.mkdir()
    for name in OFFICIAL_MD5:
        stem, kind = name.rsplit("-", 1)
        (source / f"{stem}.{kind}").write_bytes(
            gzip.decompress((subset_dir / f"{name}.gz").read_bytes())
        )
    outcomes = import_mnist(tmp_path / "out", source, verify_md5=False)
    assert [o.status for o in outcomes] == ["imported"] * 4


def test_import_names_a_missing_file(tmp_path, subset_dir):
    source = tmp_path / "src"
    shutil.copytree(subset_dir, source)
    (source / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DownloadError, match="no t10k-labels-idx1-ubyte file"):
        import_mnist(tmp_path / "out", source, verify_md5=False)


def test_download_reports_every_mirror_and_leaves_no_file(tmp_path):
    # Port 9 on loopback refuses at once: an offline mirror without touching the network.
    mirrors = ["http://127.0.0.1:9/a/", "http://127.0.0.1:9/b/"]
    with pytest.raises(DownloadError) as caught:
        download_mnist(tmp_path, mirrors=mirrors, resources=[("train-images-idx3-ubyte.gz", "0")])
    assert "127.0.0.1:9/a/" in caught.value.message and "127.0.0.1:9/b/" in caught.value.message
    assert "--from" in caught.value.hint
    assert not any(tmp_path.rglob("*ubyte*"))


@pytest.fixture
def file_mirror(tmp_path, subset_dir, monkeypatch):
    """A local file:// mirror of the subset, with the subset's MD5s standing in as official."""
    resources = []
    for name in OFFICIAL_MD5:
        packed = (subset_dir / f"{name}.gz").read_bytes()
        monkeypatch.setitem(OFFICIAL_MD5, name, md5_of(gzip.decompress(packed)))
        monkeypatch.setitem(data.OFFICIAL_SIZES, name, len(gzip.decompress(packed)))
        resources.append((f"{name}.gz", md5_of(packed)))
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in OFFICIAL_MD5:
        (broken / f"{name}.gz").write_bytes(b"not gzip")
    return [broken.as_uri() + "/", subset_dir.as_uri() + "/"], resources


def test_download_falls_back_to_the_next_mirror_with_progress(tmp_path, file_mirror):
    mirrors, resources = file_mirror
    seen = []
    outcomes = download_mnist(
        tmp_path / "d",
        mirrors=mirrors,
        resources=resources,
        on_progress=lambda name, done, total: seen.append((name, done)),
    )
    assert [o.status for o in outcomes] == ["downloaded"] * 4
    assert all(o.source.startswith(mirrors[1]) for o in outcomes)
    assert {name for name, _ in seen} == set(OFFICIAL_MD5)
    again = download_mnist(tmp_path / "d", mirrors=mirrors, resources=resources)
    assert [o.status for o in again] == ["present"] * 4


def _source_with(tmp_path, subset_dir, name, write):
    source = tmp_path / "src"
    shutil.copytree(subset_dir, source)
    (source / f"{name}.gz").unlink()
    write(source / f"{name}.gz")
    return source


def test_a_gzip_bomb_is_refused_without_inflating_it(tmp_path, subset_dir, memory_growth):
    header = (0x803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (60000, 28, 28))

    def bomb(path):
        with gzip.open(path, "wb", compresslevel=1) as out:
            out.write(header)
            zeros = bytes(16 << 20)
            for _ in range(64):  # 1 GiB of zeros unpacked, 4.5 MB packed
                out.write(zeros)

    source = _source_with(tmp_path, subset_dir, "train-images-idx3-ubyte", bomb)
    message, peak_mib = memory_growth(
        "try:\n    import_mnist(sys.argv[1], sys.argv[2], verify_md5=False)\n"
        "except MnistError as error:\n    print(error.message)",
        tmp_path / "out",
        source,
        setup="from mnist_cli.download import import_mnist\n"
        "from mnist_cli.errors import MnistError",
    )
    assert "longer than its header says" in message
    assert peak_mib < 300  # the real file is 47 MB; inflating the bomb would take 1 GiB
    assert not (tmp_path / "out").exists()


def test_a_huge_sparse_file_is_refused_from_its_header(tmp_path, subset_dir):
    header = (0x803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (3000, 28, 28))
    folder = raw_dir(tmp_path / "data")
    import_mnist(tmp_path / "data", subset_dir, verify_md5=False)
    sparse = folder / "train-images-idx3-ubyte"
    with open(sparse, "wb") as out:
        out.write(header)
        out.truncate(3 << 30)  # 3 GB, no blocks on disk
    with pytest.raises(data.DataError, match="longer than its header says") as refused:
        data.load_split(tmp_path / "data", "train")
    assert "2352017" not in str(refused.value).replace(",", "")  # what was read: not its size


def test_a_header_promising_more_than_mnist_is_refused(tmp_path, subset_dir):
    header = (0x803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (10**9, 28, 28))
    source = _source_with(
        tmp_path,
        subset_dir,
        "t10k-images-idx3-ubyte",
        lambda p: p.write_bytes(gzip.compress(header)),
    )
    with pytest.raises(data.DataError, match="more than the official file"):
        import_mnist(tmp_path / "out", source, verify_md5=False)


def test_a_subset_never_replaces_the_official_files(tmp_path, subset_dir, monkeypatch):
    import mnist_cli.download as download

    import_mnist(tmp_path / "data", subset_dir, verify_md5=False)
    folder = raw_dir(tmp_path / "data")
    official = {name: (folder / name).read_bytes() for name in OFFICIAL_MD5}
    # Stand-ins: treat the shipped subset's bytes as the official files.
    for module in (data, download):
        monkeypatch.setattr(module, "OFFICIAL_MD5", {n: md5_of(b) for n, b in official.items()})
        monkeypatch.setattr(module, "OFFICIAL_SIZES", {n: len(b) for n, b in official.items()})
    smaller = tmp_path / "smaller"
    smaller.mkdir()
    for name, content in official.items():
        count = 100
        size = 16 + count * 784 if "images" in name else 8 + count
        header = content[:4] + count.to_bytes(4, "big") + content[8:16]
        (smaller / name).write_bytes(
            (header + content[16:] if "images" in name else header[:8] + content[8:])[:size]
        )
    outcomes = import_mnist(tmp_path / "data", smaller, verify_md5=False)
    assert {o.status for o in outcomes} == {"kept"}
    assert {name: (folder / name).read_bytes() for name in OFFICIAL_MD5} == official


def test_the_mirrors_are_torchvisions_without_importing_it():
    torchvision = pytest.importorskip("torchvision")  # the base install has none: the list
    from mnist_cli.download import MIRRORS, RESOURCES  # is written out for it

    assert list(torchvision.datasets.MNIST.mirrors) == MIRRORS
    assert list(torchvision.datasets.MNIST.resources) == RESOURCES


def test_present_files_are_hashed_once_then_known_by_size_and_time(
    tmp_path, subset_dir, monkeypatch
):
    import os

    import mnist_cli.download as download

    import_mnist(tmp_path / "data", subset_dir, verify_md5=False)
    folder = raw_dir(tmp_path / "data")
    official = {name: (folder / name).read_bytes() for name in OFFICIAL_MD5}
    for module in (data, download):  # stand-ins: the subset's bytes are "official"
        monkeypatch.setattr(module, "OFFICIAL_MD5", {n: md5_of(b) for n, b in official.items()})
        monkeypatch.setattr(module, "OFFICIAL_SIZES", {n: len(b) for n, b in official.items()})
    hashed = []
    monkeypatch.setattr(download, "md5_of", lambda b: hashed.append(1) or md5_of(b))
    first = download_mnist(tmp_path / "data", mirrors=[])
    assert {o.status for o in first} == {"present"} and len(hashed) == 4
    again = download_mnist(tmp_path / "data", mirrors=[])
    assert {o.status for o in again} == {"present"} and len(hashed) == 4  # no second hashing
    name = "t10k-labels-idx1-ubyte"
    damaged = bytearray(official[name])
    damaged[-1] ^= 1  # same size, new bytes, a new modification time
    (folder / name).write_bytes(bytes(damaged))
    os.utime(folder / name, ns=(1, 1))
    with pytest.raises(DownloadError, match="could not download t10k-labels"):
        download_mnist(tmp_path / "data", mirrors=[])


def test_import_names_a_fifo_or_a_broken_link_in_place_of_a_file(tmp_path, subset_dir):
    import os

    for kind in ("fifo", "link"):
        source = tmp_path / kind
        shutil.copytree(subset_dir, source)
        (source / "train-labels-idx1-ubyte.gz").unlink()
        if kind == "fifo":
            os.mkfifo(source / "train-labels-idx1-ubyte")
        else:
            (source / "train-labels-idx1-ubyte").symlink_to(tmp_path / "gone")
        what = "a FIFO" if kind == "fifo" else "a broken symbolic link"
        with pytest.raises(DownloadError, match=f"train-labels-idx1-ubyte: {what}"):
            import_mnist(tmp_path / "data", source, verify_md5=False)
