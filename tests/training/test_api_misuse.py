"""The Python API used the wrong way: each mistake a user can make is one clear error before anything trains,
and what the README and docstrings show works as shown."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mnistlab
from mnistlab import Callback, Config, apply_overrides, build_model, evaluate, fit, train
from mnistlab.callbacks import EarlyStopping, ModelCheckpoint
from mnistlab.errors import ConfigError, RunDirError
from mnistlab.models import _registry, register
from mnistlab.models.cnn import make_cnn


def tiny_cfg(mnist_root, *extra: str) -> Config:
    return apply_overrides(Config(), [f"data.dir={mnist_root}", "data.val_size=500", "data.train_limit=500",
                                      "data.test_limit=2000",  # the final test on 2,000 images: a fifth of its time
                                      "train.epochs=1", "train.progress=false", "tensorboard.enabled=false",
                                      "model.name=cnn", "model.width=0.25", *extra])


def small_model(data):
    return build_model("cnn", width=0.25, mean=data.mean, std=data.std)


class CountBatches(Callback):
    def __init__(self):
        self.batches = 0

    def on_batch_end(self, step, metrics, trainer):
        self.batches += 1


class StopAt(Callback):  # the README's example
    def __init__(self, target):
        self.target = target

    def on_epoch_end(self, epoch, metrics, trainer):
        if metrics["val_accuracy"] >= self.target:
            trainer.request_stop(f"val_accuracy reached {self.target}")


def test_a_model_takes_the_splits_uint8_images_as_evaluate_does(mnist_small):
    # load_model's docstring: model.classes[model(images).argmax(1)[0]]. The splits hold uint8 images; the model
    # normalized their 0-255 values as if they were in [0, 1] (logits ~250x too large, other classes).
    torch.manual_seed(0)
    model = small_model(mnist_small).eval()
    images = mnist_small.val.images[:64]
    with torch.no_grad():
        assert torch.allclose(model(images), model(images.float() / 255), atol=1e-5)
    with pytest.raises(TypeError, match=r"images must be uint8 \(0-255\) or floating point in \[0, 1\], got torch.int64"):
        model(images.long())
    with pytest.raises(TypeError, match=r"images must be a torch.Tensor, got ndarray: torch.from_numpy\(array\)"):
        model(np.zeros((1, 1, 28, 28), dtype=np.float32))


def test_callbacks_that_cannot_be_called_are_refused_before_anything_trains(mnist_small, mnist_root, tmp_path):
    cfg = tiny_cfg(mnist_root)

    class OnlyEpochEnd:  # not a Callback, and without the other hooks
        def on_epoch_end(self, epoch, metrics, trainer):
            pass

    cases = [
        (StopAt(0.5), r"callbacks must be a list of callbacks, e.g. callbacks=\[cb\], got StopAt \(put it in a list\)"),
        ([StopAt], r"callbacks\[0\] is the class StopAt, not a callback: pass an instance, StopAt\(...\)"),
        ([EarlyStopping], r"callbacks\[0\] is the class EarlyStopping"),
        ([CountBatches(), object()], r"callbacks\[1\] \(object\) is not a callback: it lacks on_train_begin"),
        ([OnlyEpochEnd()], r"callbacks\[0\] \(OnlyEpochEnd\) is not a callback: it lacks on_train_begin, "
                           r"on_train_end, on_epoch_begin, on_batch_begin, on_batch_end, on_validation_end, "
                           r"state_dict, load_state_dict; subclass mnistlab.Callback"),
    ]
    for callbacks, message in cases:
        with pytest.raises(TypeError, match=message):
            fit(small_model(mnist_small), mnist_small, cfg, callbacks=callbacks)
        with pytest.raises(TypeError, match=message):
            train(cfg, out=tmp_path / "run", callbacks=callbacks, quiet=True)
        assert not (tmp_path / "run").exists()


def test_a_config_that_is_not_a_config_is_refused_before_anything_trains(mnist_small, mnist_root, tmp_path):
    model = small_model(mnist_small)
    with pytest.raises(TypeError, match=r"fit\(\): the config must be a mnistlab.Config \(.*config_from_dict"
                                        r"\(\{...\}\)\), got dict"):
        fit(model, mnist_small, {"train": {"epochs": 1}})
    with pytest.raises(TypeError, match=r"fit\(\): the config must be a mnistlab.Config .*, got DataBundle"):
        fit(model, tiny_cfg(mnist_root), mnist_small)  # data and config swapped
    # Config() took a dict for a section as it was; it trained on, or failed deep inside, with an AttributeError
    for section in ("train", "schedule"):
        with pytest.raises(ConfigError, match=rf"Config\({section}=...\) takes a \w+Config, got dict: .*"
                                              "config_from_dict"):
            Config(**{section: {"epochs": 1}})
    with pytest.raises(TypeError, match=r"fit\(\): the model must be a torch.nn.Module .*, got str"):
        fit("cnn", mnist_small, tiny_cfg(mnist_root))
    with pytest.raises(TypeError, match=r"fit\(\): the data must be a DataBundle, from load_data\(cfg.data\), got Split"):
        fit(model, mnist_small.train, tiny_cfg(mnist_root))


def test_a_model_with_another_number_of_outputs_is_refused_before_training(mnist_small, mnist_root):
    cfg = tiny_cfg(mnist_root)
    for outputs in (5, 20):  # 5: PyTorch's "Target 5 is out of bounds" in the first step; 20: it trained
        model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, outputs))
        count = CountBatches()
        with pytest.raises(ConfigError, match=rf"the model must output one row of 10 logits per image \(mnist has 10 "
                                              rf"classes\): for 2 images it gave \(2, {outputs}\); build it with "
                                              rf"num_classes=10"):
            fit(model, mnist_small, cfg, callbacks=[count])
        assert count.batches == 0
    wrong_input = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10))  # made for 32x32 images
    with pytest.raises(ConfigError, match=r"the model cannot take the data's images \(mnist: 1 x 28 x 28, floats in "
                                          r"\[0, 1\]\): RuntimeError: mat1 and mat2"):
        fit(wrong_input, mnist_small, cfg)
    fit(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)), mnist_small, cfg)  # any module with the right outputs


def test_evaluate_given_the_whole_data_bundle_says_which_split_to_pass(mnist_small):
    with pytest.raises(TypeError, match=r"evaluate\(\) takes a split with images and labels, such as data.test, got "
                                        r"DataBundle \(a whole DataBundle: pass one of its splits"):
        evaluate(small_model(mnist_small), mnist_small)


def test_evaluate_refuses_labels_the_model_has_no_output_for(mnist_small):
    # cross-entropy's "Target 12 is out of bounds" said nothing of a split from another dataset
    from mnistlab.data import Split
    from mnistlab.errors import DataError

    model, test = small_model(mnist_small), mnist_small.test
    images = test.images[:20]
    for labels, message in [(torch.full((20,), 12), r"the labels go up to 12, but the model has 10 outputs "
                                                    r"\(classes 0 to 9\): the split is of another dataset"),
                            (torch.full((20,), -1), r"the labels must be class indices from 0, got -1")]:
        for shift in (0, 1):
            with pytest.raises(DataError, match=message):
                evaluate(model, Split(images, labels), tta_shift=shift)
    ev = evaluate(model, Split(images, test.labels[:20]))
    assert ev.labels.numel() == 20 and not ev.probabilities.requires_grad  # no autograd graph built


def test_a_registered_builder_must_return_a_net_and_may_be_registered_again(mnist_small):
    names = ["api_misuse_plain", "api_misuse_tiny"]
    try:
        @register(names[0])
        def plain(*, num_classes, in_channels, image_size):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size[0] * image_size[1], num_classes))

        # It failed with "'Sequential' object has no attribute 'set_normalization'".
        with pytest.raises(TypeError, match=r"the builder of model 'api_misuse_plain' \(.*plain\) returned a "
                                            r"Sequential, not a mnistlab.models.Net"):
            build_model(names[0])

        def define_tiny(channels):  # a notebook cell run twice defines the same function again
            @register(names[1])
            def tiny(*, num_classes, in_channels, image_size, width: float = 1.0):
                return make_cnn("tiny", num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                                channels=channels, kernel_sizes=[3, 3], paddings=[1, 1], width=width)

        define_tiny([4, 8])
        define_tiny([6, 8])  # raised "model 'api_misuse_tiny' is registered twice (... and ...)"
        assert build_model(names[1]).features[0].out_channels == 6

        with pytest.raises(ValueError, match=r"model 'api_misuse_tiny' is registered twice \(.*define_tiny.<locals>"
                                             r".tiny and .*other\)"):
            @register(names[1])
            def other(*, num_classes, in_channels, image_size):
                return build_model("cnn", num_classes=num_classes)
    finally:
        for name in names:
            _registry._REGISTRY.pop(name, None)


def test_model_checkpoint_without_a_folder_fails_before_training_and_makes_its_dirpath(mnist_small, mnist_root,
                                                                                       tmp_path):
    cfg = tiny_cfg(mnist_root)
    count = CountBatches()
    # It trained a whole epoch, then failed in save_checkpoint ("needs an absolute path when the run has no folder")
    with pytest.raises(ConfigError, match=r"ModelCheckpoint has nowhere to write: the run has no folder and no "
                                          r"dirpath was given; give fit\(..., run_dir=FOLDER\)"):
        fit(small_model(mnist_small), mnist_small, cfg, callbacks=[count, ModelCheckpoint()])
    assert count.batches == 0
    # A dirpath that does not exist yet is made (it failed writing best.ckpt after the first epoch), as Keras' is.
    folder = tmp_path / "not" / "yet"
    fit(small_model(mnist_small), mnist_small, cfg, callbacks=[ModelCheckpoint(dirpath=folder)])
    assert "best.ckpt" in {p.name for p in folder.iterdir()}
    fit(small_model(mnist_small), mnist_small, cfg, callbacks=[ModelCheckpoint(dirpath="keep")],
        run_dir=tmp_path / "run")
    assert "best.ckpt" in {p.name for p in (tmp_path / "run" / "keep").iterdir()}


def test_the_interruption_train_raises_can_be_caught_from_the_package(mnist_root, tmp_path):
    # The README: "In Python, train() raises TrainingInterrupted"; `from mnistlab import TrainingInterrupted` failed.
    import os
    import signal

    class CtrlC(Callback):
        def on_batch_end(self, step, metrics, trainer):
            if step == 1:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(mnistlab.TrainingInterrupted, match="resume with"):
        train(tiny_cfg(mnist_root), out=tmp_path / "run", callbacks=[CtrlC()], quiet=True)
    assert "TrainingInterrupted" in mnistlab.__all__


def test_fit_holds_its_run_folders_lock_as_train_does(mnist_small, mnist_root, tmp_path):
    # fit(run_dir=...) took no lock: a train() or a second fit() into the same folder mixed their last.ckpt and
    # best.ckpt with its own.
    from mnistlab.training.run import RunLock

    cfg = tiny_cfg(mnist_root)
    folder = tmp_path / "run"
    seen = []

    class TryTheFolder(Callback):
        def on_epoch_end(self, epoch, metrics, trainer):
            with pytest.raises(RunDirError, match="in use by another mnistlab run in this process"):
                train(cfg, out=folder, quiet=True)
            seen.append((folder / "run.lock").is_file())

    fit(small_model(mnist_small), mnist_small, cfg, callbacks=[TryTheFolder()], run_dir=folder)
    assert seen == [True]
    assert not (folder / "run.lock").exists()  # released at the end
    with RunLock(folder), pytest.raises(RunDirError, match="in use by another mnistlab run in this process"):
        fit(small_model(mnist_small), mnist_small, cfg, run_dir=folder)
    # free again, it holds a run: refused as train(out=...) refuses it (fit replaced its last.ckpt, leaving the
    # first run's best.ckpt and metrics.csv beside it)
    with pytest.raises(RunDirError, match=r"already holds a run; continue it with `mnistlab train --resume .*` or "
                                          r"pass another run_dir"):
        fit(small_model(mnist_small), mnist_small, cfg, run_dir=folder)
    with pytest.raises(RunDirError, match="already holds a run"):
        train(cfg, out=folder, quiet=True)
    # ... before the caller's model takes finetune.init_from's weights (they were loaded into it, then refused)
    model = small_model(mnist_small)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RunDirError, match="already holds a run"):
        fit(model, mnist_small, apply_overrides(cfg, [f"finetune.init_from={folder / 'last.ckpt'}"]), run_dir=folder)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fit_in_a_script_torchrun_starts_says_to_call_train(mnist_small, monkeypatch, tmp_path):
    # Each process trained alone on all the data, and every one wrote the same run folder.
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=r"fit\(\) trains in this process alone, and torchrun started 2: call "
                                          r"train\(cfg, callbacks=\[...\]\) in the script"):
        fit(small_model(mnist_small), mnist_small, Config(), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: a plain run
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    cfg = apply_overrides(Config(), ["train.epochs=1", "model.name=cnn", "model.width=0.25"])
    assert fit(small_model(mnist_small), mnist_small, cfg).epochs == 1


def test_numpy_numbers_from_callbacks_reach_the_checkpoints_as_plain_numbers(mnist_root, tmp_path):
    # Keras' logs["f1"] = f1_score(...), set_lr(np.float64), restore_weights(np.argmax(...) + 1, ...): each put a
    # NumPy number into the checkpoints, which weights_only=True then refused: the final test, load_model and
    # every resume failed, and all the training was lost.
    from mnistlab.training import read_checkpoint

    class NumpyUser(Callback):
        def on_epoch_end(self, epoch, metrics, trainer):
            metrics["f1"] = np.float64(0.5)
            trainer.set_lr(np.float64(trainer.lr))
            self.best = trainer.get_weights()

        def on_train_end(self, metrics, trainer):
            trainer.restore_weights(np.int64(2), self.best)

    cfg = tiny_cfg(mnist_root, "train.epochs=2")
    run = train(cfg, out=tmp_path / "run", callbacks=[NumpyUser()], quiet=True)
    assert run.test.accuracy > 0.1  # the final test read best.ckpt
    stored = read_checkpoint(tmp_path / "run" / "last.ckpt")
    assert [type(row["f1"]) for row in stored["history"]] == [float, float] and type(stored["lr_scale"]) is float
    assert type(read_checkpoint(tmp_path / "run" / "best.ckpt")["epoch"]) is int
    train(apply_overrides(cfg, ["train.epochs=3"]), resume=tmp_path / "run", quiet=True)


def test_what_checkpoints_cannot_hold_is_refused_where_a_callback_gives_it(mnist_root, tmp_path):
    import datetime

    class Stamp(Callback):
        def on_epoch_end(self, epoch, metrics, trainer):
            metrics["when"] = datetime.datetime.now()

    with pytest.raises(ConfigError, match="a callback put into the epoch's metrics what checkpoints cannot hold"):
        train(tiny_cfg(mnist_root), out=tmp_path / "a", callbacks=[Stamp()], quiet=True)

    class Rate(Callback):
        def __init__(self, lr):
            self.lr = lr

        def on_epoch_end(self, epoch, metrics, trainer):
            trainer.set_lr(self.lr)

    for lr in (-0.01, float("nan"), float("inf")):  # last.ckpt held a scale that every resume called damaged
        with pytest.raises(ValueError, match=r"set_lr: the rate must be a finite number of 0 or more, got"):
            train(tiny_cfg(mnist_root), out=tmp_path / f"lr{lr}", callbacks=[Rate(lr)], quiet=True)

    class DatedState(Callback):  # a state checked at the first checkpoint left config.toml and metrics.csv behind
        def state_dict(self):
            return {"started": datetime.date(2026, 1, 1)}

    with pytest.raises(ConfigError, match=r"callback DatedState: its state_dict\(\) holds objects"):
        train(tiny_cfg(mnist_root), out=tmp_path / "dated", callbacks=[DatedState()], quiet=True)
    assert not (tmp_path / "dated" / "config.toml").exists()


def test_fit_checks_the_config_describes_the_model_wherever_a_checkpoint_may_be_written(mnist_small, mnist_root,
                                                                                      tmp_path):
    # Without run_dir, a ModelCheckpoint (or a callback's save_checkpoint) wrote files labelled with the config's
    # model: lenet5 padded by 3 under a config of lenet5's 2 loaded back as the other network, without an error.
    from mnistlab.training import load_model

    other = build_model("lenet5", width=0.25, padding=3, mean=mnist_small.mean, std=mnist_small.std)
    cfg = tiny_cfg(mnist_root, "model.name=lenet5")
    count = CountBatches()
    with pytest.raises(ConfigError, match=r"fit\(\): the config describes another model than the one given"):
        fit(other, mnist_small, cfg, callbacks=[count, ModelCheckpoint(dirpath=tmp_path / "mc")])
    assert count.batches == 0

    class Save(Callback):
        def __init__(self, path):
            self.path = path

        def on_epoch_end(self, epoch, metrics, trainer):
            trainer.save_checkpoint(self.path)

    with pytest.raises(ConfigError, match=r"save_checkpoint: the config describes another model .* give fit\(\) "
                                          r"the config that describes the model"):
        fit(other, mnist_small, cfg, callbacks=[Save(tmp_path / "x.ckpt")])
    # the model the config describes: saved, into a folder made for it, and loaded back as that network
    model = build_model("lenet5", width=0.25, mean=mnist_small.mean, std=mnist_small.std)
    result = fit(model, mnist_small, cfg, callbacks=[Save(tmp_path / "new" / "x.ckpt")])
    assert not result.model.training  # back in eval mode, ready to predict with
    images = mnist_small.val.images[:16]
    with torch.no_grad():
        assert torch.allclose(load_model(tmp_path / "new" / "x.ckpt")(images), model(images), atol=1e-5)
    # and without writing, any model trains under any config (the README's example)
    fit(other, mnist_small, cfg)


def test_fit_starts_from_finetune_init_from_as_train_does(mnist_small, mnist_root, tmp_path):
    # fit() applied finetune.freeze but not init_from: the frozen layers kept their random weights
    from mnistlab.training import read_checkpoint

    train(tiny_cfg(mnist_root), out=tmp_path / "first", quiet=True)
    start = {}

    class Look(Callback):
        def on_train_begin(self, trainer):
            start.update(trainer.get_weights())

    cfg = tiny_cfg(mnist_root, f"finetune.init_from={tmp_path / 'first'}", "finetune.freeze=[\"features\"]")
    fit(small_model(mnist_small), mnist_small, cfg, callbacks=[Look()])
    best = read_checkpoint(tmp_path / "first" / "best.ckpt")["model"]
    # every weight; the input normalization is the new data's, as train() keeps it
    assert all(torch.equal(start[k], best[k]) for k in best if k not in ("mean", "std"))


def test_a_resume_with_other_model_options_is_refused_even_where_the_tensors_fit(mnist_root, tmp_path):
    # lenet5's padding of 3 or 2 gives the same tensors: the resume trained on with the other network
    cfg = tiny_cfg(mnist_root, "model.name=lenet5", "model.padding=3", "model.dropout=0.25", "schedule.name=constant")
    train(cfg, out=tmp_path / "run", quiet=True)
    with pytest.raises(ConfigError, match=r"model.padding was 3, now None: the run trained another network"):
        train(apply_overrides(cfg, ["model.padding=none", "train.epochs=2"]), resume=tmp_path / "run", quiet=True)
    train(apply_overrides(cfg, ["model.dropout=0.5", "train.epochs=2"]), resume=tmp_path / "run", quiet=True)
