"""Every registered model: builds at several image sizes, runs forward and backward; options are checked."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.config import ModelConfig
from mnistlab.errors import ConfigError
from mnistlab.models import build_model, count_macs, count_parameters, list_models, model_options

# Narrow versions keep the whole file to seconds on one core; every model takes what it accepts of these.
SMALL = {"width": 0.125, "hidden": [16]}
USER_VGG = [8, "M", 16, "M"]
SHAPES = [  # (in_channels, image_size, num_classes)
    (1, (28, 28), 10),
    (3, (32, 32), 5),
    (2, (20, 24), 3),  # smaller and not square
]


def small_options(name: str) -> dict:
    opts = {k: v for k, v in SMALL.items() if k in model_options(name)}
    if name == "vgg":
        opts["channels"] = USER_VGG
    return opts


def test_the_zoo_is_complete():
    expected = {"cnn", "fast", "lenet", "lenet5", "alexnet", "vgg", "vgg11", "vgg13", "vgg16", "vgg19",
                "resnet18", "resnet50"}
    assert expected <= set(list_models())


@pytest.mark.parametrize("in_channels,image_size,num_classes", SHAPES, ids=[f"{c}x{h}x{w}" for c, (h, w), _ in SHAPES])
@pytest.mark.parametrize("name", list_models())
def test_model_forward_and_backward(name, in_channels, image_size, num_classes):
    torch.manual_seed(0)
    model = build_model(
        name, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **small_options(name)
    )
    model.train()
    x = torch.rand(2, in_channels, *image_size)
    out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, num_classes - 1])).backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: {pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"


@pytest.mark.parametrize("name", list_models())
def test_model_builds_from_a_model_config(name):
    """A ModelConfig's options (None for unset keys) reach the builder, so model defaults hold."""
    channels = tuple(USER_VGG) if name == "vgg" else None
    cfg = ModelConfig(name=name, channels=channels, width=0.125 if "width" in model_options(name) else None)
    model = build_model(cfg.name, **cfg.options())
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    "name,in_channels,params",
    [
        ("lenet5", 1, 61_706),  # the paper's count: C1 156, C3 2,416, C5 48,120, F6 10,164, output 850
        ("cnn", 1, 28_938),  # 16*25+16 + 32*16*25+32 + 32*7*7*10+10
        ("resnet18", 3, 11_173_962),  # the usual CIFAR ResNet-18 with a 3x3 stem
        ("resnet50", 3, 23_520_842),  # the usual CIFAR ResNet-50
    ],
)
def test_known_parameter_counts(name, in_channels, params):
    assert count_parameters(build_model(name, in_channels=in_channels)) == params


def test_default_vgg_layouts_drop_only_the_pools_the_image_is_too_small_for():
    def pools(model):
        return sum(isinstance(m, torch.nn.MaxPool2d) for m in model.features)

    # 28 -> 14 -> 7 -> 3 -> 1, the fifth pool is dropped; 32 keeps all five; 20 -> 10 -> 5 -> 2 -> 1
    assert pools(build_model("vgg16", width=0.125)) == 4
    assert pools(build_model("vgg16", width=0.125, in_channels=3, image_size=(32, 32))) == 5
    assert pools(build_model("vgg11", width=0.125, image_size=(20, 20))) == 4
    assert build_model("vgg19", width=0.125).num_features == 64  # a 1x1 map of 512/8 kernels


def test_a_user_vgg_layout_is_placed_as_written():
    model = build_model("vgg", channels=[8, "M", 8, "M", 8, "M", 8, "M"], hidden=[16])  # 28 -> 14 -> 7 -> 3 -> 1
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.features) == 4
    assert model.num_features == 8


def test_a_user_vgg_layout_that_pools_below_1x1_names_the_image_size():
    with pytest.raises(ConfigError, match="28x28"):
        build_model("vgg", channels=[8, "M"] * 5)


