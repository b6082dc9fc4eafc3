"""Checkpoint I/O: round trip, atomic writes, and every kind of bad file."""

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from mnistlab.config import Config, config_to_dict
from mnistlab.errors import CheckpointError
from mnistlab.models import build_model
from mnistlab.training.checkpoint import (
    FORMAT_VERSION,
    checkpoint_file,
    content_digest,
    load_model,
    load_weights,
    read_checkpoint,
    resume_file,
    save_checkpoint,
    weights_digest,
)


def payload(name="cnn", num_classes=10, **opts):
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes, mean=(0.13,), std=(0.31,), **opts)
    cfg = Config()
    cfg_dict = config_to_dict(cfg)
    cfg_dict["model"]["name"] = name
    cfg_dict["model"].update(opts)
    return model, {
        "model_name": name,
        "config": cfg_dict,
        "model": model.state_dict(),
        "num_classes": num_classes,
        "in_channels": 1,
        "image_size": [28, 28],
        "classes": [str(i) for i in range(num_classes)],
        "dataset": "mnist",
        "epoch": 1,
    }


def test_round_trip_rebuilds_the_model_from_the_registry(tmp_path):
    model, p = payload()
    path = save_checkpoint(tmp_path / "a.ckpt", p)
    loaded = load_model(path)
    x = torch.rand(3, 1, 28, 28)
    model.eval()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    # The same weights, loaded channels-last (the faster layout for this model on a CPU): the
    # convolutions add in another order, so the outputs agree to float rounding, not bit for bit.
    assert loaded.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)
    assert loaded.classes == [str(i) for i in range(10)]
    assert torch.allclose(loaded.mean, torch.tensor(0.13))  # normalization travels with the weights
    assert not loaded.training


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    _, p = payload()
    path = save_checkpoint(tmp_path / "a.ckpt", p)
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint(path, p)
    assert path.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["a.ckpt"]  # no temp file left behind


def test_truncated_and_random_files_are_refused(tmp_path):
    _, p = payload()
    good = save_checkpoint(tmp_path / "a.ckpt", p).read_bytes()
    truncated = tmp_path / "t.ckpt"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="t.ckpt is not a readable checkpoint"):
        read_checkpoint(truncated)
    # A complete zip whose data was cut inside: still a CheckpointError.
    cut = tmp_path / "c.ckpt"
    cut.write_bytes(good[:100] + bytes(len(good) - 100))
    with pytest.raises(CheckpointError, match="c.ckpt"):
        read_checkpoint(cut)
    rand = tmp_path / "r.ckpt"
    rand.write_bytes(os.urandom(5000))
    with pytest.raises(CheckpointError, match="r.ckpt is not a readable checkpoint"):
        read_checkpoint(rand)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "none.ckpt")


def test_an_unreadable_checkpoint_says_why(tmp_path, monkeypatch):
    # chmod 000 does not stop root (CI), so the refusal is made by the open call itself
    _, p = payload()
    path = save_checkpoint(tmp_path / "locked.ckpt", p)
    real_open = Path.open

    def refuse(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*locked.ckpt: Permission denied$"):
        read_checkpoint(path)


def test_flipped_weight_byte_fails_the_sha256(tmp_path):
    _, p = payload()
    path = save_checkpoint(tmp_path / "a.ckpt", p)
    # Rewrite the archive with one weight changed but the old digest kept.
    stored = torch.load(path, weights_only=True)
    key = next(iter(stored["model"]))
    stored["model"][key].view(-1)[0] += 1.0
    torch.save(stored, path)
    with pytest.raises(CheckpointError, match="SHA-256 of its weights does not match"):
        read_checkpoint(path)


@pytest.mark.parametrize("reinterpret", [
    lambda t: t.reshape(-1),  # another shape, the same bytes (a 2x4 moment read as 8 values)
    lambda t: t.view(torch.int32),  # another dtype, the same bytes (float32 read as int32)
], ids=["shape", "dtype"])
def test_the_same_bytes_under_another_shape_or_dtype_fail_the_sha256(tmp_path, reinterpret):
    # Both digests hash each tensor's dtype and shape with its bytes: the same bytes under another view
    # are another tensor, and would load into a model (or an optimizer) as something else.
    _, p = payload()
    p["optimizer"] = {"state": {0: {"exp_avg": torch.arange(8, dtype=torch.float32).reshape(2, 4)}}}
    path = save_checkpoint(tmp_path / "a.ckpt", p)
    stored = torch.load(path, weights_only=True)
    key = next(k for k, v in stored["model"].items() if v.dtype == torch.float32 and v.dim() > 1)
    weight = stored["model"][key]
    changed = reinterpret(weight)
    assert changed.numpy().tobytes() == weight.numpy().tobytes()
    stored["model"][key] = changed
    torch.save(stored, path)
    with pytest.raises(CheckpointError, match="SHA-256 of its weights does not match"):
        read_checkpoint(path)
    # the same outside the weights: the content digest
    stored["model"][key] = weight
    moment = stored["optimizer"]["state"][0]["exp_avg"]
    stored["optimizer"]["state"][0]["exp_avg"] = reinterpret(moment)
    torch.save(stored, path)
    with pytest.raises(CheckpointError, match="SHA-256 of its training state"):
        read_checkpoint(path)
    stored["optimizer"]["state"][0]["exp_avg"] = moment  # and put back, it loads: the check is not over-eager
    torch.save(stored, path)
    assert torch.equal(read_checkpoint(path)["optimizer"]["state"][0]["exp_avg"], moment)


def test_newer_format_is_refused(tmp_path):
    _, p = payload()
    path = save_checkpoint(tmp_path / "a.ckpt", p)
    stored = torch.load(path, weights_only=True)
    stored["format_version"] = FORMAT_VERSION + 1
    torch.save(stored, path)
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION + 1}, newer than this mnistlab reads"):
        read_checkpoint(path)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    _, p = payload()
    p["model"] = dict(p["model"])
    p["format_version"] = FORMAT_VERSION
    p["weights_sha256"] = weights_digest(p["model"])
    p["extra"] = _Exploit(str(marker))
    path = tmp_path / "evil.ckpt"
    torch.save(p, path)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.ckpt.*could run code"):
        load_model(path)
    assert not marker.exists()
    # A bare pickle (not even a torch zip) is refused the same way, and runs nothing.
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(CheckpointError):
        load_model(raw)
    assert not marker.exists()


