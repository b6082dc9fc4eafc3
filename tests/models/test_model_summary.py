"""Parameter and MAC counts checked against hand arithmetic; the counting leaves the model untouched."""

from __future__ import annotations

import torch
from torch import nn

from mnistlab.models import Net, build_model, count_macs, count_parameters, format_layer_table, layer_table


def tiny_net() -> Net:
    # 1x5x5 -> conv 2 kernels 3x3 -> 2x3x3 -> flatten 18 -> linear 4
    return Net(nn.Sequential(nn.Conv2d(1, 2, 3)), lambda n: nn.Linear(n, 4), in_channels=1, image_size=(5, 5))


def test_tiny_net_counts():
    net = tiny_net()
    conv_macs = 3 * 3 * 2 * 1 * 3 * 3  # out_h * out_w * out_c * in_c * kh * kw = 162
    linear_macs = 18 * 4
    assert count_macs(net) == conv_macs + linear_macs == 234
    assert count_parameters(net) == (2 * 1 * 3 * 3 + 2) + (18 * 4 + 4) == 96


def test_grouped_conv_and_explicit_input_size():
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    assert count_macs(conv, (4, 6, 6)) == 6 * 6 * 8 * (4 // 2) * 3 * 3


def test_cnn_counts_on_28x28():
    conv1 = 28 * 28 * 16 * 1 * 5 * 5  # "same" padding keeps 28x28
    conv2 = 14 * 14 * 32 * 16 * 5 * 5  # after the first 2x2 pool
    linear = (32 * 7 * 7) * 10
    assert count_macs(build_model("cnn")) == conv1 + conv2 + linear == 2_838_080


def test_trainable_only():
    net = build_model("cnn")
    for p in net.features.parameters():
        p.requires_grad_(False)
    assert count_parameters(net, trainable_only=True) == 32 * 7 * 7 * 10 + 10
    assert count_parameters(net) == 28_938


def test_counting_leaves_batch_norm_statistics_and_modes_alone():
    model = build_model("resnet18", width=0.125).train()
    model.features.stem.eval()  # a deliberately frozen part must stay in eval mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model)
    layer_table(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and model.features.layer1.training and not model.features.stem.training
    assert not model.features.stem[1].training  # BN inside the frozen stem


def test_layer_table_rows_add_up():
    model = build_model("cnn")
    rows = layer_table(model)
    assert [r["type"] for r in rows] == ["Conv2d", "MaxPool2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU", "Linear"]  # pool first: see conv_pool_stack
    assert rows[0] == {
        "name": "features.0", "type": "Conv2d", "output_shape": (16, 28, 28), "params": 416, "macs": 313_600
    }
    assert rows[-1]["output_shape"] == (10,)
    assert sum(r["params"] for r in rows) == count_parameters(model)
    assert sum(r["macs"] for r in rows) == count_macs(model)
    text = format_layer_table(rows)
    assert "features.3" in text and "32x14x14" in text
    assert text.splitlines()[-1] == "total: 28,938 parameters, 2,838,080 MACs per image"
