"""What machine a number came from: the CPU's model name and the vector instructions torch uses on it.

Training seconds and benchmark rates mean little without it: two machines that
both call themselves "AMD EPYC" trained this project's models 3-4x apart, one
with AVX-512 (and bf16 instructions), one with AVX2 only.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys

import torch


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS keeps one (``taskset``, a container's
    cpuset, a SLURM allocation), else the machine's. ``os.cpu_count()`` counts the host's: under a cpuset of 2 of
    64 cores, --nproc and the threads were planned for 64."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


@functools.cache  # one lscpu per process: every run's summary.json and every benchmark line ask
def cpu_name() -> str:
    """The CPU's model name and torch's CPU capability, e.g. "AMD EPYC (AVX2)".

    The name is lscpu's, else /proc/cpuinfo's (a container without util-linux), else macOS's, else the
    platform's ("x86_64", which tells two machines apart no better than nothing).
    """
    model = None
    try:
        # lscpu translates its labels ("Modellname:" under LANG=de_DE): read in the C locale, or the name was lost
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5,
                              env={**os.environ, "LC_ALL": "C"}).stdout
        model = lscpu_model(text)
    except (OSError, subprocess.SubprocessError):
        pass
    model = model or cpuinfo_model(_cpuinfo())
    if not model and sys.platform == "darwin":
        try:
            model = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                   timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    model = model or platform.processor() or platform.machine()
    return f"{model} ({torch.backends.cpu.get_cpu_capability()})"


def lscpu_model(text: str) -> str | None:
    """The model name in lscpu's (C locale) output; a CPU of two kinds of cores (ARM's big.LITTLE lists a
    "Model name:" per cluster) gives both, e.g. "Cortex-A55 + Cortex-A76". None where it names none.

    >>> lscpu_model("Architecture:  x86_64\\nModel name:    AMD EPYC 7B13\\n")
    'AMD EPYC 7B13'
    """
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("Model name:")]
    names = list(dict.fromkeys(n for n in names if n and n != "-"))  # lscpu writes "-" for one it cannot name
    return " + ".join(names) or None


def cpuinfo_model(cpuinfo: str) -> str | None:
    """The first ``model name`` in /proc/cpuinfo's text (x86, some ARM kernels); None where it has none.

    >>> cpuinfo_model("processor\\t: 0\\nmodel name\\t: AMD EPYC 7B13\\n")
    'AMD EPYC 7B13'
    """
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return None


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
