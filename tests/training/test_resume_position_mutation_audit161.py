"""Mutation audit 161 of the resume-position code of mnistlab/training/fit.py (check_resume, _check_progress,
_grad_scaler_ok, _check_optimizer_state, _set_rng_state, Trainer._position_due / _save_position / _payload /
restore): tests that kill the mutants the other tests let live.

Each test names the mutant it kills and asserts the behaviour a user relies on.
"""

import copy

import pytest
import torch

from mnistlab.config import Config, apply_overrides
from mnistlab.errors import CheckpointError, ConfigError
from mnistlab.training import read_checkpoint
from mnistlab.training.fit import Trainer, _check_optimizer_state, _set_rng_state, check_resume
from mnistlab.training.run import config_model


def _cfg(*overrides):
    return apply_overrides(Config(), ["model.width=0.25", "train.batch_size=250", "train.epochs=1",
                                      "train.device=cpu", "train.threads=1", "train.progress=false",
                                      "tensorboard.enabled=false", *overrides])


@pytest.fixture(scope="module")
def one_epoch(mnist_small, tmp_path_factory):
    """The payload of last.ckpt after one epoch (8 steps of 250 of 2,000 images, a quarter wide)."""
    run = tmp_path_factory.mktemp("run")
    cfg = _cfg()
    Trainer(config_model(cfg, mnist_small), mnist_small, cfg, run_dir=run).fit()
    return read_checkpoint(run / "last.ckpt")


def _damaged(payload, **changes):
    p = copy.deepcopy(payload)
    p.update(changes)
    return p


_SCALER = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
           "_growth_tracker": 3}


def test_a_sound_fp16_scaler_state_passes(one_epoch):
    # the baseline the refusals below differ from by one value
    assert check_resume(_damaged(one_epoch, grad_scaler=dict(_SCALER)), _cfg("train.epochs=2")) is not None


@pytest.mark.parametrize("key, value", [
    ("scale", 0.5),  # mutant: "1.0 <= scale" as "0.0 <= scale" (below 1 the run stops at its first step)
    ("growth_factor", 1.0),  # mutant: "1.0 < growth" as "1.0 <= growth" (GradScaler refuses 1.0)
    ("backoff_factor", 1.0),  # mutant: "backoff < 1.0" as "backoff <= 1.0"
    ("growth_interval", 0),  # mutant: "1 <= interval" as "0 <= interval"
    ("_growth_tracker", 2**31),  # mutant: "tracker <= INT32_MAX" dropped (GradScaler's counter is int32)
], ids=["scale", "growth", "backoff", "interval", "tracker"])
def test_a_grad_scaler_state_out_of_range_is_refused(one_epoch, key, value):
    payload = _damaged(one_epoch, grad_scaler={**_SCALER, key: value})
    with pytest.raises(CheckpointError, match=r"training state is damaged: grad_scaler = "):
        check_resume(payload, _cfg("train.epochs=2"))


def test_a_grad_scaler_state_that_is_not_a_table_is_refused_as_damaged(one_epoch):
    # mutant: _grad_scaler_ok's isinstance(state, dict) dropped: a list raised AttributeError (.get), a traceback
    with pytest.raises(CheckpointError, match=r"grad_scaler = \[1, 2\]"):
        check_resume(_damaged(one_epoch, grad_scaler=[1, 2]), _cfg("train.epochs=2"))


@pytest.mark.parametrize("key, value", [("batch", -1), ("lr_scale", float("nan")), ("lr_scale", -0.5)],
                         ids=["batch", "lr_scale-nan", "lr_scale-negative"])
def test_a_position_field_out_of_range_is_refused(one_epoch, key, value):
    # mutants: "batch" or "lr_scale" dropped from _check_progress's lists
    with pytest.raises(CheckpointError, match=rf"training state is damaged: {key} = "):
        check_resume(_damaged(one_epoch, **{key: value}), _cfg("train.epochs=2"))


