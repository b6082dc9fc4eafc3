"""The data layer on a data folder given the wrong way: the dataset's own folder or its raw/ folder, a file,
files beside the layout, a link to nothing, a home folder that cannot be found, test files that are copies of
the training files. Small synthetic KMNIST files (no MD5 known, so only the layout and content checks apply)."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import mnistlab.data.datasets as datasets
from mnistlab.config import DataConfig
from mnistlab.data import load_data, load_raw, resolve_data_dir
from mnistlab.errors import DataError

TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx(path: Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes((0, 0, 8, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def kmnist_files(raw: Path, n_train: int = 12, n_test: int = 4) -> Path:
    """Random train and test IDX files in ``raw``; returns it."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return raw


@pytest.fixture
def downloads(monkeypatch):
    """The downloads asked for (none is made): each call's raw folder."""
    calls = []
    monkeypatch.setattr(datasets, "_download", lambda spec, root, train, training: calls.append(spec.raw_dir(root)))
    return calls


@pytest.mark.parametrize("given", ["KMNIST", "KMNIST/raw", "KMNIST/raw/t10k-images-idx3-ubyte"])
@pytest.mark.parametrize("download", [False, True])
def test_a_data_folder_inside_the_layout_names_the_right_one_and_downloads_nothing(tmp_path, downloads, given,
                                                                                   download):
    # It said the files were missing from .../KMNIST/KMNIST/raw, and with data.download on (the default) fetched a
    # second copy into that nested folder, beside the user's files.
    root = tmp_path / "data"
    kmnist_files(root / "KMNIST" / "raw")
    with pytest.raises(DataError) as err:
        load_raw("kmnist", root / given, train=False, download=download)
    message = str(err.value)
    assert f"Pass --data-dir {root} " in message
    assert str(root / given / "KMNIST" / "raw") in message  # where it looked
    assert downloads == []
    assert not (root / "KMNIST" / "KMNIST").exists()
    # the folder it names is the right one
    assert load_raw("kmnist", root, train=False, download=False)[1].tolist() == [0, 1, 2, 3]


def test_a_relative_data_folder_inside_the_layout_is_answered_with_a_full_path(tmp_path, downloads, monkeypatch):
    kmnist_files(tmp_path / "KMNIST" / "raw")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"Pass --data-dir {tmp_path} "):  # not "--data-dir ."
        load_data(DataConfig(dataset="kmnist", dir="KMNIST/raw", val_size=2))
    assert downloads == []


def test_files_beside_the_layout_are_pointed_at(tmp_path, downloads):
    # It said only "missing t10k-... in <root>/KMNIST/raw" while `ls <root>` showed them.
    flat = kmnist_files(tmp_path / "flat")  # the four files in the data folder itself
    with pytest.raises(DataError, match=f"; {flat} holds t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, but "
                                        f"mnistlab .* reads kmnist from {flat / 'KMNIST' / 'raw'} alone"):
        load_raw("kmnist", flat, train=False, download=False)
    kmnist_files(tmp_path / "cased" / "kmnist" / "raw")  # the dataset's name in another case
    with pytest.raises(DataError, match=f"; {tmp_path / 'cased' / 'kmnist' / 'raw'} holds t10k-images-idx3-ubyte"):
        load_raw("kmnist", tmp_path / "cased", train=False, download=False)


@pytest.mark.parametrize("where", ["root", "dataset folder"])
def test_a_file_where_the_data_folder_belongs_is_named(tmp_path, downloads, where):
    # It asked to "put the files in <a file>/KMNIST/raw", which no one can.
    root = tmp_path / "data"
    if where == "root":
        root.write_text("not a folder")
        said = f"the data folder {root} is a file, not a folder"
    else:
        root.mkdir()
        (root / "KMNIST").write_text("not a folder")
        said = f"{root / 'KMNIST'} is a file, not a folder"
    with pytest.raises(DataError) as err:
        load_raw("kmnist", root, train=False, download=False)
    assert said in str(err.value)


