"""The weight average (EMA), test-time augmentation and ensembles: what they compute, and that they save and load."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mnistlab.cli import main
from mnistlab.config import Config, apply_overrides
from mnistlab.data import load_data
from mnistlab.data.augment import shift_images
from mnistlab.errors import CheckpointError, ConfigError
from mnistlab.training import read_checkpoint, train
from mnistlab.training.checkpoint import checkpoint_file, load_model, save_checkpoint
from mnistlab.training.ema import WeightAverage
from mnistlab.training.ensemble import evaluate_ensemble
from mnistlab.training.evaluate import evaluate


def small_cfg(root, *overrides):
    return apply_overrides(Config(), [
        f"data.dir={root}", "data.train_limit=1000", "data.val_size=500", "model.name=cnn", "model.channels=[4, 8]",
        "data.test_limit=2000",  # the final test on 2,000 images: a fifth of its time
        "model.batch_norm=true", "train.batch_size=100", "train.threads=1", "train.progress=false",
        "tensorboard.enabled=false", "ema.enabled=true", "ema.decay=0.9", *overrides,
    ])


# ---- WeightAverage as a unit ------------------------------------------------------------


def test_the_average_follows_the_formula_for_weights_and_batch_norm_buffers():
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = WeightAverage(net, decay=0.75, warmup=False)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()(torch.randn(8, 3))  # moves the running statistics and num_batches_tracked
    ema.update(net)
    now, theirs = ema.module.state_dict(), net.state_dict()
    for k, v in now.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.75 * before[k] + 0.25 * theirs[k])
        else:
            assert torch.equal(v, theirs[k])  # num_batches_tracked is copied
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training


def test_warmup_starts_fast_and_reaches_the_decay():
    ema = WeightAverage(nn.Linear(1, 1), decay=0.999, warmup=True)
    decays = []
    for _ in range(10_000):
        decays.append(ema.current_decay())
        ema.updates += 1
    assert decays[0] == pytest.approx(0.1) and decays[-1] == 0.999
    assert all(a <= b for a, b in zip(decays, decays[1:]))


# ---- in a run -----------------------------------------------------------------------------


def test_a_run_with_ema_saves_the_average_of_its_best_epoch_as_a_model(mnist_root, tmp_path):
    result = train(small_cfg(mnist_root, "train.epochs=3"), out=tmp_path / "run", quiet=True)
    history = result.fit.history
    assert all("ema_val_accuracy" in row and "ema_val_loss" in row for row in history)
    ema_ckpt = read_checkpoint(tmp_path / "run" / "ema.ckpt")
    best_epoch = max(history, key=lambda r: r["ema_val_accuracy"])["epoch"]  # the first of equals wins
    assert ema_ckpt["epoch"] == best_epoch == result.summary["ema_best_epoch"]
    assert "optimizer" not in ema_ckpt  # a model to use, not a resume state
    raw = read_checkpoint(tmp_path / "run" / "last.ckpt")["model"]
    assert any(not torch.equal(raw[k], ema_ckpt["model"][k]) for k in raw)  # the average is not the weights

    model = load_model(tmp_path / "run" / "ema.ckpt")
    ev = evaluate(model, load_data(small_cfg(mnist_root).data).test)
    assert ev.accuracy == result.summary["ema_test_accuracy"]

    # Resumed with another checkpoint.monitor, ema.ckpt is chosen afresh on the new one, not by comparing an
    # ema_val_loss with the best ema_val_accuracy ("max" makes the loss lose that comparison).
    cfg = small_cfg(mnist_root, "train.epochs=4", "checkpoint.monitor=val_loss", "checkpoint.mode=max")
    resumed = train(cfg, resume=tmp_path / "run", quiet=True)
    assert resumed.fit.history[3]["ema_val_loss"] < max(r["ema_val_accuracy"] for r in history)
    assert read_checkpoint(tmp_path / "run" / "ema.ckpt")["epoch"] == 4


@pytest.mark.parametrize("monitor", ["val_loss", "ema_val_loss"])
def test_ema_ckpt_is_chosen_on_the_averages_value_of_the_checkpoint_monitor(mnist_root, tmp_path, monitor):
    # best.ckpt takes the best of the monitor, ema.ckpt the best ema_val_loss, in the checkpoint's mode. "max" (the
    # highest loss) is no sensible choice, but it makes the loss pick another epoch than accuracy would. A monitor
    # of the average's own (ema_val_loss) chose ema.ckpt on its accuracy: the average the user watched was not kept.
    cfg = small_cfg(mnist_root, "train.epochs=3", f"checkpoint.monitor={monitor}", "checkpoint.mode=max")
    result = train(cfg, out=tmp_path / "run", quiet=True)
    history = result.fit.history
    ema_epoch = max(history, key=lambda r: r["ema_val_loss"])["epoch"]
    assert ema_epoch != max(history, key=lambda r: r["ema_val_accuracy"])["epoch"]
    assert read_checkpoint(tmp_path / "run" / "ema.ckpt")["epoch"] == ema_epoch == result.summary["ema_best_epoch"]
    assert result.summary["best_epoch"] == max(history, key=lambda r: r[monitor])["epoch"]


def test_early_stopping_on_the_average_does_not_restore_the_trained_weights():
    # It put the trained weights of the average's best epoch in best.ckpt: they tested 3 points below ema.ckpt.
    from mnistlab.callbacks import EarlyStopping

    with pytest.raises(ConfigError, match="restore_best_weights loads the trained weights, not the weight average "
                                          "whose ema_val_loss it watches; .* or monitor val_loss$"):
        EarlyStopping(monitor="ema_val_loss", restore_best_weights=True)
    assert EarlyStopping(monitor="ema_val_loss").monitor == "ema_val_loss"  # watching it alone is fine


def test_resume_with_ema_and_augmentation_is_exact(mnist_root, tmp_path):
    # a constant schedule: one-cycle's shape depends on the number of epochs, so 1 + 1 would not be 2
    cfg = small_cfg(mnist_root, "augment.enabled=true", "augment.elastic_alpha=4", "model.dropout=0.2",
                    "schedule.name=constant")
    full = train(apply_overrides(cfg, ["train.epochs=2"]), out=tmp_path / "full", quiet=True)
    train(apply_overrides(cfg, ["train.epochs=1"]), out=tmp_path / "half", quiet=True)
    resumed = train(apply_overrides(cfg, ["train.epochs=2"]), resume=tmp_path / "half", quiet=True)
    a, b = (read_checkpoint(tmp_path / d / "last.ckpt") for d in ("full", "half"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"]["weights"][k], b["ema"]["weights"][k]) for k in a["ema"]["weights"])
    assert a["ema"]["updates"] == b["ema"]["updates"] == 20
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(full.fit.history) == strip(resumed.fit.history)
    assert full.summary["ema_test_accuracy"] == resumed.summary["ema_test_accuracy"]


def test_a_corrupted_weight_average_in_last_ckpt_is_refused(mnist_root, tmp_path):
    cfg = small_cfg(mnist_root, "train.epochs=1", "data.train_limit=200")
    train(cfg, out=tmp_path / "run", quiet=True)
    payload = read_checkpoint(tmp_path / "run" / "last.ckpt")
    weights = payload["ema"]["weights"]
    first = next(iter(weights))
    weights[first] = weights[first] + 1
    save_checkpoint(tmp_path / "run" / "last.ckpt", payload)
    with pytest.raises(CheckpointError, match="weight average is corrupted"):
        train(apply_overrides(cfg, ["train.epochs=2"]), resume=tmp_path / "run", quiet=True)


def test_a_run_resumed_with_ema_off_keeps_its_old_average_apart(mnist_root, tmp_path, capsys):
    # ema.ckpt stayed from the epochs with EMA on, and `ensemble --ema RUN` took it for the run's average.
    cfg = small_cfg(mnist_root, "train.epochs=1", "data.train_limit=200", "train.report=false")
    train(cfg, out=tmp_path / "run", quiet=True)
    kept = (tmp_path / "run" / "ema.ckpt").read_bytes()
    capsys.readouterr()
    off = train(apply_overrides(cfg, ["train.epochs=2", "ema.enabled=false"]), resume=tmp_path / "run", quiet=True)
    assert "ema.enabled was true, now false: ema.ckpt is kept as it was" in capsys.readouterr().err
    assert "ema_test_accuracy" not in off.summary and (tmp_path / "run" / "ema.ckpt").read_bytes() == kept
    with pytest.raises(CheckpointError, match=r"run .*run was resumed with \[ema\] off \(its config.toml says enabled "
                                              r"= false\): its ema.ckpt is a weight average of the epochs before that"):
        checkpoint_file(tmp_path / "run", ema=True)  # what ensemble --ema reads for a run folder
    assert checkpoint_file(tmp_path / "run" / "ema.ckpt") == tmp_path / "run" / "ema.ckpt"  # named, it is used
    # turned on again, the run has an average again: the folder means its ema.ckpt
    train(apply_overrides(cfg, ["train.epochs=3"]), resume=tmp_path / "run", quiet=True)
    assert checkpoint_file(tmp_path / "run", ema=True) == tmp_path / "run" / "ema.ckpt"
    assert (tmp_path / "run" / "ema.ckpt").read_bytes() != kept


# ---- test-time augmentation ---------------------------------------------------------------


def test_tta_averages_the_softmax_over_the_image_and_its_shifts_up_to_the_distance(mnist_small):
    torch.manual_seed(0)
    from mnistlab.models import build_model

    model = build_model("cnn", channels=[4, 8], mean=mnist_small.mean, std=mnist_small.std).eval()
    split = type(mnist_small.test)(mnist_small.test.images[:300], mnist_small.test.labels[:300])
    tta = evaluate(model, split, batch_size=128, tta_shift=2)
    x = split.images.float() / 255
    with torch.no_grad():
        views = [x] + [shift_images(x, dx, dy) for d in (1, 2) for dx, dy in ((d, 0), (-d, 0), (0, d), (0, -d))]
        expected = torch.stack([model(v).softmax(1) for v in views]).mean(0)
    torch.testing.assert_close(tta.probabilities, expected)
    assert tta.accuracy == float((expected.argmax(1) == split.labels).double().mean())
    plain = evaluate(model, split, batch_size=128)
    assert not torch.allclose(tta.probabilities, plain.probabilities)
    from mnistlab.errors import ConfigError

    with pytest.raises(ConfigError, match="a test-time shift of 28 pixels moves the 28x28 images out of view"):
        evaluate(model, split, tta_shift=28)  # every shifted view would be blank (ensemble --tta 100 was accepted)


def test_the_loss_takes_the_label_smoothing_asked_for_with_and_without_tta(mnist_small):
    torch.manual_seed(0)
    from mnistlab.models import build_model

    model = build_model("cnn", channels=[4, 8], mean=mnist_small.mean, std=mnist_small.std).eval()
    with torch.no_grad():
        model.classifier[0].weight *= 30  # confident outputs: near uniform ones have about the same loss either way
    split = type(mnist_small.test)(mnist_small.test.images[:300], mnist_small.test.labels[:300])
    with torch.no_grad():
        logits = model(split.images.float() / 255)
    for eps in (0.0, 0.1):
        ev = evaluate(model, split, batch_size=128, label_smoothing=eps)
        expected = torch.nn.functional.cross_entropy(logits, split.labels, label_smoothing=eps)
        assert ev.loss == pytest.approx(float(expected), rel=1e-5)
        tta = evaluate(model, split, batch_size=128, tta_shift=1, label_smoothing=eps)
        logp = tta.probabilities.clamp_min(1e-12).log()  # smoothed: (1 - eps) * NLL + eps * mean of -log p
        by_hand = (1 - eps) * -logp.gather(1, split.labels[:, None]).mean() - eps * logp.mean()
        assert tta.loss == pytest.approx(float(by_hand), rel=1e-5)
    assert abs(evaluate(model, split, label_smoothing=0.1).loss - evaluate(model, split).loss) > 1e-3


def test_a_runs_val_loss_and_test_loss_are_its_training_loss_with_label_smoothing(mnist_root, tmp_path):
    cfg = small_cfg(mnist_root, "train.epochs=1", "train.label_smoothing=0.2", "ema.enabled=false")
    result = train(cfg, out=tmp_path / "run", quiet=True)
    data = load_data(cfg.data)
    model = load_model(tmp_path / "run" / "best.ckpt")
    for split, reported in ((data.val, result.fit.history[-1]["val_loss"]), (data.test, result.summary["test_loss"])):
        assert reported == pytest.approx(evaluate(model, split, label_smoothing=0.2).loss, rel=1e-6)
        assert reported != pytest.approx(evaluate(model, split).loss, rel=1e-3)


def test_a_run_reports_tta_and_ema_accuracies_apart(mnist_root, tmp_path):
    result = train(small_cfg(mnist_root, "train.epochs=1", "tta.enabled=true"), out=tmp_path / "run", quiet=True)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("test_accuracy", "tta_test_accuracy", "ema_test_accuracy", "ema_tta_test_accuracy"):
        assert 0.0 < s[key] <= 1.0, key
    assert s == json.loads(json.dumps(result.summary))


# ---- ensembles ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(mnist_root, tmp_path_factory):
    import types
    from unittest import mock

    root = tmp_path_factory.mktemp("ensemble")
    with mock.patch("mnistlab.report.write_run_report", lambda *a, **k: types.SimpleNamespace(path="(skipped)")):
        for seed in (0, 1):
            train(small_cfg(mnist_root, "train.epochs=1", f"train.seed={seed}"), out=root / f"r{seed}", quiet=True)
    return root / "r0", root / "r1"


def test_the_ensemble_averages_its_members_softmax(two_runs, mnist_root):
    shown = []  # what the command's progress bar is given
    result = evaluate_ensemble(two_runs, progress=lambda what, done, total: shown.append((what, done, total)))
    assert shown[0] == ("testing member 1 of 2", 500, 10_000) and shown[-1] == ("testing member 2 of 2", 10_000, 10_000)
    assert len(shown) == 2 * 20 and ("testing member 1 of 2", 10_000, 10_000) in shown
    test = load_data(small_cfg(mnist_root, "data.test_limit=none").data).test  # an ensemble tests on all
    members = [evaluate(load_model(r / "best.ckpt"), test) for r in two_runs]
    assert [m.accuracy for m in result.members] == [m.accuracy for m in members]
    avg = (members[0].probabilities + members[1].probabilities) / 2
    assert result.accuracy == float((avg.argmax(1) == test.labels).double().mean())
    assert result.examples == 10_000 and result.dataset == "mnist"


def test_ensemble_command_prints_members_and_ensemble_and_json(two_runs, capsys):
    assert main(["ensemble", *map(str, two_runs), "--ema"]) == 0
    out = capsys.readouterr().out
    assert out.count("ema.ckpt") == 2 and "ensemble of 2" in out
    assert main(["ensemble", *map(str, two_runs), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["checkpoint"] for m in data["members"]] == [str(r / "best.ckpt") for r in two_runs]
    assert data["ensemble"]["size"] == 2 and 0.0 < data["ensemble"]["test_accuracy"] <= 1.0
    assert data["tta_shift"] == 0
    assert main(["ensemble", *map(str, two_runs), "--tta", "1"]) == 0  # the output said nothing of the TTA
    assert capsys.readouterr().out.splitlines()[-1] == ("with test-time augmentation: each image and its shifts by 1 "
                                                        "pixel left, right, up and down, for every member")
    assert main(["ensemble", *map(str, two_runs), "--tta", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == ("with test-time augmentation: each image and its shifts by 1 "
                                                        "to 2 pixels left, right, up and down, for every member")


def test_ensemble_errors_are_one_clear_line(two_runs, tmp_path, capsys):
    other = read_checkpoint(two_runs[1] / "best.ckpt")
    other["dataset"] = "kmnist"
    save_checkpoint(tmp_path / "kmnist.ckpt", other)
    cases = [
        ([str(two_runs[0]), str(tmp_path / "kmnist.ckpt")], "an ensemble needs one dataset"),
        ([str(tmp_path)], f"run folder {tmp_path} has no best.ckpt"),
        ([str(two_runs[0]), "--tta", "-1"], "--tta must be zero or more pixels"),
        # one epoch: best.ckpt and last.ckpt are two files of one model, which would count twice
        ([str(two_runs[0]), str(two_runs[0] / "last.ckpt")],
         f"{two_runs[0] / 'last.ckpt'} holds the same weights as {two_runs[0] / 'best.ckpt'}: each member must be"),
    ]
    for args, message in cases:
        assert main(["ensemble", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_the_ensemble_loss_is_exact_for_confident_members(two_runs, mnist_root, monkeypatch):
    # The members' probabilities were averaged in float32 and the log clamped at 1e-12: an image all members got
    # confidently wrong counted 27.6 at most. Members made 1000x as sure (their logits scaled) show it.
    import mnistlab.training.ensemble as ensemble

    real = ensemble.model_from_checkpoint

    def sure(payload, *args):
        model = real(payload, *args)
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            head.weight.mul_(1000.0)
            head.bias.mul_(1000.0)
        return model

    monkeypatch.setattr(ensemble, "model_from_checkpoint", sure)
    result = evaluate_ensemble(two_runs)
    test = load_data(small_cfg(mnist_root, "data.test_limit=none").data).test  # an ensemble tests on all
    from mnistlab.training.evaluate import predict_logits

    logs = [predict_logits(sure(read_checkpoint(r / "best.ckpt")), test.images).double().log_softmax(1)
            for r in two_runs]
    mean = torch.stack(logs).logsumexp(0) - math.log(2)
    expected = float(-mean.gather(1, test.labels.view(-1, 1)).mean())
    assert expected > 30  # some images are wrong with log-probabilities of hundreds below 0
    assert result.loss == pytest.approx(expected, rel=1e-5)


def test_a_model_that_cannot_be_copied_for_the_average_is_refused_with_the_fix():
    # torch's old weight_norm keeps `weight` as a tensor computed from weight_g and weight_v, which deepcopy
    # refuses: torch's RuntimeError only guessed at the cause. The parametrized weight_norm is copied and averaged.
    import warnings

    from mnistlab.errors import ConfigError
    from mnistlab.training.ema import WeightAverage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # its deprecation
        old = nn.Sequential(nn.utils.weight_norm(nn.Linear(4, 3)))
    with pytest.raises(ConfigError, match=r"^the weight average \(\[ema\]\) keeps a copy of the model, .*"
                                          r"torch.nn.utils.parametrizations.weight_norm, or turn \[ema\] off$"):
        WeightAverage(old, 0.9)
    new = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 3)))
    ema = WeightAverage(new, 0.5, warmup=False)
    with torch.no_grad():
        new[0].parametrizations.weight.original1.add_(1.0)
    ema.update(new)
    assert torch.allclose(ema.module[0].parametrizations.weight.original1,
                          new[0].parametrizations.weight.original1 - 0.5)