def test_as_many_skipped_steps_as_steps_is_a_position_that_can_resume(one_epoch):
    # mutant: "skipped_steps > step" as ">=": an fp16 run whose every step so far overflowed is still a run
    payload = _damaged(one_epoch, skipped_steps=one_epoch["step"])
    assert check_resume(payload, _cfg("train.epochs=2")) is not None
    with pytest.raises(CheckpointError, match=r"skipped_steps = 9 of 8 steps"):
        check_resume(_damaged(one_epoch, skipped_steps=9), _cfg("train.epochs=2"))


@pytest.mark.parametrize("partial", [torch.zeros(4, dtype=torch.float64), torch.zeros(3, dtype=torch.int64)],
                         ids=["shape", "dtype"])
def test_an_epoch_sum_of_another_shape_or_type_is_refused(one_epoch, partial):
    # mutants: partial's shape check, or its floating-point check, dropped (the epoch's sums add float losses)
    with pytest.raises(CheckpointError, match=r"training state is damaged: partial = "):
        check_resume(_damaged(one_epoch, partial=partial), _cfg("train.epochs=2"))


def test_a_history_row_with_a_negative_epoch_is_refused(one_epoch):
    # mutant: _is_count(h.get("epoch")) dropped from the history check
    history = [{**one_epoch["history"][0], "epoch": -1}]
    with pytest.raises(CheckpointError, match=r"history \(not a list of epoch rows\)"):
        check_resume(_damaged(one_epoch, history=history), _cfg("train.epochs=2"))


def _rng(payload, **changes):
    return {**payload["rng"], **changes}


@pytest.mark.parametrize("change", [
    # mutant: the dtype check of the CPU state dropped (set_rng_state raised a TypeError, after the run started)
    lambda p: _rng(p, torch=p["rng"]["torch"].to(torch.int16)[:p["rng"]["torch"].numel()]),
    # mutant: the shape check of the CPU state dropped
    lambda p: _rng(p, torch=p["rng"]["torch"][:-1]),
    # mutant: "s.dim() == 1" of each GPU's state dropped
    lambda p: _rng(p, cuda=[torch.zeros(2, 8, dtype=torch.uint8)]),
    # mutant: the dtype check of Apple's GPU state dropped
    lambda p: _rng(p, mps=torch.zeros(8, dtype=torch.int64)),
], ids=["torch-dtype", "torch-shape", "cuda-dim", "mps-dtype"])
def test_a_random_state_torch_did_not_save_is_refused(one_epoch, change):
    payload = _damaged(one_epoch, rng=change(one_epoch))
    with pytest.raises(CheckpointError, match=r"rng \(not the random state torch saves\)"):
        check_resume(payload, _cfg("train.epochs=2"))


def _adam_with_state(**state):
    p = torch.nn.Parameter(torch.zeros(3, 2))
    opt = torch.optim.Adam([p])
    opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3, 2), "exp_avg_sq": torch.zeros(3, 2),
                    **state}
    return opt


def test_optimizer_state_of_the_parameters_shape_passes():
    _check_optimizer_state(_adam_with_state())
    _check_optimizer_state(_adam_with_state(step=4, mu_product=torch.tensor(0.9)))


@pytest.mark.parametrize("state, key", [
    ({"exp_avg": torch.zeros(6)}, "exp_avg"),  # mutant: "value.shape == p.shape" dropped (fused Adam: SIGSEGV)
    ({"step": torch.zeros(2)}, "step"),  # mutant: the step tensor's "numel() == 1" dropped
    ({"mu_product": torch.tensor(1)}, "mu_product"),  # mutant: mu_product's floating-point check dropped
], ids=["moment-shape", "step-numel", "mu-product-int"])
def test_optimizer_state_that_does_not_fit_is_refused(state, key):
    with pytest.raises(CheckpointError, match=rf"does not fit the model: {key} of parameter 0"):
        _check_optimizer_state(_adam_with_state(**state))


def test_no_random_state_leaves_the_process_random_state_as_it_is():
    # mutant: _set_rng_state's "rng is None: return" dropped (a multi-process resume passes None to the ranks
    # that keep their own streams)
    before = torch.get_rng_state()
    _set_rng_state(None)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.fixture(scope="module")
