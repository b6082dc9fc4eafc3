"""`mnistlab export`: the ONNX file computes what the model computes, for every kind of zoo layer, on real
MNIST and on the inputs `predict` makes; it keeps no file that differs; it says what is missing or wrong."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from mnistlab.cli import main
from mnistlab.config import DataConfig
from mnistlab.errors import MnistlabError
from mnistlab.models import build_model


def _import_onnx():
    """onnx and ONNX Runtime, which the tests read the written files with (the export extra; `.[test]` has it).

    Missing, the module is skipped with the install command, except on CI (``CI=true``), where it fails: a CI
    job without the extra must not look green while testing nothing here.
    """
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401 - torch's exporter needs it
    except ImportError as e:
        missing = e
    else:
        return onnx, onnxruntime
    message = f"the export tests need the export extra ({missing}); install it with pip install -e '.[export]'"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


onnx, ort = _import_onnx()

from mnistlab.export import export_checkpoint, export_onnx  # noqa: E402 - after the guard above


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, images: torch.Tensor):
    logits, probabilities = session.run(["logits", "probabilities"], {"images": images.numpy()})
    return torch.from_numpy(logits), torch.from_numpy(probabilities)


# One model of each family, with the options that add layers of other kinds (batch norm before and after
# the pool, dropout, a crop, hidden linear layers, residual blocks), at widths that export in seconds.
ZOO = [
    ("fast", dict(batch_norm=True, bn_after_pool=True, crop=2, dropout=0.3)),
    ("cnn", dict(batch_norm=True, hidden=(32,), stride=1, padding=1)),
    ("lenet5", {}),
    ("alexnet", dict(width=0.125, batch_norm=True)),
    ("vgg11", dict(width=0.125, batch_norm=True)),
    ("resnet18", dict(width=0.25)),
]


@pytest.mark.parametrize("name, options", ZOO, ids=[name for name, _ in ZOO])
def test_onnx_runtime_computes_the_models_outputs_at_any_batch_size(tmp_path, name, options):
    torch.manual_seed(0)
    model = build_model(name, mean=(0.13,), std=(0.31,), **options)
    with torch.no_grad():  # batch norm's running statistics away from 0 and 1, so that exporting them matters
        model.train()(torch.rand(64, 1, 28, 28) * 3)
    model = model.to(memory_format=torch.channels_last)  # as load_model gives the small CNNs: left so below
    before = {k: v.clone() for k, v in model.state_dict().items()}

    result = export_onnx(model, tmp_path / "m.onnx", name=name)

    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    session = _session(result.path)
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    assert isinstance(session.get_inputs()[0].shape[0], str) and session.get_inputs()[0].shape[1:] == [1, 28, 28]
    model.eval()
    for batch in (1, 3, 130):  # 130: no batch size the export or its check ran
        x = torch.rand(batch, 1, 28, 28)
        logits, probabilities = _run(session, x)
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4 * max(1.0, float(expected.abs().max())))
        torch.testing.assert_close(probabilities, expected.softmax(1), rtol=1e-4, atol=1e-5)
    assert result.check is not None and result.check.max_difference < 1e-4
    props = {p.key: p.value for p in onnx.load(result.path).metadata_props}
    assert props["mnistlab.model"] == name
    assert json.loads(props["mnistlab.classes"]) == [str(i) for i in range(10)]


def test_the_exported_run_scores_the_test_set_as_the_run_did(digit_run, mnist_root, capsys):
    from mnistlab.data import load_test
    from mnistlab.training.checkpoint import load_model

    assert main(["export", str(digit_run)]) == 0
    out = capsys.readouterr().out
    path = digit_run / "best.onnx"
    assert out.startswith(f"wrote {path} (") and "checked in ONNX Runtime" in out
    test = load_test(DataConfig(dir=str(mnist_root), download=False)).test
    images = test.images.float().div(255).unsqueeze(1) if test.images.dim() == 3 else test.images.float().div(255)
    logits, _ = _run(_session(path), images)
    with torch.no_grad():
        expected = load_model(digit_run)(images)
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    summary = json.loads((digit_run / "summary.json").read_text())
    accuracy = int((logits.argmax(1) == test.labels).sum()) / len(test.labels)
    assert accuracy == pytest.approx(summary["test_accuracy"], abs=1e-12)
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    stored = torch.load(digit_run / "best.ckpt", weights_only=True)
    assert props["mnistlab.weights_sha256"] == stored["weights_sha256"]
    assert props["mnistlab.epoch"] == str(stored["epoch"]) and props["mnistlab.dataset"] == "mnist"


def test_the_exported_model_classifies_drawn_digits_as_predict_does(digit_run, digit_model, drawn_digits, tmp_path):
    from mnistlab.predict import predict_files

    path = export_checkpoint(digit_run, out=tmp_path / "deploy" / "digits.onnx").path  # a folder made on the way
    files = [drawn_digits[digit, "photo.jpg"] for digit in range(10)]
    predictions = predict_files(digit_model, files, top_k=3)
    _, probabilities = _run(_session(path), torch.stack([p.image for p in predictions]))
    torch.testing.assert_close(probabilities, torch.stack([p.probabilities for p in predictions]), rtol=1e-4, atol=1e-5)


def test_json_output_describes_the_file(digit_run, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", str(digit_run / "best.ckpt"), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(out) and report["bytes"] == out.stat().st_size
    assert report["model"] == "fast" and report["checkpoint"] == str(digit_run / "best.ckpt")
    assert report["inputs"]["images"]["shape"] == ["batch", 1, 28, 28]
    assert report["outputs"]["probabilities"]["shape"] == ["batch", 10]
    assert report["opset"] == onnx.load(out).opset_import[0].version
    assert report["check"]["images"] == 65 and report["check"]["same_predictions"] == 65


def test_a_file_that_computes_something_else_is_not_kept(digit_model, tmp_path, monkeypatch):
    import mnistlab.export as export

    other = build_model("fast", mean=(0.13,), std=(0.31,))  # the same graph with other weights
    path = tmp_path / "m.onnx"
    export_onnx(digit_model, path, name="fast", check=False)  # the file that was there before
    before = path.read_bytes()
    real = export._onnx_proto
    monkeypatch.setattr(export, "_onnx_proto", lambda model, shape: real(other.eval(), shape))
    with pytest.raises(MnistlabError, match="computes other outputs than the model: its logits differ by up to .*it "
                                            "was not kept"):
        export_onnx(digit_model, path, name="fast")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file left either
    export_onnx(digit_model, path, name="fast", check=False)  # unchecked, it is written
    assert path.read_bytes() != before and path.stat().st_size > 100_000


def test_missing_packages_are_named_with_the_install_command(digit_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(MnistlabError, match=r"checking the exported file in ONNX Runtime \(or export without the "
                                            r"check, --no-check\) needs onnxruntime, which is not installed: pip "
                                            r"install 'mnistlab\[export\]'"):
        export_checkpoint(digit_run, out=tmp_path / "a.onnx")
    assert export_checkpoint(digit_run, out=tmp_path / "a.onnx", check=False).check is None
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(MnistlabError, match=r"exporting to ONNX needs onnxscript, which is not installed"):
        export_checkpoint(digit_run, out=tmp_path / "b.onnx", check=False)
    assert not (tmp_path / "b.onnx").exists()


class _Exploit:
    """Unpickling this would create ``marker``: what a malicious checkpoint does."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("case", [
    "out is a folder", "empty out", "out is -", "no checkpoint", "code in the checkpoint"])
