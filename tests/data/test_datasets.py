"""Loading, verifying and splitting MNIST-family data; real MNIST plus small synthetic IDX files.

Corruption tests work on copies in tmp_path (the shared files are read-only).
Checks that MNIST's MD5 would catch first (label range, count mismatch, image size)
use synthetic files in the KMNIST / Fashion-MNIST layout, whose MD5s are not known.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
import urllib.request
from dataclasses import replace
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets

import mnistlab.data.datasets as datasets
import mnistlab.training.checkpoint as checkpoint
from mnistlab.cli import main
from mnistlab.config import DataConfig
from mnistlab.data import (
    DATASETS, channel_stats, load_data, load_raw, load_test, read_idx, resolve_data_dir, split_indices
)
from mnistlab.errors import ConfigError, DataError

MNIST_FILES = tuple(DATASETS["mnist"].md5)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file of unsigned bytes: magic 00 00 08 ndim, big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes((0, 0, 8, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())
    return path


def fake_dataset(root: Path, dataset: str = "kmnist", *, n_train=6, n_test=4, labels=None, size=(28, 28)) -> Path:
    """Synthetic train and test IDX files in torchvision's layout for ``dataset``; returns the raw folder."""
    raw = root / DATASETS[dataset].folder / "raw"
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, *size)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10 if labels is None else labels)
    return raw


