"""What machine a number came from: the CPU's model name and the vector instructions torch uses on it.

Training seconds and benchmark rates mean little without it: two machines that
both call themselves "AMD EPYC" trained this project's models 3-4x apart, one
with AVX-512 (and bf16 instructions), one with AVX2 only.
"""

from __future__ import annotations

import functools
import platform
import subprocess

import torch


@functools.cache  # one lscpu per process: every run's summary.json and every benchmark line ask
def cpu_name() -> str:
    """The CPU's model name (lscpu's, else the platform's) and torch's CPU capability, e.g. "AMD EPYC (AVX2)"."""
    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{model} ({torch.backends.cpu.get_cpu_capability()})"


# x86's bf16 instructions: AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake) and AMX-BF16 (Intel Xeons
# since Sapphire Rapids), as /proc/cpuinfo names them. ARM's BF16 is not counted: not measured here.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# x86's fp16 arithmetic: AVX512-FP16 (Intel Xeons since Sapphire Rapids) and AMX-FP16 (Granite Rapids). F16C,
# which every AVX2 CPU has, only converts: fp16 autocast without them trained in 7-19x the time of fp32
# (benchmarks/bf16_fp16_epyc-avx512.txt).
FP16_FLAGS = frozenset({"avx512_fp16", "amx_fp16"})


def cpuinfo_has(cpuinfo: str, flags: frozenset[str]) -> bool:
    """Whether /proc/cpuinfo's text names one of ``flags`` on a ``flags`` line."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and flags & set(value.split()):
            return True
    return False


def cpuinfo_has_bf16(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's text names one of :data:`BF16_FLAGS` on a ``flags`` line."""
    return cpuinfo_has(cpuinfo, BF16_FLAGS)


@functools.cache
def _cpuinfo() -> str:
    """/proc/cpuinfo's text; empty where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic instructions that oneDNN uses for bf16 convs and matmuls (x86 Linux).

    Without them bf16 trained in 9-13x the time of fp32 (``benchmarks/bf16.py`` with oneDNN
    limited to AVX2). False where it cannot tell (no /proc/cpuinfo).
    """
    return cpuinfo_has(_cpuinfo(), BF16_FLAGS)


def native_fp16() -> bool:
    """Whether this CPU has fp16 arithmetic instructions (:data:`FP16_FLAGS`; x86 Linux). False where it cannot tell."""
    return cpuinfo_has(_cpuinfo(), FP16_FLAGS)
