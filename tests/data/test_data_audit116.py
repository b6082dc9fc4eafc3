"""The data layer, audit 116: IDX headers whose shape no array can have, a NUL in the data folder, the gzip hint's
advice, load_test's argument checks (as load_data's), and to_float / iterate_batches given floats."""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from mnistlab.cli import main
from mnistlab.config import Config, DataConfig
from mnistlab.data import Split, iterate_batches, load_data, load_raw, load_test, num_batches, read_idx, to_float
from mnistlab.errors import DataError


@pytest.mark.parametrize("dims", [(0, 2**32 - 1, 2**32 - 1), (2**32 - 1, 2**32 - 1, 0), (2**32 - 1, 0, 2**32 - 1)])
def test_an_idx_header_with_a_zero_beside_huge_dims_is_a_data_error(tmp_path, dims):
    # It announces no values, so the size checks pass; NumPy's reshape then raised ValueError ("array is too big")
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(bytes((0, 0, 8, 3)) + struct.pack(">3I", *dims))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte has a damaged IDX header: it announces "
                                        r"\d+ x \d+ x \d+ values, a shape no array can have"):
        read_idx(path, 3)


def test_such_a_test_file_in_a_copy_of_mnist_is_a_data_error_that_says_what_to_do(mnist_root, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    shutil.copy(mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", raw)
    (raw / "t10k-images-idx3-ubyte").write_bytes(bytes((0, 0, 8, 3)) + struct.pack(">3I", 0, 2**32 - 1, 2**32 - 1))
    with pytest.raises(DataError, match="damaged IDX header.*Delete it so it is downloaded again"):
        load_raw("mnist", tmp_path, train=False, download=False)


def test_a_nul_in_the_data_folder_is_one_error_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    # TOML's "\u0000" reaches data.dir; os.stat's "embedded null byte" (ValueError) was a traceback from the
    # missing-file error's look around the folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nul.toml").write_text('[data]\ndir = "a\\u0000b"\ndownload = false\n')
    code = main(["train", "--config", "nul.toml", "--set", "train.epochs=1", "--no-report", "--quiet", "--out", "r"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("mnistlab train: error: data.dir ") and "holds a NUL character" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    for load in (load_data, load_test):
        with pytest.raises(DataError, match="holds a NUL character"):
            load(DataConfig(dir="a\0b", download=False))
    with pytest.raises(DataError, match="the data folder 'a\\\\x00b' holds a NUL character"):
        load_raw("mnist", "a\0b", train=False, download=False)


def test_the_advice_for_a_gzip_compressed_idx_file_works_as_given(mnist_root, tmp_path):
    # It said "uncompress it with gunzip", which refuses a name without .gz ("unknown suffix -- ignored")
    good = mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    path = tmp_path / good.name
    path.write_bytes(gzip.compress(good.read_bytes()))
    with pytest.raises(DataError, match="gzip-compressed") as info:
        read_idx(path, 1)
    command = str(info.value).split("in its folder: ", 1)[1].split(")", 1)[0]
    subprocess.run(command, shell=True, cwd=tmp_path, check=True)
    assert torch.equal(read_idx(path, 1), read_idx(good, 1))


def test_load_test_checks_its_arguments_as_load_data_does(mnist_root):
    with pytest.raises(TypeError, match=r"load_test\(\) takes a DataConfig, got a whole Config: .*\(cfg.data\)"):
        load_test(Config())
    with pytest.raises(TypeError, match=r"load_test\(\) takes a DataConfig .*got str"):
        load_test("mnist")
    scoring = load_test(DataConfig(dir=str(mnist_root), download=False), device="auto")  # torch's RuntimeError
    assert len(scoring.test) == 10_000 and scoring.test.images.dtype == torch.uint8


def test_to_float_refuses_float_images_instead_of_dividing_the_callers_tensor():
    images = torch.full((2, 1, 2, 2), 0.5)
    with pytest.raises(ValueError, match="to_float takes uint8 images .*got torch.float32"):
        to_float(images)
    assert torch.equal(images, torch.full((2, 1, 2, 2), 0.5))  # it was divided by 255 in place
    assert to_float(torch.tensor([255], dtype=torch.uint8)).tolist() == [1.0]


def test_a_float_batch_size_or_start_is_refused_at_the_call():
    split = Split(torch.zeros(5, 1, 2, 2, dtype=torch.uint8), torch.arange(5))
    for batch_size in (2.0, 2.5, True):
        with pytest.raises(TypeError, match="batch_size must be an integer"):
            num_batches(5, batch_size)
        with pytest.raises(TypeError, match="batch_size must be an integer"):
            iterate_batches(split, batch_size)  # a TypeError of range() at the first batch, or 5 batches of one
    with pytest.raises(TypeError, match="start must be an integer batch number, got 1.0"):
        iterate_batches(split, 2, start=1.0)
    assert [y.tolist() for _, y in iterate_batches(split, np.int64(2), start=np.int64(1))] == [[2, 3], [4]]
