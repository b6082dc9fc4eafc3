"""Fine-tuning: --init-from, --freeze and --unfreeze-at on real (small) MNIST with a narrow CNN."""

from __future__ import annotations

import pytest
import torch

from mnistlab.cli import main
from mnistlab.config import Config, apply_overrides, config_to_dict
from mnistlab.errors import CheckpointError, ConfigError
from mnistlab.models import build_model
from mnistlab.training import TrainingInterrupted, read_checkpoint, save_checkpoint, train
from mnistlab.training.finetune import init_from_checkpoint, match_parameters, read_init_checkpoint
from test_resume import InterruptAt

FEATURES = "features"


def small_cfg(root, *overrides):
    return apply_overrides(Config(), [
        f"data.dir={root}", "data.train_limit=600", "data.val_size=200", "model.name=cnn", "model.width=0.25",
        "data.test_limit=2000",  # the final test on 2,000 images: a fifth of its time
        "model.batch_norm=true", "model.hidden=[16]", "model.dropout=0.25", "train.batch_size=100",
        "train.threads=1", "train.epochs=1", "train.progress=false", "tensorboard.enabled=false",
        "schedule.name=constant", "optimizer.lr=0.003", *overrides,
    ])


@pytest.fixture(scope="module")
def source_run(mnist_root, tmp_path_factory):
    """A one-epoch MNIST run to fine-tune from (module-scoped: read-only)."""
    import mnistlab.report

    out = tmp_path_factory.mktemp("source") / "run"
    saved = mnistlab.report.write_run_report
    mnistlab.report.write_run_report = lambda *a, **k: type("R", (), {"path": "(skipped)"})()
    try:
        train(small_cfg(mnist_root, "train.seed=7"), out=out, quiet=True)
    finally:
        mnistlab.report.write_run_report = saved
    return out


def split(state, prefix=FEATURES):
    return ({k: v for k, v in state.items() if k.startswith(prefix + ".")},
            {k: v for k, v in state.items() if not k.startswith(prefix + ".")})


def assert_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class WeightsPerEpoch:
    """Records the weights at the end of every epoch (a callback sees the trainer only through its handle)."""

    def __init__(self):
        self.weights = {}

    def __getattr__(self, hook):
        if hook.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(hook)

    def on_epoch_end(self, epoch, metrics, trainer):
        self.weights[epoch] = trainer.get_weights()

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_frozen_weights_are_bit_identical_and_the_rest_trains(mnist_root, source_run, tmp_path):
    start = read_checkpoint(source_run / "best.ckpt")["model"]
    cfg = small_cfg(mnist_root, f"finetune.init_from={source_run}", f'finetune.freeze=["{FEATURES}"]',
                    "train.epochs=2", "optimizer.weight_decay=0.01", "optimizer.name=adamw")
    result = train(cfg, out=tmp_path / "ft", quiet=True)
    end = read_checkpoint(tmp_path / "ft" / "last.ckpt")
    frozen_start, rest_start = split(start)
    frozen_end, rest_end = split(end["model"])
    # features: weights, biases and (frozen BN runs in inference mode) running statistics, all untouched
    assert any("running_mean" in k for k in frozen_end)
    assert_equal(frozen_start, frozen_end)
    for k in ("classifier.1.weight", "classifier.4.weight", "classifier.4.bias"):
        assert not torch.equal(rest_start[k], rest_end[k]), k
    model = build_model("cnn", width=0.25, batch_norm=True, hidden=[16], dropout=0.25)
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("classifier"))
    assert result.summary["parameters"] == total and result.summary["trainable_parameters"] == head
    # only the classifier's parameters are in the optimizer
    assert [len(g["params"]) for g in end["optimizer"]["param_groups"]] == [4]
    assert end["config"]["finetune"]["freeze"] == [FEATURES]  # the setting travels in the checkpoint
    # it learned: the head on frozen MNIST features still classifies MNIST
    assert result.summary["test_accuracy"] > 0.5


