"""What the download fetches, what it leaves alone, and MNIST's files given for another dataset.

These run torchvision's own ``download()`` (its mirror loop, its ``resources``) with only its fetch of one
archive, ``download_and_extract_archive``, replaced: nothing touches the network.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torchvision.datasets
import torchvision.datasets.mnist

from mnistlab.config import DataConfig
from mnistlab.data import DATASETS, load_raw, load_test
from mnistlab.errors import DataError

# Taken at import, before the autouse fixture in tests/conftest.py replaces it with one that fails the test
REAL_DOWNLOAD = torchvision.datasets.MNIST.download
MNIST_FILES = tuple(DATASETS["mnist"].md5)


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes((0, 0, 8, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


class Fetches(list):
    """The archive names torchvision's download() asked for, in order; ``serve``: those that arrive."""

    serve: dict[str, bytes]  # archive name -> its uncompressed bytes


@pytest.fixture
def fetches(monkeypatch):
    """torchvision's download() with each archive's fetch replaced: an archive named in ``fetches.serve``
    "arrives" unpacked; any other fails as on a machine offline."""
    calls = Fetches()
    calls.serve = {}

    def fake(url, download_root, extract_root=None, filename=None, md5=None, remove_finished=False):
        calls.append(filename)
        if filename not in calls.serve:
            raise URLError("[Errno -3] Temporary failure in name resolution")
        Path(download_root, filename.removesuffix(".gz")).write_bytes(calls.serve[filename])

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", REAL_DOWNLOAD)
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", fake)
    return calls


# ---------------------------------------------------------------------------
# archives in the folder that are not the published ones: the user's, never deleted


def user_archives(raw: Path, kind: str) -> dict[str, bytes]:
    """The four files of a small dataset under the archives' names, as a user may save them; name -> bytes."""
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = {}
    for prefix, n in (("train", 6), ("t10k", 4)):
        files[f"{prefix}-images-idx3-ubyte"] = idx_bytes(rng.integers(0, 256, (n, 28, 28)))
        files[f"{prefix}-labels-idx1-ubyte"] = idx_bytes(np.arange(n) % 10)
    saved = {}
    for name, data in files.items():
        saved[name + ".gz"] = gzip.compress(data, mtime=0) if kind == "recompressed" else data
        (raw / (name + ".gz")).write_bytes(saved[name + ".gz"])
    return saved


@pytest.mark.parametrize("kind", ["recompressed", "uncompressed under .gz names"])
def test_archives_the_user_put_there_are_left_in_place_and_named_when_their_md5_differs(tmp_path, fetches, kind):
    raw = tmp_path / "FashionMNIST" / "raw"
    saved = user_archives(raw, kind)
    with pytest.raises(DataError) as err:
        load_raw("fashion-mnist", tmp_path, train=True, download=True)
    message = str(err.value)
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == saved  # all there, unchanged
    assert "the archives train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz in" in message
    assert "do not have the MD5 torchvision publishes for them, and were left in place" in message
    assert "unpack it yourself (gunzip -k; an uncompressed IDX file under a .gz name only needs the .gz" in message
    assert "removed" not in message
    assert fetches == []  # not downloaded over them either (torchvision would write the download in their place)


def test_an_archive_this_download_cut_short_is_removed_but_not_the_users(tmp_path, fetches, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"the user's")  # not of the split asked for

    def cut_short(url, download_root, filename=None, **kw):
        fetches.append(filename)
        Path(download_root, filename).write_bytes(b"\x1f\x8b part")
        raise TimeoutError("The read operation timed out")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", cut_short)
    with pytest.raises(DataError, match=r"TimeoutError.*t10k-images-idx3-ubyte.gz failed its MD5 check and was "
                                        r"removed"):
        load_raw("mnist", tmp_path, train=False, download=True)
    assert sorted(p.name for p in raw.iterdir()) == ["train-images-idx3-ubyte.gz"]  # the next try fetches again


