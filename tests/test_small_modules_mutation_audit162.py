"""Audit 162: mutation testing of folders, models.summary, models.checkpointing and training.allocator.

Each test here kills a hand-made mutant that the older tests let live; the expected values are worked out by hand
from the layer shapes (MACs = outputs per image x inputs per output) or from the documented behaviour.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import pwd
import shlex
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from mnistlab.folders import expand_home, missing_folders, probe_write, remove_empty, same_path, shell_path
from mnistlab.models.checkpointing import checkpointed_features, keep_running_stats, segments
from mnistlab.models.summary import count_macs, count_parameters, format_layer_table, layer_table, output_bytes
from mnistlab.training import allocator

# --- folders -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["my runs/a", "it's", "-x", "--resume", "a;rm -rf b", "plain/path"])
def test_shell_path_is_one_word_that_names_the_same_file(path):
    word = shell_path(path)
    (back,) = shlex.split(word)  # one word, whatever the path holds
    assert not back.startswith("-")  # never read as a flag
    assert os.path.normpath(back) == os.path.normpath(path)


def test_shell_path_leaves_a_plain_path_bare_and_prefixes_a_dash():
    assert shell_path(Path("runs/a-b")) == "runs/a-b"
    assert shell_path("-my run") == "'./-my run'"


def test_expand_home_names_the_unknown_user():
    with pytest.raises(ValueError, match=r"config ~nosuchuser162/x\.toml starts with ~nosuchuser162, "
                                         r"but this machine has no user 'nosuchuser162'; give it as a full path"):
        expand_home(Path("~nosuchuser162/x.toml"), "config", ValueError)


def test_expand_home_without_any_home(monkeypatch):
    monkeypatch.delenv("HOME", raising=False)

    def no_entry(uid):
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises(LookupError, match=r"starts with ~, but this user has no home folder"):
        expand_home(Path("~/x.toml"), "config", LookupError)
    assert expand_home(Path("/abs/x.toml"), "config", LookupError) == Path("/abs/x.toml")


def test_missing_folders_of_a_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert missing_folders(Path("rel/a")) == [Path("rel/a"), Path("rel")]
    (tmp_path / "rel").mkdir()
    assert missing_folders(Path("rel/a")) == [Path("rel/a")]


def test_missing_folders_through_a_link_then_dot_dot(tmp_path):
    # link/.. is the folder above the link's target (the kernel's answer), not tmp_path: mkdir makes real/run
    (tmp_path / "real" / "deep").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "deep")
    folder = tmp_path / "link" / ".." / "run"
    made = missing_folders(folder)
    folder.mkdir(parents=True)
    assert (tmp_path / "real" / "run").is_dir() and not (tmp_path / "run").exists()
    remove_empty(made)
    assert not (tmp_path / "real" / "run").exists()
    assert (tmp_path / "real" / "deep").is_dir()


def test_remove_empty_stops_at_the_first_that_cannot_go(tmp_path):
    full, empty = tmp_path / "full", tmp_path / "empty"
    full.mkdir()
    empty.mkdir()
    (full / "lock").write_text("")
    remove_empty([full, empty])
    assert full.is_dir() and empty.is_dir()  # the documented stop: nothing after the first kept folder goes


def test_same_path(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "l").symlink_to(tmp_path / "a")
    assert same_path(tmp_path / "a", tmp_path / "l")
    assert not same_path(tmp_path / "gone", tmp_path / "gone")  # one that does not exist is not the other
    assert not same_path(tmp_path / "a", tmp_path)


def test_probe_write_leaves_nothing_and_raises_where_it_cannot_write(tmp_path):
    probe_write(tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError):
        probe_write(tmp_path / "missing")


# --- models.summary -----------------------------------------------------------------------------------------


def test_count_parameters_trainable_only():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))  # 8 + 3
    model[0].requires_grad_(False)
    assert count_parameters(model) == 11
    assert count_parameters(model, trainable_only=True) == 3


def test_macs_of_conv1d_conv3d_and_grouped_non_square_conv():
    # Conv1d(2, 4, 3) on 2x10: 4x8 outputs, each 2*3 inputs
    assert count_macs(nn.Sequential(nn.Conv1d(2, 4, 3)), (2, 10)) == 4 * 8 * 2 * 3
    # Conv3d(1, 2, (2, 3, 3)) on 1x4x5x5: 2x3x3x3 outputs, each 1*2*3*3 inputs
    assert count_macs(nn.Sequential(nn.Conv3d(1, 2, (2, 3, 3))), (1, 4, 5, 5)) == 54 * 18
    # Conv2d(4, 8, (3, 1), groups=2) on 4x6x6: 8x4x6 outputs, each (4/2)*3*1 inputs
    assert count_macs(nn.Sequential(nn.Conv2d(4, 8, (3, 1), groups=2)), (4, 6, 6)) == 192 * 6


def test_macs_of_a_linear_layer_are_in_times_out():
    assert count_macs(nn.Sequential(nn.Linear(5, 3)), (5,)) == 15
    assert count_macs(nn.Sequential(nn.Linear(5, 3)), (2, 5)) == 30  # applied to each of 2 rows


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3)

    def forward(self, x):
        return self.conv(self.conv(x))


def test_a_layer_called_twice_keeps_its_first_shape_and_adds_both_costs():
    (row,) = [r for r in layer_table(_Twice(), (1, 7, 7)) if r["name"] == "conv"]
    assert row["output_shape"] == (1, 5, 5)
    assert row["macs"] == 25 * 9 + 9 * 9


def test_tied_weights_count_once_in_the_table():
    a, b = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
    b.weight = a.weight
    rows = layer_table(nn.Sequential(a, b), (3,))
    assert [r["params"] for r in rows] == [9, 0]
    assert sum(r["params"] for r in rows) == count_parameters(nn.Sequential(a, b)) == 9
    assert [r["macs"] for r in rows] == [9, 9]


def test_a_weight_normed_layer_is_one_row_with_its_parameters_and_macs():
    model = nn.Sequential(weight_norm(nn.Linear(4, 2, bias=False)))
    rows = layer_table(model, (4,))
    assert [(r["name"], r["params"], r["macs"]) for r in rows] == [("0", 2 + 8, 8)]


def test_a_bare_layer_is_the_model_row():
    assert [(r["name"], r["params"], r["output_shape"]) for r in layer_table(nn.Linear(4, 2), (4,))] == [
        ("(model)", 10, (2,))]


class _Scaled(nn.Module):
    """A module with children and a parameter of its own (a learnable scale)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x * self.scale)