def test_the_start_line_says_how_many_parameters_train(mnist_root, source_run, tmp_path, capsys):
    code = main(["train", "--init-from", str(source_run), "--freeze", "features.0.*, features.4",
                 "--data-dir", str(mnist_root), "--set", "data.train_limit=300", "--set", "data.val_size=100",
                 "--set", "tensorboard.enabled=false", "--set", "train.threads=1", "--epochs", "1",
                 "--out", str(tmp_path / "cli")])
    assert code == 0
    out = capsys.readouterr().out
    model = build_model("cnn", width=0.25, batch_norm=True, hidden=[16], dropout=0.25)
    frozen = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("features.0.", "features.4.")))
    total = sum(p.numel() for p in model.parameters())
    assert f"trainable {total - frozen:,} of {total:,} parameters" in out
    assert f"initialized from {source_run / 'best.ckpt'} (cnn, mnist, epoch 1)" in out
    # without --config the model is the checkpoint's, options included
    stored = read_checkpoint(tmp_path / "cli" / "last.ckpt")["config"]
    assert stored["model"] == config_to_dict(small_cfg(mnist_root))["model"]
    assert stored["finetune"]["freeze"] == ["features.0.*", "features.4"]


def test_unfreeze_at_releases_them_at_that_epoch(mnist_root, source_run, tmp_path, capsys):
    start, _ = split(read_checkpoint(source_run / "best.ckpt")["model"])
    rec = WeightsPerEpoch()
    cfg = small_cfg(mnist_root, f"finetune.init_from={source_run}", f'finetune.freeze=["{FEATURES}"]',
                    "finetune.unfreeze_at=2", "train.epochs=2")
    train(cfg, out=tmp_path / "ft", callbacks=[rec])
    assert_equal(start, split(rec.weights[1])[0])
    after, _ = split(rec.weights[2])
    assert not torch.equal(start["features.0.weight"], after["features.0.weight"])
    assert not torch.equal(start["features.1.running_mean"], after["features.1.running_mean"])  # BN trains again
    groups = read_checkpoint(tmp_path / "ft" / "last.ckpt")["optimizer"]["param_groups"]
    assert [len(g["params"]) for g in groups] == [4, 6]  # the head, then the released conv + BN parameters
    out, err = capsys.readouterr()
    total = sum(p.numel() for p in build_model("cnn", width=0.25, batch_norm=True, hidden=[16]).parameters())
    assert f"epoch 2: unfroze features; trainable {total:,} of {total:,} parameters" in out
    assert "warning" not in err
    # An unfreeze after the last epoch is allowed (the run may be resumed with more epochs) but said.
    train(apply_overrides(cfg, ["finetune.unfreeze_at=3"]), out=tmp_path / "late", quiet=True)
    assert capsys.readouterr().err == (
        "mnistlab train: warning: finetune.unfreeze_at = 3 is after the last epoch (train.epochs = 2): the frozen "
        "parameters do not train in this run; resume with --epochs 3 or more to reach it\n")
    # Resumed with the unfreeze moved past epoch 2, the stored optimizer has a group this run does not: said so.
    with pytest.raises(CheckpointError, match=r"does not fit this config \(.*\); finetune.unfreeze_at was 2, now 4, "
                                              r"which changes whether the frozen parameters have their own optimizer"):
        train(apply_overrides(cfg, ["finetune.unfreeze_at=4", "train.epochs=4"]), resume=tmp_path / "ft", quiet=True)