def test_vgg_needs_a_layout():
    with pytest.raises(ConfigError, match="channels"):
        build_model("vgg")


def test_unknown_option_lists_the_accepted_ones():
    with pytest.raises(ConfigError) as e:
        build_model("resnet18", kernel_size=5)
    message = str(e.value)
    assert "kernel_size" in message
    for option in model_options("resnet18"):
        assert option in message


def test_unknown_model_lists_the_models():
    with pytest.raises(ConfigError) as e:
        build_model("resnet1000")
    assert all(name in str(e.value) for name in list_models())


@pytest.mark.parametrize(
    "name,options,fragment",
    [
        ("cnn", {"channels": [16, "M", 32]}, "positive integers"),  # pools are implied in a plain CNN
        ("resnet18", {"channels": [64, 128, 256]}, "4 stage widths"),
        ("fast", {"width": 0}, "width"),
        ("lenet", {"dropout": 1.0}, "dropout"),
        ("alexnet", {"hidden": [0]}, "hidden"),
        ("vgg", {"channels": ["M"]}, "at least one conv"),
        ("fast", {"bn_after_pool": True}, "needs batch_norm"),
        ("fast", {"crop": 14}, r"crop=14 cuts 28 pixels from each axis and leaves nothing of 28x28 images"),
        ("fast", {"crop": 10, "image_size": (20, 20)}, r"crop=10 cuts 20 pixels"),
        ("fast", {"crop": 12}, r"does not fit 28x28 images cropped to 4x4 \(crop=12\).*, or a smaller crop"),
        # the sizes layer by layer, to the layer that cannot run: which stride, kernel or pool to change
        ("cnn", {"stride": 4}, r"shrink the image below 1x1 \(28x28 -> 7x7 after the 5x5 conv \(stride 4, padding 2\) "
                               r"-> 3x3 after the 2x2 max-pool -> 1x1 after the 5x5 conv \(stride 4, padding 2\); the "
                               r"2x2 max-pool after that, features.4, cannot take 1x1\); use fewer pooling stages, a "
                               r"smaller kernel or stride, or more padding; it fits with model.stride = 3 or "
                               r"model.channels = \[16\] \(each alone, the other options as set\)$"),
        # refused before its layers are made: lenet at kernel_size 5000 wrote 6.4 GB of weights, then "too large"
        ("cnn", {"kernel_size": 29, "padding": 0}, r"its first conv's 29x29 kernel is larger than the 28x28 input it "
                                                   r"slides over \(padding 0\); use a smaller kernel; it fits with "
                                                   r"model.kernel_size = 9 or model.padding = 10 \(each alone"),
        ("lenet", {"kernel_size": 5000}, r"5000x5000 kernel is larger .* it fits with model.kernel_size = 9 \(the"),
        ("cnn", {"crop": -1}, "crop must be a whole number of pixels, 0 or more, got -1"),
        ("resnet18", {"crop": 2}, "does not take option"),
        ("cnn", {"width": 1e9}, "too large to build with {'width': 1000000000.0}: its weights or its feature maps do not"),
        ("cnn", {"width": 1e300}, "its sizes overflow"),
        ("cnn", {"channels": [2**62]}, "its sizes overflow"),  # torch says "overflowed", in lower case
        # outputs that see only zeros (its 13 GB dry run at 5000 came before "too large" at 100,000)
        ("cnn", {"padding": 100_000}, r"padding = 100000 is more than kernel_size - 1 = 4: the outputs beyond that "
                                      r"see only the padding's zeros; use 0 to 4 \(2 keeps the size"),
        ("lenet5", {"padding": 5}, r"padding = 5 is more than kernel_size - 1 = 4"),
        # From the Python API, the config's types: these were TypeErrors from deep inside, or (batch_norm) taken
        ("cnn", {"kernel_size": 2.5}, "model 'cnn': kernel_size = 2.5 has the wrong type; expected int"),
        ("cnn", {"stride": 2.0}, "stride = 2.0 has the wrong type; expected int"),
        ("cnn", {"batch_norm": "yes"}, "batch_norm = 'yes' has the wrong type; expected bool"),
        ("cnn", {"batch_norm": 0}, "batch_norm = 0 has the wrong type; expected bool"),
        ("fast", {"hidden": 16}, "hidden = 16 has the wrong type"),
        ("lenet", {"dropout": "0.1"}, "dropout = '0.1' has the wrong type; expected float"),
    ],
)
def test_bad_option_values_are_config_errors(name, options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_model(name, **options)


@pytest.mark.parametrize("name", ["cnn", "fast", "lenet"])
def test_bn_after_pool_normalizes_the_pooled_maps(name):
    torch.manual_seed(0)
    opts = {"width": 0.25, "batch_norm": True}
    before = build_model(name, **opts)
    after = build_model(name, **opts, bn_after_pool=True)
    kinds = [type(m).__name__ for m in after.features]
    assert kinds == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"] * 2
    assert [type(m).__name__ for m in before.features] == ["Conv2d", "BatchNorm2d", "MaxPool2d", "ReLU"] * 2
    assert count_parameters(after) == count_parameters(before)  # the same layers, in another order

    # In training mode the first BN's statistics are those of the pooled conv output, not the full-size one.
    conv, pool, bn = after.features[0], after.features[1], after.features[2]
    bn.momentum = 1.0  # running_mean becomes this batch's mean
    x = torch.rand(8, 1, 28, 28)
    after.train()(x)
    with torch.no_grad():
        pooled = pool(conv(x))
        assert torch.allclose(bn.running_mean, pooled.mean((0, 2, 3)), atol=1e-5)
        assert not torch.allclose(bn.running_mean, conv(x).mean((0, 2, 3)), atol=1e-3)
    # The two orders are different networks: the layers are numbered differently, a checkpoint needs its own order.
    with pytest.raises(RuntimeError, match="Missing key"):
        after.load_state_dict(before.state_dict())


@pytest.mark.parametrize("name", ["cnn", "fast", "lenet"])
def test_crop_cuts_the_border_before_the_first_conv(name):
    torch.manual_seed(0)
    cropped = build_model(name, width=0.25, crop=2, mean=(0.1,), std=(0.3,)).eval()
    # The same weights on 24x24 images: the cropped model is exactly that net applied to the image's centre.
    centre = build_model(name, width=0.25, image_size=(24, 24), mean=(0.1,), std=(0.3,)).eval()
    state = cropped.state_dict()
    assert state.pop("crop_pixels").item() == 2  # the weights record their crop (checkpoints check it)
    centre.load_state_dict(state)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(cropped(x), centre(x[:, :, 2:26, 2:26]))
        # The border does not reach the output at all.
        border = x.clone()
        border[:, :, :2] = border[:, :, -2:] = border[:, :, :, :2] = border[:, :, :, -2:] = 1.0
        assert torch.equal(cropped(border), cropped(x))
    assert cropped.image_size == (28, 28)  # the input stays full size: the crop is the model's business
    assert count_macs(cropped) == count_macs(centre) < count_macs(build_model(name, width=0.25))


def test_normalization_is_stored_and_applied():
    torch.manual_seed(0)
    model = build_model("cnn", mean=(0.1307,), std=(0.3081,)).eval()
    state = model.state_dict()
    assert state["mean"].flatten().tolist() == pytest.approx([0.1307])
    assert state["std"].flatten().tolist() == pytest.approx([0.3081])

    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        manual = model.classifier(torch.flatten(model.features((x - 0.1307) / 0.3081), 1))
        assert torch.allclose(model(x), manual, atol=1e-6)

        other = build_model("cnn").eval()  # mean 0, std 1 until the checkpoint's state arrives
        assert not torch.allclose(other(x), manual)
        other.load_state_dict(state)
        assert torch.allclose(other(x), manual, atol=1e-6)


def test_a_dropout_set_acts_even_without_hidden_layers():
    # VGG drops only after hidden layers; with none, its dropout went nowhere and was silently ignored
    takers = [name for name in list_models() if {"dropout", "hidden"} <= set(model_options(name))]
    assert "vgg11" in takers and "cnn" in takers
    for name in takers:
        small = {"width": 0.125} if "width" in model_options(name) else {}
        if name == "vgg":  # the free-form VGG has no default layout
            small["channels"] = [8, "M"]
        with_dropout = build_model(name, hidden=[], dropout=0.5, **small)
        assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in with_dropout.modules()), name
        assert not any(isinstance(m, nn.Dropout) for m in build_model(name, hidden=[], dropout=0.0, **small).modules())


