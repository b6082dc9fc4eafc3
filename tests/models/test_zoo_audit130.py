"""Audit of the zoo against its papers and its docs: each model computes what an independent build of the
documented architecture computes (torchvision's ResNets and VGGs with the small-image adaptation, LeNet-5 and
AlexNet written out by hand), and every option `mnistlab models` lists for a model changes the model built."""

from __future__ import annotations

import inspect

import pytest
import torch
import torchvision  # a dependency of mnistlab's (its MNIST layout, the download)
from torch import nn

from mnistlab.models import build_model
from mnistlab.models._registry import _get, list_models, model_options


def _weights(model: nn.Module) -> list[torch.Tensor]:
    """The parameters and BN statistics in registration order (not the Net's normalization buffers)."""
    return [v for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked") and k not in ("mean", "std")]


def _copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy ``src``'s tensors into ``dst`` one by one: the two must list the same shapes in the same order."""
    s, d = _weights(src), _weights(dst)
    assert [tuple(t.shape) for t in s] == [tuple(t.shape) for t in d]
    with torch.no_grad():
        for a, b in zip(s, d):
            b.copy_(a)


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BN scales and statistics, so a BN placed elsewhere (or zero-initialized) shows in the output."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.rand(m.num_features, generator=g) * 0.2 - 0.1
            m.running_mean.data = torch.rand(m.num_features, generator=g) * 0.2 - 0.1
            m.running_var.data = torch.rand(m.num_features, generator=g) + 0.5


def _same_function(reference: nn.Module, ours: nn.Module, size: tuple[int, int] = (28, 28)) -> None:
    _randomize_bn(reference)
    _copy_weights(reference, ours)
    reference.eval()
    ours.eval()
    x = torch.rand(3, 1, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_the_resnets_are_torchvisions_with_the_small_image_stem(name):
    # He et al.: BasicBlocks [2, 2, 2, 2] / Bottlenecks [3, 4, 6, 3], stride-2 downsampling with 1x1 projections
    # (stride on the 3x3 conv, v1.5); the 7x7/2 stem and its max-pool replaced by one 3x3/1 conv (module docstring)
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(num_classes=10)
    reference.conv1 = nn.Conv2d(1, 64, 3, padding=1, bias=False)
    reference.maxpool = nn.Identity()
    ours = build_model(name)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    _same_function(reference, ours)


def test_every_residual_branch_starts_at_zero_and_downsampling_is_a_strided_1x1_projection():
    net = build_model("resnet18")
    blocks = [b for stage in ("layer1", "layer2", "layer3", "layer4") for b in getattr(net.features, stage)]
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)
    projections = [b.shortcut[0] for b in blocks if not isinstance(b.shortcut, nn.Identity)]
    assert [(c.kernel_size, c.stride, c.out_channels) for c in projections] == [
        ((1, 1), (2, 2), 128), ((1, 1), (2, 2), 256), ((1, 1), (2, 2), 512)]
    shapes, x = [], torch.zeros(1, 1, 28, 28)
    for layer in net.features:
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(64, 28, 28), (64, 28, 28), (128, 14, 14), (256, 7, 7), (512, 4, 4), (512, 1, 1)]


@pytest.mark.parametrize("name, layout", [("vgg11", "vgg11_bn"), ("vgg13", "vgg13_bn"), ("vgg16", "vgg16_bn"),
                                          ("vgg19", "vgg19_bn")])
def test_the_vggs_are_torchvisions_configurations_a_b_d_e_with_the_fifth_pool_dropped(name, layout):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, layout)()
    layers = list(reference.features)
    layers[0] = nn.Conv2d(1, 64, 3, padding=1)
    del layers[[i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)][-1]]  # 28 -> 14 -> 7 -> 3 -> 1
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    for conv in convs:  # ours have no conv bias under batch norm (BN's shift replaces it): zero torchvision's
        conv.bias = None
    reference.features = nn.Sequential(*layers)
    reference.avgpool = nn.Identity()
    # the head is 512-512 on the 1x1x512 map (VGG_HIDDEN), dropout after each hidden layer as in the paper
    reference.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Dropout(), nn.Linear(512, 512), nn.ReLU(),
                                         nn.Dropout(), nn.Linear(512, 10))
    ours = build_model(name)
    assert len(convs) == {"vgg11": 8, "vgg13": 10, "vgg16": 13, "vgg19": 16}[name]
    assert sum(isinstance(m, nn.MaxPool2d) for m in ours.features) == 4
    _same_function(reference, ours)


def test_lenet5_is_the_paper_network_on_28x28_digits_padded_to_32():
    torch.manual_seed(0)
    reference = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),      # C1 on the padded 32x32, S2: 28 -> 14
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),                # C3, S4: 14 -> 10 -> 5
        nn.Flatten(), nn.Linear(400, 120), nn.Tanh(),                   # C5 (as a linear layer on the 5x5 maps)
        nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10),               # F6, output
    )
    ours = build_model("lenet5")
    assert sum(p.numel() for p in ours.parameters()) == 61_706
    _same_function(reference, ours)
    # the first conv's own rule: 32x32 from 28x28 and from 20x20, nothing added to 32x32
    for side, pad in [(28, 2), (20, 6), (32, 0)]:
        assert build_model("lenet5", image_size=(side, side)).features[0].padding == (pad, pad)


def test_alexnet_is_its_docstring():
    torch.manual_seed(0)

    def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 5, padding=2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()] + \
            [nn.MaxPool2d(2)] * pool

    reference = nn.Sequential(
        *block(1, 64, True), *block(64, 128, True), *block(128, 256, False), *block(256, 512, False),
        *block(512, 1024, True), nn.Flatten(),                               # 28 -> 14 -> 7 -> 3
        nn.Dropout(), nn.Linear(1024 * 9, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, 10),
    )
    ours = build_model("alexnet")
    assert sum(p.numel() for p in ours.parameters()) == 71_988_682
    _same_function(reference, ours)


def _structure(model: nn.Module) -> list[tuple[str, str]]:
    return [(name, repr(m)) for name, m in model.named_modules()] + [("crop", str(getattr(model, "crop", 0)))]


def _changed(name: str, option: str, default: object) -> dict:
    """A value of ``option`` other than ``name``'s default, with what it needs to be taken."""
    if option == "channels":
        if name in ("alexnet", "vgg"):
            return {"channels": [8, "M", 24, "M"]}
        return {"channels": [8, 16, 24, 32] if name.startswith("resnet") else [8, 12]}
    if option in ("batch_norm", "bn_after_pool"):
        return {option: not default} | ({"batch_norm": True} if option == "bn_after_pool" else {})
    return {"kernel_size": 3 if default != 3 else 5, "stride": 2, "padding": 1 if default != 1 else 0,
            "width": 0.5, "hidden": [33], "dropout": 0.25 if default != 0.25 else 0.5, "crop": 2}[option]


@pytest.mark.parametrize("name, option", [(n, o) for n in list_models() for o in model_options(n)])
def test_every_listed_option_changes_the_model(name, option):
    base = {"channels": [8, "M", 16, "M"]} if name == "vgg" else {}
    default = inspect.signature(_get(name)).parameters[option].default
    change = _changed(name, option, default)
    change = change if isinstance(change, dict) else {option: change}
    small = {} if option == "width" else {"width": 0.25}  # (quick to build; the width test compares 1 and 0.5)
    before = build_model(name, **base, **small)
    after = build_model(name, **{**base, **small, **change})
    assert _structure(after) != _structure(before)
