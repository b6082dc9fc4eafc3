"""Shared fixtures: where real MNIST lives, a small cached bundle of it, and no downloads.

Real MNIST (the four uncompressed IDX files) is looked for in ``$MNISTLAB_TEST_DATA``,
else in ``<repo>/../shared/data``, as ``MNIST/raw/<file>``. Where it is missing, tests
that need it are skipped, except on CI (``CI=true``), where they fail: a CI job that
silently skipped every real-data test would look green while testing nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

# One torch thread per test process unless a test sets more: `make test` runs one worker per core, and two
# threads in each worker spun in OpenMP's waits on the shared cores (3 to 6 times the CPU for the same work,
# measured on the 2-core machine). Set before torch is imported; the CLI processes the tests start inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# A suite started as a shell's background job (`make test &` in a script) inherits SIGINT ignored, and a run keeps
# an ignored signal ignored (training/fit.py's stopping_signals): the tests that press Ctrl-C, in this process or
# in the processes they start, then failed. Python's own handler, as in a terminal; the started processes then
# begin with the default action again, and install Python's handler too.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def _no_dataset_downloads(monkeypatch):
    """Nothing may be downloaded in tests: a request through urllib to any host but 127.0.0.1 fails the test.

    The datasets' downloads (mnistlab's and torchvision's) fetch through ``urllib.request.urlopen``. The download
    tests serve their archives from 127.0.0.1 (tests/data/test_dataset_fetch.py), so those requests pass.
    ``pytest.fail`` raises a BaseException, so no ``except Exception`` (or ``except OSError``) in the code under
    test can turn it into an ordinary error, or into a try of the next mirror.
    """
    import urllib.parse
    import urllib.request

    urlopen = urllib.request.urlopen

    def local_only(url, *args, **kwargs):
        full_url = url.full_url if isinstance(url, urllib.request.Request) else url
        if urllib.parse.urlsplit(full_url).hostname != "127.0.0.1":
            pytest.fail(f"a test tried to download {full_url}; tests must not use the network")
        return urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)


@pytest.fixture
def child_process():
    """``child_process(args, **popen_kwargs)``: a Popen with text stdout and stderr piped, killed and reaped when
    the test ends, whatever happened (a test that failed while its process waited left it running)."""
    started: list[subprocess.Popen] = []

    def start(args: list[str], **kwargs) -> subprocess.Popen:
        started.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs))
        return started[-1]

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The data root holding ``MNIST/raw/`` with the four original files (read-only: copy before corrupting)."""
    env = os.environ.get("MNISTLAB_TEST_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    raw = root / "MNIST" / "raw"
    missing = [name for name in MNIST_FILES if not (raw / name).is_file()]
    if missing:
        message = (
            f"real MNIST is missing from {raw} ({', '.join(missing)}); put the four uncompressed IDX files "
            f"there, or set MNISTLAB_TEST_DATA to a folder that has them under MNIST/raw/"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def mnist_small(mnist_root):
    """A DataBundle of real MNIST on the CPU: 2,000 training and 500 validation images, full test set.

    Session-scoped and shared by all tests: treat its tensors as read-only.
    """
    from mnistlab.config import DataConfig
    from mnistlab.data import load_data

    return load_data(DataConfig(dataset="mnist", dir=str(mnist_root), val_size=500, train_limit=2000, download=False))


@pytest.fixture(scope="session")
def one_step_run(mnist_root, tmp_path_factory):
    """A finished run folder of one training step of ``cnn``, without report or TensorBoard (read-only: copy
    before changing it)."""
    from mnistlab import train
    from mnistlab.config import Config, apply_overrides

    out = tmp_path_factory.mktemp("one_step") / "run"
    cfg = apply_overrides(Config(), [
        f"data.dir={mnist_root}", "data.train_limit=300", "data.val_size=100", "model.name=cnn",
        "train.batch_size=100", "train.threads=1", "train.epochs=1", "train.max_steps=1", "train.progress=false",
        "train.report=false", "tensorboard.enabled=false",
    ])
    train(cfg, out=out, quiet=True)
    return out


@pytest.fixture
def export_extra():
    """onnx and ONNX Runtime, as ``export_extra.onnx`` and ``export_extra.onnxruntime`` (with onnxscript, which
    torch's exporter needs: the export extra, which ``.[test]`` installs). Missing, the test is skipped with the
    install command, except on CI (``CI=true``), where it fails: a job without the extra must not look green."""
    import types

    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as e:
        message = f"the test needs the export extra ({e}): pip install -e '.[export]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return types.SimpleNamespace(onnx=onnx, onnxruntime=onnxruntime)


@pytest.fixture
def no_report(monkeypatch):
    """In-process runs skip report.html: its plots cost seconds a run (4 s on a slow CPU); tests/report tests it.

    Autouse in tests/training and tests/reliability; requested by the sweep tests that train for real.
    """
    import types

    import mnistlab.report

    monkeypatch.setattr(mnistlab.report, "write_run_report", lambda *a, **k: types.SimpleNamespace(path="(skipped)"))
