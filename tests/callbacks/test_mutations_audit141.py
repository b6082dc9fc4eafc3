"""Tests that kill the mutants of ModelCheckpoint, History, TimeLimit, evaluate() and build_optimizer that the other
tests let live (audit 141, hand-made mutation testing). Each test names the mistake it catches and the definition
it holds the code to: the docstrings and README, Lightning's ModelCheckpoint (save_top_k), Keras' callbacks,
PyTorch's optimizers."""

import math

import pytest
import torch

from fake_trainer import FakeTrainer, drive, epochs, roundtrip
from mnistlab.callbacks import CallbackList, History, ModelCheckpoint, TimeLimit
from mnistlab.config import MAX_CHECKPOINT_NAME, CheckpointConfig
from mnistlab.errors import ConfigError


def files(folder):
    return sorted(p.name for p in folder.iterdir())


# ---- ModelCheckpoint ------------------------------------------------------------------------------------------


def test_an_epoch_that_does_not_enter_the_top_k_is_never_written(tmp_path):
    # Lightning saves a top-k file only for a value strictly better than the k-th kept (torch.lt / torch.gt);
    # the docstring: "ties keep the earlier epoch". k = 2: 0.8 and 0.7 fill it; 0.6 is worse, 0.7 ties the worst.
    # Mutants killed: a tie ranking above (<=), and a full top k taking every epoch (len <= k): both wrote each
    # epoch's checkpoint (a whole model) and deleted it at once.
    trainer = FakeTrainer(run_dir=tmp_path)
    cb = ModelCheckpoint(save_top_k=2, save_best_as=None)
    drive([cb], epochs(val_accuracy=[0.8, 0.7, 0.6, 0.7]), trainer)
    assert [p.name for p in trainer.saved] == ["epoch001-0.8000.ckpt", "epoch002-0.7000.ckpt"]
    assert files(tmp_path) == ["epoch001-0.8000.ckpt", "epoch002-0.7000.ckpt"]
    assert [e for _, e, _ in cb.kept] == [1, 2]


def test_a_name_longer_than_the_limit_in_bytes_is_cut_though_short_in_characters(tmp_path):
    # The limit is in bytes (file systems count bytes: 255). 90 "é" are 180 bytes; a runaway loss of 1e70 through
    # {val_loss:.4f} adds 76 characters: 171 characters, 261 bytes, which no file system takes.
    # Mutant killed: the length measured in characters (the write failed with "File name too long").
    cb = ModelCheckpoint(monitor="val_loss", filename="é" * 90 + "{val_loss:.4f}.ckpt", save_best_as=None)
    trainer = FakeTrainer(run_dir=tmp_path)
    drive([cb], epochs(val_loss=[1e70]), trainer)
    (name,) = files(tmp_path)
    assert len(name.encode()) <= MAX_CHECKPOINT_NAME and name.startswith("é" * 90 + "1000") and name.endswith(".ckpt")


def test_a_file_kept_both_as_periodic_and_top_k_survives_a_resume(tmp_path):
    # Periodic files are "never deleted", also after a resume: the state keeps them. k = 1, every 2 epochs: epoch 2
    # is best (periodic and top k); resumed, epoch 3 is better and pushes 2 out of the top k.
    # Mutant killed: state_dict without the periodic files (epoch 2's file was deleted after the resume).
    rows = epochs(val_accuracy=[0.5, 0.7, 0.9])
    cb = ModelCheckpoint(save_top_k=1, every_n_epochs=2)
    drive([cb], rows[:2], FakeTrainer(run_dir=tmp_path))
    state = roundtrip(CallbackList([cb]).state_dict())
    resumed = FakeTrainer(run_dir=tmp_path)
    resumed.epoch = 2
    drive([ModelCheckpoint(save_top_k=1, every_n_epochs=2)], rows[2:], resumed, state=state)
    assert files(tmp_path) == ["best.ckpt", "epoch002-0.7000.ckpt", "epoch003-0.9000.ckpt"]


def test_a_resumed_run_keeps_its_best_value(tmp_path):
    # A resume continues "exactly" (STYLE 6): epoch 2's 0.5 is worse than epoch 1's 0.9, best.ckpt stays epoch 1's.
    # Mutant killed: load_state_dict not restoring best_value (the first resumed epoch was taken as best).
    rows = epochs(val_accuracy=[0.9, 0.5])
    cb = ModelCheckpoint(save_top_k=1)
    drive([cb], rows[:1], FakeTrainer(run_dir=tmp_path))
    state = roundtrip(CallbackList([cb]).state_dict())
    resumed = FakeTrainer(run_dir=tmp_path)
    resumed.epoch = 1
    cb2 = ModelCheckpoint(save_top_k=1)
    drive([cb2], rows[1:], resumed, state=state)
    assert (tmp_path / "best.ckpt").read_text() == "epoch 1\n"
    assert (cb2.best_value, cb2.best_epoch) == (0.9, 1)