def test_a_model_pytorch_crashes_on_in_channels_last_trains_in_nchw_on_the_cpu():
    from mnistlab.training.fit import nhwc_crash_layer, use_channels_last

    cpu = torch.device("cpu")
    narrow = build_model("resnet18", width=0.0625)  # projection shortcut 1x1, stride 2, 4 -> 8 channels
    assert nhwc_crash_layer(narrow) == "features.layer2.0.shortcut.0"
    assert use_channels_last(None, narrow, cpu) is False and use_channels_last(False, narrow, cpu) is False
    with pytest.raises(ConfigError, match=r"train.channels_last = true: on the CPU, PyTorch .* layer "
                                          r"features.layer2.0.shortcut.0 \(a 1x1 conv with a stride above 1"):
        use_channels_last(True, narrow, cpu)
    assert use_channels_last(None, narrow, torch.device("cuda")) is True  # the CPU's kernel only
    # 8 -> 16 ran on an AVX2 CPU, but crashes at odd batch sizes on two threads of an AVX-512 one
    assert nhwc_crash_layer(build_model("resnet18", width=0.125)) == "features.layer2.0.shortcut.0"
    assert nhwc_crash_layer(build_model("resnet18", width=0.25)) is None  # 16 -> 32 ran: NHWC as before
    assert use_channels_last(None, build_model("resnet18", width=0.25), cpu) is True


