"""Bad input at the command line: one clear error line, exit status 2, and nothing written or lost.

The unit tests of each check are in tests/config, tests/data and tests/training;
these go through ``mnistlab train`` / ``evaluate`` (``mnistlab.cli.main``, in this
process) and check what the user sees and what is left on disk.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mnistlab.cli import main
from mnistlab.config import Config, apply_overrides
from mnistlab.models import build_model
from mnistlab.training import train
from mnistlab.training.checkpoint import FORMAT_VERSION, content_digest, resume_file, save_checkpoint, weights_digest
from reliability_helpers import NO_REPORT, small_args, small_overrides, snapshot, write_idx


def fails_cleanly(capsys, argv: list[str], message: str) -> str:
    """Run ``mnistlab ARGV``: exit status 2, one line on stderr holding ``message``, nothing on stdout."""
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2, captured
    assert captured.err.startswith(f"mnistlab {argv[0]}: error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err, captured.err
    assert captured.out == ""
    return captured.err


# ---------------------------------------------------------------------------
# config


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "train.batch_size=0"], "train.batch_size must be greater than zero, got 0"),
        (["--batch-size", "-5"], "train.batch_size must be greater than zero, got -5"),
        (["--lr", "nan"], "optimizer.lr must be a finite number, got nan"),
        (["--set", "train.bogus=1"], "unknown key 'train.bogus'; valid keys in [train]: epochs, batch_size"),
        (["--set", 'train.epochs="two"'], "train.epochs = 'two' has the wrong type; expected int"),
        (["--set", "data.val_size=-1"], "data.val_size must be zero or more, got -1"),
        # 0 is a valid data split (all images train), but a run chooses its epochs on the validation set: refused
        # before the data is read (a --data-dir that is not there would fail first otherwise).
        (["--set", "data.val_size=0", "--data-dir", "/nonexistent"], "data.val_size must be at least 1 to train"),
        (["--set", "model.width=0"], "model.width must be greater than zero, got 0"),
        (["--model", "nonet"], "unknown model 'nonet'; choose one of: alexnet, cnn"),
        (["--early-stopping", "sometimes"], "--early-stopping 'sometimes' is not valid; use one of: none, patience:N"),
        # These two are found only once the data is known: the run folder was made, and is removed again.
        (["--set", "data.val_size=2000"], "data.val_size = 2000 leaves no training images"),
        (["--model", "vgg", "--set", 'model.channels=[8, "M", "M", "M", "M", "M"]'],
         "model vgg does not fit 28x28 images: its layers shrink the image below 1x1"),
        # one training image is one row for batch norm, as a batch of 1 is (it raised in the first step)
        (["--set", "model.batch_norm=true", "--set", "data.train_limit=1"],
         "the training split has 1 image(s), which leaves batch norm one per process to normalize"),
        # a traceback after epoch 1 (open() refuses NUL), and a half-made run folder
        (["--set", 'checkpoint.filename="a\\u0000{epoch}.ckpt"'], "checkpoint.filename = 'a\\x00{epoch}.ckpt' must "
                                                                  "be a plain file name"),
        (["--set", "augment.elastic_sigma=1e-50"], "augment.elastic_sigma must be at least 0.01 pixels"),
    ],
)
def test_a_bad_setting_is_one_line_and_no_run_folder(mini_root, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    fails_cleanly(capsys, ["train", *small_args(mini_root), *args, "--out", str(out)], message)
    assert not out.exists()


def test_without_out_a_failed_run_leaves_no_runs_folder(mini_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default run folder is runs/<date>-<time>-<model> here
    fails_cleanly(capsys, ["train", *small_args(mini_root), "--model", "cnn", "--set", "model.batch_norm=true",
                           "--batch-size", "1"], "train.batch_size 1 leaves batch norm one image per process")
    assert list(tmp_path.iterdir()) == []


def test_a_bad_config_file_is_one_line_and_no_run_folder(mini_root, tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("[train]\nepochs = 2\nbatchsize = 64\n")
    out = tmp_path / "run"
    fails_cleanly(capsys, ["train", "--config", str(config), *small_args(mini_root), "--out", str(out)],
                  f"{config}: unknown key(s) train.batchsize; valid keys in [train]: epochs, batch_size")
    assert not out.exists()


# ---------------------------------------------------------------------------
# data


def _labels(raw: Path) -> Path:
    return raw / "train-labels-idx1-ubyte"


def _images(raw: Path) -> Path:
    return raw / "train-images-idx3-ubyte"


def _truncate(raw: Path) -> None:
    data = _images(raw).read_bytes()
    _images(raw).write_bytes(data[: len(data) - 1000])


def _wrong_magic(raw: Path) -> None:
    data = bytearray(_images(raw).read_bytes())
    data[2] = 0x0D  # 0x08 is unsigned bytes; 0x0D is float
    _images(raw).write_bytes(bytes(data))


def _wrong_dims(raw: Path) -> None:
    labels = _labels(raw).read_bytes()[8:]
    write_idx(_labels(raw), torch.tensor(list(labels), dtype=torch.uint8).view(-1, 1).numpy())


def _label_out_of_range(raw: Path) -> None:
    data = bytearray(_labels(raw).read_bytes())
    data[8 + 123] = 10
    _labels(raw).write_bytes(bytes(data))


def _counts_disagree(raw: Path) -> None:
    labels = _labels(raw).read_bytes()[8:]
    write_idx(_labels(raw), torch.tensor(list(labels[:-1]), dtype=torch.uint8).numpy())


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda raw: _labels(raw).unlink(), "missing train-labels-idx1-ubyte in"),
        (_truncate, "train-images-idx3-ubyte is truncated: its header announces 2000 x 28 x 28 values"),
        (_wrong_magic, "train-images-idx3-ubyte is not an IDX file of unsigned bytes: its magic number is 00 00 0d 03"),
        (_wrong_dims, "train-labels-idx1-ubyte has 2 dimension(s) in its IDX header, expected 1"),
        (_label_out_of_range, "train-labels-idx1-ubyte has label 10 at index 123; labels must be in [0, 10)"),
        (_counts_disagree, "has 2000 images but"),
    ],
    ids=["missing", "truncated", "magic", "dims", "label-range", "counts"],
)
def test_a_bad_data_file_is_one_line_and_no_run_folder(mini_root, tmp_path, capsys, corrupt, message):
    root = tmp_path / "data"
    shutil.copytree(mini_root, root)
    corrupt(root / "KMNIST" / "raw")
    before = snapshot(root)
    out = tmp_path / "run"
    fails_cleanly(capsys, ["train", *small_args(root), "--out", str(out)], message)
    assert not out.exists()
    assert snapshot(root) == before  # the data files are read, never "repaired"


# ---------------------------------------------------------------------------
# checkpoints given to --resume and evaluate


@pytest.fixture(scope="module")
def finished_run(mini_root, tmp_path_factory) -> Path:
    import types

    import mnistlab.report

    out = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as mp:  # no report.html, as in conftest._no_report
        mp.setattr(mnistlab.report, "write_run_report", lambda *a, **k: types.SimpleNamespace(path="-"))
        train(apply_overrides(Config(), small_overrides(mini_root, "train.epochs=1")), out=out, quiet=True)
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def _rewrite(path: Path, change) -> None:
    """Load a checkpoint without checks, change it, and store it again with a matching digest."""
    stored = torch.load(path, weights_only=True)
    change(stored)
    stored["weights_sha256"] = weights_digest(stored["model"])
    stored["content_sha256"] = content_digest(stored)  # crafted, not damaged: every digest matches
    torch.save(stored, path)


def _truncate_ckpt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random_ckpt(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _newer_format(path: Path) -> None:
    _rewrite(path, lambda p: p.update(format_version=FORMAT_VERSION + 1))


def _other_class_count(path: Path) -> None:
    # The weights of a 5-class cnn under a config that says 10 classes (the dataset's).
    _rewrite(path, lambda p: p.update(model=build_model("cnn", num_classes=5).state_dict()))


def _other_architecture(path: Path) -> None:
    _rewrite(path, lambda p: p.update(model=build_model("lenet5", num_classes=10).state_dict()))


def _not_resumable(path: Path) -> None:
    # A checkpoint with weights and config only, as another tool might write it.
    stored = torch.load(path, weights_only=True)
    keep = ("model_name", "config", "model", "num_classes", "in_channels", "image_size")
    save_checkpoint(path, {k: stored[k] for k in keep})


def _first_moment(p) -> dict:
    return next(iter(p["optimizer"]["state"].values()))


def _flipped_moment(path: Path) -> None:
    # Damage, not crafting: one value of the optimizer state changes and the stored digests stay as they were.
    stored = torch.load(path, weights_only=True)
    _first_moment(stored)["exp_avg_sq"].view(-1)[0] = 2.5e35
    torch.save(stored, path)


def _moment_shape(path: Path) -> None:  # fused Adam indexed it unchecked: SIGSEGV
    _rewrite(path, lambda p: _first_moment(p).update(exp_avg=torch.zeros(7), exp_avg_sq=torch.zeros(7)))


def _nan_weights(path: Path) -> None:
    _rewrite(path, lambda p: p["model"].update({k: v * float("nan") for k, v in p["model"].items()
                                                 if v.is_floating_point()}))


@pytest.mark.parametrize(
    "damage, message",
    [
        (_flipped_moment, "last.ckpt is corrupted: the SHA-256 of its training state (optimizer, random state, "
                          "progress) does not match"),
        (_moment_shape, "the optimizer state in the checkpoint does not fit the model: exp_avg of parameter 0 is (7,)"),
        (lambda p: _rewrite(p, lambda s: s.update(epoch="abc")), "the checkpoint's training state is damaged: "
                                                                   "epoch = 'abc'"),
        (lambda p: _rewrite(p, lambda s: s.update(epoch=-5)), "training state is damaged: epoch = -5"),
        (lambda p: _rewrite(p, lambda s: s.update(batch=999)), "the checkpoint says batch 999 of an epoch of"),
        (lambda p: _rewrite(p, lambda s: s.update(partial=None)), "training state is damaged: partial = None"),
        (lambda p: _rewrite(p, lambda s: s.update(lr_scale="x")), "training state is damaged: lr_scale = 'x'"),
        (lambda p: _rewrite(p, lambda s: s.update(compile_seconds=-1.0)),
         "training state is damaged: compile_seconds = -1.0"),
        (lambda p: _rewrite(p, lambda s: s.update(history=[1, 2, 3])), "history (not a list of epoch rows)"),
        (lambda p: _rewrite(p, lambda s: s.update(rng={})), "rng (not the random state torch saves)"),
        (lambda p: _rewrite(p, lambda s: s["callbacks"].update(ModelCheckpoint="x")),
         "the state of ModelCheckpoint in the checkpoint does not fit it"),
        (_nan_weights, "the weights from the checkpoint hold NaN or infinite values"),
        (lambda p: _rewrite(p, lambda s: s.update(format_version="1")), "is not a mnistlab checkpoint (its format "
                                                                         "version is '1')"),
    ],
    ids=["flipped-moment", "moment-shape", "epoch-text", "epoch-negative", "batch-past-the-epoch", "partial-none",
         "lr-scale-text", "compile-seconds-negative",
         "history-numbers", "rng-empty", "callback-state", "nan-weights", "format-text"],
)
def test_resuming_from_a_damaged_training_state_changes_nothing(run_copy, capsys, damage, message):
    # Each of these went on into fit(): a traceback after config.toml was rewritten, a segfault, or (the
    # flipped bit, epoch -5) a resumed run that trained on silently wrong.
    damage(run_copy / "last.ckpt")
    before = snapshot(run_copy)
    fails_cleanly(capsys, ["train", "--resume", str(run_copy), "--epochs", "2"], message)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(
    "damage, message",
    [
        (_truncate_ckpt, "last.ckpt is not a readable checkpoint"),
        (_random_ckpt, "last.ckpt is not a readable checkpoint"),
        (_newer_format,
         f"has checkpoint format {FORMAT_VERSION + 1}, newer than this mnistlab reads ({FORMAT_VERSION})"),
        (_other_class_count, "do not fit this model (another architecture or class count?): shapes differ: classifier"),
        (_other_architecture, "do not fit this model (another architecture or class count?)"),
        (_not_resumable, "the checkpoint cannot be resumed from: it holds a model without its training state (it "
                         "lacks optimizer, lr_scale"),
    ],
    ids=["truncated", "random", "newer-format", "class-count", "architecture", "not-resumable"],
)
def test_resuming_from_a_bad_checkpoint_changes_nothing(run_copy, capsys, damage, message):
    damage(run_copy / "last.ckpt")
    before = snapshot(run_copy)
    fails_cleanly(capsys, ["train", "--resume", str(run_copy)], message)
    assert snapshot(run_copy) == before


def test_resuming_with_another_model_changes_nothing(run_copy, capsys):
    before = snapshot(run_copy)
    fails_cleanly(capsys, ["train", "--resume", str(run_copy), "--model", "lenet5"],
                  "the checkpoint holds a 'cnn' model, but the config asks for 'lenet5'")
    assert snapshot(run_copy) == before  # config.toml still says cnn


def test_resuming_inside_an_epoch_with_only_the_epochs_done_changes_nothing(run_copy, capsys):
    # Interrupted after batch 2 of epoch 2 (the finished run's last.ckpt, told so): --epochs 1 counts the
    # epochs done but not the one begun, which that many epochs could never finish; it must be refused,
    # naming the count that would finish it, before anything is written.
    _rewrite(run_copy / "last.ckpt", lambda stored: stored.update(batch=2))
    before = snapshot(run_copy)
    fails_cleanly(capsys, ["train", "--resume", str(run_copy), "--epochs", "1"],
                  "train.epochs is 1, but the run has trained 1 epoch and 2 batches of epoch 2: resume with --epochs 2 "
                  "or more")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("args, message", [
    (["--optimizer", "sgd"], "optimizer.name was adam, now sgd: the checkpoint's optimizer state"),
    # one-cycle over 5 steps an epoch: 10 of 50 images would leave the 5 steps taken out of line with epoch 1
    (["--batch-size", "50"], "an epoch was 5 steps and would now be 10 (train.batch_size was 100, now 50): the "
                             "onecycle schedule counts steps"),
    # the data's size changes an epoch's steps as the batch size does (this one was missed: no error, and
    # the schedule ran out of step with the epochs)
    (["--set", "data.train_limit=250"], "an epoch was 5 steps and would now be 3 (data.train_limit was 500, now "
                                        "250): the onecycle schedule counts steps"),
])
def test_resuming_with_a_change_the_state_cannot_follow_changes_nothing(run_copy, capsys, args, message):
    before = snapshot(run_copy)
    fails_cleanly(capsys, ["train", "--resume", str(run_copy), "--epochs", "2", *args], message)
    assert snapshot(run_copy) == before


def test_resuming_on_another_dataset_changes_nothing(run_copy, tmp_path, capsys):
    # Every dataset of the family has 60,000 training images, so no step count caught it: epoch 2 trained on
    # Fashion-MNIST with epoch 1's normalization, and best.ckpt stayed the first dataset's model. Refused, the
    # new dataset was still loaded first, or downloaded where it was missing: refused before any data now.
    before = snapshot(run_copy)
    fails_cleanly(capsys, ["train", "--resume", str(run_copy), "--epochs", "2", "--dataset", "fashion-mnist",
                           "--data-dir", str(tmp_path / "data"), "--set", "data.download=true"],
                  "data.dataset was kmnist, now fashion-mnist: a run trains on one dataset; start a new run from "
                  "this one's weights with --init-from")
    assert snapshot(run_copy) == before and not (tmp_path / "data").exists()


def test_a_checkpoint_from_before_steps_per_epoch_was_stored_is_checked_by_its_step_count(run_copy, capsys):
    _rewrite(run_copy / "last.ckpt", lambda stored: stored.pop("steps_per_epoch"))
    before = snapshot(run_copy)
    fails_cleanly(capsys, ["train", "--resume", str(run_copy), "--epochs", "2", "--set", "data.train_limit=250"],
                  "an epoch was 5 steps and would now be 3 (data.train_limit was 500, now 250)")
    assert snapshot(run_copy) == before


def test_a_damaged_best_ckpt_is_found_before_a_resumed_run_trains(run_copy, capsys):
    # It used to be read only by the final test: the new epochs trained, and last.ckpt, metrics.csv and
    # config.toml were rewritten, before the run failed on it.
    _truncate_ckpt(run_copy / "best.ckpt")
    before = snapshot(run_copy)
    err = fails_cleanly(capsys, ["train", "--resume", str(run_copy), "--epochs", "2"],
                        f"{run_copy / 'best.ckpt'} is not a readable checkpoint")
    assert "put back an intact copy, or delete it" in err
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("command", [["evaluate", "{run}/best.ckpt"], ["train", "--resume", "{run}"],
                                     ["ensemble", "{run}/best.ckpt"]])
def test_a_checkpoint_whose_stored_config_is_not_valid_is_named_as_the_culprit(run_copy, capsys, command):
    # Not "unknown key(s) train.future_key" alone, which reads as if the user's own config or flags were wrong.
    for name in ("best.ckpt", "last.ckpt"):
        _rewrite(run_copy / name, lambda stored: stored["config"]["train"].update(future_key=1))
    before = snapshot(run_copy)
    argv = [arg.format(run=run_copy) for arg in command]
    file = run_copy / ("last.ckpt" if "--resume" in argv else "best.ckpt")
    fails_cleanly(capsys, argv, f"the config stored in {file} is not valid: unknown key(s) train.future_key")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "abc"], "mnistlab train: error: argument --epochs: invalid int value: 'abc' "
                                   "(see mnistlab train --help)"),
    (["evaluate"], "mnistlab evaluate: error: the following arguments are required: checkpoint"),
    (["trian"], "mnistlab: error: argument COMMAND: invalid choice: 'trian'"),
    # the command's help, which lists its flags (mnistlab --help lists only the commands)
    (["train", "--no-such-flag"], "mnistlab train: error: unrecognized arguments: --no-such-flag "
                                  "(see mnistlab train --help)"),
    (["lr-find", "--lr", "0.1"], "mnistlab lr-find: error: unrecognized arguments: --lr 0.1 "
                                 "(see mnistlab lr-find --help)"),
])
def test_what_argparse_refuses_is_one_line_too(capsys, argv, message):
    # argparse printed its usage block first: 8 lines before the one that says what is wrong
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and message in err, err


def test_version_says_mnistlab_and_torch(capsys):
    import mnistlab

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"mnistlab {mnistlab.__version__} (torch {torch.__version__[:4]}")


def test_a_data_folder_whose_name_is_not_utf8_is_one_line(mini_root, tmp_path, capsys):
    # config.toml is UTF-8: writing the folder's name into it was a UnicodeEncodeError traceback, exit 1
    odd = os.fsdecode(bytes(tmp_path) + b"/d\xff")
    os.symlink(mini_root, odd)
    out = tmp_path / "run"
    fails_cleanly(capsys, ["train", *small_args(mini_root), "--data-dir", odd, "--out", str(out)],
                  "is not UTF-8 text, which config.toml and the checkpoints store: rename the file or folder")
    assert not out.exists()


def test_an_empty_data_dir_is_not_the_cache_folder(tmp_path, capsys):
    fails_cleanly(capsys, ["train", "--data-dir", "", "--out", str(tmp_path / "run")],
                  "data.dir must be a folder, got an empty string")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag, message", [
    ("--resume", "--resume needs a run folder or its last.ckpt; leave it out to start a new run"),
    ("--config", "--config needs a TOML file"),
    ("--early-stopping", "--early-stopping needs none, patience:N"),
])
def test_an_empty_value_is_refused_not_taken_as_the_flag_left_out(tmp_path, monkeypatch, capsys, flag, message):
    # --resume "" resumed the current folder with the default config in place of the run's
    monkeypatch.chdir(tmp_path)
    fails_cleanly(capsys, ["train", flag, ""], message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["lr-find", "--model", "nosuch"], ["bench", "--set", "model.name=\"nosuch\""]])
def test_an_unknown_model_is_named_before_any_data_is_read(tmp_path, capsys, argv):
    # both loaded the data first (bench also trained the public recipe); without a local copy, the error
    # was the failed download
    fails_cleanly(capsys, [*argv, "--data-dir", str(tmp_path), "--set", "data.download=false"],
                  "unknown model 'nosuch'; choose one of: alexnet")


def test_evaluate_gives_no_accuracy_for_weights_whose_outputs_are_not_finite(run_copy, mini_root, capsys):
    # Finite weights so large the logits overflow (NaN weights are refused on loading): the softmax is NaN,
    # and argmax of a row of NaNs is class 0, so it printed the share of zeros in the test set as the accuracy.
    def poison(stored):
        for name, tensor in stored["model"].items():
            if name.endswith("weight"):
                tensor.fill_(1e30)

    _rewrite(run_copy / "best.ckpt", poison)
    assert main(["evaluate", str(run_copy / "best.ckpt"), "--data-dir", str(mini_root)]) == 0
    out = capsys.readouterr().out
    assert "no test accuracy, confusion matrix or predictions: the model's outputs are not finite" in out
    assert "test accuracy 1" not in out
    # nor argmaxes of NaN (class 0) as its predictions, nor a confusion matrix of them
    assert "confusion matrix (rows" not in out and "first predictions" not in out
    assert main(["evaluate", str(run_copy / "best.ckpt"), "--data-dir", str(mini_root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["test_accuracy"] is None and set(report["per_class_accuracy"].values()) == {None}
    assert report["confusion_matrix"] is None and report["first_predictions"] is None
    assert {m[k] for m in report["per_class"].values() for k in ("precision", "recall", "f1")} == {None}
    assert set(report["macro_average"].values()) == {None}


def test_evaluate_and_ensemble_need_only_the_test_files(finished_run, mini_root, tmp_path, capsys):
    # They loaded (and with data.download on, downloaded) the 60,000 training images to score the test split
    raw = tmp_path / "testonly" / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(mini_root / "KMNIST" / "raw" / name, raw / name)
    data_dir = str(tmp_path / "testonly")
    assert main(["evaluate", str(finished_run / "best.ckpt"), "--data-dir", data_dir, "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["examples"] == 500
    assert scored["test_accuracy"] == json.loads((finished_run / "summary.json").read_text())["test_accuracy"]
    assert main(["ensemble", str(finished_run), "--data-dir", data_dir]) == 0
    assert "ensemble" in capsys.readouterr().out


def test_a_run_killed_in_its_first_epoch_says_to_start_again(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("# killed before epoch 1 ended\n")
    fails_cleanly(capsys, ["train", "--resume", str(run)], f"run folder {run} has no last.ckpt to resume from: the "
                                                            "run stopped before it finished its first epoch")


def test_resuming_a_checkpoint_other_than_its_folders_last_ckpt_is_refused_before_anything_is_written(run_copy,
                                                                                                         capsys):
    # A renamed copy of last.ckpt was continued, and the rest of its run written into the copy's folder: here
    # over run_copy's own last.ckpt, metrics.csv and best.ckpt (or, from ~/Downloads, a run among a user's files).
    shutil.copy(run_copy / "last.ckpt", run_copy / "backup.ckpt")
    before = snapshot(run_copy)
    for name in ("backup.ckpt", "best.ckpt"):
        err = fails_cleanly(capsys, ["train", "--resume", str(run_copy / name), "--epochs", "3"],
                            f"{run_copy / name} is not a last.ckpt: --resume continues a run in its own folder")
        assert f"Give the run folder (--resume {run_copy})" in err and f"--init-from {run_copy / name}" in err
    assert snapshot(run_copy) == before
    # the folder's own last.ckpt, given as a file, is its run folder
    assert resume_file(run_copy / "last.ckpt") == resume_file(run_copy) == run_copy / "last.ckpt"
    # best.ckpt put in place of a last.ckpt holds no training state to continue
    other = run_copy.parent / "other"
    other.mkdir()
    shutil.copy(run_copy / "best.ckpt", other / "last.ckpt")
    fails_cleanly(capsys, ["train", "--resume", str(other)], "the checkpoint holds a model to use (best.ckpt, ema.ckpt")
    assert sorted(p.name for p in other.iterdir()) == ["last.ckpt"]


class _Exploit:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do instead."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_crafted_to_run_code_is_refused_by_train_and_evaluate(run_copy, tmp_path, capsys):
    marker = tmp_path / "pwned"
    stored = torch.load(run_copy / "last.ckpt", weights_only=True)
    stored["callbacks"] = {"History": _Exploit(str(marker))}  # a valid checkpoint otherwise, with a good digest
    torch.save(stored, run_copy / "last.ckpt")
    torch.save(stored, run_copy / "best.ckpt")
    before = snapshot(run_copy)
    fails_cleanly(capsys, ["train", "--resume", str(run_copy)], "refusing to load")
    fails_cleanly(capsys, ["evaluate", str(run_copy / "best.ckpt")], "could run code")
    fails_cleanly(capsys, ["evaluate", str(run_copy)], "mnistlab only reads checkpoints with weights_only=True")
    assert not marker.exists()
    assert snapshot(run_copy) == before


def test_a_path_that_is_not_utf8_prints_escaped_under_a_strict_utf8_stdout(finished_run, mini_root, tmp_path):
    import subprocess
    import sys

    # evaluate prints the checkpoint's path; with a byte that is no UTF-8 in it, the print raised
    # UnicodeEncodeError after the evaluation (predict escaped its own file names; nothing else did).
    ckpt = os.fsencode(tmp_path) + b"/caf\xe9.ckpt"
    shutil.copy(finished_run / "best.ckpt", os.fsdecode(ckpt))
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    proc = subprocess.run([sys.executable, "-m", "mnistlab.cli", "evaluate", ckpt, "--data-dir", str(mini_root)],
                          capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode(errors="replace")
    assert b"caf\\xe9.ckpt (epoch 1) on kmnist test" in proc.stdout, proc.stdout


def test_a_run_whose_output_is_closed_trains_on_to_the_end(mini_root, tmp_path):
    import shlex
    import subprocess
    import sys

    # `mnistlab train | head -1`: the first epoch row met the closed pipe, and the run ended (exit 2) with
    # "cannot write to run folder ...: Broken pipe" and a resume command for a folder without last.ckpt.
    # The command's own entry point (cli.run, as `python -m mnistlab.cli`: its exit flushes the closed stdout),
    # without report.html (NO_REPORT): its plots, 3-4 s of CPU, write files, not to the pipe; "report: ..." still
    # goes to the closed stdout.
    out = tmp_path / "run"
    argv = [sys.executable, "-c", NO_REPORT + "from mnistlab.cli import run\nrun()\n",
            "train", *small_args(mini_root), "--epochs", "2", "--out", str(out)]
    script = f"{shlex.join(argv)} | head -1; exit ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("training cnn ")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["test_accuracy"] > 0.1


def test_output_cut_short_by_a_pipe_is_no_traceback():
    import subprocess
    import sys

    # As `mnistlab models | head -1` when head has left: a reader gone before the first write (`true` exits at
    # once, the import takes a second), so the write always meets a closed pipe. A BrokenPipeError traceback followed.
    script = f"'{sys.executable}' -m mnistlab.cli models | true; exit ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stderr == "" and proc.returncode == 141, proc.stderr


def _poison(stored) -> None:
    """Finite weights so large the logits overflow (NaN weights are refused on loading)."""
    for name, tensor in stored["model"].items():
        if name.endswith("weight"):
            tensor.fill_(1e30)


def test_an_ensemble_with_a_member_whose_outputs_are_not_finite_has_no_accuracy(run_copy, mini_root, tmp_path,
                                                                                capsys):
    # It printed "nan%" for the member and, for the ensemble, the share of class 0 in the test set: the NaN rows
    # of the average all took argmax 0.
    bad = tmp_path / "bad.ckpt"
    shutil.copy(run_copy / "best.ckpt", bad)
    _rewrite(bad, _poison)
    assert main(["ensemble", str(bad), str(run_copy), "--data-dir", str(mini_root)]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "no ensemble accuracy: the outputs of the members marked - are not finite" in out
    lines = out.splitlines()
    assert lines[2].split()[-1] == "-" and lines[3].split()[-1].endswith("%")  # the bad member, the good one
    assert lines[4].startswith("ensemble of 2") and lines[4].split()[-1] == "-"
    assert main(["ensemble", str(bad), str(run_copy), "--data-dir", str(mini_root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ensemble"]["test_accuracy"] is None and result["ensemble"]["test_loss"] is None
    assert result["members"][0]["test_accuracy"] is None and result["members"][1]["test_accuracy"] > 0.5


def test_a_checkpoint_for_other_images_or_classes_is_one_line(run_copy, mini_root, tmp_path, capsys):
    # A model of 9 classes (or 32x32 images) ran on the test split: IndexError or a shape error, with a traceback.
    def nine_classes(stored):
        model = build_model("cnn", num_classes=9)
        stored["model"] = {k: v.clone() for k, v in model.state_dict().items()}
        stored["num_classes"], stored["classes"] = 9, stored["classes"][:9]

    odd = tmp_path / "nine.ckpt"
    shutil.copy(run_copy / "best.ckpt", odd)
    _rewrite(odd, nine_classes)
    for argv in (["evaluate", str(odd)], ["ensemble", str(odd)]):
        assert main([*argv, "--data-dir", str(mini_root)]) == 2
        err = capsys.readouterr().err
        assert f"{odd} holds a model of 9 classes on 28x28 images of 1 channel, but kmnist's test split has 10 " \
               "classes on 28x28 images of 1 channel" in err, err


@pytest.mark.parametrize("command", ["evaluate", "ensemble"])
def test_an_empty_path_is_not_the_current_folder(command, run_copy, monkeypatch, capsys):
    monkeypatch.chdir(run_copy)  # it evaluated ./best.ckpt
    assert main([command, ""]) == 2
    assert "an empty path names no checkpoint" in capsys.readouterr().err


def test_evaluate_names_a_mid_epoch_checkpoint_by_its_position(run_copy, mini_root, capsys):
    def inside_epoch(stored):
        stored["epoch"], stored["batch"] = 0, 3

    _rewrite(run_copy / "best.ckpt", inside_epoch)
    assert main(["evaluate", str(run_copy / "best.ckpt"), "--data-dir", str(mini_root)]) == 0
    assert "(inside epoch 1, after batch 3)" in capsys.readouterr().out  # it said "(epoch 0)"


@pytest.mark.parametrize("command", ["evaluate", "ensemble"])
def test_ctrl_c_while_scoring_is_one_line(command, run_copy, mini_root, monkeypatch, capsys):
    import importlib

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # (the package's name `evaluate` is the function: the module is reached by its full name)
    monkeypatch.setattr(importlib.import_module("mnistlab.training.evaluate"), "evaluate", interrupted)
    monkeypatch.setattr(importlib.import_module("mnistlab.training.ensemble"), "evaluate", interrupted)
    assert main([command, str(run_copy), "--data-dir", str(mini_root)]) == 130
    assert capsys.readouterr().err == f"mnistlab {command}: interrupted by SIGINT\n"  # it said nothing


def test_lr_find_names_the_step_whose_update_overflowed_validation(mini_root):
    # It blamed a step that never ran: "the loss was not finite at lr 1.00e+80 (step 3)" after 2 steps.
    from mnistlab.training.lr_find import lr_range_test

    cfg = apply_overrides(Config(), small_overrides(mini_root, "data.train_limit=64", "data.val_size=100",
                                                    "train.batch_size=64", "optimizer.name=sgd", "model.name=lenet5",
                                                    "train.precision=fp32"))
    result = lr_range_test(cfg, min_lr=1e-3, max_lr=1e80, steps=3)
    assert len(result.losses) == 2
    assert result.stop_reason.startswith("the validation loss was not finite after step 2 (lr 3.16e+38)"), \
        result.stop_reason
