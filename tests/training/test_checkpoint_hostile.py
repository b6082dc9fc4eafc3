"""Checkpoints crafted to exhaust memory, time or the stack, and payloads that would save but never load.

Each crafted file has digests that match (an attacker recomputes them): what refuses it must be the reader's
own checks, each one line naming the file, before the memory or time is spent.
"""

import os
import zipfile

import numpy as np
import pytest
import torch

import mnistlab.models
from mnistlab.errors import CheckpointError
from mnistlab.training.checkpoint import (
    FORMAT_VERSION,
    check_fits_data,
    content_digest,
    load_model,
    read_checkpoint,
    save_checkpoint,
    weights_digest,
)
from test_checkpoint import payload


def _forge(path, p, hashable=True):
    """torch.save ``p`` as a checkpoint whose every digest matches, as a crafted one would (one that hashing
    cannot get through, ``hashable=False``, has a content digest of zeros: it must be refused before it)."""
    p = {**p, "format_version": FORMAT_VERSION}
    p["model"] = dict(p["model"])
    p["weights_sha256"] = weights_digest(p["model"])
    p["content_sha256"] = content_digest(p) if hashable else "0" * 64
    torch.save(p, path)
    return path


def _with_extra(tmp_path, value, name="crafted.ckpt", hashable=True):
    _, p = payload()
    return _forge(tmp_path / name, {**p, "extra": value}, hashable)


def test_a_list_that_holds_itself_is_one_error_not_a_recursion_error(tmp_path):
    cycle = []
    cycle.append(cycle)
    with pytest.raises(CheckpointError, match=r"crafted.ckpt is not a mnistlab checkpoint \(its data is nested"):
        read_checkpoint(_with_extra(tmp_path, cycle, hashable=False))


def test_one_list_referenced_many_times_over_is_refused_before_it_is_hashed(tmp_path):
    # 1000**4 values to hash from a file of kilobytes: the hash walked them all (hours).
    shared = [1]
    for _ in range(4):
        shared = [shared] * 1000
    with pytest.raises(CheckpointError, match=r"more than 1,000,000 values, or the same ones many times over"):
        read_checkpoint(_with_extra(tmp_path, shared, hashable=False))


def test_a_repeating_view_of_one_number_is_refused_before_it_is_allocated(tmp_path, monkeypatch):
    # 4 bytes in the file, 1.6 GB once hashing made it contiguous
    big = torch.zeros(1).expand(20_000, 20_000)
    path = _with_extra(tmp_path, big, hashable=False)
    assert path.stat().st_size < 1_000_000
    made = []
    real = torch.Tensor.contiguous
    monkeypatch.setattr(torch.Tensor, "contiguous", lambda t, *a, **k: made.append(t.numel()) or real(t, *a, **k))
    with pytest.raises(CheckpointError, match=r"a tensor of shape \[20000, 20000\] \(1600000000 bytes\) over 4 bytes"):
        read_checkpoint(path)
    assert not any(n >= 20_000 * 20_000 for n in made)


@pytest.mark.parametrize("tensor, kind", [
    (torch.eye(3).to_sparse(), "a sparse_coo tensor"),
    (torch.empty(3, device="meta"), "a tensor without data"),
], ids=["sparse", "meta"])
def test_a_tensor_without_plain_data_outside_the_weights_is_one_error(tmp_path, tensor, kind):
    with pytest.raises(CheckpointError, match=f"crafted.ckpt is not a mnistlab checkpoint \\(it holds {kind}"):
        read_checkpoint(_with_extra(tmp_path, tensor, hashable=False))


def test_a_compressed_zip_entry_is_refused_as_no_file_torch_save_wrote(tmp_path):
    # torch.load inflates deflated entries: 200 MB of zeros are 300 KB deflated (a zip bomb)
    plain = _with_extra(tmp_path, torch.zeros(1_000_000), name="plain.ckpt")
    with zipfile.ZipFile(plain) as z:
        entries = {info: z.read(info) for info in z.infolist()}
    bomb = tmp_path / "bomb.ckpt"
    with zipfile.ZipFile(bomb, "w") as z:
        for info, data in entries.items():
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    assert bomb.stat().st_size < plain.stat().st_size / 20
    with pytest.raises(CheckpointError, match=r"bomb.ckpt is not a checkpoint torch.save wrote: its entry .* is "
                                              r"compressed"):
        read_checkpoint(bomb)


