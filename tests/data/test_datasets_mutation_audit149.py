"""Audit 149: tests that kill the mutants of ``mnistlab.data.datasets`` the other data tests let live.

Each mutant (a flipped comparison, an off-by-one, a dropped check) was applied to a copy of the package; these
tests assert the behaviour the mutated line is there for: where the data folder is, what an IDX file must be to
load, which file a mistake names, what a download keeps. Nothing here touches the network: ``urlopen`` is
replaced by an in-process fake that serves bytes from memory, and every file is built by hand in ``tmp_path``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import mnistlab.data.datasets as datasets
from mnistlab.config import DataConfig
from mnistlab.data import DATASETS, load_data, load_raw, read_idx, resolve_data_dir, split_indices
from mnistlab.errors import ConfigError, DataError

TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 00 00 08 ndim, big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes((0, 0, 8, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def small_files(n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    files = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        files[f"{prefix}-images-idx3-ubyte"] = idx(rng.integers(0, 256, (n, 28, 28)))
        files[f"{prefix}-labels-idx1-ubyte"] = idx(np.arange(n) % 10)
    return files


def put(root: Path, dataset: str, files: dict[str, bytes]) -> Path:
    raw = root / DATASETS[dataset].folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (raw / name).write_bytes(data)
    return raw


# ---------------------------------------------------------------------------
# where the data folder is


def test_an_empty_data_dir_or_mnistlab_data_means_unset(monkeypatch, tmp_path):
    # An empty --data-dir (Python API) or an exported but empty $MNISTLAB_DATA is no folder: it is not the
    # current folder (Path("") is "."), but the next place in line
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("MNISTLAB_DATA", str(tmp_path / "env"))
    assert resolve_data_dir("") == tmp_path / "env"
    monkeypatch.setenv("MNISTLAB_DATA", "")
    assert resolve_data_dir(None) == tmp_path / "xdg" / "mnistlab"


def test_a_relative_xdg_cache_home_is_ignored(monkeypatch, tmp_path):
    monkeypatch.delenv("MNISTLAB_DATA", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec: invalid, to be ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir(None) == tmp_path / "home" / ".cache" / "mnistlab"


def test_the_cache_folder_on_windows_and_macos(monkeypatch, tmp_path):
    monkeypatch.delenv("MNISTLAB_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr("sys.platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert resolve_data_dir(None) == tmp_path / "local" / "mnistlab"
    monkeypatch.delenv("LOCALAPPDATA")
    assert resolve_data_dir(None) == tmp_path / "home" / "AppData" / "Local" / "mnistlab"
    monkeypatch.setattr("sys.platform", "darwin")
    assert resolve_data_dir(None) == tmp_path / "home" / "Library" / "Caches" / "mnistlab"


# ---------------------------------------------------------------------------
# IDX files: one byte off is refused, naming the file


LABELS = idx(np.arange(10) % 10)  # 8 bytes of header, 10 of data
IMAGES = idx(np.zeros((2, 28, 28)))  # 16 bytes of header


@pytest.mark.parametrize("size", [3, 7])
def test_a_header_one_byte_short_is_called_truncated(tmp_path, size):
    # 3 bytes: the magic number's first three are right, and its fourth (ndim) is missing; 7: one dim byte short
    path = tmp_path / "x-labels-idx1-ubyte"
    path.write_bytes(LABELS[:size])
    want = 4 if size < 4 else 8
    with pytest.raises(DataError, match=rf"^{path} is truncated: expected (at least )?{want} bytes of IDX header, "
                                        rf"found {size}$"):
        read_idx(path, 1)


def test_an_images_header_one_byte_short_is_called_truncated(tmp_path):
    path = tmp_path / "x-images-idx3-ubyte"
    path.write_bytes(IMAGES[:15])
    with pytest.raises(DataError, match=rf"^{path} is truncated: expected 16 bytes of IDX header, found 15$"):
        read_idx(path, 3)


def test_a_file_one_byte_short_is_refused_naming_it(tmp_path):
    path = tmp_path / "x-labels-idx1-ubyte"
    path.write_bytes(LABELS[:-1])
    with pytest.raises(DataError, match=rf"^{path} is truncated: its header announces 10 values, so expected 10 bytes "
                                        r"of data, found 9$"):
        read_idx(path, 1)


def test_a_file_one_byte_long_is_refused_naming_it(tmp_path):
    path = tmp_path / "x-labels-idx1-ubyte"
    path.write_bytes(LABELS + b"\x00")
    with pytest.raises(DataError, match=rf"^{path} has 1 trailing byte\(s\) after the 10 bytes of data its header "
                                        r"announces \(10\)$"):
        read_idx(path, 1)


def test_an_idx_file_of_another_type_or_more_dims_is_refused(tmp_path):
    path = tmp_path / "x-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x0b\x01" + LABELS[4:])  # 0x0b: 16-bit integers
    with pytest.raises(DataError, match=r"is not an IDX file of unsigned bytes: its magic number is 00 00 0b 01, "
                                        r"expected 00 00 08 01$"):
        read_idx(path, 1)
    path.write_bytes(IMAGES)  # more dims than asked for, as fewer
    with pytest.raises(DataError, match=r"has 3 dimension\(s\) in its IDX header, expected 1$"):
        read_idx(path, 1)


def test_a_gzip_file_is_named_as_one_with_how_to_unpack_it(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(gzip.compress(LABELS))
    with pytest.raises(DataError, match=r"magic number is 1f 8b 08 00, expected 00 00 08 01 \(it looks "
                                        r"gzip-compressed: unpack it, e\.g\. in its folder: gzip -dc "
                                        r"t10k-labels-idx1-ubyte > t10k-labels-idx1-ubyte\.new"):
        read_idx(path, 1)


def test_the_size_limit_refuses_only_files_above_it(tmp_path, monkeypatch):
    path = tmp_path / "x-labels-idx1-ubyte"
    path.write_bytes(LABELS)
    monkeypatch.setattr(datasets, "_MAX_IDX_BYTES", len(LABELS))
    assert read_idx(path, 1).tolist() == list(range(10))  # exactly at the limit: read
    monkeypatch.setattr(datasets, "_MAX_IDX_BYTES", len(LABELS) - 1)
    with pytest.raises(DataError, match=rf"{path} is 18 bytes, more than any IDX file"):
        read_idx(path, 1)


# ---------------------------------------------------------------------------
# downloads, from an in-process fake of urlopen


class FakeResponse:
    def __init__(self, body: bytes, length: int | None):
        self._body = io.BytesIO(body)
        self.headers = {} if length is None else {"Content-Length": str(length)}

    def read(self, n: int = -1) -> bytes:
        return self._body.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def fake_mirrors(monkeypatch):
    """``fake_mirrors(dataset, archives, *kinds)``: the dataset's mirrors are ``m0/``, ``m1/``... each serving
    ``archives`` (NAME.gz -> bytes, their MD5s published) as its kind says: "ok", "short" (half the body under the
    whole body's Content-Length, as a cut connection leaves it), "other" (other bytes), "down" (URLError).
    Returns the URLs asked for, in order."""
    asked: list[str] = []

    def start(dataset: str, archives: dict[str, bytes], *kinds: str) -> list[str]:
        kinds = kinds or ("ok",)

        def urlopen(request, *args, **kwargs):
            url = request.full_url
            asked.append(url)
            kind = kinds[int(url.split("/")[2][1:])]
            body = archives[url.rsplit("/", 1)[1]]
            if kind == "down":
                raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))
            if kind == "short":
                return FakeResponse(body[: len(body) // 2], len(body))
            if kind == "other":
                return FakeResponse(b"\x1f\x8b other bytes", None)
            return FakeResponse(body, len(body))

        cls = DATASETS[dataset].torchvision_class
        monkeypatch.setattr(cls, "mirrors", [f"http://m{i}/" for i in range(len(kinds))])
        published = [(name, hashlib.md5(data).hexdigest()) for name, data in archives.items()]
        monkeypatch.setattr(cls, "resources", published)
        monkeypatch.setattr(urllib.request, "urlopen", urlopen)
        return asked

    return start


def gzipped(files: dict[str, bytes]) -> dict[str, bytes]:
    return {name + ".gz": gzip.compress(data, compresslevel=1, mtime=0) for name, data in files.items()}


def test_a_partial_download_is_not_taken_for_a_whole_one(tmp_path, fake_mirrors, capfd):
    files = small_files()
    archives = gzipped(files)
    asked = fake_mirrors("kmnist", archives, "short", "ok")
    images, labels = load_raw("kmnist", tmp_path, train=False, download=True)
    assert torch.equal(labels, torch.arange(4))
    # the mirrors in their order: the first, cut short, then the second, for each archive
    assert asked == [f"http://m{i}/{name}" for name in archives if name.startswith("t10k") for i in (0, 1)]
    name = "t10k-images-idx3-ubyte.gz"
    whole = len(archives[name])
    assert (f"kmnist: {name}: ConnectionError: the server sent {whole // 2:,} of the {whole:,} bytes it announced "
            f"from http://m0/; trying http://m1/") in capfd.readouterr().err
    raw = tmp_path / "KMNIST" / "raw"
    assert (raw / name).read_bytes() == archives[name]
    assert sorted(p.name for p in raw.iterdir() if p.name.startswith(".")) == []


def test_partial_downloads_from_every_mirror_leave_nothing_and_blame_the_network(tmp_path, fake_mirrors):
    asked = fake_mirrors("kmnist", gzipped(small_files()), "short", "short")
    with pytest.raises(DataError) as err:
        load_raw("kmnist", tmp_path, train=False, download=True)
    message = str(err.value)
    assert "the server sent" in message and "from http://m0/; ConnectionError" in message
    assert "failed its MD5 check" not in message  # a cut connection is not a broken mirror
    assert "connect to the network and run again" in message
    assert len(asked) == 2  # the first archive failed everywhere: the second was not asked for
    assert not (tmp_path / "KMNIST").exists()  # the folders it made are gone, with no piece in them


def test_a_wrong_md5_is_refused_and_the_bad_file_is_not_kept(tmp_path, fake_mirrors):
    fake_mirrors("kmnist", gzipped(small_files()), "other", "other")
    with pytest.raises(DataError) as err:
        load_raw("kmnist", tmp_path, train=False, download=True)
    message = str(err.value)
    assert ("t10k-images-idx3-ubyte.gz: failed its MD5 check from http://m0/; failed its MD5 check from http://m1/"
            in message)
    assert ("let the download succeed: data.download is on; t10k-images-idx3-ubyte.gz failed its MD5 check (a "
            "broken mirror, or a proxy that alters downloads?), and run again" in message)
    assert not (tmp_path / "KMNIST").exists()


def test_a_wrong_md5_from_one_mirror_then_a_cut_from_the_next_still_names_the_md5(tmp_path, fake_mirrors):
    fake_mirrors("kmnist", gzipped(small_files()), "other", "short")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz failed its MD5 check \(a broken mirror"):
        load_raw("kmnist", tmp_path, train=False, download=True)


def test_an_unreachable_first_mirror_is_passed_over_without_error(tmp_path, fake_mirrors):
    asked = fake_mirrors("kmnist", gzipped(small_files()), "down", "ok")
    assert len(load_raw("kmnist", tmp_path, train=False, download=True)[0]) == 4
    assert [url.split("/")[2] for url in asked] == ["m0", "m1", "m0", "m1"]


# ---------------------------------------------------------------------------
# what load_raw checks after the IDX format


def test_the_first_label_out_of_range_is_the_one_named(tmp_path):
    files = small_files()
    files["train-labels-idx1-ubyte"] = idx(np.array([0, 12, 2, 10, 3, 4]))
    raw = put(tmp_path, "kmnist", files)
    with pytest.raises(DataError, match=rf"^{raw / 'train-labels-idx1-ubyte'} has label 12 at index 1; labels must "
                                        r"be in \[0, 10\) for kmnist$"):
        load_raw("kmnist", tmp_path, train=True, download=False)


def test_images_of_the_right_height_but_another_width_are_refused(tmp_path):
    files = small_files()
    files["train-images-idx3-ubyte"] = idx(np.zeros((6, 28, 27)))
    put(tmp_path, "kmnist", files)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte holds 28x27 images, expected 28x28 for kmnist$"):
        load_raw("kmnist", tmp_path, train=True, download=False)


def test_a_file_one_entry_over_its_published_split_is_refused(tmp_path):
    # 10,001 labels and images in the test files of a dataset without known MD5s: not its test set
    raw = tmp_path / "KMNIST" / "raw"
    put(tmp_path, "kmnist", {"t10k-images-idx3-ubyte": idx(np.zeros((10_001, 28, 28))),
                             "t10k-labels-idx1-ubyte": idx(np.arange(10_001) % 10)})
    with pytest.raises(DataError, match=rf"^{raw / 't10k-images-idx3-ubyte'} holds 10,001 images, more than the "
                                        r"10,000 of kmnist's test set: it is not kmnist's"):
        load_raw("kmnist", tmp_path, train=False, download=False)


# ---------------------------------------------------------------------------
# the validation split and train_limit


def test_split_indices_is_the_documented_permutation():
    # "One random permutation from a CPU generator seeded with split_seed: validation is its first val_size
    # entries, training the rest, then cut to the first train_limit" -- so runs and checkpoints made by another
    # version of mnistlab (resumed, compared, re-evaluated on their validation split) see the same split
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(7))
    train, val = split_indices(50, 10, split_seed=7, train_limit=25)
    assert torch.equal(val, perm[:10]) and torch.equal(train, perm[10:35])
    assert split_indices(8, 3, split_seed=0)[1].tolist() == torch.randperm(
        8, generator=torch.Generator().manual_seed(0))[:3].tolist()


@pytest.mark.parametrize("val_size", [-1, 10, 11])
def test_split_indices_refuses_a_val_size_that_leaves_no_training_images(val_size):
    with pytest.raises(ConfigError, match=rf"data.val_size = {val_size} must be at least 0 and less than the 10 "):
        split_indices(10, val_size, split_seed=0)


@pytest.mark.parametrize("limit", [0, -3])
def test_split_indices_refuses_a_train_limit_below_one(limit):
    with pytest.raises(ConfigError, match=rf"data.train_limit must be at least 1, got {limit}"):
        split_indices(10, 2, split_seed=0, train_limit=limit)


def test_mean_and_std_come_from_the_limited_training_split_alone(tmp_path):
    # 4 training images all 0 and 8 all 255: the stats of whichever are in the training split, not of the file
    images = np.zeros((12, 28, 28), np.uint8)
    images[4:] = 255
    files = small_files(n_train=12)
    files["train-images-idx3-ubyte"] = idx(images)
    put(tmp_path, "kmnist", files)
    data = load_data(DataConfig(dataset="kmnist", dir=str(tmp_path), val_size=5, train_limit=4, download=False))
    kept = data.train.images.float().div(255)
    assert data.mean == pytest.approx((kept.mean().item(),)) and data.std == pytest.approx((kept.std(
        unbiased=False).item(),))
    full = torch.from_numpy(images).float().div(255)
    assert data.mean != pytest.approx((full.mean().item(),))  # (the seed's split is not the file's proportions)


def test_training_images_of_one_value_are_refused_naming_the_file(tmp_path):
    files = small_files(n_train=8)
    files["train-images-idx3-ubyte"] = idx(np.full((8, 28, 28), 7))
    raw = put(tmp_path, "kmnist", files)
    with pytest.raises(DataError, match=rf"^the 6 training images \(of {raw / 'train-images-idx3-ubyte'}\) have every "
                                        r"pixel 7: there is nothing to learn from"):
        load_data(DataConfig(dataset="kmnist", dir=str(tmp_path), val_size=2, download=False))


def test_test_files_that_copy_the_training_files_are_refused(tmp_path):
    files = small_files(n_train=6, n_test=6)
    files["t10k-images-idx3-ubyte"] = files["train-images-idx3-ubyte"]
    files["t10k-labels-idx1-ubyte"] = files["train-labels-idx1-ubyte"]
    raw = put(tmp_path, "kmnist", files)
    with pytest.raises(DataError, match=rf"^{raw / 't10k-images-idx3-ubyte'} holds the same images as "
                                        r"train-images-idx3-ubyte beside it"):
        load_data(DataConfig(dataset="kmnist", dir=str(tmp_path), val_size=2, download=False))


# ---------------------------------------------------------------------------
# MD5 checks


def test_mnist_with_one_byte_changed_past_its_first_64_kib_fails_its_md5(mnist_root, tmp_path):
    # Its first 64 KiB are MNIST's (what _mnist_file looks up first): only the whole file's MD5 tells
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in TEST_FILES:
        shutil.copyfile(mnist_root / "MNIST" / "raw" / name, raw / name)
    path = raw / "t10k-images-idx3-ubyte"
    with open(path, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)[0]
        f.seek(-1, 2)
        f.write(bytes([last ^ 0xFF]))
    with pytest.raises(DataError, match=rf"^{path} is not mnist's t10k-images-idx3-ubyte: its MD5 checksum is "
                                        rf"[0-9a-f]{{32}}, expected {DATASETS['mnist'].md5[path.name]}"):
        load_raw("mnist", tmp_path, train=False, download=False)


def test_a_raw_file_of_another_size_than_the_archive_beside_it_is_refused(tmp_path, fake_mirrors):
    files = small_files()
    archives = gzipped(files)
    fake_mirrors("kmnist", archives)
    raw = put(tmp_path, "kmnist", {})
    for name in TEST_FILES:  # the published archives, as a download leaves them
        (raw / (name + ".gz")).write_bytes(archives[name + ".gz"])
    labels = raw / "t10k-labels-idx1-ubyte"
    (raw / "t10k-images-idx3-ubyte").write_bytes(files["t10k-images-idx3-ubyte"])
    labels.write_bytes(idx(np.arange(3)))  # a valid IDX file, but not what the archive holds (4 labels)
    with pytest.raises(DataError, match=rf"^{labels} is not what the published archive beside it, "
                                        r"t10k-labels-idx1-ubyte.gz, unpacks to \(it has 11 bytes, the archive's 12\)"):
        load_raw("kmnist", tmp_path, train=False, download=False)
    labels.write_bytes(files["t10k-labels-idx1-ubyte"])  # what it unpacks to: loads
    assert load_raw("kmnist", tmp_path, train=False, download=False)[1].tolist() == [0, 1, 2, 3]


def test_a_user_archive_beside_a_raw_file_is_neither_unpacked_nor_downloaded_over(tmp_path, fake_mirrors):
    files = small_files()
    asked = fake_mirrors("kmnist", gzipped(files))
    raw = put(tmp_path, "kmnist", {})
    mine = gzip.compress(files["t10k-images-idx3-ubyte"], compresslevel=9)  # another MD5 than the published one
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(mine)
    with pytest.raises(DataError, match=r"the archives t10k-images-idx3-ubyte.gz in .* do not have the MD5 "
                                        r"torchvision publishes for them, and were left in place"):
        load_raw("kmnist", tmp_path, train=False, download=True)
    assert asked == [] and (raw / "t10k-images-idx3-ubyte.gz").read_bytes() == mine
    assert not (raw / "t10k-images-idx3-ubyte").exists()


def test_a_published_archive_already_there_is_unpacked_without_the_network(tmp_path, fake_mirrors):
    files = small_files()
    archives = gzipped(files)
    asked = fake_mirrors("kmnist", archives)
    raw = put(tmp_path, "kmnist", {})
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(archives["t10k-images-idx3-ubyte.gz"])
    load_raw("kmnist", tmp_path, train=False, download=True)
    assert asked == ["http://m0/t10k-labels-idx1-ubyte.gz"]  # only the archive not there


def test_a_present_file_of_the_split_is_not_replaced_by_the_download(tmp_path, fake_mirrors):
    files = small_files()
    asked = fake_mirrors("kmnist", gzipped(files))
    raw = put(tmp_path, "kmnist", {"t10k-images-idx3-ubyte": files["t10k-images-idx3-ubyte"]})
    before = (raw / "t10k-images-idx3-ubyte").stat().st_mtime_ns
    load_raw("kmnist", tmp_path, train=False, download=True)
    assert asked == ["http://m0/t10k-labels-idx1-ubyte.gz"]
    assert (raw / "t10k-images-idx3-ubyte").stat().st_mtime_ns == before
    assert not (raw / "t10k-images-idx3-ubyte.gz").exists()
