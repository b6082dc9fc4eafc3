"""Mutation audit 150 of mnistlab/training/checkpoint.py: tests that kill the mutants the other tests let live.

Each test names the mutant it kills (a dropped check, a loosened bound, a changed constant) and asserts the
behaviour a user relies on, worked out by hand.
"""

import os
import stat

import pytest
import torch

from mnistlab.errors import CheckpointError
from mnistlab.training.checkpoint import (
    checkpoint_file,
    content_digest,
    load_model,
    load_weights,
    read_checkpoint,
    resume_file,
    save_checkpoint,
    weights_digest,
)
from test_checkpoint import payload
from test_checkpoint_hostile import _with_extra


def _forge_version(path, version):
    """A checkpoint with every digest matching (as a crafted one has) and the format version ``version``."""
    _, p = payload()
    p = {**p, "format_version": version, "model": dict(p["model"])}
    p["weights_sha256"] = weights_digest(p["model"])
    p["content_sha256"] = content_digest(p)
    torch.save(p, path)
    return path


@pytest.mark.parametrize("version", [0, -3, True], ids=["zero", "negative", "bool"])
def test_a_format_version_below_one_or_a_bool_is_refused(tmp_path, version):
    # mutants: "version < 1" as "version < 0"; the bool check dropped (True == 1 read as format 1)
    path = _forge_version(tmp_path / "v.ckpt", version)
    with pytest.raises(CheckpointError, match=rf"v.ckpt is not a mnistlab checkpoint \(its format version is "
                                              rf"{version!r}\)"):
        read_checkpoint(path)


def test_the_training_state_digest_leaves_the_weights_to_their_own(tmp_path):
    # mutant: "model" dropped from _UNHASHED. The files on disk hold a content digest without the weights: one
    # that covered them would call every checkpoint written before it corrupted.
    model, p = payload()
    p = {**p, "format_version": 1, "weights_sha256": "x"}
    other = {k: torch.zeros_like(v) for k, v in p["model"].items()}
    assert content_digest(p) == content_digest({**p, "model": other})
    assert content_digest(p) != content_digest({**p, "epoch": 2})  # and it does cover the rest


def test_the_data_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    # mutant: the file's flush and fsync dropped; a power cut after the rename could leave an empty checkpoint
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", stat.S_ISREG(os.fstat(fd).st_mode)))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "replace",
                        lambda a, b: events.append(("replace", os.path.getsize(a))) or real_replace(a, b))
    _, p = payload()
    path = save_checkpoint(tmp_path / "a.ckpt", p)
    size = path.stat().st_size
    # the regular (temporary) file is synced first, then renamed with all its bytes, then its folder is synced
    assert events == [("fsync", True), ("replace", size), ("fsync", False)]


def test_a_file_name_of_255_bytes_is_written(tmp_path):
    # mutant: the temporary name kept one byte too many of the name (".NAME.tmp-PID" of 256 bytes: ENAMETOOLONG)
    name = "a" * 250 + ".ckpt"
    assert len(name.encode()) == 255
    _, p = payload()
    path = save_checkpoint(tmp_path / name, p)
    assert read_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == [name]


def test_one_tensor_stored_once_and_referenced_many_times_is_refused(tmp_path):
    # mutant: the bound on the bytes hashing reads raised from 4 to 40 times the file's size. 1 MB stored once and
    # referenced 10 times is 10 MB to hash from a file of about 1.1 MB: over 4 x 1.1 MB + 1 MiB.
    shared = torch.zeros(250_000)
    path = _with_extra(tmp_path, [shared] * 10)
    assert path.stat().st_size < 1_300_000
    with pytest.raises(CheckpointError, match=r"crafted.ckpt is not a mnistlab checkpoint \(its tensors take "
                                              r"[\d,]+ bytes or more, from a file of"):
        read_checkpoint(path)