def write_split(raw: Path, prefix: str, n: int) -> None:
    """Random images (uint8: 60,000 as int64 would take 376 MB) and labels under ``prefix``'s names in ``raw``."""
    write_idx(raw / f"{prefix}-images-idx3-ubyte", np.random.default_rng(n).integers(0, 256, (n, 28, 28), np.uint8))
    write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def copy_mnist(mnist_root: Path, tmp_path: Path, *names: str) -> Path:
    """Writable copies of some real MNIST files under tmp_path/MNIST/raw; returns that folder."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in names:
        shutil.copyfile(mnist_root / "MNIST" / "raw" / name, raw / name)
    return raw


TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")  # the small split: quick to copy


@pytest.fixture
def download_calls(monkeypatch):
    """A machine offline: every request fails as it would there; returns the URLs asked for.

    (tests/data/test_dataset_fetch.py tests downloads that arrive, from local mirrors.)
    """
    calls = []

    def offline(request, *args, **kwargs):
        calls.append(request.full_url)
        raise URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    return calls


# ---------------------------------------------------------------------------
# real MNIST


@pytest.fixture(scope="module")
def mnist_full(mnist_root):
    """All 60,000 training images as the train split (no validation)."""
    return load_data(DataConfig(dataset="mnist", dir=str(mnist_root), val_size=0, download=False))


def test_real_mnist_files_match_their_published_md5(mnist_root):
    for name in MNIST_FILES:
        digest = hashlib.md5((mnist_root / "MNIST" / "raw" / name).read_bytes()).hexdigest()
        assert digest == DATASETS["mnist"].md5[name], name


def test_real_mnist_loads_with_the_right_shapes_and_label_counts(mnist_root, mnist_full):
    images, labels = load_raw("mnist", mnist_root, train=False, download=False)
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and labels.dtype == torch.int64

    train = mnist_full.train
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64
    counts = torch.bincount(train.labels, minlength=10)
    assert counts.sum() == 60000
    assert int(counts.argmax()) == 1 and int(counts[1]) == 6742  # '1' is the most common digit
    assert len(mnist_full.val) == 0 and mnist_full.val.images.shape == (0, 1, 28, 28)
    assert len(mnist_full.test) == 10000


def test_mean_and_std_of_the_full_training_set_are_the_well_known_ones(mnist_full):
    assert mnist_full.mean == pytest.approx((0.1307,), abs=1e-4)
    assert mnist_full.std == pytest.approx((0.3081,), abs=1e-4)
    # channel_stats is exact: compare with a float64 computation on a slice.
    x = mnist_full.train.images[:1000].double() / 255
    mean, std = channel_stats(mnist_full.train.images[:1000])
    assert mean[0] == pytest.approx(float(x.mean()), abs=1e-12)
    assert std[0] == pytest.approx(float(x.std(unbiased=False)), abs=1e-12)


def test_small_bundle_describes_itself_and_takes_stats_from_its_own_train_split(mnist_small):
    data = mnist_small
    assert (len(data.train), len(data.val), len(data.test)) == (2000, 500, 10000)
    assert data.dataset == "mnist" and data.classes == [str(d) for d in range(10)] and data.num_classes == 10
    assert data.in_channels == 1 and data.image_size == (28, 28)
    assert (data.mean, data.std) == channel_stats(data.train.images)
    assert data.mean != channel_stats(data.val.images)[0]
    assert data.mean != pytest.approx((0.1307,), abs=1e-6)  # not hard-coded
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.images.device.type == "cpu"


def test_splits_hold_the_right_images(mnist_root, mnist_small):
    images, labels = load_raw("mnist", mnist_root, train=True, download=False)
    for split in (mnist_small.train, mnist_small.val):
        assert torch.equal(split.images, images[split.indices])
        assert torch.equal(split.labels, labels[split.indices])
    assert not set(mnist_small.train.indices.tolist()) & set(mnist_small.val.indices.tolist())


def test_validation_split_is_fixed_by_split_seed(mnist_root, mnist_small):
    cfg = DataConfig(dataset="mnist", dir=str(mnist_root), val_size=500, train_limit=2000, download=False)
    again = load_data(cfg)
    assert torch.equal(again.val.indices, mnist_small.val.indices)
    assert torch.equal(again.train.indices, mnist_small.train.indices)
    other = load_data(replace(cfg, split_seed=1))
    assert not torch.equal(other.val.indices, mnist_small.val.indices)


def test_loading_present_files_with_download_allowed_does_not_download(mnist_root, download_calls):
    images, _ = load_raw("mnist", mnist_root, train=False, download=True)
    assert len(images) == 10000 and download_calls == []


# ---------------------------------------------------------------------------
# split_indices


def test_split_indices_is_deterministic_disjoint_and_seed_dependent():
    train, val = split_indices(60000, 5000, split_seed=0)
    train2, val2 = split_indices(60000, 5000, split_seed=0)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    assert len(train) == 55000 and len(val) == 5000
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(60000))  # disjoint, covers all
    _, val_other = split_indices(60000, 5000, split_seed=1)
    assert not torch.equal(val, val_other)
    # A smaller validation split is a prefix of a larger one with the same seed.
    assert torch.equal(split_indices(60000, 100, split_seed=0)[1], val[:100])


def test_train_limit_takes_the_first_n_of_what_is_left():
    train, val = split_indices(1000, 100, split_seed=3)
    limited, val_limited = split_indices(1000, 100, split_seed=3, train_limit=50)
    assert torch.equal(limited, train[:50]) and torch.equal(val_limited, val)
    everything, _ = split_indices(1000, 100, split_seed=3, train_limit=10_000)  # more than there is: all of it
    assert torch.equal(everything, train)


def test_val_size_zero_gives_an_empty_validation_split():
    train, val = split_indices(10, 0, split_seed=0)
    assert len(train) == 10 and len(val) == 0 and val.dtype == torch.int64


@pytest.mark.parametrize("val_size", [6, 7])
def test_val_size_must_leave_training_images(tmp_path, val_size):
    fake_dataset(tmp_path, n_train=6)
    with pytest.raises(ConfigError, match=rf"val_size = {val_size}.*has 6 images"):
        load_data(DataConfig(dataset="kmnist", dir=str(tmp_path), val_size=val_size, download=False))


# ---------------------------------------------------------------------------
# read_idx


def test_read_idx_reads_big_endian_dims_in_order(tmp_path):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    out = read_idx(write_idx(tmp_path / "x", array), 3)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 5)
    assert torch.equal(out, torch.from_numpy(array))


def test_read_idx_rejects_the_wrong_number_of_dims(mnist_root):
    path = mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte has 1 dimension\(s\).*expected 3"):
        read_idx(path, 3)


def test_read_idx_spots_a_gzip_file(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x00"))
    with pytest.raises(DataError, match=r"magic number is 1f 8b .*gzip-compressed"):
        read_idx(path, 1)


@pytest.mark.parametrize("data", [b"", b"\x00\x00", b"\x00\x00\x08\x03\x00\x00"])
def test_read_idx_rejects_a_truncated_header(tmp_path, data):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(DataError, match=r"x-idx3-ubyte is truncated: expected (at least )?\d+ bytes of IDX header"):
        read_idx(path, 3)


def test_read_idx_names_a_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"cannot read .*nothing-here"):
        read_idx(tmp_path / "nothing-here", 1)


# ---------------------------------------------------------------------------
# corrupted copies of real MNIST


def test_one_flipped_byte_fails_the_checksum(mnist_root, tmp_path):
    raw = copy_mnist(mnist_root, tmp_path, *TEST_FILES)
    path = raw / "t10k-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[16 + 28 * 14 + 14] ^= 0xFF  # a pixel of the first image: headers and sizes stay valid
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        load_raw("mnist", tmp_path, train=False, download=False)
    message = str(err.value)
    assert str(path) in message and "MD5 checksum" in message
    assert DATASETS["mnist"].md5["t10k-images-idx3-ubyte"] in message and "Delete it" in message


def test_another_datasets_files_in_mnists_folder_are_not_called_corrupted(tmp_path):
    # Fashion-MNIST's files have MNIST's sizes: in MNIST/raw (code that names every dataset's folder "mnist") they
    # pass the header and size checks, and the MD5 check called the whole files "corrupted".
    raw = tmp_path / "MNIST" / "raw"
    write_split(raw, "t10k", 10_000)
    path = raw / "t10k-images-idx3-ubyte"
    with pytest.raises(DataError) as err:
        load_raw("mnist", tmp_path, train=False, download=False)
    actual, expected = hashlib.md5(path.read_bytes()).hexdigest(), DATASETS["mnist"].md5[path.name]
    assert str(err.value) == (
        f"{path} is not mnist's t10k-images-idx3-ubyte: its MD5 checksum is {actual}, expected {expected} (a damaged "
        "copy, or another data set's file of the same size). Delete it so it is downloaded again (with "
        "data.download=true), or replace it with a good copy.")


def test_wrong_magic_number(mnist_root, tmp_path):
    raw = copy_mnist(mnist_root, tmp_path, *TEST_FILES)
    path = raw / "t10k-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[2] = 0x0D  # float instead of unsigned byte
    path.write_bytes(data)
    expected = r"t10k-labels-idx1-ubyte is not an IDX file of unsigned bytes.*00 00 0d 01.*expected 00 00 08 01"
    with pytest.raises(DataError, match=expected):
        load_raw("mnist", tmp_path, train=False, download=False)


def test_truncated_file(mnist_root, tmp_path):
    raw = copy_mnist(mnist_root, tmp_path, *TEST_FILES)
    path = raw / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:5008])
    expected = r"t10k-labels-idx1-ubyte is truncated.*expected 10000 bytes of data, found 5000"
    with pytest.raises(DataError, match=expected):
        load_raw("mnist", tmp_path, train=False, download=False)


def test_trailing_bytes(mnist_root, tmp_path):
    raw = copy_mnist(mnist_root, tmp_path, *TEST_FILES)
    path = raw / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\x00\x00\x00")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte has 3 trailing byte\(s\) after the 10000 bytes"):
        load_raw("mnist", tmp_path, train=False, download=False)


# ---------------------------------------------------------------------------
# synthetic files: checks beyond the header (no MD5 known for KMNIST / Fashion-MNIST)


def test_synthetic_kmnist_and_fashion_mnist_load(tmp_path):
    fake_dataset(tmp_path, "kmnist", n_train=12)
    fake_dataset(tmp_path, "fashion-mnist", n_train=12)
    data = load_data(DataConfig(dataset="kmnist", dir=str(tmp_path), val_size=2, train_limit=5, download=False))
    assert (len(data.train), len(data.val), len(data.test)) == (5, 2, 4)
    assert data.classes == ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
    fashion = load_data(DataConfig(dataset="fashion-mnist", dir=str(tmp_path), val_size=0, download=False))
    assert fashion.classes[0] == "T-shirt/top" and fashion.classes[9] == "Ankle boot" and fashion.num_classes == 10


def test_labels_out_of_range(tmp_path):
    raw = fake_dataset(tmp_path, "kmnist", n_train=6, labels=np.array([0, 1, 2, 10, 3, 4]))
    with pytest.raises(DataError) as err:
        load_raw("kmnist", tmp_path, train=True, download=False)
    message = str(err.value)
    assert str(raw / "train-labels-idx1-ubyte") in message
    assert "label 10 at index 3" in message and "[0, 10)" in message


@pytest.mark.parametrize("n_labels", [5, 7])  # fewer labels than images, and more: both are refused
def test_image_and_label_counts_must_agree(tmp_path, n_labels):
    raw = fake_dataset(tmp_path, "fashion-mnist", n_train=6)
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(n_labels))
    with pytest.raises(DataError, match=rf"has 6 images but .*train-labels-idx1-ubyte has {n_labels} labels"):
        load_raw("fashion-mnist", tmp_path, train=True, download=False)


@pytest.mark.parametrize("train", [True, False])
def test_a_file_of_no_images_is_named(tmp_path, train):
    raw = fake_dataset(tmp_path, "kmnist", **({"n_train": 0} if train else {"n_test": 0}))
    name = "train-images-idx3-ubyte" if train else "t10k-images-idx3-ubyte"
    split = "training" if train else "test"
    with pytest.raises(DataError, match=f"{raw / name} holds no images .* the kmnist {split} set"):
        load_data(DataConfig(dataset="kmnist", dir=str(tmp_path), val_size=0, download=False))


def test_images_must_be_28x28(tmp_path):
    fake_dataset(tmp_path, "kmnist", size=(32, 32))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte holds 32x32 images, expected 28x28 for kmnist"):
        load_raw("kmnist", tmp_path, train=True, download=False)


# ---------------------------------------------------------------------------
# train and test files swapped or renamed


@pytest.mark.parametrize("dataset", ["kmnist", "fashion-mnist"])
def test_a_copy_with_its_train_and_test_files_swapped_is_refused_in_one_line(tmp_path, dataset, capsys):
    # It loaded: a run trained on the 10,000 test images and measured its test accuracy on the 60,000 training
    # images, with no word (these datasets' MD5s are not known, and no archive lay beside the files).
    raw = tmp_path / DATASETS[dataset].folder / "raw"
    write_split(raw, "train", 10_000)  # the test set under the training set's names, and the other way round
    write_split(raw, "t10k", 60_000)
    message = (f"{raw / 't10k-images-idx3-ubyte'} holds 60,000 images, more than the 10,000 of {dataset}'s test "
               f"set, and as many as its training set: the train-* and t10k-* files look swapped, or one split's "
               f"file was put under the other's name. Give each file the name of its split ({dataset}'s train-* "
               f"files hold 60,000 images or labels, its t10k-* files 10,000), or delete the misnamed files so "
               f"data.download=true fetches the published ones.")
    cfg = DataConfig(dataset=dataset, dir=str(tmp_path), val_size=5000, train_limit=100, download=False)
    for load in (load_data, load_test):  # train, and evaluate, which reads the test split alone
        with pytest.raises(DataError) as err:
            load(cfg)
        assert str(err.value) == message
    argv = ["train", "--data-dir", str(tmp_path), "--dataset", dataset, "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"mnistlab train: error: {message}\n" and captured.out == ""
    assert not (tmp_path / "run").exists()
    for kind in ("images-idx3", "labels-idx1"):  # named as the message says, the same files load
        (raw / f"train-{kind}-ubyte").rename(raw / "swap")
        (raw / f"t10k-{kind}-ubyte").rename(raw / f"train-{kind}-ubyte")
        (raw / "swap").rename(raw / f"t10k-{kind}-ubyte")
    data = load_data(cfg)
    assert (len(data.train), len(data.val), len(data.test)) == (100, 5000, 10_000)


@pytest.mark.parametrize("train", [True, False])
def test_a_file_holding_more_than_its_published_split_is_refused(tmp_path, train):
    # A file longer than the split (two files joined, another data set's) loaded as this dataset's; as many as
    # the published split, or fewer (a copy cut short on purpose, as the tests' own), still load.
    prefix, published = ("train", 60_000) if train else ("t10k", 10_000)
    raw = tmp_path / "FashionMNIST" / "raw"
    write_split(raw, prefix, published)
    assert len(load_raw("fashion-mnist", tmp_path, train=train, download=False)[0]) == published
    write_split(raw, prefix, published + 1)
    with pytest.raises(DataError) as err:
        load_raw("fashion-mnist", tmp_path, train=train, download=False)
    split = "training" if train else "test"
    assert str(err.value) == (
        f"{raw / f'{prefix}-images-idx3-ubyte'} holds {published + 1:,} images, more than the {published:,} of "
        f"fashion-mnist's {split} set: it is not fashion-mnist's {prefix}-images-idx3-ubyte (another data set's, or "
        "files joined?). Replace it with a good copy, or delete it so data.download=true fetches the published one.")


@pytest.mark.parametrize("train", [True, False])
def test_mnists_file_of_one_split_under_the_others_name_is_called_so_not_corrupted(mnist_root, tmp_path, train):
    # The MD5 check said "is corrupted ... Delete it so it is downloaded again": a download of 47 MB, where
    # the file was whole and a rename was the fix.
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    here, there = ("train", "t10k") if train else ("t10k", "train")
    for kind in ("images-idx3", "labels-idx1"):  # links: the shared files are only read
        (raw / f"{here}-{kind}-ubyte").symlink_to(mnist_root / "MNIST" / "raw" / f"{there}-{kind}-ubyte")
    with pytest.raises(DataError) as err:
        load_raw("mnist", tmp_path, train=train, download=False)
    assert str(err.value).startswith(
        f"{raw / f'{here}-images-idx3-ubyte'} is MNIST's {there}-images-idx3-ubyte (byte for byte), not its "
        f"{here}-images-idx3-ubyte: the train-* and t10k-* files look swapped, or one split's file was put under the "
        "other's name. Give each file the name of its split (mnist's train-* files hold 60,000 ")


def test_an_unreadable_dataset_file_says_how_to_fix_it(tmp_path, monkeypatch):
    # It said "cannot read FILE: Permission denied" and no more. chmod 000 does not stop root (CI), so the
    # refusal is made by the open call itself.
    raw = fake_dataset(tmp_path, "kmnist")
    locked = raw / "t10k-images-idx3-ubyte"

    def refuse(path, *args, **kwargs):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "open", refuse, raising=False)  # the module's name open, before the builtin's
    with pytest.raises(DataError) as err:
        load_raw("kmnist", tmp_path, train=False, download=False)
    assert str(err.value) == (f"cannot read {locked}: Permission denied; make it readable for this user (chmod a+r), "
                              "or pass --data-dir (or set data.dir) to a copy this user may read")


# ---------------------------------------------------------------------------
# missing files and downloads (never the network)


def test_missing_files_without_download_say_how_to_fix_it(tmp_path, download_calls):
    with pytest.raises(DataError) as err:
        load_raw("mnist", tmp_path, train=True, download=False)
    message = str(err.value)
    raw = tmp_path / "MNIST" / "raw"
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message
    assert str(raw) in message
    assert "--data-dir" in message and "MNISTLAB_DATA" in message  # fix 1: point at the files
    assert "network" in message and "data.download=true" in message  # fix 2: allow the download
    assert download_calls == []


def test_only_the_missing_files_are_named(mnist_root, tmp_path):
    copy_mnist(mnist_root, tmp_path, "t10k-images-idx3-ubyte")
    with pytest.raises(DataError, match=r"; missing t10k-labels-idx1-ubyte in"):  # the test split's only
        load_raw("mnist", tmp_path, train=False, download=False)
    expected = r"missing train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-labels-idx1-ubyte in"
    with pytest.raises(DataError, match=expected):  # training tests at the end: all four are needed
        load_raw("mnist", tmp_path, train=True, download=False)


def test_a_failed_download_is_a_data_error(tmp_path, download_calls, monkeypatch):
    with pytest.raises(DataError) as err:
        load_raw("kmnist", tmp_path, train=True, download=True)
    message = str(err.value)
    mirror = torchvision.datasets.KMNIST.mirrors[0]
    assert download_calls == [f"{mirror}train-images-idx3-ubyte.gz"]  # the first archive failed: enough
    assert (f"downloading into {tmp_path / 'KMNIST' / 'raw'} failed (train-images-idx3-ubyte.gz: URLError: "
            f"<urlopen error [Errno -3] Temporary failure in name resolution> from {mirror})") in message
    assert "--data-dir" in message
    assert "data.download is on" in message and "set data.download=true" not in message  # it was on already
    assert list(tmp_path.iterdir()) == []  # the folders the download made are gone again
    # A folder that was there before stays, and so do the archives in it: one that passed its MD5, for the next
    # try, and one that did not (the user's own, or an old download cut short), which is named and neither
    # unpacked nor downloaded over (the network is not even tried).
    raw = tmp_path / "data" / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"part")
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"whole")
    monkeypatch.setattr(torchvision.datasets.KMNIST, "resources", [
        ("train-images-idx3-ubyte.gz", "0" * 32), ("t10k-labels-idx1-ubyte.gz", hashlib.md5(b"whole").hexdigest())])
    with pytest.raises(DataError, match=r"the archives train-images-idx3-ubyte.gz in .*KMNIST/raw do not have the "
                                        r"MD5 torchvision publishes for them, and were left in place"):
        load_raw("kmnist", tmp_path / "data", train=True, download=True)
    assert len(download_calls) == 1
    assert sorted(p.name for p in raw.iterdir()) == ["t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz"]
    (tmp_path / "kept").mkdir()
    with pytest.raises(DataError, match="connect to the network"):
        load_raw("kmnist", tmp_path / "kept", train=True, download=True)
    assert list((tmp_path / "kept").iterdir()) == []


def test_a_download_that_leaves_files_missing_is_reported(tmp_path, download_calls, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", [])  # no archive known: nothing fetched
    with pytest.raises(DataError, match=r"the download finished but files are still missing.*data\.download is on"):
        load_raw("fashion-mnist", tmp_path, train=False, download=True)


def test_a_second_download_into_the_folder_waits_for_the_first(tmp_path):
    import threading
    import time

    from mnistlab.data.datasets import _folder_lock

    held, order = threading.Event(), []

    def first():
        with _folder_lock(tmp_path):
            held.set()
            time.sleep(0.3)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    held.wait()
    with _folder_lock(tmp_path):
        order.append("second in")
    t.join()
    assert order == ["first done", "second in"]


def test_a_download_that_fails_on_this_machine_says_so(tmp_path, download_calls):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(DataError, match=r"NotADirectoryError.*make room in or access to .*afile/MNIST/raw "
                                        r"\(Not a directory\), "
                                        r"or pass another --data-dir"):
        load_raw("mnist", tmp_path / "afile", train=False, download=True)
    assert download_calls == []  # not the network's fault: nothing was fetched


@pytest.mark.parametrize("code, why", [(30, "Read-only file system"), (13, "Permission denied")])
def test_a_data_folder_that_takes_no_new_file_is_named_not_the_hidden_file_of_the_download(
        tmp_path, download_calls, monkeypatch, code, why):
    # It said "make room in or access to .../KMNIST/raw/.t10k-images-idx3-ubyte.gz.tmp-PID": a file that was never
    # made, under a name the user had never seen. (chmod does not stop root, so the refusal is made by open.)
    raw = tmp_path / "KMNIST" / "raw"
    raw.mkdir(parents=True)

    def refuse(path, mode="r", *args, **kwargs):
        if "w" in mode:
            raise OSError(code, why, str(path))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "open", refuse, raising=False)  # atomic_write's, which the download uses
    with pytest.raises(DataError) as err:
        load_raw("kmnist", tmp_path, train=False, download=True)
    assert str(err.value).endswith(f"; or (2) let the download succeed: data.download is on; make room in or access "
                                   f"to {raw} ({why}), or pass another --data-dir, and run again.")
    assert download_calls == [] and list(raw.iterdir()) == []  # this machine's fault: no mirror was asked


def test_a_folder_where_a_dataset_file_belongs_is_named_before_anything_is_fetched(tmp_path, download_calls):
    raw = tmp_path / "KMNIST" / "raw"
    (raw / "train-images-idx3-ubyte").mkdir(parents=True)  # as some zip files unpack
    with pytest.raises(DataError) as err:
        load_raw("kmnist", tmp_path, train=True, download=True)
    message = str(err.value)
    assert "missing train-images-idx3-ubyte (a folder is there), " in message
    assert f"{raw / 'train-images-idx3-ubyte'} is a folder where a file belongs: remove it" in message
    assert "connect to the network" not in message
    assert download_calls == []  # the unpack would fail: the download would be for nothing


def test_archives_without_download_say_what_the_download_would_do_with_them(tmp_path, download_calls, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    published = hashlib.md5(b"gz").hexdigest()
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", [(name + ".gz", published) for name in MNIST_FILES])
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"gz")
    # a training run's message: evaluate cannot switch the download on, so it is not offered there
    with pytest.raises(DataError, match=r"connect to the network and set data.download=true: it checks and unpacks "
                                        r"the archives found there \(t10k-images-idx3-ubyte.gz\) and fetches the "
                                        r"others"):
        load_raw("mnist", tmp_path, train=False, download=False, training=True)
    # The download fetches only the split asked for: the test set's archives are enough, with no training set's
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"gz")
    with pytest.raises(DataError, match=r"set data.download=true: it unpacks the archives found there "
                                        r"\(t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz\) after checking "
                                        r"their MD5, with no network"):
        load_raw("mnist", tmp_path, train=False, download=False, training=True)
    # ... not one with another MD5: the download would leave it unused (and in place)
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"recompressed")
    with pytest.raises(DataError, match=r"mind the archives found there \(t10k-labels-idx1-ubyte.gz\): they do not "
                                        r"have the MD5 torchvision publishes.*unpack it yourself") as err:
        load_raw("mnist", tmp_path, train=False, download=False, training=True)
    assert "it unpacks" not in str(err.value)
    assert download_calls == []


def test_a_file_far_larger_than_any_dataset_file_is_refused_before_it_is_read(tmp_path):
    # A sparse 2 GiB file: reading it whole to check its header allocated all of it first (a MemoryError
    # for a larger one)
    raw = tmp_path / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        with open(raw / name, "wb") as f:
            f.write(b"\x00\x00\x08\x03")
            f.truncate(2 << 30)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte is 2,147,483,648 bytes, more than any IDX file"):
        load_raw("kmnist", tmp_path, train=True, download=False)


def test_a_data_folder_that_cannot_be_looked_into_is_a_data_error(tmp_path):
    # Python 3.11's is_file() raises for a name too long (and a folder that may not be entered): a traceback
    with pytest.raises(DataError, match=r"cannot look into the data folder .*: File name too long"):
        load_raw("mnist", tmp_path / ("x" * 300), train=True, download=False)


def test_a_truncated_dataset_file_says_how_to_get_a_good_one(mnist_root, tmp_path):
    raw = copy_mnist(mnist_root, tmp_path, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    labels = raw / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:8192])  # a download cut short by a full disk
    with pytest.raises(DataError, match=r"is truncated: .*found 8184. Delete it so it is downloaded again"):
        load_raw("mnist", tmp_path, train=False, download=True)


# ---------------------------------------------------------------------------
# where the data lives


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MNISTLAB_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(str(tmp_path / "given")) == tmp_path / "given"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("MNISTLAB_DATA")
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(None) == tmp_path / "xdg" / "mnistlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir(None) == tmp_path / "home" / ".cache" / "mnistlab"


def test_unknown_dataset_lists_the_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown dataset 'emnist'; choose one of: mnist, fashion-mnist, kmnist"):
        load_raw("emnist", tmp_path, train=True, download=False)


@pytest.mark.parametrize("training", [True, False])
def test_missing_files_are_those_the_job_needs(tmp_path, training):
    """The test split is missing. A training run reads both splits (it tests at the end), so all four files are
    asked for; evaluate and predict read the test split only, so its two, and they cannot switch the download
    on (they follow the run's data.download), so that is not offered."""
    with pytest.raises(DataError) as err:
        load_raw("mnist", tmp_path, train=False, download=False, training=training)
    message = str(err.value)
    assert "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte in" in message
    assert ("train-images-idx3-ubyte" in message) is training
    assert ("put the four uncompressed IDX files" in message) is training
    assert ("put the two test-split uncompressed IDX files (t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)"
            in message) is not training
    assert ("set data.download=true" in message) is training


def test_a_training_run_with_only_the_training_files_asks_for_all_four(mnist_root, tmp_path):
    from mnistlab.config import DataConfig

    copy_mnist(mnist_root, tmp_path, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    with pytest.raises(DataError) as err:
        load_data(DataConfig(dir=str(tmp_path), download=False, train_limit=100))
    message = str(err.value)
    assert "missing t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte in" in message
    assert "put the four uncompressed IDX files" in message and "needed only to train" not in message
