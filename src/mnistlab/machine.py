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
