"""Multi-process training with the features a user turns on (audit 146): real ``mnistlab train --nproc 2`` runs.

Two groups, started at once (each run of 2 processes spends seconds starting torchrun and its workers):

* DETERMINISTIC: [ema], balanced class weights, label smoothing, grad clipping, save_top_k=2, [tta], early
  stopping with restore_best_weights, reduce_lr, train.max_steps and a frozen part released by unfreeze_at, on
  lenet5 (no batch norm, no dropout). The README promises what one process trains, up to float rounding: the
  2-process run is compared with a 1-process run of the same config.
* RANDOM: mixup, CutMix, augmentation, [ema], TensorBoard and train.max_minutes. Each process draws its own
  numbers, so no 1-process run matches; the run must be sane, and a Ctrl-C'd run resumed with ``--nproc 2``
  must end exactly as the uninterrupted one (the README: it "continues exactly").
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
from pathlib import Path

import pytest
from test_distributed import files_under, launched_here, max_weight_difference, mnistlab, train_args

from mnistlab.training.checkpoint import read_checkpoint

DETERMINISTIC = [
    "--epochs", "4", "--set", "train.report=false", "--set", "ema.enabled=true",
    "--set", 'train.class_weights="balanced"', "--set", "train.label_smoothing=0.1", "--set", "train.grad_clip=1.0",
    "--set", "checkpoint.save_top_k=2", "--set", "tta.enabled=true",
    "--set", "early_stopping.criterion=patience", "--set", "early_stopping.monitor=val_accuracy",
    "--set", "early_stopping.patience=1", "--set", "early_stopping.min_delta=0.03",
    "--set", "early_stopping.restore_best_weights=true",
    "--set", "reduce_lr.enabled=true", "--set", "reduce_lr.patience=0", "--set", "reduce_lr.threshold=0.5",
    "--set", "reduce_lr.factor=0.5", "--set", "train.max_steps=70",
    "--set", 'finetune.freeze=["features"]', "--set", "finetune.unfreeze_at=2",
]
RANDOM = [
    "--epochs", "3", "--set", "train.report=false", "--set", "mixup.alpha=0.2", "--set", "mixup.cutmix_alpha=1.0",
    "--set", "augment.enabled=true", "--set", "ema.enabled=true", "--set", "tensorboard.enabled=true",
    "--set", "tensorboard.log_every_n_steps=5", "--set", "train.max_minutes=10",
]
PIPES = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def ended(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=300)  # a hang fails here, not in the CI's overall limit
    assert proc.returncode == 0, f"{out}\n{err}"
    return out, err


@pytest.fixture(scope="module")
def matrix(mnist_root, tmp_path_factory):
    """Folders: ``one`` and ``two`` (DETERMINISTIC in 1 and 2 processes), ``ref`` (RANDOM, 2 processes) and
    ``cut`` (RANDOM, 2 processes, Ctrl-C in epoch 2, then resumed)."""
    cwd = tmp_path_factory.mktemp("matrix")
    procs = {
        "one": mnistlab(*train_args(mnist_root, *DETERMINISTIC, "--out", "one"), cwd=cwd, **PIPES),
        "two": mnistlab(*train_args(mnist_root, *DETERMINISTIC, "--out", "two", "--nproc", "2"), cwd=cwd, **PIPES),
        "ref": mnistlab(*train_args(mnist_root, *RANDOM, "--out", "ref", "--nproc", "2"), cwd=cwd, **PIPES),
    }
    cut = mnistlab(*train_args(mnist_root, *RANDOM, "--out", "cut", "--nproc", "2"), cwd=cwd, **PIPES)
    try:
        for line in cut.stdout:  # the first epoch's row: training is under way in epoch 2
            if line.split()[:1] == ["1"]:
                break
        cut.send_signal(signal.SIGINT)
        out, err = cut.communicate(timeout=300)
        assert cut.returncode == 130, f"{out}\n{err}"
        # in the processes it ran in: inside an epoch, a resume in another number of them may be refused
        assert "interrupted by SIGINT" in err and "resume with: mnistlab train --resume cut --nproc 2\n" in err, err
        assert "Traceback" not in err, err  # torchrun's SignalException traceback buried the resume line
        outputs = {name: ended(proc) for name, proc in procs.items()}
    finally:
        for proc in [*procs.values(), cut]:
            if proc.poll() is None:
                proc.terminate()
                proc.communicate(timeout=120)
    assert read_checkpoint(cwd / "cut" / "last.ckpt")["epoch"] < 3, "the run ended before the signal"
    assert summary(cwd / "cut")["stopped_by"] == "interrupted"
    assert launched_here("train", "--resume", "cut", "--nproc", "2", "--quiet", cwd=cwd) == 0
    return cwd, outputs


def metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def agrees_with_its_checkpoints(run: Path) -> None:
    """What a user reads (summary.json, metrics.csv) says what the checkpoints hold."""
    s, rows = summary(run), metrics(run)
    best, last = read_checkpoint(run / "best.ckpt"), read_checkpoint(run / "last.ckpt")
    assert s["best_epoch"] == best["epoch"] and s["epochs"] == last["epoch"] == len(rows)
    assert s["steps"] == last["step"]
    assert s["best_val_accuracy"] == pytest.approx(float(rows[best["epoch"] - 1]["val_accuracy"]))
    assert [h["val_loss"] for h in last["history"]] == pytest.approx([float(r["val_loss"]) for r in rows])
    assert s["ema_best_epoch"] == read_checkpoint(run / "ema.ckpt")["epoch"]
    assert s["processes"] == (2 if "rng_ranks" in last else 1)
    assert 0.5 < s["test_accuracy"] <= 1 and s["test_loss"] is not None


def test_the_deterministic_features_train_in_two_processes_what_they_train_in_one(matrix):
    cwd, _ = matrix
    one, two = cwd / "one", cwd / "two"
    for run in (one, two):
        agrees_with_its_checkpoints(run)
    # The same files: the two top-k epochs, ema.ckpt, no second writer's rows.
    assert files_under(one) == files_under(two)
    assert len(list(two.glob("epoch*.ckpt"))) == 2
    s1, s2 = summary(one), summary(two)
    # The features acted: unfreeze_at released the frozen part, reduce_lr and early stopping (with the weights
    # restored) decided, and max_steps cut the 4th epoch short (4 x 20 steps otherwise).
    assert (s1["stopped_by"], s1["restored_by_early_stopping"], s1["steps"]) == ("early_stopping", True, 70)
    assert s1["trainable_parameters"] < s1["parameters"]  # when the run began: features frozen
    assert float(metrics(one)[-1]["lr"]) < 1e-5  # halved every epoch on top of the schedule
    for key in ("best_epoch", "epochs", "steps", "stop_reason", "stopped_by", "restored_by_early_stopping",
                "ema_best_epoch", "trainable_parameters"):
        assert s2[key] == s1[key], key
    for key in ("test_accuracy", "tta_test_accuracy", "ema_test_accuracy", "ema_tta_test_accuracy"):
        assert s2[key] == pytest.approx(s1[key], abs=3e-4), key  # at most 3 of 10,000 images
    for name in ("best.ckpt", "last.ckpt", "ema.ckpt"):
        a, b = read_checkpoint(one / name), read_checkpoint(two / name)
        assert a["epoch"] == b["epoch"], name
        assert max_weight_difference(a["model"], b["model"]) < 1e-4, name  # rounding, grown over 3-4 epochs
    for r1, r2 in zip(metrics(one), metrics(two), strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "ema_val_accuracy", "lr"):
            assert float(r2[key]) == pytest.approx(float(r1[key]), abs=1e-5), key


def test_mixup_augmentation_and_tensorboard_in_two_processes_are_sane_and_written_once(matrix):
    cwd, outputs = matrix
    ref = cwd / "ref"
    agrees_with_its_checkpoints(ref)
    s = summary(ref)
    assert (s["stopped_by"], s["epochs"], s["steps"]) == ("max_epochs", 3, 60)
    # One TensorBoard writer: one event file of epochs (and the .end summary), one of steps.
    events = sorted(p.name.rsplit(".", 2)[-1] == "end" for p in (ref / "tensorboard").glob("events.out.tfevents.*"))
    assert events == [False, True]
    assert len(list((ref / "tensorboard" / "steps").glob("events.out.tfevents.*"))) == 1
    assert "Traceback" not in outputs["ref"][1]


def test_a_ctrl_c_run_with_mixup_augmentation_and_ema_resumes_to_the_uninterrupted_result(matrix):
    cwd, _ = matrix
    ref, cut = cwd / "ref", cwd / "cut"
    for name in ("best.ckpt", "last.ckpt", "ema.ckpt"):
        a, b = read_checkpoint(ref / name), read_checkpoint(cut / name)
        assert max_weight_difference(a["model"], b["model"]) == 0.0, name  # each rank's RNG state was kept
    assert [h["val_loss"] for h in read_checkpoint(cut / "last.ckpt")["history"]] == \
        [h["val_loss"] for h in read_checkpoint(ref / "last.ckpt")["history"]]
    s_ref, s_cut = summary(ref), summary(cut)
    for key in ("test_accuracy", "ema_test_accuracy", "best_epoch", "steps", "stopped_by"):
        assert s_cut[key] == s_ref[key], key
    # The interrupted run's leftovers are gone or written over. TensorBoard's event files are named by the
    # process and second that wrote them: the resumed run's process adds its own, as TensorBoard expects.
    def outside_tensorboard(run: Path) -> set[str]:
        return {name for name in files_under(run) if not name.startswith("tensorboard")}

    assert outside_tensorboard(cut) == outside_tensorboard(ref)


def test_the_readme_says_mixup_and_cutmix_draw_per_process():
    # lenet5 with mixup alone, 2 processes against 1, 2 epochs: weights 0.09 apart (each rank draws its own share
    # and partners within its rows); the README promised a match "for models without batch norm and dropout".
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Multi-process training", 1)[1].split("\n## ", 1)[0]
    does_not_match = " ".join(section.split("What does not", 1)[1].split())
    assert "mixup and CutMix draw different random numbers on each process" in does_not_match


def test_a_users_torchrun_script_prints_the_callbacks_messages_on_rank_0_alone(monkeypatch, capsys):
    # train(cfg) in a script under torchrun printed "epoch 2: reducing learning rate ..." once per process, and
    # with no handler set, logging's last resort printed the other ranks' warnings on stderr too.
    import logging

    from mnistlab.training.run import callback_messages

    log = logging.getLogger("mnistlab")
    monkeypatch.setattr(log, "propagate", False)  # as in a script: no handler above it (pytest sets its own)
    for rank, shown in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)  # torchrun's, read before the process group is set up
        with callback_messages(True):
            log.info("epoch 2: reducing learning rate")
            log.warning("set_lr changes nothing")
        out, err = capsys.readouterr()
        assert (out, err) == (("epoch 2: reducing learning rate\nset_lr changes nothing\n", "") if shown else ("", ""))
    assert not log.handlers  # each block takes its handler away again