@pytest.mark.parametrize("cut", ["epoch 1", "epoch 2", "mid-epoch 2"])
def test_resume_across_the_unfreeze_is_exact(mnist_root, source_run, tmp_path, cut):
    """Cut before the unfreeze, right after the epoch it happened in, and inside that epoch (6 batches an epoch)."""
    cfg = small_cfg(mnist_root, f"finetune.init_from={source_run}", f'finetune.freeze=["{FEATURES}"]',
                    "finetune.unfreeze_at=2", "train.epochs=3", "schedule.name=step",
                    "schedule.gamma=0.5")  # a step schedule does not depend on train.epochs, cosine would
    full = train(cfg, out=tmp_path / "full", quiet=True)
    if cut == "mid-epoch 2":
        with pytest.raises(TrainingInterrupted):
            train(cfg, out=tmp_path / "cut", quiet=True, callbacks=[InterruptAt(9)])
        assert read_checkpoint(tmp_path / "cut" / "last.ckpt")["batch"] == 3
    else:
        epochs = int(cut[-1])
        train(apply_overrides(cfg, [f"train.epochs={epochs}"]), out=tmp_path / "cut", quiet=True)
    resumed = train(cfg, resume=tmp_path / "cut", quiet=True)
    assert_equal(read_checkpoint(tmp_path / "full" / "last.ckpt")["model"],
                 read_checkpoint(tmp_path / "cut" / "last.ckpt")["model"])
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert drop(full.fit.history) == drop(resumed.fit.history)


def head_checkpoint(path, *, num_classes=10, in_channels=1, model="cnn", **opts):
    """A checkpoint of a freshly built model, written the way the Trainer writes one."""
    opts = opts or {"width": 0.25, "batch_norm": True, "hidden": [16]}
    torch.manual_seed(3)
    net = build_model(model, num_classes=num_classes, in_channels=in_channels, **opts)
    cfg = apply_overrides(Config(), {"model.name": model, **{f"model.{k}": v for k, v in opts.items()}})
    save_checkpoint(path, {"model_name": model, "config": config_to_dict(cfg), "model": net.state_dict(),
                           "num_classes": num_classes, "in_channels": in_channels, "image_size": [28, 28],
                           "dataset": "other", "epoch": 4})
    return net.state_dict()


def fresh(num_classes=10):
    torch.manual_seed(0)
    return build_model("cnn", num_classes=num_classes, width=0.25, batch_norm=True, hidden=[16],
                       mean=(0.13,), std=(0.31,))


def test_another_dropout_on_or_off_starts_from_the_weights_and_is_refused_on_resume(mnist_root, source_run,
                                                                                    tmp_path):
    # Dropout layers exist only where dropout > 0: without them the classifier's layers are numbered otherwise, and
    # --init-from with model.dropout=0 was "do not fit this model (another architecture or class count?)"; a resume
    # so changed failed the same way, though check_resume lets dropout change.
    import shutil

    source = read_checkpoint(source_run / "best.ckpt")["model"]
    cfg = small_cfg(mnist_root, "model.dropout=0", f"finetune.init_from={source_run}", "train.epochs=1",
                    "train.report=false", "optimizer.lr=1e-12")  # a step too small to move: the weights stay theirs
    mine = train(cfg, out=tmp_path / "no-dropout", quiet=True).fit.model.state_dict()
    assert [k for k in mine if k.startswith("classifier.")] != [k for k in source if k.startswith("classifier.")]
    heads = zip([k for k in source if k.startswith("classifier.")], [k for k in mine if k.startswith("classifier.")])
    assert all(torch.allclose(source[a], mine[b], atol=1e-6) for a, b in heads)
    with pytest.raises(ConfigError, match=r"model.dropout was 0.25, now 0.0: turning dropout off removes the "
                                          r"classifier's Dropout layers, .* resume with another model.dropout above 0"):
        run = shutil.copytree(source_run, tmp_path / "resumed")  # the fixture is shared: resumed as a copy
        train(small_cfg(mnist_root, "model.dropout=0", "train.epochs=2", "train.seed=7"), resume=run, quiet=True)


