"""Checkpoint files: damaged zip directories, weights that overflow when loaded, unusable paths, and two
threads writing one file. Each case must end in one CheckpointError line, or in a whole file."""

import threading
import time

import pytest
import torch

from mnistlab.errors import CheckpointError
from mnistlab.training.checkpoint import (
    atomic_write,
    checkpoint_file,
    load_model,
    read_checkpoint,
    resume_file,
    save_checkpoint,
)
from test_checkpoint import payload


def _saved(tmp_path, name="a.ckpt"):
    _, p = payload()
    return save_checkpoint(tmp_path / name, p)


def test_a_damaged_zip64_end_record_is_one_error(tmp_path):
    # One flipped byte in the zip64 locator's disk count: zipfile.is_zipfile raised BadZipFile ("zipfiles that
    # span multiple disks are not supported") as a traceback.
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    locator = data.rfind(b"PK\x06\x07")
    assert locator > 0, "torch.save no longer writes a zip64 locator"
    data[locator + 16] = 5  # total number of disks
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"a.ckpt is not a readable checkpoint \(its zip directory is damaged"):
        load_model(path)


def test_a_damaged_version_needed_to_extract_is_one_error(tmp_path):
    # A flipped byte in a central directory entry's "version needed to extract": zipfile raised
    # NotImplementedError ("zip file version 24.2"), which _check_archive let through.
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    entry = data.find(b"PK\x01\x02")
    data[entry + 6] = 242
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"a.ckpt is not a readable checkpoint \(its zip directory is damaged"):
        read_checkpoint(path)


def test_float64_weights_that_overflow_float32_are_refused_not_loaded_as_inf(tmp_path):
    _, p = payload()
    ok = {k: (v.double() if v.is_floating_point() else v) for k, v in p["model"].items()}
    loaded = load_model(save_checkpoint(tmp_path / "f64.ckpt", {**p, "model": ok}))  # float64 that fits: loads
    assert all(torch.isfinite(t).all() for t in loaded.state_dict().values() if t.is_floating_point())
    huge = dict(ok)
    huge["classifier.0.weight"] = ok["classifier.0.weight"] * 1e300  # finite in float64, inf in float32
    with pytest.raises(CheckpointError, match=r"hold NaN or infinite values \(classifier.0.weight\) as the model's "
                                              r"float32"):
        load_model(save_checkpoint(tmp_path / "huge.ckpt", {**p, "model": huge}))


@pytest.mark.parametrize("find", [checkpoint_file, read_checkpoint, load_model, resume_file])
def test_a_name_too_long_is_one_error(tmp_path, find):
    # Python 3.11's Path.is_dir raises ENAMETOOLONG (and EACCES from a folder that cannot be searched).
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*x\.ckpt: File name too long"):
        find(tmp_path / ("x" * 300 + ".ckpt"))


def test_two_threads_writing_one_file_at_once_both_succeed_and_leave_a_whole_file(tmp_path):
    # Both used the temporary name .last.ckpt.tmp-PID: the second truncated and renamed the file the first was
    # writing, whose own rename then failed ("No such file or directory"), its bytes over the second's.
    target = tmp_path / "last.ckpt"
    inside, errors = threading.Event(), []

    def slow(f):
        inside.set()
        time.sleep(0.3)  # the other thread writes meanwhile
        f.write(b"A" * 1000)

    def run(write):
        try:
            atomic_write(target, write)
        except OSError as e:
            errors.append(e)

    first = threading.Thread(target=run, args=(slow,))
    first.start()
    assert inside.wait(5)
    second = threading.Thread(target=run, args=(lambda f: f.write(b"B" * 10),))
    second.start()
    first.join()
    second.join()
    assert errors == []
    assert target.read_bytes() == b"B" * 10  # the later write, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_fifo_for_config_toml_does_not_hang_choosing_ema_ckpt(tmp_path):
    # _ema_turned_off read config.toml: a named pipe there waited for a writer for ever
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    (run / "ema.ckpt").write_bytes(b"x")
    os.mkfifo(run / "config.toml")
    code = f"from mnistlab.training.checkpoint import checkpoint_file; print(checkpoint_file({str(run)!r}, ema=True))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == str(run / "ema.ckpt"), done.stderr


def test_a_folder_of_runs_given_as_a_run_says_so(tmp_path):
    # `mnistlab ensemble runs/` said "run folder runs has no best.ckpt (the run never finished an epoch?)"
    from mnistlab.training.checkpoint import checkpoint_file

    for run in ("a", "b"):
        (tmp_path / "runs" / run).mkdir(parents=True)
        (tmp_path / "runs" / run / "best.ckpt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"runs is a folder of runs, not a run: name the runs in it \(.*/runs/a "
                                              r".*/runs/b\)"):
        checkpoint_file(tmp_path / "runs")


def test_a_tilde_of_an_unknown_user_says_so():
    # the ~ expansion is folders.expand_home, shared with data.dir and --config
    from mnistlab.training.checkpoint import checkpoint_file

    with pytest.raises(CheckpointError, match=r"checkpoint ~nosuchuser-mnistlab/run starts with ~nosuchuser-mnistlab, "
                                              r"but this machine has no user 'nosuchuser-mnistlab'"):
        checkpoint_file("~nosuchuser-mnistlab/run")