def test_an_archive_a_killed_download_left_is_fetched_again_not_blamed_on_the_user(tmp_path, fetches, mnist_root):
    # torchvision writes to the archive's own name, and a SIGKILL or SIGTERM runs no cleanup: the next try said
    # "left in place ... if such a file is your copy of the right data, unpack it yourself" for our own piece.
    import signal
    import subprocess
    import sys

    raw = tmp_path / "MNIST" / "raw"
    killed = subprocess.run([sys.executable, "-c", f"""
import os, signal
from pathlib import Path
import torchvision.datasets, torchvision.datasets.mnist
from mnistlab.data import load_raw
def fetch(url, download_root, filename=None, **kw):
    Path(download_root, filename).write_bytes(b"\\x1f\\x8b half an archive")
    os.kill(os.getpid(), signal.SIGKILL)
torchvision.datasets.mnist.download_and_extract_archive = fetch
load_raw("mnist", {str(tmp_path)!r}, train=False, download=True)
"""], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (raw / "t10k-images-idx3-ubyte.gz").read_bytes() == b"\x1f\x8b half an archive"
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        fetches.serve[name + ".gz"] = (mnist_root / "MNIST" / "raw" / name).read_bytes()
    images, labels = load_raw("mnist", tmp_path, train=False, download=True)
    assert len(images) == len(labels) == 10_000
    assert fetches == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert not list(raw.glob(".*")) and not (raw / "t10k-images-idx3-ubyte.gz").exists()  # no mark, no piece


def test_a_process_that_waited_for_a_download_which_failed_and_removed_its_folder_makes_it_anew(tmp_path):
    # The failed download took away the folders it had made after giving up the lock... or while holding it:
    # the waiting process then held the lock of a folder that was gone, and wrote into nothing.
    import threading

    from mnistlab.data.datasets import _folder_lock

    folder, inside = tmp_path / "MNIST" / "raw", threading.Event()
    second: list[bool] = []

    def waiter():
        assert inside.wait(timeout=10)
        with _folder_lock(folder):
            second.append(folder.is_dir())
            (folder / "written").write_text("ok")

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    with _folder_lock(folder):
        inside.set()
        t.join(timeout=0.5)  # it waits for the lock
        assert t.is_alive() and second == []
        folder.rmdir()  # as remove_empty does after a failed download
    t.join(timeout=10)
    assert second == [True] and (folder / "written").read_text() == "ok"


# ---------------------------------------------------------------------------
# only the split asked for is downloaded


@pytest.mark.parametrize("present", [(), ("t10k-images-idx3-ubyte",)])
def test_load_test_downloads_only_the_missing_test_files(tmp_path, fetches, mnist_root, present):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in present:
        shutil.copyfile(mnist_root / "MNIST" / "raw" / name, raw / name)
    missing = [name for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte") if name not in present]
    fetches.serve = {name + ".gz": (mnist_root / "MNIST" / "raw" / name).read_bytes() for name in missing}
    scoring = load_test(DataConfig(dataset="mnist", dir=str(tmp_path), download=True))
    assert len(scoring.test) == 10_000
    assert fetches == [name + ".gz" for name in missing]  # not the training set's, which is not reachable here
    assert sorted(p.name for p in raw.iterdir()) == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


# ---------------------------------------------------------------------------
# MNIST's files given for Fashion-MNIST or KMNIST


def test_the_head_md5s_are_those_of_mnists_published_files(mnist_root):
    from mnistlab.data.datasets import _HEAD_BYTES, _MNIST_BY_HEAD_MD5

    for name in MNIST_FILES:
        with open(mnist_root / "MNIST" / "raw" / name, "rb") as f:
            assert _MNIST_BY_HEAD_MD5[hashlib.md5(f.read(_HEAD_BYTES)).hexdigest()] == name


@pytest.mark.parametrize("dataset", ["fashion-mnist", "kmnist"])
def test_mnists_files_are_refused_for_another_dataset(tmp_path, mnist_root, dataset):
    raw = tmp_path / DATASETS[dataset].folder / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copyfile(mnist_root / "MNIST" / "raw" / name, raw / name)
    with pytest.raises(DataError, match=rf"{raw / 't10k-images-idx3-ubyte'} is MNIST's t10k-images-idx3-ubyte "
                                        rf"\(byte for byte\), not a {dataset} file"):
        load_raw(dataset, tmp_path, train=False, download=False)


def test_an_mnist_file_in_another_role_is_refused_too(tmp_path, mnist_root):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((10_000, 28, 28))))  # MNIST's test size
    shutil.copyfile(mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", raw / "train-labels-idx1-ubyte")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte is MNIST's t10k-labels-idx1-ubyte"):
        load_raw("fashion-mnist", tmp_path, train=True, download=False)


def test_a_file_that_only_begins_as_mnists_is_not_called_mnists(tmp_path, mnist_root):
    raw = tmp_path / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copyfile(mnist_root / "MNIST" / "raw" / name, raw / name)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # a new last byte: a pixel, a label
        with open(raw / name, "r+b") as f:
            f.seek(-1, 2)
            last = f.read(1)[0]
            f.seek(-1, 2)
            f.write(bytes([(last + 1) % 10]))
    images, _ = load_raw("kmnist", tmp_path, train=False, download=False)
    assert images.shape[0] == 10_000  # the first 64 KiB of the images, all of MNIST's, were not enough