def test_a_different_class_count_replaces_the_output_layer(tmp_path):
    theirs = head_checkpoint(tmp_path / "five.ckpt", num_classes=5)
    model = fresh()
    built = {k: v.clone() for k, v in model.state_dict().items()}
    note = init_from_checkpoint(model, read_init_checkpoint(tmp_path / "five.ckpt")[1], model_name="cnn",
                                num_classes=10, in_channels=1, image_size=(28, 28), source="five.ckpt")
    assert model.output_layer == "classifier.2"
    assert "new output layer classifier.2 for 10 classes (the checkpoint has 5)" in note
    mine = model.state_dict()
    for k in mine:
        if k.startswith("classifier.2.") or k in ("mean", "std"):  # as built: fresh head, this data's statistics
            assert torch.equal(mine[k], built[k]), k
        else:
            assert torch.equal(mine[k], theirs[k]), k
    assert float(mine["mean"]) == pytest.approx(0.13)


def test_a_replaced_output_layer_that_the_freeze_holds_for_the_whole_run_is_refused(tmp_path, mnist_small,
                                                                                     mnist_root):
    # It kept its random start: the run trained the rest around a random head, to chance accuracy, without a word
    from mnistlab.training.run import load_init

    head_checkpoint(tmp_path / "five.ckpt", num_classes=5)
    five = read_init_checkpoint(tmp_path / "five.ckpt")
    for freeze in ('["classifier"]', '["*"]', '["classifier.2.weight"]'):
        cfg = small_cfg(mnist_root, f"finetune.freeze={freeze}")
        with pytest.raises(ConfigError, match=r"finetune.freeze holds classifier.2.weight.*the output layer that "
                                              r"init_from replaces for 10 classes \(the checkpoint has 5\)"):
            load_init(fresh(), cfg, mnist_small, five)
    # released later, or not held, or the checkpoint's own head kept: as before
    for extra in (['finetune.freeze=["*"]', "finetune.unfreeze_at=2", "train.epochs=2"],
                  ['finetune.freeze=["features"]']):
        assert "new output layer classifier.2" in load_init(fresh(), small_cfg(mnist_root, *extra), mnist_small, five)
    head_checkpoint(tmp_path / "ten.ckpt")
    ten = read_init_checkpoint(tmp_path / "ten.ckpt")
    load_init(fresh(), small_cfg(mnist_root, 'finetune.freeze=["*"]'), mnist_small, ten)


def test_the_same_class_count_copies_the_output_layer_too(tmp_path):
    theirs = head_checkpoint(tmp_path / "ten.ckpt")
    model = fresh()
    init_from_checkpoint(model, read_init_checkpoint(tmp_path / "ten.ckpt")[1], model_name="cnn",
                         num_classes=10, in_channels=1, image_size=(28, 28))
    assert torch.equal(model.state_dict()["classifier.2.weight"], theirs["classifier.2.weight"])


def test_unfitting_checkpoints_are_clear_errors(tmp_path):
    head_checkpoint(tmp_path / "rgb.ckpt", in_channels=3)
    with pytest.raises(CheckpointError, match=r"shapes differ: features\.0\.weight .*trained on 3x28x28 images "
                                              r"and this data is 1x28x28"):
        init_from_checkpoint(fresh(), read_init_checkpoint(tmp_path / "rgb.ckpt")[1], model_name="cnn",
                             num_classes=10, in_channels=1, image_size=(28, 28))
    head_checkpoint(tmp_path / "lenet.ckpt", model="lenet5", width=0.5)
    with pytest.raises(CheckpointError, match="holds a 'lenet5' model but the config asks for 'cnn'; use --model lenet5"):
        init_from_checkpoint(fresh(), read_init_checkpoint(tmp_path / "lenet.ckpt")[1], model_name="cnn",
                             num_classes=10, in_channels=1, image_size=(28, 28))
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(CheckpointError, match="run folder .*empty-run has no best.ckpt"):
        read_init_checkpoint(tmp_path / "empty-run")
    data = bytearray((tmp_path / "rgb.ckpt").read_bytes())
    (tmp_path / "bad.ckpt").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_init_checkpoint(tmp_path / "bad.ckpt")