def test_bad_input_is_one_line_and_writes_nothing(digit_run, tmp_path, capsys, monkeypatch, case):
    target = digit_run
    args = ["--out", str(tmp_path / "m.onnx")]
    if case == "out is a folder":
        args, message = ["--out", str(tmp_path)], f"{tmp_path} is a folder: give the ONNX file's name"
    elif case == "empty out":
        args, message = ["--out", " "], "--out needs a file name"
    elif case == "out is -":  # it wrote a file named "-" into the current folder
        monkeypatch.chdir(tmp_path)
        args, message = ["--out", "-"], ("- is not a file name here: an ONNX file is binary and is not written to "
                                         "standard output (which takes the export's summary); give the file's name")
    elif case == "no checkpoint":
        target, message = tmp_path / "nothing.ckpt", "does not exist"
    else:
        stored = torch.load(digit_run / "best.ckpt", weights_only=True)
        stored["history"] = _Exploit(str(tmp_path / "pwned"))
        target, message = tmp_path / "evil.ckpt", "could run code"
        torch.save(stored, target)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["export", str(target), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("mnistlab export: error: ") and message in captured.err, captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written (nor code run)


def test_an_exporter_failure_is_one_line_that_says_why(digit_run, tmp_path, capsys, monkeypatch):
    def fails(*args, dynamo=True, **kwargs):  # (dynamo: the parameter of the exporter it checks for)
        raise RuntimeError("Failed to convert the exported program to an ONNX model.\nmany more lines")

    monkeypatch.setattr(torch.onnx, "export", fails)
    assert main(["export", str(digit_run), "--out", str(tmp_path / "m.onnx")]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("mnistlab export: error: could not export the model to ONNX: Failed to convert the "
                            "exported program to an ONNX model.\n")
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------------------
# What an audit found: each of these failed before its fix.


def _with_nan_bias(model):
    import copy

    broken = copy.deepcopy(model).eval()
    with torch.no_grad():
        broken.get_submodule(broken.output_layer).bias[3] = float("nan")
    return broken


def test_a_file_whose_logits_are_nan_is_not_kept(digit_model, tmp_path, monkeypatch):
    # max() took NaN for no difference: such a file was kept, its check saying 0.0.
    import mnistlab.export as export

    real = export._onnx_proto
    monkeypatch.setattr(export, "_onnx_proto", lambda model, shape: real(_with_nan_bias(model), shape))
    with pytest.raises(MnistlabError, match="its logits differ by up to inf of the largest logit"):
        export_onnx(digit_model, tmp_path / "m.onnx", name="fast")
    assert not list(tmp_path.iterdir())


def test_a_model_with_nan_outputs_is_not_exported_with_a_check(digit_model, tmp_path):
    with pytest.raises(MnistlabError, match="the model's own outputs are not finite"):
        export_onnx(_with_nan_bias(digit_model), tmp_path / "m.onnx", name="fast")
    assert not list(tmp_path.iterdir())


def test_near_ties_between_large_logits_pass_the_check(digit_model, tmp_path):
    # Logits of about 1e4 whose top ones are near each other: float32 rounding moves their softmax by more than
    # 1e-4 while the logits agree to 1e-6 of their size. An absolute check of the probabilities refused the file.
    import copy

    model = copy.deepcopy(digit_model)
    last = model.get_submodule(model.output_layer)
    torch.manual_seed(0)
    with torch.no_grad():
        last.weight.copy_(last.weight[0].expand_as(last.weight) * 1e3 + torch.randn_like(last.weight) * 1e-3)
        last.bias.zero_()
    result = export_onnx(model, tmp_path / "m.onnx", name="fast")
    assert result.check.max_difference < 1e-5


def test_the_callers_random_stream_is_left_where_it_was(digit_model, tmp_path):
    state = torch.get_rng_state()
    export_onnx(digit_model, tmp_path / "m.onnx", name="fast")
    assert torch.equal(torch.get_rng_state(), state)


def test_metadata_may_add_strings_but_not_replace_mnistlabs(digit_model, tmp_path):
    result = export_onnx(digit_model, tmp_path / "m.onnx", name="fast", metadata={"author": "me"})
    assert {p.key: p.value for p in onnx.load(result.path).metadata_props}["author"] == "me"
    with pytest.raises(MnistlabError, match="export metadata may not replace mnistlab.classes: mnistlab sets them"):
        export_onnx(digit_model, tmp_path / "n.onnx", name="fast", metadata={"mnistlab.classes": "[]"})
    with pytest.raises(MnistlabError, match="export metadata must map strings to strings"):
        export_onnx(digit_model, tmp_path / "n.onnx", name="fast", metadata={"epochs": 3})
    assert not (tmp_path / "n.onnx").exists()


def test_the_checkpoint_itself_is_never_the_output(digit_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy.ckpt"
    shutil.copy(digit_run / "best.ckpt", copy)
    named_onnx = tmp_path / "weights.onnx"  # the default output of a checkpoint of that name is itself
    shutil.copy(digit_run / "best.ckpt", named_onnx)
    before = copy.read_bytes()
    for argv in (["export", str(copy), "--out", str(copy), "--no-check"], ["export", str(named_onnx)]):
        assert main(argv) == 2
        assert "is the checkpoint being exported: give the ONNX file another name" in capsys.readouterr().err
    assert copy.read_bytes() == before and named_onnx.read_bytes() == before


@pytest.mark.parametrize("case", ["a file on the way", "a trailing slash"])
def test_a_destination_that_cannot_be_written_is_refused_before_exporting(digit_run, tmp_path, capsys, monkeypatch,
                                                                          case):
    def not_reached(*args, dynamo=True, **kwargs):
        raise AssertionError("exported before the destination was checked")

    monkeypatch.setattr(torch.onnx, "export", not_reached)
    (tmp_path / "afile").write_text("x")
    out, message = {"a file on the way": (f"{tmp_path}/afile/m.onnx", f"{tmp_path / 'afile'} is a file, not a folder"),
                    "a trailing slash": (f"{tmp_path}/new/", "names a folder: give the ONNX file's name")}[case]
    assert main(["export", str(digit_run), "--out", out]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_long_name_in_new_folders_is_written_and_a_link_is_written_through(digit_run, tmp_path):
    # A 250-byte name was valid, but its temporary name (".NAME.tmp-PID") was not: the export failed and the
    # folders made for it stayed.
    long = tmp_path / "a" / "b" / ("m" * 245 + ".onnx")
    assert export_checkpoint(digit_run, out=long, check=False).path == long and long.is_file()
    assert sorted(p.name for p in long.parent.iterdir()) == [long.name]
    target, link = tmp_path / "target.onnx", tmp_path / "link.onnx"
    target.write_bytes(b"")  # an empty file may be written over, as an earlier export may
    link.symlink_to(target)
    export_checkpoint(digit_run, out=link, check=False)
    assert link.is_symlink() and target.stat().st_size > 100_000


def test_only_an_earlier_onnx_file_is_written_over(digit_run, tmp_path, capsys, monkeypatch):
    # --out last.ckpt (or best.ckpt, or any file named by mistake) was replaced by the graph, without a word.
    import shutil

    earlier = export_checkpoint(digit_run, out=tmp_path / "earlier.onnx", check=False).path
    again = export_checkpoint(digit_run, out=earlier, check=False)
    assert again.path == earlier and earlier.stat().st_size > 100_000

    def not_reached(*args, dynamo=True, **kwargs):
        raise AssertionError("exported before the destination was checked")

    monkeypatch.setattr(torch.onnx, "export", not_reached)
    for name in ("last.ckpt", "best.ckpt"):
        shutil.copy(digit_run / name, tmp_path / name)
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "no-graph.onnx").write_bytes(onnx.ModelProto(ir_version=10).SerializeToString())  # parses; no model
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "earlier.onnx"}
    for name in kept:
        assert main(["export", str(digit_run), "--out", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / name} exists and is not an ONNX model: an export replaces only an earlier ONNX " in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "earlier.onnx"} == kept


def test_sigterm_while_writing_leaves_neither_a_half_file_nor_new_folders(digit_run, tmp_path, monkeypatch, capsys):
    import signal

    import mnistlab.export as export

    real = export.atomic_write

    def killed_halfway(path, write):
        def half(f):
            f.write(b"half a graph")
            os.kill(os.getpid(), signal.SIGTERM)  # the handler `mnistlab export` installs raises here
            raise AssertionError("SIGTERM did not stop the export")

        real(path, half)

    def unhandled(signum, frame):  # where export installed no handler: fail this test, not kill pytest
        raise AssertionError("mnistlab export did not handle SIGTERM")

    monkeypatch.setattr(export, "atomic_write", killed_halfway)
    out = tmp_path / "new" / "m.onnx"
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        assert main(["export", str(digit_run), "--out", str(out), "--no-check"]) == 143
        assert signal.getsignal(signal.SIGTERM) is unhandled  # the handler before the command is put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert capsys.readouterr().err == "mnistlab export: interrupted by SIGTERM\n"
    assert list(tmp_path.iterdir()) == []  # no temporary file, and the folder made for it is gone


def test_a_model_over_protobufs_limit_is_refused_in_one_line():
    from torch import nn

    import mnistlab.export as export

    class Huge:  # what protobuf does with a message over 2 GiB
        def SerializeToString(self):
            raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB: 2400000000")

        def ByteSize(self):
            return 2_400_000_000

    with pytest.raises(MnistlabError, match=r"an ONNX file holds at most 2 GiB in one piece; mnistlab export does not "
                                            r"write weights to a separate file"):
        export._serialized(Huge(), nn.Linear(10, 10))


def test_a_model_over_the_limit_is_refused_before_exporting(tmp_path, monkeypatch):
    import mnistlab.export as export

    model = build_model("lenet5")
    monkeypatch.setattr(export, "_PROTOBUF_LIMIT", 1000)  # lenet5's 61,706 weights: 247 kB, over this limit

    def not_reached(*args, dynamo=True, **kwargs):
        raise AssertionError("exported a model too large to write")

    monkeypatch.setattr(torch.onnx, "export", not_reached)
    with pytest.raises(MnistlabError, match=r"the model's weights take 0.00 GB, and an ONNX file holds at most 2 GiB"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_the_command_runs_from_a_thread_that_may_not_set_signal_handlers(digit_run, tmp_path):
    import threading

    codes = []
    worker = threading.Thread(target=lambda: codes.append(main(["export", str(digit_run), "--out",
                                                                 str(tmp_path / "m.onnx"), "--no-check"])))
    worker.start()
    worker.join()
    assert codes == [0] and (tmp_path / "m.onnx").is_file()


def test_a_pipe_given_as_the_onnx_file_is_refused_and_left_as_it_is(tmp_path):
    # --out /dev/null, as root, renamed the export over the device: /dev/null became a regular file for every
    # process on the machine. A fifo stands in for the device: the same kind of file, and no test may touch /dev.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(MnistlabError, match=r"pipe is not a regular file \(a device, a pipe or a socket\): an export "
                                            r"writes a file; give the ONNX file's name"):
        export_onnx(build_model("cnn"), fifo, check=False)
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
