"""train.precision: what ``auto`` picks, and how a machine's bf16 instructions are recognised."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from mnistlab.config import Config, apply_overrides
from mnistlab.machine import cpuinfo_has_bf16, native_bf16
from mnistlab.training import train
from mnistlab.training.fit import resolve_precision

# Excerpts of real /proc/cpuinfo texts (the flags lines cut short).
ZEN4 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
ZEN3 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx512f amx_bf16 amx_tile amx_int8\n"
NEOVERSE_V1 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize("text, expected", [
    (ZEN4, True), (SAPPHIRE_RAPIDS, True), (ZEN3, False), ("", False),
    (NEOVERSE_V1, False),  # ARM's bf16 feature: not counted (not measured)
    # a flag's name elsewhere on a line that is not the flags line does not count
    ("model name\t: bf16 avx512_bf16 emulator\nflags\t\t: sse2\n", False),
])
def test_bf16_instructions_are_read_from_the_flags_line(text, expected):
    assert cpuinfo_has_bf16(text) is expected


def test_this_machines_answer_agrees_with_its_cpuinfo():
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/cpuinfo")
    with open("/proc/cpuinfo") as f:
        assert native_bf16() is cpuinfo_has_bf16(f.read())


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_on_a_gpu_or_cpu_that_computes_in_bf16(monkeypatch, native):
    fit = sys.modules["mnistlab.training.fit"]
    monkeypatch.setattr(fit, "native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    # NVIDIA's GPUs compute in bf16 from compute capability 8.0 (Ampere); a T4 or V100 emulates it, slower than fp32
    monkeypatch.setattr(torch.version, "hip", None)
    for capability, precision in (((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "fp32"), ((7, 0), "fp32")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert resolve_precision("auto", torch.device("cuda")) == precision
    assert resolve_precision("auto", torch.device("mps")) == "fp32"
    # an explicit choice is kept either way
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"


def test_a_run_says_which_precision_it_trained_in(mnist_root, tmp_path, monkeypatch, capsys):
    fit = sys.modules["mnistlab.training.fit"]
    monkeypatch.chdir(tmp_path)
    cfg = apply_overrides(Config(), [f"data.dir={mnist_root}", "data.train_limit=200", "data.val_size=100",
                                     "train.epochs=1", "train.device=cpu", "model.channels=[4, 8]",
                                     "tensorboard.enabled=false"])
    for native, precision in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(fit, "native_bf16", lambda native=native: native)
        result = train(cfg, out=tmp_path / precision)
        summary = json.loads((tmp_path / precision / "summary.json").read_text())
        assert summary["precision"] == result.summary["precision"] == precision
        start = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("training "))
        assert ("bf16 autocast" in start) is (precision == "bf16"), start


@pytest.mark.parametrize("bf16, fp16, expected", [
    (True, False, " with bf16 instructions, "), (True, True, " with bf16 instructions and fp16 instructions, "),
    (False, True, " with fp16 instructions, "), (False, False, ""),
])
def test_the_machine_line_names_the_low_precision_instructions(monkeypatch, bf16, fp16, expected):
    from mnistlab import bench

    monkeypatch.setattr(bench, "native_bf16", lambda: bf16)
    monkeypatch.setattr(bench, "native_fp16", lambda: fp16)
    monkeypatch.setattr(bench, "cpu_name", lambda: "AMD EPYC (AVX512)")
    line = bench.machine_description()
    assert line.startswith("AMD EPYC (AVX512)" + (expected or ", "))