def positions(mnist_small, tmp_path_factory):
    """What each write of last.ckpt held in a run of 2 epochs of 8 steps with checkpoint.last_every_n_steps=4."""
    import importlib

    fit = importlib.import_module("mnistlab.training.fit")  # the package's name "fit" is the function
    run = tmp_path_factory.mktemp("run")
    cfg = _cfg("train.epochs=2", "checkpoint.last_every_n_steps=4")
    written, real = [], fit.save_checkpoint

    def save_checkpoint(path, payload):
        if path.name == "last.ckpt":
            written.append({k: copy.deepcopy(payload[k]) for k in (
                "epoch", "step", "batch", "partial", "partial_seconds", "steps_per_epoch", "skipped_steps",
                "compile_seconds", "resumable") if k in payload})
        return real(path, payload)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fit, "save_checkpoint", save_checkpoint)
        Trainer(config_model(cfg, mnist_small), mnist_small, cfg, run_dir=run).fit()
    return written


def test_last_every_n_steps_writes_every_n_steps_inside_the_epoch_and_not_at_its_last_batch(positions):
    # mutants: "batch + 1 < steps_per_epoch" as "batch < steps_per_epoch" (a position write of batch 8 of 8, then
    # the epoch end's again); "step % every" counted from step + 1 (positions after steps 3, 7, 11, 15)
    assert [(w["epoch"], w["step"], w["batch"]) for w in positions] == [(0, 4, 4), (1, 8, 0), (1, 12, 4), (2, 16, 0)]
    assert all(w["resumable"] is True for w in positions)


def test_a_position_holds_the_epochs_sums_and_training_time_so_far(positions):
    # mutants: _save_position writing partial_seconds 0 (the resumed epoch's time lost its first part); the
    # payload's "batch" written as 0 (caught above too)
    for w in (positions[0], positions[2]):
        assert w["partial"].dtype == torch.float64 and float(w["partial"][2]) == 1000.0  # 4 batches of 250 seen
        assert 0.0 < w["partial_seconds"]
    for w in (positions[1], positions[3]):  # an epoch's end: nothing of the next epoch yet
        assert w["partial_seconds"] == 0.0 and not w["partial"].any()


def test_a_position_holds_what_the_resume_checks_and_restores(positions):
    # mutants: "steps_per_epoch", "skipped_steps" or "compile_seconds" left out of the payload (restore then
    # guessed the epoch length from step / epoch, and reset the skipped-step count and compile time to 0)
    for w in positions:
        assert w["steps_per_epoch"] == 8 and w["skipped_steps"] == 0 and w["compile_seconds"] == 0.0


def test_a_position_inside_an_epoch_needs_the_epochs_to_finish_it(one_epoch):
    # mutant: "epochs < done + (batch > 0)" as "epochs < done": a run interrupted inside epoch 2, resumed with
    # --epochs 1, would have nothing to train yet a half-trained epoch 2 in last.ckpt
    payload = _damaged(one_epoch, batch=4, step=12)
    with pytest.raises(ConfigError, match=r"trained 1 epoch and 4 batches of epoch 2: resume with --epochs 2 or more"):
        check_resume(payload, _cfg("train.epochs=1"))
    assert check_resume(payload, _cfg("train.epochs=2")) is not None


def test_max_steps_equal_to_the_steps_taken_resumes_and_ends_as_it_stands(one_epoch):
    # mutant: "max_steps < steps" as "<=": the run has taken exactly max_steps; resuming it is no error
    assert check_resume(one_epoch, _cfg("train.epochs=2", "train.max_steps=8")) is not None
    with pytest.raises(ConfigError, match=r"train.max_steps is 7, but the run has taken 8 steps"):
        check_resume(one_epoch, _cfg("train.epochs=2", "train.max_steps=7"))


