"""The training features against references written here in plain PyTorch, on a few hundred real MNIST images.

Each test trains with mnistlab (``fit``) and with a loop of its own below (the same initial weights, the same
shuffled batches, fp32, one thread), and compares the weights, learning rates or metrics. The references use only
torch: its optimizers, schedulers, ``clip_grad_norm_``, ``GradScaler``, ``AveragedModel``, ``grid_sample``,
``cross_entropy``; the affine augmentation is rebuilt from its description (a shift in the input's frame, then
rotation, shear and zoom about the centre), replaying the same random draws.

What other files prove already is not repeated: lr_at against OneCycleLR and MultiStepLR (test_schedules.py),
the class-weighted and mixed loss of one batch (test_class_weights.py, test_mixup.py), micro-batches without batch
norm (test_resume.py), the elastic smoothing (test_augment.py).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from mnistlab import Config, apply_overrides, build_model, evaluate, fit
from mnistlab.callbacks import Callback
from mnistlab.config import AugmentConfig, DataConfig
from mnistlab.data import epoch_permutation, load_data
from mnistlab.data.augment import augment, shift_images
from mnistlab.training.evaluate import class_metrics, macro_average
from mnistlab.training.fit import Trainer

O = torch.optim
BASE = ["train.threads=1", "train.precision=fp32", "train.channels_last=false", "train.progress=false",
        "tensorboard.enabled=false", "train.seed=0", "schedule.name=constant", "optimizer.name=sgd",
        "optimizer.lr=0.05", "train.epochs=2", "train.batch_size=64"]


@pytest.fixture(scope="module")
def data(mnist_root):
    """301 training images: in batches of 100 a remainder of 1 joins the last batch (3 steps an epoch)."""
    return load_data(DataConfig(dataset="mnist", dir=str(mnist_root), val_size=100, train_limit=301, download=False))


def cfg(*extra: str) -> Config:
    return apply_overrides(Config(), [*BASE, *extra])


def net(data, seed: int = 0, **options):
    torch.manual_seed(seed)
    return build_model("cnn", mean=data.mean, std=data.std, **{"width": 0.25, "batch_norm": False, "dropout": 0.0,
                                                               **options})


def batches(n: int, size: int, epoch: int, seed: int = 0):
    """The trainer's batches of an epoch, as its documentation has them: the epoch's permutation in slices of
    ``size``, a remainder of fewer than 2 images joining the last one."""
    order, count = epoch_permutation(n, seed, epoch), -(-n // size)
    if count > 1 and n - (count - 1) * size < 2:
        count -= 1
    return [order[b * size: n if b == count - 1 else (b + 1) * size] for b in range(count)]


def reference(model, data, make_opt, loss_fn, *, epochs=2, size=64, lr=lambda step, per_epoch, total: 0.05,
              clip=None, prepare=None, parts=None, after_step=None):
    """Train a copy of ``model`` in plain PyTorch; returns it in eval mode and the rate of every step.

    ``loss_fn(logits, labels, rows)`` is a part's share of the batch loss (rows: the whole batch's); ``parts(rows)``
    how many parts a batch is split into (one without it)."""
    model = copy.deepcopy(model).train()
    opt, rates = make_opt(model), []
    per_epoch = len(batches(len(data.train), size, 1))
    for epoch in range(1, epochs + 1):
        for idx in batches(len(data.train), size, epoch):
            rate = lr(len(rates), per_epoch, epochs * per_epoch)
            for group in opt.param_groups:
                group["lr"] = rate
            x, y = data.train.images[idx].float() / 255, data.train.labels[idx]
            if prepare is not None:
                x = prepare(x)
            opt.zero_grad(set_to_none=True)
            count = parts(len(y)) if parts else 1
            for xp, yp in zip(x.tensor_split(count), y.tensor_split(count)):
                loss_fn(model(xp), yp, len(y)).backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)  # the L2 norm of all gradients together
            opt.step()
            if after_step is not None:
                after_step(model)
            rates.append(rate)
    return model.eval(), rates


def ce(smoothing: float = 0.0, weights: torch.Tensor | None = None):
    """The batch mean of the (label-smoothed) cross-entropy, each image's times its class's weight (Keras'
    class_weight: divided by the images, not by the weights' sum as torch's ``weight=`` is)."""
    def loss(logits, y, rows):
        each = F.cross_entropy(logits, y, label_smoothing=smoothing, reduction="none")
        return (each if weights is None else each * weights[y]).sum() / rows
    return loss


def sgd(model):
    return O.SGD(model.parameters(), lr=0.05, momentum=0.9)


def max_diff(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa if sa[k].is_floating_point())


class Rates(Callback):
    def __init__(self):
        self.lrs: list[float] = []

    def on_batch_end(self, step, metrics, trainer):
        assert all(group["lr"] == metrics["lr"] for group in trainer.optimizer.param_groups)
        self.lrs.append(metrics["lr"])


def test_label_smoothing_class_weights_and_clipping_train_as_the_reference(data):
    m0 = net(data)
    weights = torch.tensor([0.5, 1, 2, 1, 1, 3, 1, 1, 0.2, 1])
    for extra, loss, clip in [((), ce(), None), (("train.label_smoothing=0.2",), ce(0.2), None),
                              (("train.label_smoothing=0.1", f"train.class_weights={weights.tolist()}"),
                               ce(0.1, weights), None),
                              (("train.grad_clip=0.05",), ce(), 0.05)]:
        trained = fit(copy.deepcopy(m0), data, cfg(*extra)).model
        expected, _ = reference(m0, data, sgd, loss, clip=clip)
        assert max_diff(trained, expected) < 1e-6, extra
    # the clipping acted (the gradient norms are about 1 here), and the weights are not torch's weighted mean
    assert max_diff(trained, reference(m0, data, sgd, ce())[0]) > 1e-2
    torch_weighted = reference(m0, data, sgd, lambda lo, y, rows: F.cross_entropy(lo, y, weight=weights,
                                                                                  label_smoothing=0.1))[0]
    weighted = fit(copy.deepcopy(m0), data, cfg("train.label_smoothing=0.1", f"train.class_weights={weights.tolist()}"))
    assert max_diff(weighted.model, torch_weighted) > 1e-3


@pytest.mark.parametrize("name, cls, kwargs", [
    ("sgd", O.SGD, {"momentum": 0.9}), ("adam", O.Adam, {"betas": (0.7, 0.9)}),
    ("adamw", O.AdamW, {"betas": (0.7, 0.9)}), ("nadam", O.NAdam, {"betas": (0.7, 0.9)}),
    ("adamax", O.Adamax, {"betas": (0.7, 0.9)}), ("rmsprop", O.RMSprop, {"alpha": 0.99}),
    ("adadelta", O.Adadelta, {"rho": 0.9, "eps": 1e-6}), ("adagrad", O.Adagrad, {"eps": 1e-10}),
])
def test_each_optimizers_weight_decay_is_torchs_on_every_parameter(data, name, cls, kwargs):
    # L2 added to the gradient for all but AdamW, decoupled for AdamW, as torch's optimizers do; biases and
    # batch-norm weights decay too (no parameter is left out). The config's betas are (0.7, 0.9).
    m0 = net(data, batch_norm=True)
    lr = 1.0 if name == "adadelta" else 0.01
    trained = fit(copy.deepcopy(m0), data, cfg(f"optimizer.name={name}", f"optimizer.lr={lr}",
                                              "optimizer.weight_decay=0.05")).model
    make = lambda m: cls(m.parameters(), lr=lr, weight_decay=0.05, foreach=False, **kwargs)  # noqa: E731
    expected, _ = reference(m0, data, make, ce(), lr=lambda *_: lr)
    assert max_diff(trained, expected) < 1e-6
    if name in ("adam", "adamw"):  # L2 and decoupled decay are told apart at this size
        other = O.AdamW if name == "adam" else O.Adam
        make = lambda m: other(m.parameters(), lr=lr, weight_decay=0.05, betas=(0.7, 0.9))  # noqa: E731
        assert max_diff(trained, reference(m0, data, make, ce(), lr=lambda *_: lr)[0]) > 1e-3


def _torch_rates(make, total):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = O.SGD([p], lr=0.1, momentum=0.9)
    scheduler, out = make(opt), []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("size, epochs", [(100, 3), (64, 2)])
def test_the_rate_of_every_step_of_a_run_is_torchs_schedulers(data, size, epochs):
    def rates(*extra):
        cb = Rates()
        fit(net(data), data, cfg(f"train.batch_size={size}", f"train.epochs={epochs}", "optimizer.lr=0.1", *extra),
            callbacks=[cb])
        return cb.lrs

    total = len(rates())
    per_epoch = total // epochs
    assert total == epochs * len(batches(len(data.train), size, 1))
    sched = O.lr_scheduler
    cases = {
        ("schedule.name=onecycle", "schedule.pct_start=0.3"): _torch_rates(lambda o: sched.OneCycleLR(
            o, max_lr=0.1, total_steps=total, pct_start=0.3, div_factor=10, final_div_factor=100), total),
        ("schedule.name=cosine", "schedule.min_lr=0.001"): _torch_rates(
            lambda o: sched.CosineAnnealingLR(o, T_max=total - 1, eta_min=0.001), total),
        ("schedule.name=step", "schedule.step_epochs=1", "schedule.gamma=0.5"): _torch_rates(
            lambda o: sched.LambdaLR(o, lambda s: 0.5 ** (s // per_epoch)), total),
        ("schedule.name=constant", "schedule.warmup_epochs=1"): _torch_rates(
            lambda o: sched.LambdaLR(o, lambda s: min(1.0, (s + 1) / per_epoch)), total),
        ("schedule.name=cosine", "schedule.warmup_epochs=1", "schedule.min_lr=0.001"): _torch_rates(
            lambda o: sched.SequentialLR(o, [sched.LambdaLR(o, lambda s: (s + 1) / per_epoch),
                                             sched.CosineAnnealingLR(o, T_max=total - per_epoch - 1, eta_min=0.001)],
                                         milestones=[per_epoch]), total),
    }
    for extra, expected in cases.items():
        got = rates(*extra)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), extra
    assert got[-1] == pytest.approx(0.001)  # the last step reaches min_lr


def test_the_step_schedule_counts_the_epochs_of_a_run_resumed_after_a_max_steps_cut(mnist_root, tmp_path):
    # 300 images in batches of 100: epoch 1 takes steps 1-3, max_steps = 4 cuts epoch 2 after one step; resumed,
    # epoch 3 has 2 epochs done (StepLR's count), so all its steps take 0.1 * 0.5 ** 2.
    from mnistlab.training import train

    class Record(Callback):
        def __init__(self):
            self.rows: list[tuple[int, float]] = []

        def on_batch_end(self, step, metrics, trainer):
            self.rows.append((trainer.epoch + 1, metrics["lr"]))

    run = cfg(f"data.dir={mnist_root}", "data.train_limit=300", "data.val_size=100", "model.name=cnn",
              "data.test_limit=2000",  # the final test on 2,000 images: a fifth of its time
              "model.width=0.25", "train.batch_size=100", "optimizer.lr=0.1", "schedule.name=step",
              "schedule.step_epochs=1", "schedule.gamma=0.5", "train.epochs=3")
    first, resumed = Record(), Record()
    train(apply_overrides(run, ["train.max_steps=4"]), out=tmp_path / "run", quiet=True, callbacks=[first])
    train(run, resume=tmp_path / "run", quiet=True, callbacks=[resumed])
    assert first.rows == [(1, 0.1)] * 3 + [(2, 0.05)]
    # It was [(3, 0.05), (3, 0.05), (3, 0.025)]: epochs counted as step // steps_per_epoch, which the cut epoch
    # put behind, so the rate dropped inside epoch 3.
    assert resumed.rows == [(3, 0.025)] * 3


def test_micro_batches_with_batch_norm_train_as_parts_and_without_as_whole_batches(data):
    # With batch norm each part is normalized by its own statistics (and moves the running ones once): the
    # reference runs the parts one by one. Without it the weights are the whole batches', with smoothing, class
    # weights and clipping on.
    b0 = net(data, batch_norm=True)
    trained = fit(copy.deepcopy(b0), data, cfg("train.micro_batch_size=16")).model
    parts = reference(b0, data, sgd, ce(), parts=lambda rows: -(-rows // 16))[0]
    assert max_diff(trained, parts) < 1e-5
    assert max_diff(trained, reference(b0, data, sgd, ce())[0]) > 1e-2  # not what whole batches train
    # parts of 1 become parts of 2 or more rows: batch norm cannot normalize one
    ones = fit(copy.deepcopy(b0), data, cfg("train.micro_batch_size=1")).model
    assert max_diff(ones, reference(b0, data, sgd, ce(), parts=lambda rows: rows // 2)[0]) < 1e-5
    m0 = net(data)
    weights = torch.tensor([0.5, 1, 2, 1, 1, 3, 1, 1, 0.2, 1])
    trained = fit(copy.deepcopy(m0), data, cfg("train.micro_batch_size=20", "train.label_smoothing=0.1",
                                               f"train.class_weights={weights.tolist()}", "train.grad_clip=0.05")).model
    assert max_diff(trained, reference(m0, data, sgd, ce(0.1, weights), clip=0.05)[0]) < 1e-6


def test_fp16_clips_the_unscaled_gradients_by_their_l2_norm(data):
    # The reference: autocast fp16, GradScaler, unscale_, clip_grad_norm_ (L2), scaler.step; CPU fp16 is emulated.
    m0 = net(data)
    trained = fit(copy.deepcopy(m0), data, cfg("train.precision=fp16", "train.grad_clip=0.05", "train.epochs=1",
                                               "train.batch_size=100")).model
    model = copy.deepcopy(m0).train()
    opt, scaler = sgd(model), torch.amp.GradScaler("cpu")
    for idx in batches(len(data.train), 100, 1):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(data.train.images[idx].float() / 255), data.train.labels[idx])
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        assert float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)) > 0.1  # the clip acts
        scaler.step(opt)
        scaler.update()
    assert max_diff(trained, model) < 1e-6


def test_the_weight_average_is_torchs_averaged_model_with_the_batch_norm_statistics(data):
    # AveragedModel's first update copies the model: mnistlab's average starts at the initial weights, so the
    # reference is given those first. Dropout on: the global RNG is replayed.
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    b0 = net(data, batch_norm=True, dropout=0.3)
    trainer = Trainer(copy.deepcopy(b0), data, cfg("ema.enabled=true", "ema.decay=0.9", "ema.warmup=false"))
    torch.manual_seed(1)
    trained = trainer.fit()
    average = AveragedModel(b0, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    average.update_parameters(b0)
    torch.manual_seed(1)
    expected, _ = reference(b0, data, sgd, ce(), after_step=average.update_parameters)
    assert max_diff(trained.model, expected) < 1e-6
    assert max_diff(trainer.ema.module, average.module) < 1e-6  # weights and BN running statistics
    assert max_diff(trainer.ema.module, trained.model) > 1e-2
    # with the warm-up: decay min(0.9, (1 + t) / (10 + t)) at update t, by hand
    mine = copy.deepcopy(b0)
    updates = []

    def by_hand(model):
        decay = min(0.9, (1 + len(updates)) / (10 + len(updates)))
        with torch.no_grad():
            theirs = model.state_dict()
            for k, v in mine.state_dict().items():
                v.copy_(decay * v + (1 - decay) * theirs[k] if v.is_floating_point() else theirs[k])
        updates.append(decay)

    trainer = Trainer(copy.deepcopy(b0), data, cfg("ema.enabled=true", "ema.decay=0.9"))
    torch.manual_seed(1)
    last = trainer.fit().history[-1]
    torch.manual_seed(1)
    reference(b0, data, sgd, ce(), after_step=by_hand)
    assert max_diff(trainer.ema.module, mine) < 1e-6
    assert updates[:2] == [0.1, 2 / 11] and updates[-1] == 10 / 19  # 10 steps: still below 0.9
    ev = evaluate(mine, data.val)  # the epoch's ema_val metrics are the average's on the validation images
    assert last["ema_val_accuracy"] == ev.accuracy and last["ema_val_loss"] == pytest.approx(ev.loss, rel=1e-5)


def _centroids(images):
    """The ink's centre of mass of each image, (x, y) in pixels from the image's centre."""
    ink, side = images[:, 0], torch.arange(images.shape[-1]) + 0.5 - images.shape[-1] / 2
    mass = ink.sum((1, 2))
    return torch.stack([(ink.sum(1) * side).sum(1) / mass, (ink.sum(2) * side).sum(1) / mass], 1)


def _forward_maps(n, c: AugmentConfig):
    """Replay augment's draws (rotation, shear, zoom, shift, each uniform in +-range): the map the README
    describes, image -> augmented image, ``out = zoom * (R Sh)^-1 (in + shift)``: a shift in the input's frame,
    then rotation, shear and zoom about the centre; a (n, 2, 2) matrix and a shift in pixels."""
    u = lambda k, h: (torch.rand(k) * 2 - 1) * h  # noqa: E731
    angle, shear, zoom = torch.deg2rad(u(n, c.rotation)), torch.deg2rad(u(n, c.shear)), 1 + u(n, c.scale)
    shift = u(2 * n, c.shift).view(n, 2) * 28  # fractions of the side
    a = -angle  # the ranges are symmetric: the sign is a convention (y points down)
    rot = torch.stack([torch.stack([a.cos(), -a.sin()], 1), torch.stack([a.sin(), a.cos()], 1)], 1)
    sh = torch.stack([torch.stack([torch.ones(n), shear.tan()], 1), torch.stack([torch.zeros(n), torch.ones(n)], 1)], 1)
    return zoom.view(n, 1, 1) * torch.linalg.inv(rot @ sh), shift


@pytest.mark.parametrize("ranges", [dict(rotation=30.0), dict(shift=0.1), dict(scale=0.2), dict(shear=20.0),
                                    dict(rotation=15.0, scale=0.1, shift=0.1, shear=10.0)])
def test_the_affine_augmentation_moves_each_digits_centre_of_mass_as_described(data, ranges):
    # moved 4 pixels right and 3 up, off the centre, about which rotation, shear and zoom act
    x = shift_images(data.train.images[:64].float() / 255, 4, -3)
    c = AugmentConfig(enabled=True, **{"rotation": 0.0, "scale": 0.0, "shift": 0.0, "shear": 0.0, **ranges})
    torch.manual_seed(3)
    out = augment(x, c)
    torch.manual_seed(3)
    matrix, shift = _forward_maps(64, c)
    expected = (matrix @ (_centroids(x) + shift).unsqueeze(-1)).squeeze(-1)
    # an affine map moves the centre of mass with it; images that lost ink at the border are left out
    inside = ((out.sum((1, 2, 3)) / x.sum((1, 2, 3)) / torch.linalg.det(matrix)) - 1).abs() < 0.01
    assert inside.sum() >= 32
    assert (_centroids(out) - expected)[inside].abs().max() < 0.25  # pixels; the digits move by up to 3-6
    assert (expected - _centroids(x)).abs().max() > 0.7  # a wrong sign would be off by twice that


def _my_augment(x, rotation=15.0, scale=0.1, shift=0.1, shear=10.0):
    matrix, move = _forward_maps(len(x), AugmentConfig(rotation=rotation, scale=scale, shift=shift, shear=shear))
    theta = torch.cat([torch.linalg.inv(matrix), -(move / 14).unsqueeze(-1)], 2)  # output -> input, grid units
    return F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)


def test_augmented_and_mixed_runs_train_as_the_reference(data):
    # The trainer augments each training batch (then mixes it) from the global RNG, in that order; the validation
    # images stay clean. Mixup: a * x + (1 - a) * x[perm] against the same blend of the smoothed one-hot labels.
    m0 = net(data)
    aug = ["augment.enabled=true", "augment.rotation=15", "augment.scale=0.1", "augment.shift=0.1", "augment.shear=10"]
    drawn = {}

    def mixup(x, alpha=0.4):
        perm, a = torch.randperm(len(x)), torch.tensor(alpha, dtype=torch.float64)
        drawn.update(perm=perm, share=float(torch.distributions.Beta(a, a).sample()))
        return drawn["share"] * x + (1 - drawn["share"]) * x[perm]

    def blended(logits, y, rows):
        target = drawn["share"] * F.one_hot(y, 10) + (1 - drawn["share"]) * F.one_hot(y[drawn["perm"]], 10)
        return F.cross_entropy(logits, target.float(), label_smoothing=0.1)

    torch.manual_seed(7)
    trained = fit(copy.deepcopy(m0), data, cfg(*aug, "mixup.alpha=0.4", "train.label_smoothing=0.1"))
    torch.manual_seed(7)
    expected, _ = reference(m0, data, sgd, blended, prepare=lambda x: mixup(_my_augment(x)))
    assert max_diff(trained.model, expected) < 1e-6
    assert max_diff(trained.model, reference(m0, data, sgd, ce(0.1))[0]) > 1e-2
    clean = evaluate(trained.model, data.val, label_smoothing=0.1)
    assert trained.history[-1]["val_accuracy"] == clean.accuracy
    assert trained.history[-1]["val_loss"] == pytest.approx(clean.loss, rel=1e-6)
    torch.manual_seed(7)  # the same seed, the same images
    assert max_diff(fit(copy.deepcopy(m0), data, cfg(*aug, "mixup.alpha=0.4", "train.label_smoothing=0.1")).model,
                    trained.model) == 0


def test_a_cutmix_run_and_its_training_metrics_are_the_references(data):
    # CutMix inside the 24x24 view of a model with crop 2: a box of side sqrt(1 - a) of the view's, centred
    # anywhere in it and clipped; the share is the area left. train_loss is the mixed loss, train_accuracy counts
    # the label with the larger share.
    m0 = net(data, crop=2)
    drawn, per_step = {}, []

    def cutmix(x):
        perm, a = torch.randperm(len(x)), torch.tensor(1.0, dtype=torch.float64)
        side = math.sqrt(1 - float(torch.distributions.Beta(a, a).sample()))
        bh = bw = round(24 * side)
        cy, cx = int(torch.randint(24, ())), int(torch.randint(24, ()))
        top, bottom = max(cy - bh // 2, 0), min(cy - bh // 2 + bh, 24)
        left, right = max(cx - bw // 2, 0), min(cx - bw // 2 + bw, 24)
        out = x.clone()
        out[..., 2 + top:2 + bottom, 2 + left:2 + right] = x[perm][..., 2 + top:2 + bottom, 2 + left:2 + right]
        drawn.update(perm=perm, share=1 - (bottom - top) * (right - left) / 24**2)
        return out

    def loss(logits, y, rows):
        share, partner = drawn["share"], y[drawn["perm"]]
        value = share * F.cross_entropy(logits, y) + (1 - share) * F.cross_entropy(logits, partner)
        right = int((logits.argmax(1) == (y if share >= 0.5 else partner)).sum())
        per_step.append((value.item() * len(y), right, len(y)))
        return value

    torch.manual_seed(11)
    trained = fit(copy.deepcopy(m0), data, cfg("model.crop=2", "mixup.cutmix_alpha=1.0"))
    torch.manual_seed(11)
    expected, _ = reference(m0, data, sgd, loss, prepare=cutmix)
    assert max_diff(trained.model, expected) < 1e-6
    steps = len(batches(len(data.train), 64, 1))
    for epoch, row in enumerate(trained.history):
        mine = per_step[epoch * steps:(epoch + 1) * steps]
        seen = sum(n for *_, n in mine)
        assert row["train_loss"] == pytest.approx(sum(s for s, _, _ in mine) / seen, rel=1e-6)
        assert row["train_accuracy"] == sum(r for _, r, _ in mine) / seen


def test_accuracy_recall_precision_and_f1_are_the_textbook_definitions(data):
    def by_hand(pred, labels, k):  # scikit-learn's with zero_division=0, written out
        rows = []
        for c in range(k):
            tp = int(((pred == c) & (labels == c)).sum())
            fp, fn = int(((pred == c) & (labels != c)).sum()), int(((pred != c) & (labels == c)).sum())
            p, r = (tp / (tp + fp) if tp + fp else 0.0), (tp / (tp + fn) if tp + fn else 0.0)
            rows.append((p, r, 2 * p * r / (p + r) if p + r else 0.0, tp + fn))
        return rows

    trained = fit(net(data), data, cfg()).model
    for model in (net(data, seed=1).eval(), net(data, seed=2).eval(), trained):  # untrained: classes never predicted
        ev = evaluate(model, data.val)
        with torch.no_grad():
            logits = model(data.val.images.float() / 255)
        pred, labels = logits.argmax(1), data.val.labels
        assert torch.equal(ev.predictions, pred)
        assert ev.accuracy == pytest.approx((pred == labels).double().mean().item(), abs=1e-12)
        assert ev.loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
        hand, rows = by_hand(pred, labels, 10), class_metrics(ev.confusion)
        for row, (p, r, f1, n), per_class in zip(rows, hand, ev.per_class_accuracy):
            assert (row["precision"], row["recall"], row["f1"], row["images"]) == pytest.approx((p, r, f1, n))
            assert per_class == pytest.approx(r)
        means = macro_average(rows)  # every class has images here: the plain mean over the 10
        assert [means[k] for k in ("precision", "recall", "f1")] == pytest.approx([sum(h[i] for h in hand) / 10
                                                                                   for i in range(3)])