def test_a_damaged_pickle_is_reported_as_damaged_not_as_code(tmp_path):
    # An unknown opcode is what a flipped byte in data.pkl gives: torch's weights-only unpickler refuses
    # it like an object, but the message must say what is wrong with the file, without torch's advice.
    _, p = payload()
    path = save_checkpoint(tmp_path / "a.ckpt", p)
    with zipfile.ZipFile(path) as z:
        entries = {info: z.read(info) for info in z.infolist()}
    with zipfile.ZipFile(path, "w") as z:
        for info, data in entries.items():
            if info.filename.endswith("data.pkl"):
                data = data[:2] + b"\xe8" + data[3:]  # 0xe8 is no pickle opcode
            z.writestr(info, data)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert "is not a readable checkpoint (its pickled data is damaged: Unsupported operand 232)" in message
    assert "could run code" not in message and "Please" not in message


def test_the_refusal_names_the_object_without_torchs_advice_to_allow_it(tmp_path):
    _, p = payload()
    p["extra"] = _Exploit(str(tmp_path / "pwned"))
    path = tmp_path / "evil.ckpt"
    torch.save(p, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    # pickle names open by its module: io on Python 3.10-3.12, _io from 3.13
    name = f"{open.__module__}.open"
    assert f"could run code (Unsupported global: GLOBAL {name} was not an allowed global by default)" in str(err.value)
    assert "add_safe_globals" not in str(err.value)


class _SystemExploit:
    """Unpickling this would run a shell command: os.system, whose module torch blocks by name."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_global_from_a_blocked_module_is_refused_as_code_without_torchs_advice(tmp_path):
    # torch's refusal of os.system has no "WeightsUnpickler error:" marker: its first line, the advice to
    # load with weights_only=False, had been taken for the cause, and the file called damaged.
    marker = tmp_path / "pwned"
    _, p = payload()
    p["extra"] = _SystemExploit(str(marker))
    path = tmp_path / "evil.ckpt"
    torch.save(p, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert "could run code (Trying to load unsupported GLOBAL posix.system whose module posix is blocked)" in message \
        or "could run code (Trying to load unsupported GLOBAL os.system whose module os is blocked)" in message, message
    assert "weights_only set to False" not in message and "damaged" not in message
    assert not marker.exists()


def test_what_is_there_but_no_file_is_named_as_such(tmp_path):
    # /dev/null and a pipe were reported as not existing; a last.ckpt that is a folder as a run folder without
    # best.ckpt (read_checkpoint takes a folder for a run folder)
    with pytest.raises(CheckpointError, match="checkpoint /dev/null is not a regular file"):
        read_checkpoint("/dev/null")
    (tmp_path / "last.ckpt").mkdir()
    with pytest.raises(CheckpointError, match=r"last.ckpt is a folder, not a checkpoint"):
        resume_file(tmp_path)


def test_sets_hash_alike_whatever_their_iteration_order():
    # A set's order depends on its insertion history (and for strings on the process's hash seed), so a
    # callback state holding one must not make last.ckpt's digest fail to match in the next process.
    first, second = {1}, {9}
    first.add(9)
    second.add(1)
    assert list(first) != list(second)
    assert content_digest({"callbacks": {"Tags": first}}) == content_digest({"callbacks": {"Tags": second}})
    assert content_digest({"callbacks": {"Tags": {1, 9}}}) != content_digest({"callbacks": {"Tags": {1, 8}}})


def test_another_architecture_or_class_count_is_a_clear_error(tmp_path):
    _, p = payload("cnn", num_classes=10)
    path = save_checkpoint(tmp_path / "a.ckpt", p)
    stored = read_checkpoint(path)
    other = build_model("cnn", num_classes=5)
    from mnistlab.training.checkpoint import load_weights

    with pytest.raises(CheckpointError, match="do not fit this model .*shapes differ: classifier"):
        load_weights(other, stored["model"])
    with pytest.raises(CheckpointError, match="missing: "):
        load_weights(build_model("lenet5"), stored["model"])


def test_checkpoints_are_plain_zip_archives_without_code(tmp_path):
    _, p = payload()
    path = save_checkpoint(tmp_path / "a.ckpt", p)
    assert zipfile.is_zipfile(path)
    stored = read_checkpoint(path)
    assert stored["format_version"] == FORMAT_VERSION
    assert stored["weights_sha256"] == weights_digest(stored["model"])


def test_batch_norm_models_round_trip(tmp_path):
    # num_batches_tracked is a 0-dim int64 tensor: the digest must handle it.
    model, p = payload("vgg", channels=[4, "M"], hidden=[8], batch_norm=True)
    path = save_checkpoint(tmp_path / "bn.ckpt", p)
    loaded = load_model(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    x = torch.rand(2, 1, 28, 28)
    model.eval()
    # close, not equal: load_model puts the models marked channels-last on the CPU (vgg too) in that layout,
    # whose convs round differently
    torch.testing.assert_close(loaded(x), model(x))


def test_a_cropped_model_round_trips_with_its_crop(tmp_path):
    model, p = payload("fast", channels=[4, 8], crop=2)
    loaded = load_model(save_checkpoint(tmp_path / "crop.ckpt", p))
    assert loaded.crop == 2 and loaded.num_features == 8 * 4 * 4  # 28 -> 24 -> conv 20 -> pool 10 -> conv 8 -> pool 4
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=1e-5, atol=1e-6)
    # The weights know their crop: a config that lost it (a model built by hand and trained through the
    # Python API under a config without model.crop) still rebuilds the model the weights were trained in.
    del p["config"]["model"]["crop"]
    assert load_model(save_checkpoint(tmp_path / "lost.ckpt", p)).crop == 2


@pytest.mark.parametrize("ours, theirs", [(1, 2), (0, 2), (2, 0)])
def test_weights_are_refused_by_a_model_with_another_crop(ours, theirs):
    # crop 1 and 2 give the fast net the same 4x4 final map, so every tensor has the same shape: only the
    # stored crop tells the weights were trained on other pixels.
    _, p = payload("fast", channels=[4, 8], crop=theirs)
    model = build_model("fast", channels=[4, 8], crop=ours)
    with pytest.raises(CheckpointError, match=rf"trained on images cropped by {theirs} pixels a side \(model.crop = "
                                              rf"{theirs}\), but this model crops {ours} .*set model.crop = {theirs}"):
        load_weights(model, p["model"])


def test_a_run_folder_means_its_best_checkpoint_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.ckpt").write_bytes(b"")  # a run cut inside its first epoch: no best.ckpt yet
    with pytest.raises(CheckpointError, match=r"run folder .*run has no best.ckpt .*last.ckpt holds where it stopped"):
        read_checkpoint(run)
    with pytest.raises(CheckpointError, match=r"has no ema.ckpt \(was the run trained with \[ema\] enabled\?\)"):
        checkpoint_file(run, ema=True)
    (run / "best.ckpt").write_bytes(b"")
    assert checkpoint_file(run) == run / "best.ckpt" and checkpoint_file(run / "last.ckpt") == run / "last.ckpt"


def test_an_ensemble_member_given_twice_is_refused(tmp_path, monkeypatch):
    from mnistlab.errors import ConfigError
    from mnistlab.training.ensemble import evaluate_ensemble

    run = tmp_path / "run"
    run.mkdir()
    (run / "best.ckpt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"run/best.ckpt is given twice \(also as run/best.ckpt\)") as err:
        evaluate_ensemble(["run/best.ckpt", str(run)])
    assert "each member must be another model" in str(err.value)


def test_weights_that_are_nan_or_integers_are_no_model(tmp_path):
    # evaluate printed 9.80%, predict "nan%", and one such member poisoned an ensemble, all with exit status 0.
    _, p = payload()
    p["model"] = {k: v * float("nan") if v.is_floating_point() else v for k, v in p["model"].items()}
    with pytest.raises(CheckpointError, match=r"the weights from cnn hold NaN or infinite values \(mean, std, features"):
        load_model(save_checkpoint(tmp_path / "nan.ckpt", p))
    _, p = payload()
    p["model"] = {k: v.round().long() if v.is_floating_point() else v for k, v in p["model"].items()}
    with pytest.raises(CheckpointError, match="the weights from cnn are not floating point .* is torch.int64"):
        load_model(save_checkpoint(tmp_path / "int.ckpt", p))


def test_a_bit_flipped_outside_the_weights_fails_the_content_sha256(tmp_path):
    _, p = payload()
    p["optimizer"] = {"state": {0: {"exp_avg": torch.full((4,), 7.3e-4)}}, "param_groups": [{"lr": 0.1}]}
    p["epoch"] = 3
    path = save_checkpoint(tmp_path / "a.ckpt", p)
    assert read_checkpoint(path)["epoch"] == 3
    stored = torch.load(path, weights_only=True)
    stored["optimizer"]["state"][0]["exp_avg"][1] = 2.5e35  # torch's zip reader checks no CRC: this loaded
    torch.save(stored, path)
    with pytest.raises(CheckpointError, match="a.ckpt is corrupted: the SHA-256 of its training state"):
        read_checkpoint(path)
    stored["optimizer"]["state"][0]["exp_avg"][1] = 7.3e-4
    stored["epoch"] = 4  # a number outside any tensor counts too
    torch.save(stored, path)
    with pytest.raises(CheckpointError, match="training state"):
        read_checkpoint(path)
    del stored["content_sha256"]  # a checkpoint from before the digest: the weights' digest alone, as then
    torch.save(stored, path)
    assert read_checkpoint(path)["epoch"] == 4


def test_a_legacy_torch_file_and_a_dangling_link_are_named_as_such(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="old.pt is a torch checkpoint in the legacy .*non-zip.* format"):
        read_checkpoint(tmp_path / "old.pt")
    (tmp_path / "loop.ckpt").symlink_to(tmp_path / "loop.ckpt")
    with pytest.raises(CheckpointError, match="loop.ckpt is a symbolic link to nothing readable"):
        read_checkpoint(tmp_path / "loop.ckpt")


def test_best_and_top_k_files_hold_the_model_not_the_training_state(mnist_root, tmp_path):
    # They cannot be resumed from (written while the epoch's callbacks decide), yet they held the optimizer's
    # moments, the RNG and the callbacks' states, early stopping's copy of the best weights with them: about 4x
    # the weights, written at every new best.
    from mnistlab.config import apply_overrides
    from mnistlab.training import train
    from mnistlab.training.checkpoint import load_model

    cfg = apply_overrides(Config(), [
        f"data.dir={mnist_root}", "data.train_limit=300", "data.val_size=100", "model.name=cnn", "model.width=0.5",
        "train.threads=1", "train.epochs=1", "train.progress=false", "tensorboard.enabled=false",
        "early_stopping.criterion=patience", "early_stopping.restore_best_weights=true", "checkpoint.save_top_k=1",
        "checkpoint.filename=\"top.ckpt\"",
    ])
    run = train(cfg, out=tmp_path / "run", quiet=True, report=False).run_dir
    weights = sum(t.numel() * t.element_size() for t in read_checkpoint(run / "last.ckpt")["model"].values())
    for name in ("best.ckpt", "top.ckpt"):
        stored = read_checkpoint(run / name)
        assert not {"optimizer", "rng", "callbacks", "ema"} & set(stored), name
        assert stored["resumable"] is False and stored["epoch"] == 1
        assert (run / name).stat().st_size < 1.3 * weights + 50_000, name  # the weights and a little metadata
        load_model(run / name)  # a model to use
    assert (run / "last.ckpt").stat().st_size > 3 * weights  # the training state is last.ckpt's


def test_save_checkpoint_refuses_a_nul_in_the_path_and_a_payload_without_weights(tmp_path):
    from mnistlab.training.checkpoint import CheckpointWriteError

    # a bare ValueError ("embedded null byte") from the temporary file's cleanup
    with pytest.raises(CheckpointWriteError, match="a path cannot hold a NUL character"):
        save_checkpoint(tmp_path / "a\x00b.ckpt", {"model": {"w": torch.zeros(1)}})
    for payload in ({"weights": {}}, [("model", {})]):  # a bare KeyError 'model', or a TypeError about indices
        with pytest.raises(TypeError, match="payload must be a dict holding 'model'"):
            save_checkpoint(tmp_path / "x.ckpt", payload)
    assert list(tmp_path.iterdir()) == []