def test_an_ema_file_of_a_run_resumed_with_ema_off_is_not_taken_for_the_run(tmp_path):
    # mutant: the check of the run's config.toml dropped: a stale weight average was evaluated as the run's
    run = tmp_path / "run"
    run.mkdir()
    (run / "ema.ckpt").write_bytes(b"x")
    (run / "config.toml").write_text("[ema]\nenabled = false\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"was resumed with \[ema\] off"):
        checkpoint_file(run, ema=True)
    assert checkpoint_file(run / "ema.ckpt", ema=True) == run / "ema.ckpt"  # named, it is used
    (run / "config.toml").write_text("[ema]\nenabled = true\n", encoding="utf-8")
    assert checkpoint_file(run, ema=True) == run / "ema.ckpt"


def test_a_dangling_link_that_is_no_last_ckpt_is_refused_for_resume(tmp_path):
    # mutant: "path.exists() or path.is_symlink()" as "path.exists()": a link to nothing got past the name check
    link = tmp_path / "best.ckpt"
    link.symlink_to(tmp_path / "gone.ckpt")
    with pytest.raises(CheckpointError, match=r"best.ckpt is not a last.ckpt"):
        resume_file(link)


def test_a_negative_stored_crop_is_named_as_damage_not_as_a_crop_to_set(tmp_path):
    # mutant: the "theirs < 0" branch dropped: the advice was "set model.crop = -1", which no model accepts
    model, p = payload()
    state = {**p["model"], "crop_pixels": torch.tensor(-1)}
    with pytest.raises(CheckpointError, match=r"record a crop of -1 pixels a side: damaged, or not written by"):
        load_weights(model, state)


def test_save_leaves_the_callers_payload_as_it_was(tmp_path):
    # mutant: payload = dict(payload) dropped: the caller's dict gained the digests and lost its own state dict
    model, p = payload()
    keys, state = set(p), p["model"]
    save_checkpoint(tmp_path / "a.ckpt", p)
    assert set(p) == keys and p["model"] is state


def test_stored_class_names_of_another_count_than_the_outputs_are_not_used(tmp_path):
    # mutant: the length check dropped: 3 names for 10 outputs, and model.classes[7] an IndexError
    _, p = payload()
    model = load_model(save_checkpoint(tmp_path / "a.ckpt", {**p, "classes": ["a", "b", "c"]}))
    assert model.classes == [str(i) for i in range(10)]
    named = load_model(save_checkpoint(tmp_path / "b.ckpt", {**p, "classes": list("abcdefghij")}))
    assert named.classes == list("abcdefghij")


def test_loading_a_model_leaves_the_global_random_stream_where_it_was(tmp_path):
    # mutant: the fork_rng around build_model dropped: its initial weights moved a notebook's random stream
    _, p = payload()
    path = save_checkpoint(tmp_path / "a.ckpt", p)
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    load_model(path)
    assert torch.equal(torch.rand(5), expected)


def test_weights_converted_as_a_whole_to_floating_point_keep_their_crop(tmp_path):
    # Bug (found by the mutant that read a floating-point crop_pixels): {k: v.double()} of a crop=2 model's state
    # held crop_pixels 2.0, read as no crop: loading it into a crop=2 model was refused ("set model.crop = 0").
    model, _ = payload("cnn", crop=2)
    state = {k: v.double() for k, v in model.state_dict().items()}
    fresh, _ = payload("cnn", crop=2)
    torch.nn.init.zeros_(next(fresh.parameters()))
    load_weights(fresh, state)
    x = torch.rand(3, 1, 28, 28)
    assert fresh.crop == 2 and torch.equal(fresh.eval()(x), model.eval()(x))
    with pytest.raises(CheckpointError, match=r"cropped by 2 pixels a side \(model.crop = 2\), but this model crops 0"):
        load_weights(payload("cnn")[0], state)


def test_a_stored_image_size_of_three_sides_is_refused_naming_the_file(tmp_path):
    # mutant: the len(size) == 2 check dropped: the error became the builder's, without the file's name
    _, p = payload()
    with pytest.raises(CheckpointError, match=r"three.ckpt lacks what is needed to rebuild its model: .* got 10, 1 "
                                              r"and \[28, 28, 28\]"):
        load_model(save_checkpoint(tmp_path / "three.ckpt", {**p, "image_size": [28, 28, 28]}))