# `python -m mnistlab` (cli.run) less what never runs a backward pass: report.html's plots (seconds), and all
# but 100 of the 10,000 test images of the final test (forward passes of best.ckpt, seconds on one thread).
_TRAIN_LESS_REPORT_AND_TEST = """
import dataclasses, types
import mnistlab.report, mnistlab.training.run as run
from mnistlab.cli import run as mnistlab_command
from mnistlab.data import Split
mnistlab.report.write_run_report = lambda *a, **k: types.SimpleNamespace(path="(skipped)")
load_data = run.load_data
def first_test_images(*args, **kwargs):
    data = load_data(*args, **kwargs)
    t = data.test
    return dataclasses.replace(data, test=Split(t.images[:100], t.labels[:100], t.indices[:100]))
run.load_data = first_test_images
mnistlab_command()
"""


@pytest.mark.parametrize("width, threads, images", [
    (0.0625, 1, 64),  # 4 -> 8 channels: crashed on one thread of an AVX2 CPU
    (0.125, 2, 63),  # 8 -> 16: crashed on two threads of an AVX-512 one, at the last batch of 15 (odd) images
])
def test_the_narrow_resnet_trains_without_aborting(mnist_root, tmp_path, width, threads, images):
    # In its own process: the crash (a double free in the backward pass) killed the interpreter, rc 134 or 139.
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _TRAIN_LESS_REPORT_AND_TEST, "train", "--model", "resnet18",
         "--set", f"model.width={width}", "--data-dir", str(mnist_root), "--set", f"data.train_limit={images}",
         "--set", "data.val_size=32", "--epochs", "1", "--batch-size", "16", "--threads", str(threads),
         "--set", "tensorboard.enabled=false", "--quiet", "--out", str(tmp_path / "run")],
        env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 4  # it trained: 4 batches of 16