def test_a_container_with_parameters_of_its_own_has_a_row():
    rows = layer_table(_Scaled(), (3,))
    assert [(r["name"], r["params"], r["macs"]) for r in rows] == [("(model)", 3, 0), ("fc", 8, 6)]
    assert sum(r["params"] for r in rows) == count_parameters(_Scaled())


def test_the_table_leaves_train_and_eval_flags_as_they_were():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    model.train()
    model[2].eval()
    layer_table(model, (4,))
    assert [m.training for m in model.modules()] == [True, True, True, False]


class _FixedFilter(nn.Module):
    """No parameters: a fixed float64 filter held as a buffer."""

    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", torch.ones(1, 1, 2, 2, dtype=torch.float64))

    def forward(self, x):
        return nn.functional.conv2d(x, self.kernel)


class _IntCounter(nn.Module):
    """No parameters, only an integer buffer; the probe image must still be floating point."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        return x.softmax(-1)


def test_the_probe_image_takes_the_dtype_of_a_buffer_only_model():
    assert count_macs(_FixedFilter(), (1, 3, 3)) == 0  # ran: the zero image was float64, as the buffer


def test_an_integer_buffer_does_not_make_the_probe_image_integer():
    assert count_macs(_IntCounter(), (4,)) == 0  # ran: softmax takes no integer image


def test_output_bytes_with_containers():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    # 2x3x3 float32 = 72 bytes each: conv, relu, then the Sequential's own output (the relu's again)
    assert output_bytes(model, torch.zeros(1, 1, 5, 5)) == [72, 72, 72]


def test_format_layer_table_exact_text():
    rows = [
        {"name": "conv", "type": "Conv2d", "output_shape": (2, 3, 3), "params": 20, "macs": 162},
        {"name": "fc", "type": "Linear", "output_shape": None, "params": 1234, "macs": 0},
    ]
    assert format_layer_table(rows).splitlines() == [
        "layer  type    output shape  parameters  MACs",
        "-" * 45,
        "conv   Conv2d  2x3x3                 20   162",
        "fc     Linear  -                  1,234     0",
        "-" * 45,
        "total: 1,254 parameters, 162 MACs per image",
    ]


# --- training.allocator -------------------------------------------------------------------------------------


class _FakeLibc:
    def __init__(self, answers=(1, 1)):
        self.calls, self.answers = [], list(answers)

    def mallopt(self, option, value):
        self.calls.append((option, value))
        return self.answers.pop(0)


@pytest.fixture
def fresh_allocator(monkeypatch):
    monkeypatch.setattr(allocator, "_done", None)  # monkeypatch puts the process's real state back after
    return monkeypatch


def test_reuse_freed_memory_sets_both_glibc_thresholds_once(fresh_allocator):
    libc = _FakeLibc()
    fresh_allocator.setattr(allocator, "glibc", lambda: libc)
    assert allocator.reuse_freed_memory() is True
    assert allocator.reuse_freed_memory() is True
    # M_MMAP_THRESHOLD is -3 and M_TRIM_THRESHOLD -1 in <malloc.h>; 32 MiB is glibc's 64-bit mmap maximum
    assert libc.calls == [(-3, 32 * 1024 * 1024), (-1, 1024 ** 3)]


@pytest.mark.parametrize("answers", [(0, 1), (1, 0)])
def test_reuse_freed_memory_is_false_when_glibc_refuses_a_setting(fresh_allocator, answers):
    fresh_allocator.setattr(allocator, "glibc", lambda: _FakeLibc(answers))
    assert allocator.reuse_freed_memory() is False
    assert allocator.kept_warning(False) is None  # nothing was kept, so nothing to warn about


def test_kept_warning_only_for_a_false_run_after_a_true_one(fresh_allocator):
    assert allocator.kept_warning(False) is None and allocator.kept_warning(True) is None
    fresh_allocator.setattr(allocator, "_done", True)
    assert "train.reuse_memory = false, but an earlier run" in allocator.kept_warning(False)
    assert allocator.kept_warning(True) is None


def test_glibc_is_none_off_linux_and_for_another_c_library(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.glibc() is None
    monkeypatch.setattr(sys, "platform", "linux")

    class Musl:  # a C library without gnu_get_libc_version
        def __init__(self, name):
            pass

    monkeypatch.setattr(ctypes, "CDLL", Musl)
    assert allocator.glibc() is None


# --- models.checkpointing -----------------------------------------------------------------------------------


def test_segments_need_a_sequential():
    with pytest.raises(TypeError, match="needs features to be an nn.Sequential, got Linear"):
        segments(nn.Linear(2, 2))


def test_segments_open_nested_sequentials_and_keep_blocks_whole():
    stem = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    block = nn.Sequential(nn.Conv2d(2, 2, 3))  # a block of its own would be any module with children
    residual = _Twice()  # a module with children, not a Sequential
    tail = [nn.Conv2d(1, 1, 3), nn.ReLU(), nn.MaxPool2d(2)]
    segs = segments(nn.Sequential(stem, residual, nn.ReLU(), block, *tail))
    assert [[type(m).__name__ for m in s] for s in segs] == [
        ["Conv2d", "BatchNorm2d", "ReLU"], ["_Twice", "ReLU"], ["Conv2d"], ["Conv2d", "ReLU", "MaxPool2d"]]


def test_a_plain_first_layer_starts_a_segment():
    assert [len(s) for s in segments(nn.Sequential(nn.ReLU(), nn.Identity(), nn.Conv2d(1, 1, 1)))] == [2, 1]


@pytest.mark.parametrize("fail", [False, True])
def test_keep_running_stats_puts_every_buffer_back(fail):
    bn = nn.BatchNorm2d(2).train()
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with pytest.raises(RuntimeError) if fail else contextlib.nullcontext():
        with keep_running_stats([nn.Sequential(bn)]):
            bn(torch.randn(4, 2, 3, 3))
            assert bn.num_batches_tracked.item() == 1
            if fail:  # checkpoint stops a recompute early by raising
                raise RuntimeError("stop")
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_checkpointed_features_move_the_statistics_once_per_step():
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2))
    plain = copy.deepcopy(features)
    x = torch.randn(3, 1, 7, 7, requires_grad=True)
    checkpointed_features(features, x).sum().backward()
    plain(x).sum().backward()
    for (k, a), b in zip(features.state_dict().items(), plain.state_dict().values()):
        assert torch.allclose(a.float(), b.float()), k
    assert features[1].num_batches_tracked.item() == 1