def test_a_second_fit_with_the_same_callback_starts_afresh(tmp_path):
    # Stateful callbacks reset at the start of training (STYLE 6, Keras' on_train_begin): the second run's best
    # is its own, though worse than the first run's. Mutant killed: on_train_begin without _reset().
    cb = ModelCheckpoint(save_top_k=1)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    drive([cb], epochs(val_accuracy=[0.9]), FakeTrainer(run_dir=tmp_path / "a"))
    drive([cb], epochs(val_accuracy=[0.4]), FakeTrainer(run_dir=tmp_path / "b"))
    assert files(tmp_path / "b") == ["best.ckpt", "epoch001-0.4000.ckpt"]
    assert (cb.best_value, [v for v, _, _ in cb.kept]) == (0.4, [0.4])
    assert files(tmp_path / "a") == ["best.ckpt", "epoch001-0.9000.ckpt"]  # nothing of the first run deleted


def test_from_config_passes_the_mode_on():
    # Mutant killed: from_config dropping checkpoint.mode (val_loss ranked by "auto", that is min, not max).
    cb = ModelCheckpoint.from_config(CheckpointConfig(monitor="val_loss", mode="max", save_top_k=2, every_n_epochs=3,
                                                      filename="e{epoch}.ckpt"))
    assert (cb.monitor, cb.mode, cb.save_top_k, cb.every_n_epochs, cb.filename) == ("val_loss", "max", 2, 3,
                                                                                      "e{epoch}.ckpt")


def test_a_template_naming_the_own_best_file_never_deletes_it(tmp_path):
    # "a name that ... one of the run's own files such as best.ckpt ... has gets -v1": with save_best_as
    # "mine.ckpt" and the template "mine.ckpt", the top-k file is mine-v1.ckpt, and the best file stays.
    # Mutant killed: save_best_as left out of the taken names (epoch 1's top-k file was mine.ckpt, the best file
    # itself, and was deleted as epoch 2 pushed it out of the top k: the best file was gone).
    cb = ModelCheckpoint(save_best_as="mine.ckpt", filename="mine.ckpt", save_top_k=1)
    drive([cb], epochs(val_accuracy=[0.5, 0.7]), FakeTrainer(run_dir=tmp_path))
    # (epoch 2's top-k file is mine-v2.ckpt: mine-v1.ckpt, epoch 1's, was still kept when it was named)
    assert files(tmp_path) == ["mine-v2.ckpt", "mine.ckpt"]
    assert (tmp_path / "mine.ckpt").read_text() == "epoch 2\n"
    assert [p for _, _, p in cb.kept] == ["mine-v2.ckpt"]


@pytest.mark.parametrize("setting", [{"save_top_k": -1}, {"every_n_epochs": -1}])
def test_negative_counts_are_refused(setting):
    # Mutant killed: every_n_epochs < 0 accepted (epoch % -2 == 0 wrote a periodic file every other epoch).
    with pytest.raises(ConfigError, match="must be 0 or more"):
        ModelCheckpoint(**setting)


# ---- History --------------------------------------------------------------------------------------------------


def test_a_resume_from_an_earlier_epoch_drops_the_later_rows_and_writes_none_twice(tmp_path):
    # The docstring: "rows of epochs the checkpoint did not reach are dropped, none is written twice". State rows
    # of epochs 1-4 (a checkpoint from epoch 2, whose
    # History is edited by hand), the run going on from epoch 2: epochs 3 and 4 are written once each.
    # Mutants killed: the rows of this epoch kept (<=: epoch 3 twice), and rows of later epochs kept (!=).
    state = {"rows": [{"epoch": e, "val_loss": 1.0 / e} for e in (1, 2, 3, 4)]}
    trainer = FakeTrainer(run_dir=tmp_path)
    h = History()
    h.on_train_begin(trainer)
    h.load_state_dict(roundtrip(state))
    for epoch, loss in ((3, 0.3), (4, 0.2)):
        h.on_epoch_begin(epoch, trainer)
        h.on_epoch_end(epoch, {"val_loss": loss}, trainer)
        assert [r["epoch"] for r in h.rows] == list(range(1, epoch + 1))
    h.on_train_end({}, trainer)
    assert [(r["epoch"], r["val_loss"]) for r in h.rows] == [(1, 1.0), (2, 0.5), (3, 0.3), (4, 0.2)]
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["epoch,val_loss", "1,1.0", "2,0.5", "3,0.3",
                                                                   "4,0.2"]


