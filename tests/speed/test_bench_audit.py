"""The machine line of ``mnistlab bench`` on other systems, and ``--nproc``'s checks and environment (fakes only)."""

from __future__ import annotations

import subprocess

import pytest
import torch

from mnistlab import bench, machine
from mnistlab.errors import ConfigError
from mnistlab.training import distributed

LSCPU_DE = "Architektur:       x86_64\nModellname:        AMD EPYC 7B13\n"
LSCPU_C = "Architecture:      x86_64\nModel name:        AMD EPYC 7B13\n"


@pytest.fixture
def fresh_cpu_name():
    machine.cpu_name.cache_clear()
    yield
    machine.cpu_name.cache_clear()


def fake_lscpu(monkeypatch, output):
    """subprocess.run as lscpu: ``output(env)`` is its text for the environment it is given."""
    def run(cmd, **kw):
        if cmd[0] != "lscpu":
            raise FileNotFoundError(cmd[0])
        return subprocess.CompletedProcess(cmd, 0, output(kw.get("env")), "")

    monkeypatch.setattr(machine.subprocess, "run", run)


def test_the_cpu_is_named_under_a_translated_lscpu(monkeypatch, fresh_cpu_name):
    # Under LANG=de_DE lscpu says "Modellname:", and the name became the platform's "x86_64".
    fake_lscpu(monkeypatch, lambda env: LSCPU_C if env and env.get("LC_ALL") == "C" else LSCPU_DE)
    monkeypatch.setattr(machine, "_cpuinfo", lambda: "")
    assert machine.cpu_name().startswith("AMD EPYC 7B13 (")


def test_without_lscpu_the_cpu_is_named_from_proc_cpuinfo(monkeypatch, fresh_cpu_name):
    # A container without util-linux: the name was "x86_64", the same for every machine.
    def no_lscpu(cmd, **kw):
        raise FileNotFoundError(cmd[0])

    monkeypatch.setattr(machine.subprocess, "run", no_lscpu)
    monkeypatch.setattr(machine, "_cpuinfo", lambda: "processor\t: 0\nvendor_id\t: AuthenticAMD\n"
                                                     "model name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2\n")
    assert machine.cpu_name().startswith("AMD EPYC 9B14 (")


@pytest.mark.parametrize("text, name", [
    (LSCPU_C, "AMD EPYC 7B13"),
    ("Model name: Cortex-A55\nModel name: Cortex-A76\n", "Cortex-A55 + Cortex-A76"),  # big.LITTLE: both
    ("Vendor ID: ARM\nModel name: -\n", None),  # lscpu's "-": no name
    ("BIOS Model name: Some Board\n", None),
    ("", None),
])
def test_lscpu_model(text, name):
    assert machine.lscpu_model(text) == name


@pytest.mark.parametrize("text, name", [
    ("model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n",
     "Intel(R) Xeon(R) CPU @ 2.20GHz"),
    ("processor\t: 0\nFeatures\t: fp asimd\nCPU part\t: 0xd0c\n", None),  # ARM's has none
    ("model name\t:\n", None),
    ("", None),
])
def test_cpuinfo_model(text, name):
    assert machine.cpuinfo_model(text) == name


def test_the_machine_line_without_a_load_average(monkeypatch):
    # Windows has no os.getloadavg: bench stopped at its first line with an AttributeError.
    monkeypatch.delattr(bench.os, "getloadavg")
    line = bench.machine_description()
    assert "cores" in line and "load average" not in line


def test_processes_per_machine_not_in_all_are_held_to_the_cores(monkeypatch):
    # torchrun --nnodes 2 --nproc_per_node 2 on machines of 2 cores: every process checks WORLD_SIZE, 4, and
    # all refused ("--nproc 4 on the CPU, but this machine has 2 core(s)").
    monkeypatch.setattr(distributed.machine, "usable_cores", lambda: 2)
    for key, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    distributed.check_processes(4, torch.device("cpu"), 100)
    with pytest.raises(ConfigError, match="divisible"):  # the batch is still shared by all 4
        distributed.check_processes(4, torch.device("cpu"), 102)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match=r"--nproc 4 on the CPU, but this machine has 2 core\(s\)"):
        distributed.check_processes(4, torch.device("cpu"), 100)


@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_omp_num_threads_is_not_a_setting(monkeypatch, value):
    # `OMP_NUM_THREADS=$UNSET mnistlab train --nproc 2`: the workers got it empty, which OpenMP ignores
    # (with a warning), so each process ran on all the cores.
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    monkeypatch.setattr(distributed.machine, "usable_cores", lambda: 8)
    assert distributed._worker_env(2)["OMP_NUM_THREADS"] == "4"


def test_the_machine_line_counts_one_thread_in_the_singular(monkeypatch):
    monkeypatch.setattr(bench.torch, "get_num_threads", lambda: 1)
    assert ", 1 thread," in bench.machine_description() + ","  # it said "1 threads"
    monkeypatch.setattr(bench.torch, "get_num_threads", lambda: 2)
    assert ", 2 threads" in bench.machine_description()


def test_the_machine_line_says_how_many_of_the_cores_the_process_may_use(monkeypatch):
    # Under `taskset -c 0` (a cpuset, a SLURM allocation) the line said "64 cores" for numbers measured on one.
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0}, raising=False)  # the process's cores
    assert ", 64 cores (1 usable by this process), torch " in bench.machine_description()
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert ", 64 cores, torch " in bench.machine_description()


@pytest.mark.parametrize("reuse", [True, False])
def test_the_public_recipe_runs_under_the_allocator_the_compared_runs_set(monkeypatch, reuse):
    # train.reuse_memory sets glibc's malloc for the whole process, for good: the first seed's public recipe ran
    # before any mnistlab run had set it, the later seeds' after, so seed 0's reference was up to 1.3x slower.
    import mnistlab.bench as bench

    calls = []
    monkeypatch.setattr(bench, "reuse_freed_memory", lambda: calls.append("set"))
    monkeypatch.setattr(bench, "_public_recipe", lambda data, seed: calls.append("recipe") or {"seed": seed})
    assert bench.public_recipe(None, 3, reuse_memory=reuse) == {"seed": 3}
    assert calls == (["set", "recipe"] if reuse else ["recipe"])