def test_a_checkpoint_of_a_far_larger_model_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    # 100,000 classes: 157 million values to allocate and initialize, for 29 thousand stored
    _, p = payload()
    path = _forge(tmp_path / "many.ckpt", {**p, "num_classes": 100_000, "classes": None})
    built = []
    real = mnistlab.models.build_model
    monkeypatch.setattr(mnistlab.models, "build_model", lambda *a, **k: built.append(k) or real(*a, **k))
    with pytest.raises(CheckpointError, match=r"do not fit the model its config describes .*: that model has "
                                              r"156,913,250 values, the checkpoint's weights 28,940"):
        load_model(path)
    assert built == []


def test_a_checkpoint_that_fits_is_built_as_before(tmp_path):
    model, p = payload()
    loaded = load_model(save_checkpoint(tmp_path / "a.ckpt", p))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("image_size", [28, 28.0])
def test_an_image_size_that_is_no_pair_is_one_error_when_checked_against_the_data(tmp_path, image_size):
    class Data:
        class test:
            images = torch.zeros(2, 1, 28, 28)
        num_classes, dataset = 10, "mnist"

    _, p = payload()
    with pytest.raises(CheckpointError, match=r"x.ckpt lacks what is needed to rebuild its model: .* got 10, 1 and 28"):
        check_fits_data({**p, "image_size": image_size}, Data, "x.ckpt")


def test_a_bare_state_dict_is_named_as_such_with_what_to_do(tmp_path):
    model, _ = payload()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"weights.pt holds bare weights \(torch.save\(model.state_dict\(\)\)\), "
                                              r"not a mnistlab checkpoint: .*build_model"):
        read_checkpoint(tmp_path / "weights.pt")


def test_errors_of_a_model_loaded_by_path_name_the_file(tmp_path):
    _, p = payload()
    path = _forge(tmp_path / "odd.ckpt", {**p, "image_size": 28})
    with pytest.raises(CheckpointError, match=r"odd.ckpt lacks what is needed to rebuild its model"):
        load_model(path)


@pytest.mark.parametrize("value", [np.float64(0.5), np.arange(3)], ids=["numpy-number", "numpy-array"])
def test_save_refuses_what_the_weights_only_reader_would_refuse_and_writes_nothing(tmp_path, value):
    # The file was written, and every later load refused it as one that "could run code".
    _, p = payload()
    path = tmp_path / "a.ckpt"
    with pytest.raises(TypeError, match=r"save_checkpoint: payload\['metrics'\] holds what a checkpoint cannot "
                                        r"\(.*numpy.*\).*float\(x\) for a NumPy number"):
        save_checkpoint(path, {**p, "metrics": {"val_accuracy": value}})
    assert os.listdir(tmp_path) == []


def test_save_keeps_what_the_weights_only_reader_takes(tmp_path):
    from collections import OrderedDict

    _, p = payload()
    extra = {"state": OrderedDict(a=1), "dtype": torch.float16, "size": torch.Size([2]), "z": 1j, "b": b"x",
             "nested": [(1, 2.0), {"x": torch.ones(2)}], "none": None}
    stored = read_checkpoint(save_checkpoint(tmp_path / "a.ckpt", {**p, "extra": extra}))
    assert stored["extra"]["dtype"] == torch.float16 and torch.equal(stored["extra"]["nested"][1]["x"], torch.ones(2))


def test_a_device_is_never_replaced_by_a_checkpoint(tmp_path, monkeypatch):
    # atomic_write's rename replaced /dev/null itself with a regular file (as root, who may write /dev). A fifo
    # stands in for the device here: the same kind of file, and no test may touch /dev.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    _, p = payload()
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*pipe: not a regular file"):
        save_checkpoint(fifo, p)
    assert fifo.is_fifo()


def test_an_init_from_whose_config_describes_a_far_larger_model_is_refused_when_read(tmp_path):
    # --init-from builds the model the checkpoint's config describes: hidden = [10**6] * 4 on a cnn's weights took
    # 35 s and gigabytes before the weights were found not to fit.
    from mnistlab.training.finetune import read_init_checkpoint

    _, p = payload()
    config = {**p["config"], "model": {**p["config"]["model"], "hidden": [10**6] * 4}}
    path = _forge(tmp_path / "wide.ckpt", {**p, "config": config})
    with pytest.raises(CheckpointError, match=r"^finetune.init_from: the weights from cnn do not fit the model its "
                                              r"config describes .*that model has [\d,]+ values, the checkpoint's"):
        read_init_checkpoint(path)
    good = _forge(tmp_path / "good.ckpt", p)
    assert read_init_checkpoint(good)[0] == good