def test_a_key_that_appears_in_a_later_epoch_becomes_a_column(tmp_path):
    # The docstring: "keys that appear later are appended" (a callback adding a metric from epoch 2 on).
    # Mutant killed: the columns of the first row only (csv's "dict contains fields not in fieldnames").
    h = History()
    trainer = FakeTrainer(run_dir=tmp_path)
    h.on_train_begin(trainer)
    h.on_epoch_end(1, {"val_loss": 0.5}, trainer)
    h.on_epoch_end(2, {"val_loss": 0.4, "f1": 0.9}, trainer)
    h.on_train_end({}, trainer)
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["val_loss,epoch,f1", "0.5,1,", "0.4,2,0.9"]


def test_the_path_given_is_written_and_a_second_fit_starts_with_no_rows(tmp_path):
    # History(path=...) writes there, not in the run folder (the docstring: "metrics.csv in the run folder" only
    # "without path"); a second fit with the same History starts with no rows (STYLE 6: reset at the start).
    # Mutants killed: the path given ignored (no file at all), and on_train_begin keeping the last fit's rows.
    (tmp_path / "run").mkdir()
    h = History(path=tmp_path / "mine.csv")
    drive([h], epochs(val_loss=[0.5, 0.4]), FakeTrainer(run_dir=tmp_path / "run"))
    assert (tmp_path / "mine.csv").read_text().splitlines()[1:] and files(tmp_path / "run") == []
    h.on_train_begin(FakeTrainer())
    assert h.rows == []


# ---- TimeLimit ------------------------------------------------------------------------------------------------


def test_an_epoch_that_would_end_exactly_at_the_limit_still_runs():
    # The module docstring: training stops "if the next one could end past the limit". 3 s limit, 1 s epochs:
    # after epoch 2, 2 + 1 = 3 s is not past it; after epoch 3, 3 + 1 = 4 s is. Mutant killed: >= for >.
    trainer = FakeTrainer()
    assert drive([TimeLimit(0.05)], epochs(seconds=[1.0] * 5), trainer) == 3



# ---- evaluate() -----------------------------------------------------------------------------------------------


def _tiny(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))


def _split(n=10, seed=1, labels=None):
    from mnistlab.data import Split

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g)
    return Split(images, labels if labels is not None else torch.arange(n) % 10)


def test_the_loss_is_the_mean_over_images_however_the_batches_fall():
    # "mean cross-entropy": 10 images in batches of 4, 4 and 2 weigh alike (the mean of the batches' means
    # weighs the short last batch as a full one; a checkpoint test catches that too, on 10,000 images).
    from mnistlab.training.evaluate import evaluate

    model, split = _tiny(), _split()
    with torch.no_grad():
        logits = model(split.images.float() / 255)
    expected = torch.nn.functional.cross_entropy(logits, split.labels)
    done = []
    ev = evaluate(model, split, batch_size=4, progress=lambda d, total: done.append((d, total)))
    assert ev.loss == pytest.approx(float(expected), rel=1e-6)
    # one progress call a forward pass of at most batch_size images. Mutant killed: rows_per_pass without the
    # min(batch_size, ...) (one pass of all 10: the bar jumped from 0 to done, and memory grew with the split)
    assert done == [(4, 10), (8, 10), (10, 10)]


class _Always(torch.nn.Module):
    """A model that predicts ``cls`` for every image, from 10 outputs."""

    def __init__(self, cls, value=5.0):
        super().__init__()
        self.register_buffer("out", torch.nn.functional.one_hot(torch.tensor(cls), 10).float() * value)

    def forward(self, x):
        return self.out.expand(x.shape[0], 10)


def test_a_label_equal_to_the_output_count_is_refused_as_another_datasets():
    # Labels 0-10 for a model of 10 outputs (classes 0-9): the DataError, not cross-entropy's "Target 10 is out
    # of bounds". Mutant killed: top > outputs for top >= outputs.
    from mnistlab.errors import DataError
    from mnistlab.training.evaluate import evaluate

    with pytest.raises(DataError, match="the labels go up to 10, but the model has 10 outputs"):
        evaluate(_tiny(), _split(11, labels=torch.arange(11)))