def test_a_position_after_the_epochs_last_step_before_its_validation_restores(one_epoch, mnist_small):
    # mutant: "batch > steps_per_epoch" as ">=": a run interrupted after epoch 1's last step, before its
    # validation, holds batch 8 of 8; it resumes there (to validate epoch 1), and only batch 9 is refused
    payload = _damaged(one_epoch, epoch=0, batch=8, history=[])
    cfg = _cfg("train.epochs=1")
    trainer = Trainer(config_model(cfg, mnist_small), mnist_small, cfg)
    trainer.restore(payload)
    assert (trainer.epoch, trainer.step) == (0, 8)
    with pytest.raises(CheckpointError, match=r"says batch 9 of an epoch of 8 batches"):
        Trainer(config_model(cfg, mnist_small), mnist_small, cfg).restore(_damaged(payload, batch=9, step=9))


def test_a_random_state_without_gpu_states_restores(one_epoch, mnist_small):
    # _check_progress accepts an "rng" without its "cuda" entry (as without "mps": no GPU states to put back),
    # but _set_rng_state read rng["cuda"] and the resume died of a KeyError traceback instead
    rng = {"torch": one_epoch["rng"]["torch"].clone()}
    cfg = _cfg("train.epochs=2")
    trainer = Trainer(config_model(cfg, mnist_small), mnist_small, cfg)
    trainer.restore(_damaged(one_epoch, rng=rng))
    assert torch.equal(torch.get_rng_state(), rng["torch"])


def test_callback_states_that_are_not_a_table_are_refused_before_the_run(one_epoch, mnist_small):
    # mutant: _check_callback_states' isinstance(states, dict) dropped: a list passed ("key not in states"), and
    # fit() failed on it later, after the run had started
    cfg = _cfg("train.epochs=2")
    trainer = Trainer(config_model(cfg, mnist_small), mnist_small, cfg)
    with pytest.raises(CheckpointError, match=r"callback states are not a table \(list\)"):
        trainer.restore(_damaged(one_epoch, callbacks=["ModelCheckpoint"]))


def test_restore_brings_back_the_skipped_steps_and_compile_time(one_epoch, mnist_small):
    # mutants: restore setting skipped_steps or compile_seconds to 0 (the summary's count of fp16 steps skipped,
    # and the run's compile time, then left out what happened before the resume)
    cfg = _cfg("train.epochs=2")
    trainer = Trainer(config_model(cfg, mnist_small), mnist_small, cfg)
    trainer.restore(_damaged(one_epoch, skipped_steps=3, compile_seconds=2.5))
    assert (trainer.skipped_steps, trainer.compile_seconds) == (3, 2.5)


def test_a_step_that_made_the_weights_non_finite_writes_no_position(mnist_small, tmp_path):
    # mutant: _position_due's isfinite check of the weights dropped. A rate past float32 (SGD, 1e39: infinite)
    # turns the weights infinite in step 1, whose loss was finite; last.ckpt then held them, and a resume from
    # it diverged at once (read_checkpoint refuses NaN weights): the run had no state to go back to
    cfg = _cfg("optimizer.name=sgd", "optimizer.lr=1e39", "schedule.name=constant", "checkpoint.last_every_n_steps=1")
    result = Trainer(config_model(cfg, mnist_small), mnist_small, cfg, run_dir=tmp_path).fit()
    assert result.stopped_by == "non_finite_loss"
    assert not (tmp_path / "last.ckpt").exists()  # no epoch finished, and no finite state inside one


def test_a_resume_inside_an_epoch_plans_the_schedule_from_the_epochs_start(one_epoch, mnist_small):
    # mutant: _plan_from as (done, step) instead of (done, step - batch): resumed 4 batches into epoch 2 of 3,
    # the schedule spanned 12 + 2 x 8 = 28 steps instead of 24 and its epochs began 4 steps late (cosine and
    # step schedules took other rates than the run not interrupted)
    cfg = _cfg("train.epochs=3", "schedule.name=step", "schedule.step_epochs=1", "schedule.gamma=0.5")
    trainer = Trainer(config_model(cfg, mnist_small), mnist_small, cfg)
    trainer.restore(_damaged(one_epoch, batch=4, step=12))
    assert trainer.total_steps == 24
    lr = cfg.optimizer.lr
    assert trainer._scheduled_lr(15) == pytest.approx(lr * 0.5)  # epoch 2's last step
    assert trainer._scheduled_lr(16) == pytest.approx(lr * 0.25)  # epoch 3's first