@pytest.mark.parametrize("download", [False, True])
def test_a_dataset_file_that_links_to_nothing_is_named_with_its_target(tmp_path, downloads, download):
    # It was called missing (ls lists it), and with data.download on the download replaced the user's link.
    raw = kmnist_files(tmp_path / "KMNIST" / "raw")
    (raw / TEST_FILES[0]).unlink()
    gone = tmp_path / "unmounted" / TEST_FILES[0]
    (raw / TEST_FILES[0]).symlink_to(gone)
    with pytest.raises(DataError, match=f"{raw / TEST_FILES[0]} is a link to {gone}, which does not exist"):
        load_raw("kmnist", tmp_path, train=False, download=download)
    assert downloads == []
    assert (raw / TEST_FILES[0]).is_symlink()


@pytest.fixture
def no_home(monkeypatch):
    """A user with no $HOME and no entry in the user database (a container run under a bare user id)."""
    import pwd

    def unknown(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    for name in ("HOME", "MNISTLAB_DATA", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pwd, "getpwuid", unknown)


def test_no_home_folder_is_a_data_error_not_a_traceback(no_home, tmp_path):
    # Path.home()'s RuntimeError went up as a traceback, from the default data folder and from a "~/..." data.dir.
    with pytest.raises(DataError, match=r"default data folder .* this user has no home folder .* pass --data-dir"):
        load_data(DataConfig(download=False))
    with pytest.raises(DataError, match=r"data.dir ~/data starts with ~, but this user has no home folder"):
        load_data(DataConfig(dir="~/data", download=False))
    with pytest.raises(DataError, match=r"the data folder ~/data starts with ~"):
        load_raw("kmnist", "~/data", train=False, download=False)
    assert resolve_data_dir(tmp_path) == tmp_path  # a full path needs no home


def test_an_unknown_users_home_is_a_data_error():
    with pytest.raises(DataError, match=r"~no-such-user-mnistlab/data starts with ~no-such-user-mnistlab, but this "
                                        r"machine has no user 'no-such-user-mnistlab'"):
        resolve_data_dir("~no-such-user-mnistlab/data")


def test_test_files_that_are_copies_of_the_training_files_are_refused(tmp_path):
    # They loaded, and the run's test accuracy was measured on the images it trained on.
    raw = kmnist_files(tmp_path / "KMNIST" / "raw")
    cfg = DataConfig(dataset="kmnist", dir=str(tmp_path), val_size=2, download=False)
    assert len(load_data(cfg).test) == 4
    for kind in ("images-idx3", "labels-idx1"):
        shutil.copy(raw / f"train-{kind}-ubyte", raw / f"t10k-{kind}-ubyte")
    with pytest.raises(DataError, match=f"{raw / TEST_FILES[0]} holds the same images as train-images-idx3-ubyte"):
        load_data(cfg)
    os.remove(raw / TEST_FILES[0])
    with pytest.raises(DataError, match="missing t10k-images-idx3-ubyte"):  # deleting them is one of the fixes
        load_data(cfg)


def test_training_images_of_one_value_are_refused_naming_the_file(tmp_path):
    # A zero-filled file loaded, and the model refused its std of 0 ("std must be positive, got [0.0]") without a
    # word of the data.
    raw = kmnist_files(tmp_path / "KMNIST" / "raw")
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((12, 28, 28)))
    with pytest.raises(DataError, match=r"the 10 training images \(of .*KMNIST/raw/train-images-idx3-ubyte\) have "
                                        r"every pixel 0: there is nothing to learn from"):
        load_data(DataConfig(dataset="kmnist", dir=str(tmp_path), val_size=2, download=False))
    write_idx(raw / "train-images-idx3-ubyte", np.pad(np.full((12, 28, 27), 7), ((0, 0), (0, 0), (0, 1))))
    # one column of another value is enough to learn from
    assert load_data(DataConfig(dataset="kmnist", dir=str(tmp_path), val_size=2, download=False)).std[0] > 0