def test_a_model_with_non_finite_outputs_scores_no_accuracy():
    # Evaluation.finite: "the accuracies are then NaN, since the argmax of a row of NaNs is class 0".
    # Mutant killed: accuracy computed from the NaN rows (labels of class 0 scored as right).
    from mnistlab.training.evaluate import evaluate

    ev = evaluate(_Always(0, value=float("nan")), _split(4, labels=torch.zeros(4, dtype=torch.long)))
    assert not ev.finite and math.isnan(ev.accuracy) and all(math.isnan(a) for a in ev.per_class_accuracy)


def test_num_classes_larger_than_the_outputs_sizes_the_confusion_matrix():
    # Mutant killed: num_classes ignored where the model has fewer outputs (the matrix took the output count).
    from mnistlab.training.evaluate import evaluate

    ev = evaluate(_tiny(), _split(), num_classes=12)
    assert ev.confusion.shape == (12, 12) and len(ev.per_class_accuracy) == 12
    with pytest.raises(ConfigError, match="num_classes is 9, but the model has 10 outputs"):
        evaluate(_tiny(), _split(9, labels=torch.arange(9)), num_classes=9)


# ---- build_optimizer ------------------------------------------------------------------------------------------


def _built(name, device="cpu", **keys):
    from mnistlab.config import OptimizerConfig
    from mnistlab.training.optim import build_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)  # a frozen layer (finetune.freeze)
    return model, build_optimizer(model.parameters(), OptimizerConfig(name=name, **keys), torch.device(device))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "adagrad", "nadam", "adamax", "rmsprop", "adadelta"])
def test_fused_kernels_where_they_exist_and_only_trainable_parameters(name):
    # The docstring: SGD, Adam, AdamW and Adagrad take the fused step on CPU and CUDA, the others foreach; a frozen
    # parameter is not the optimizer's: finetune.unfreeze_at adds it later as a group of its own, and PyTorch refuses
    # a parameter in two groups. Mutants killed: frozen parameters given to the optimizer, and (also caught by the
    # slower test_the_fused_step_trains_as_the_multi_tensor_one) the fused step on CUDA alone.
    model, opt = _built(name)
    fused = name in ("sgd", "adam", "adamw", "adagrad")
    assert bool(opt.defaults.get("fused")) is fused and bool(opt.defaults.get("foreach")) is not fused
    params = opt.param_groups[0]["params"]
    assert len(params) == 3 and all(p is not model[0].weight for p in params)
    _, other = _built(name, device="meta")  # a device without fused kernels takes foreach
    assert other.defaults.get("foreach") is True and not other.defaults.get("fused")


def test_sgd_starts_its_momentum_from_zeros_and_nesterov_reaches_it():
    # fill_missing_state's docstring: every parameter gets a zero velocity; without momentum none. Mutants killed:
    # the velocity not filled in, and nesterov not passed on.
    _, opt = _built("sgd", momentum=0.8, nesterov=True, weight_decay=0.1)
    assert (opt.defaults["momentum"], opt.defaults["nesterov"], opt.defaults["weight_decay"]) == (0.8, True, 0.1)
    buffers = [opt.state[p]["momentum_buffer"] for p in opt.param_groups[0]["params"]]
    assert len(buffers) == 3 and all(torch.equal(b, torch.zeros_like(b)) for b in buffers)
    _, plain = _built("sgd", momentum=0.0)
    assert not plain.state
    # A velocity stored as None (PyTorch's own SGD state for a step it took without one) is filled in too.
    # Mutant killed: only a missing key filled (the fused step made the None one with empty_like: garbage).
    from mnistlab.training.optim import fill_missing_state

    for p in opt.param_groups[0]["params"]:
        opt.state[p]["momentum_buffer"] = None
    fill_missing_state(opt)
    assert all(torch.equal(opt.state[p]["momentum_buffer"], torch.zeros_like(p)) for p in opt.param_groups[0]["params"])


def test_rmsprop_gets_the_buffers_of_a_resume_that_turns_momentum_and_centered_on():
    # Mutant killed: the centered mean gradient (grad_avg) not filled in (the next step failed on the missing key).
    from mnistlab.training.optim import fill_missing_state

    model, opt = _built("rmsprop")
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()
    opt.param_groups[0]["momentum"], opt.param_groups[0]["centered"] = 0.5, True
    fill_missing_state(opt)
    for p in opt.param_groups[0]["params"]:
        assert torch.equal(opt.state[p]["grad_avg"], torch.zeros_like(p))
        assert torch.equal(opt.state[p]["momentum_buffer"], torch.zeros_like(p))
    opt.step()  # and the step takes them