def test_a_pattern_that_matches_nothing_lists_the_layers():
    model = fresh()
    assert match_parameters(model, ["features.0.*"]) == ["features.0.weight"]  # BN follows, so no conv bias
    assert match_parameters(model, ["classifier.2"]) == ["classifier.2.weight", "classifier.2.bias"]
    eleven = torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(11)])
    assert match_parameters(eleven, ["1"]) == ["1.weight", "1.bias"]  # a prefix ends at a dot: not 10.weight
    assert len(match_parameters(eleven, ["1*"])) == 4  # a glob's * crosses anything: 1.* and 10.*
    with pytest.raises(ConfigError, match=r"'feature' matches no parameter; the model's layers are "
                                          r"features\.\{0,1,4,5\}, classifier\.\{0,2\}"):
        match_parameters(model, ["feature"])


def test_freeze_and_unfreeze_at_flags_combine_with_each_other_and_with_set():
    from mnistlab.cli import _parser, _train_config

    for argv in (["--freeze", "features", "--unfreeze-at", "3"],
                 ["--unfreeze-at", "3", "--set", 'finetune.freeze=["features"]'],
                 ["--freeze", "features", "--set", "finetune.unfreeze_at=3"]):
        cfg = _train_config(_parser().parse_args(["train", *argv]))
        assert (cfg.finetune.freeze, cfg.finetune.unfreeze_at) == (("features",), 3), argv


