"""The missing-file error points at the dataset's files under other spellings (Kaggle's train-images.idx3-ubyte),
which it reported only as missing."""

import pytest

from mnistlab.data import load_raw
from mnistlab.errors import DataError


def test_files_spelled_with_dots_are_pointed_at(mnist_root, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images.idx3-ubyte").write_bytes((mnist_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes())
    (raw / "t10k-labels.idx1-ubyte").write_bytes((mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes())
    with pytest.raises(DataError, match=r"holds t10k-images.idx3-ubyte \(for t10k-images-idx3-ubyte\), "
                                        r"t10k-labels.idx1-ubyte \(for t10k-labels-idx1-ubyte\), names mnistlab "
                                        r"\(as torchvision\) does not read: if they are mnist's files, rename them"):
        load_raw("mnist", tmp_path, train=False, download=False)


def test_in_the_data_folder_itself_they_are_to_be_moved(tmp_path):
    (tmp_path / "train-labels.idx1-ubyte").write_bytes(b"")
    with pytest.raises(DataError, match=r"holds train-labels.idx1-ubyte \(for train-labels-idx1-ubyte\), .* put them "
                                        r"in \S+MNIST/raw under those names"):
        load_raw("mnist", tmp_path, train=True, download=False)
