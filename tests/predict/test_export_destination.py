"""Where `mnistlab export` may write: never over a device or a pipe (--out /dev/null replaced the device)."""

from __future__ import annotations

import os

import pytest

from mnistlab.errors import MnistlabError
from mnistlab.models import build_model

pytest.importorskip("onnx", reason="the export extra: pip install -e '.[export]'")
pytest.importorskip("onnxscript", reason="the export extra: pip install -e '.[export]'")

from mnistlab.export import export_onnx  # noqa: E402 - after the guard above


def test_a_pipe_given_as_the_onnx_file_is_refused_and_left_as_it_is(tmp_path):
    # --out /dev/null, as root, renamed the export over the device: /dev/null became a regular file for every
    # process on the machine. A fifo stands in for the device: the same kind of file, and no test may touch /dev.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(MnistlabError, match=r"pipe is not a regular file \(a device, a pipe or a socket\): an export "
                                            r"writes a file; give the ONNX file's name"):
        export_onnx(build_model("cnn"), fifo, check=False)
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