def test_bad_finetune_settings_are_clear_errors(mnist_root, source_run, tmp_path, capsys):
    with pytest.raises(ConfigError, match="unfreeze_at needs finetune.freeze"):
        apply_overrides(Config(), ["finetune.unfreeze_at=2"])
    with pytest.raises(ConfigError, match="unfreeze_at must be 2 or more"):
        apply_overrides(Config(), ['finetune.freeze=["features"]', "finetune.unfreeze_at=1"])
    assert main(["train", "--init-from", str(source_run), "--freeze", "head", "--data-dir", str(mnist_root),
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "finetune.freeze pattern 'head' matches no parameter" in err and not (tmp_path / "x").exists()
    assert main(["train", "--resume", str(source_run), "--init-from", str(source_run)]) == 2
    assert "--init-from cannot be combined with --resume" in capsys.readouterr().err
    # --out with --resume was ignored: the run went on in its own folder and the one named never appeared
    assert main(["train", "--resume", str(source_run), "--out", str(tmp_path / "elsewhere")]) == 2
    assert "--out cannot be combined with --resume" in capsys.readouterr().err
    assert main(["train", "--out", ""]) == 2  # was: the run's files written into the current folder
    assert "--out needs a folder name" in capsys.readouterr().err
    assert main(["train", "--init-from", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "y")]) == 2
    assert "missing.ckpt does not exist" in capsys.readouterr().err


def test_freezing_everything_or_another_set_on_resume_is_refused(mnist_root, source_run, tmp_path, capsys):
    common = ["--data-dir", str(mnist_root), "--set", "data.train_limit=600", "--set", "data.val_size=200"]
    # an empty optimizer ended in a ValueError traceback
    assert main(["train", "--init-from", str(source_run), "--freeze", "*", "--epochs", "2", "--unfreeze-at", "2",
                 *common, "--out", str(tmp_path / "all")]) == 2
    err = capsys.readouterr().err
    assert "holds every parameter of the model: nothing would train before epoch 2" in err
    assert not (tmp_path / "all").exists()
    # a resume with another frozen set drove one tensor's update with another's Adam moments
    run = tmp_path / "run"
    assert main(["train", "--init-from", str(source_run), "--freeze", "features.0", *common, "--quiet",
                 "--set", "tensorboard.enabled=false", "--out", str(run)]) == 0
    before = (run / "last.ckpt").read_bytes()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--freeze", "classifier"]) == 2
    assert "finetune.freeze was ['features.0'], now ['classifier']" in capsys.readouterr().err
    assert (run / "last.ckpt").read_bytes() == before


def test_batch_norm_with_one_image_per_batch_is_refused(mnist_small):
    from mnistlab.training.fit import Trainer

    cfg = apply_overrides(Config(), ["model.name=cnn", "model.width=0.25", "model.batch_norm=true",
                                     "train.batch_size=1", "train.device=cpu", "train.progress=false"])
    model = build_model("cnn", **cfg.model.options())
    with pytest.raises(ConfigError, match="train.batch_size 1 leaves batch norm one image per process"):
        Trainer(model, mnist_small, cfg)


def test_set_finetune_init_from_is_the_flag(mnist_root, source_run, tmp_path, capsys):
    # --set finetune.init_from=RUN kept the default model (fast), so the run's cnn weights did not fit it, where
    # --init-from RUN took the model from the checkpoint, as the README says both do.
    from mnistlab.cli import _parser, _train_config

    cfg = _train_config(_parser().parse_args(["train", "--set", f"finetune.init_from={source_run}"]))
    assert (cfg.model.name, cfg.model.width, cfg.finetune.init_from) == ("cnn", 0.25, str(source_run))
    # with --resume it was taken, ignored and written into config.toml as the run's start
    import shutil

    run = shutil.copytree(source_run, tmp_path / "run")
    before = (run / "last.ckpt").read_bytes()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--set", f"finetune.init_from={source_run}"]) == 2
    assert "finetune.init_from cannot be changed on --resume (the run started from new weights)" in \
        capsys.readouterr().err
    assert (run / "last.ckpt").read_bytes() == before


def test_set_finetune_init_from_takes_a_run_folder_named_like_a_number(source_run, tmp_path, monkeypatch):
    # TOML read `--set finetune.init_from=2024` as the number 2024: the default model was built, not the run's
    from mnistlab.cli import _parser, _train_config
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(source_run, tmp_path / "2024")
    cfg = _train_config(_parser().parse_args(["train", "--set", "finetune.init_from=2024"]))
    assert (cfg.model.name, cfg.model.width, cfg.finetune.init_from) == ("cnn", 0.25, "2024")


def test_a_checkpoint_path_starting_with_a_tilde_is_in_the_home_folder(source_run, tmp_path, monkeypatch):
    # `--init-from=~/runs/a` (no shell expands that ~), a config's init_from = "~/runs/a", load_model("~/...")
    # said "checkpoint ~/runs/a does not exist", where data.dir's ~ was the home folder
    import shutil

    from mnistlab.training.checkpoint import checkpoint_file, resume_file

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(source_run, tmp_path / "runs" / "a")
    assert read_init_checkpoint("~/runs/a")[0] == tmp_path / "runs" / "a" / "best.ckpt"
    assert checkpoint_file("~/runs/a/last.ckpt") == tmp_path / "runs" / "a" / "last.ckpt"
    assert resume_file("~/runs/a") == tmp_path / "runs" / "a" / "last.ckpt"  # --resume=~/runs/a


def test_a_relative_init_from_is_stored_as_an_absolute_path(tmp_path, monkeypatch):
    # config.toml rerun from another folder started from another run's weights, or failed
    from mnistlab.training.run import _absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = _absolute_paths(apply_overrides(Config(), ["finetune.init_from=runs/a", "data.dir=data"]))
    assert (cfg.finetune.init_from, cfg.data.dir) == (str(tmp_path / "runs" / "a"), str(tmp_path / "data"))
    assert _absolute_paths(apply_overrides(Config(), ["finetune.init_from=~/a"])).finetune.init_from == "~/a"


def test_init_from_with_other_model_options_names_them(mnist_root, source_run, tmp_path, capsys):
    # The shapes that differ were listed, but not the setting behind them: model.width = 0.5 on a run trained
    # at 0.25 gave "another architecture or class count?" and tensor names.
    assert main(["train", "--init-from", str(source_run), "--set", "model.width=0.5", "--data-dir", str(mnist_root),
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "shapes differ: features.0.weight" in err, err
    assert err.rstrip().endswith("[model] options differ from the checkpoint's: width = 0.5 (its: 0.25)"), err
