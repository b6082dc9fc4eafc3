"""Export a trained model to ONNX, for use outside Python and PyTorch.

An ONNX file holds the network as a graph of standard operators and its weights,
and no code: ONNX Runtime runs it from Python, C, C++, C#, Java, or JavaScript in a
browser, without PyTorch or mnistlab. The exported graph is the model's
``forward`` in eval mode, with its normalization inside (and its crop, if it
has one), so it takes what ``mnistlab predict`` feeds the model:

- input ``images``: float32, ``[batch, 1, 28, 28]`` for the MNIST family, pixel
  values in [0, 1], light on a dark background and centred as the dataset's
  images are (``predict --save-preprocessed`` writes such inputs). The batch
  size is free;
- outputs ``logits`` (``[batch, classes]``) and ``probabilities``, their softmax.

The file's metadata (``metadata_props``) names the model, the dataset, the class
names (a JSON list) and the input; :func:`export_checkpoint` (``mnistlab export``)
adds the checkpoint's epoch (and ``mnistlab.batch``, the batches of the next epoch
trained, for a last.ckpt saved inside one) and the SHA-256 of its weights.
Unless told not to, :func:`export_onnx` runs the written graph in ONNX Runtime
on random images of two batch sizes and compares its logits with PyTorch's:
a file that computes something else is not kept.

>>> result = export_checkpoint("runs/my-run")             # doctest: +SKIP
>>> result.path, result.check.max_difference             # doctest: +SKIP
(PosixPath('runs/my-run/best.onnx'), 6.7e-08)
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import MnistlabError
from .folders import expand_home, missing_folders, probe_write, remove_empty, same_path
from .training.checkpoint import atomic_write, checkpoint_file, model_from_checkpoint, read_checkpoint

INSTALL_HINT = "pip install 'mnistlab[export]'"
INPUT, OUTPUTS = "images", ("logits", "probabilities")
# Batch sizes of the check: 1, the size a single-image app runs, and a larger one, which also runs a
# batch size the export did not trace with.
CHECK_BATCHES = (1, 64)
# Largest difference from PyTorch's logits the check accepts, relative to the largest logit (at least 1); the
# file's probabilities may differ from the softmax of its own logits by as much. ONNX Runtime sums in other
# orders than PyTorch: on the zoo models the difference was under 1e-6 (benchmarks/onnx_export_epyc-avx512.txt).
TOLERANCE = 1e-4


@dataclass
class Check:
    """How the written file's outputs compared with PyTorch's on the same random images."""

    images: int
    batch_sizes: tuple[int, ...]
    max_difference: float  # largest difference of a logit, relative to the largest logit (at least 1)
    same_predictions: int  # images whose most likely class is the same in both


@dataclass
class ExportResult:
    path: Path
    model: str
    dataset: str
    classes: list[str]
    input_shape: list[Any]  # ["batch", C, H, W]
    opset: int
    bytes: int
    checkpoint: Path | None = None
    check: Check | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["checkpoint"] = None if self.checkpoint is None else str(self.checkpoint)
        d["inputs"] = {INPUT: {"dtype": "float32", "shape": self.input_shape, "range": [0.0, 1.0]}}
        d["outputs"] = {name: {"dtype": "float32", "shape": ["batch", len(self.classes)]} for name in OUTPUTS}
        del d["input_shape"]
        return d


class _WithProbabilities(nn.Module):
    """The graph that is exported: the model's logits, and their softmax for apps that want probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images)
        return logits, torch.softmax(logits, dim=1)


def _require(*modules: str, why: str) -> None:
    """Import the optional packages of the export extra, or say how to install them."""
    import importlib

    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MnistlabError(f"{why} needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                            f"installed: {INSTALL_HINT}")


def require_export_packages(check: bool) -> None:
    """The packages an export needs (with ``check``, ONNX Runtime too), or a MnistlabError saying how to get them."""
    import inspect

    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise MnistlabError(f"exporting to ONNX needs torch 2.5 or later (its torch.export-based exporter); this is "
                            f"torch {torch.__version__}")
    _require("onnx", "onnxscript", why="exporting to ONNX")
    if check:
        _require("onnxruntime", why="checking the exported file in ONNX Runtime (or export without the check, "
                                    "--no-check)")


def _input_shape(model: nn.Module) -> tuple[int, int, int]:
    channels, size = getattr(model, "in_channels", None), getattr(model, "image_size", None)
    if not isinstance(channels, int) or not (isinstance(size, tuple) and len(size) == 2):
        raise MnistlabError(f"cannot export {type(model).__name__}: it is not a mnistlab model (no in_channels and "
                            "image_size to give the input's shape)")
    return channels, size[0], size[1]


def _onnx_proto(model: nn.Module, shape: tuple[int, int, int]):
    """The ONNX ModelProto of ``model`` (a copy in eval mode, float32, on the CPU) with a free batch size."""
    graph = _WithProbabilities(model).eval()
    # 2, not 1: a batch of 1 would be taken for a constant size. Its own generator: the caller's random stream
    # stays where it was.
    example = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    try:
        program = torch.onnx.export(graph, (example,), dynamo=True, input_names=[INPUT], output_names=list(OUTPUTS),
                                    dynamic_shapes={INPUT: {0: batch}}, verbose=False)
    except Exception as e:  # noqa: BLE001 - the exporter raises its own types; say that it failed, and why
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MnistlabError(f"could not export the model to ONNX: {first}") from e
    return program.model_proto


def _compare(data: bytes, model: nn.Module, shape: tuple[int, int, int], seed: int = 0) -> Check:
    """Run the serialized graph in ONNX Runtime on random images and compare with the PyTorch model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its notes on unused initializers are not the user's business
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - a graph ONNX Runtime refuses is a failed export, whatever it raises
        raise MnistlabError(f"ONNX Runtime cannot load the exported graph: {str(e).strip().splitlines()[0]}") from e
    generator = torch.Generator().manual_seed(seed)
    worst, softmax_worst, same, images = 0.0, 0.0, 0, 0
    for batch in CHECK_BATCHES:
        x = torch.rand(batch, *shape, generator=generator)
        with torch.no_grad():
            expected = model(x)
        if not torch.isfinite(expected).all():
            raise MnistlabError("the model's own outputs are not finite on random images (weights that diverged?): "
                                "there is nothing to check the file against; it was not kept")
        logits, probabilities = (torch.from_numpy(a) for a in session.run(list(OUTPUTS), {INPUT: x.numpy()}))
        for got in (logits, probabilities):
            if got.shape != expected.shape:
                raise MnistlabError(f"the exported graph gives outputs of shape {list(got.shape)} for a batch of "
                                    f"{batch}, PyTorch {list(expected.shape)}: it was not kept")
        # NaN compares as no difference in max(): it is made the largest difference instead
        difference = float((logits - expected).abs().nan_to_num(math.inf).max())
        worst = max(worst, difference / max(1.0, float(expected.abs().max())))
        # The probabilities output is the softmax of the file's own logits (near ties between large logits make
        # it differ from PyTorch's more than the logits do, legitimately).
        softmax_worst = max(softmax_worst, float((probabilities - logits.softmax(1)).abs().nan_to_num(math.inf).max()))
        same += int((expected.argmax(1) == logits.argmax(1)).sum())
        images += batch
    if worst > TOLERANCE:
        raise MnistlabError(f"the exported graph computes other outputs than the model: its logits differ by up to "
                            f"{worst:.3g} of the largest logit on {images} random images, more than {TOLERANCE:g}; it "
                            "was not kept")
    if softmax_worst > TOLERANCE:
        raise MnistlabError(f"the exported graph's probabilities are not the softmax of its logits (they differ by up to "
                            f"{softmax_worst:.3g}, more than {TOLERANCE:g}); it was not kept")
    return Check(images=images, batch_sizes=CHECK_BATCHES, max_difference=worst, same_predictions=same)


def export_onnx(model: nn.Module, path: str | Path, *, name: str | None = None, check: bool = True,
                metadata: dict[str, str] | None = None) -> ExportResult:
    """Write ``model`` (a zoo model, as :func:`~mnistlab.load_model` or training gives it) to ``path`` as ONNX.

    ``name`` (the zoo name, e.g. ``"cnn"``; default: the name :func:`~mnistlab.build_model` built it by, else
    the model's class name) goes into the file's metadata.
    The model itself is left as it was: a copy in eval mode, float32 and on the CPU is exported (its forward
    hooks run, and are traced, as part of its forward). With ``check`` the file is run in ONNX Runtime first
    and written only if its logits match PyTorch's (:data:`TOLERANCE`); ``metadata`` adds string entries to
    the file's metadata (not the ``mnistlab.`` ones this sets). An existing file at ``path`` is replaced only if
    it is an ONNX model or empty. The write is atomic: an interrupted export
    leaves the file that was there before, or none. Folders on the way to ``path`` are made (and taken back
    if the export fails); a link is written through, to the file it names.
    """
    require_export_packages(check)
    import onnx

    from . import __version__  # here: the package imports this module before it sets its version

    extra = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise MnistlabError("export metadata must map strings to strings, got "
                            f"{ {k: v for k, v in extra.items() if not (isinstance(k, str) and isinstance(v, str))} }")
    shape = _input_shape(model)
    size = _weight_bytes(model)
    if size >= _PROTOBUF_LIMIT:  # now, not after minutes of exporting
        raise _too_large(size)
    path = _destination(path)
    made = missing_folders(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe_write(path.parent)  # now, not after the export's seconds: a folder that takes no file says so
    except OSError as e:
        remove_empty(made)
        raise MnistlabError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        plain = copy.deepcopy(model).float().cpu().eval().to(memory_format=torch.contiguous_format)
        proto = _onnx_proto(plain, shape)
        classes = [str(c) for c in getattr(model, "classes", None) or range(_classes(plain, shape))]
        name = name or getattr(model, "model_name", None) or type(model).__name__
        props = {
            "mnistlab.version": __version__,
            "mnistlab.model": name,
            "mnistlab.dataset": str(getattr(model, "dataset", "") or ""),
            "mnistlab.classes": json.dumps(classes),
            "mnistlab.input": f"{INPUT}: float32 [batch, {shape[0]}, {shape[1]}, {shape[2]}], pixel values in [0, 1], "
                              "light on a dark background as in the dataset; the model normalizes them itself",
            "mnistlab.outputs": f"logits: float32 [batch, {len(classes)}]; probabilities: their softmax",
        }
        clash = sorted(set(extra) & set(props))
        if clash:
            raise MnistlabError(f"export metadata may not replace {', '.join(clash)}: mnistlab sets them")
        props.update(extra)
        onnx.helper.set_model_props(proto, props)
        proto.doc_string = f"mnistlab {name} classifier ({props['mnistlab.dataset'] or 'dataset not recorded'})"
        data = _serialized(proto, plain)
        result = ExportResult(path=path, model=name, dataset=props["mnistlab.dataset"], classes=classes,
                              input_shape=["batch", *shape], opset=_opset(proto), bytes=len(data), metadata=props)
        if check:
            result.check = _compare(data, plain, shape)
        try:
            atomic_write(path, lambda f: f.write(data))
        except OSError as e:
            raise MnistlabError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        remove_empty(made)
        raise
    return result


def _replaceable(path: Path) -> bool:
    """Whether an export may write over the existing file ``path``: an empty file, or an ONNX model (such as an
    earlier export). Anything else -- last.ckpt, best.ckpt, a user's file given to --out by mistake -- is kept."""
    try:
        size = path.stat().st_size
        if not path.is_file():  # /dev/null has no size either
            return False
        if size == 0:
            return True
        if size >= _PROTOBUF_LIMIT:  # no ONNX model is bigger: not read to find out
            return False
        import onnx

        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # protobuf's DecodeError, an unreadable file: not an ONNX model
        return False
    # Protobuf parses many byte strings (an empty message is valid); a model has a version, an opset and nodes.
    return proto.ir_version > 0 and len(proto.opset_import) > 0 and len(proto.graph.node) > 0


def _destination(path: str | Path) -> Path:
    """The file ``path`` names, checked before the export's seconds are spent on it."""
    text = os.fspath(path)
    if not str(text).strip():
        raise MnistlabError("the ONNX file needs a name")
    if str(text) == "-":  # stands for stdout on most command lines; it wrote a file named "-" in the current folder
        raise MnistlabError("- is not a file name here: an ONNX file is binary and is not written to standard output "
                            "(which takes the export's summary); give the file's name, e.g. model.onnx (./- for "
                            "a file named -)")
    if str(text).endswith(("/", os.sep)):  # Path() would drop the slash and write a file of the folder's name
        raise MnistlabError(f"{text} names a folder: give the ONNX file's name, e.g. {Path(text) / 'model.onnx'}")
    # --out=~/m.onnx arrives unexpanded (a shell expands ~ only at a word's start): it made a folder named ~
    path = expand_home(Path(text), "the ONNX file", MnistlabError)
    if path.is_symlink():  # write the file the link names, and keep the link
        path = Path(os.path.realpath(path))
    if path.is_dir():
        raise MnistlabError(f"{path} is a folder: give the ONNX file's name, e.g. {path / 'model.onnx'}")
    if path.exists() and not path.is_file():  # the rename would replace /dev/null (as root) with the file
        raise MnistlabError(f"{path} is not a regular file (a device, a pipe or a socket): an export writes a file; "
                            "give the ONNX file's name, e.g. model.onnx")
    if path.exists() and not _replaceable(path):
        raise MnistlabError(f"{path} exists and is not an ONNX model: an export replaces only an earlier ONNX file "
                            "(or an empty one); give the ONNX file another name")
    here = next(p for p in path.parents if p.exists() or p.is_symlink())  # "." at the latest
    if not here.is_dir():
        raise MnistlabError(f"cannot write {path}: {here} is {'a file' if here.exists() else 'a broken link'}, "
                            "not a folder")
    return path


# protobuf writes no message over 2 GiB; ONNX's way around it, the weights in a file beside the graph, is
# not done here (the zoo's largest model, AlexNet, is 288 MB).
_PROTOBUF_LIMIT = 2**31


def _too_large(size: int) -> MnistlabError:
    return MnistlabError(f"the model's weights take {size / 1e9:.2f} GB, and an ONNX file holds at most 2 GiB in one "
                         "piece; mnistlab export does not write weights to a separate file")


def _weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * 4 for t in model.state_dict().values())  # as float32, as they are exported


def _serialized(proto, model: nn.Module) -> bytes:
    """The file's bytes. Weights near the limit (which export_onnx checks before exporting) can take the graph
    past it: that is the same error, not protobuf's."""
    try:
        return proto.SerializeToString()
    except Exception as e:  # noqa: BLE001 - protobuf's EncodeError or ValueError, by version
        try:
            over = proto.ByteSize() >= _PROTOBUF_LIMIT
        except Exception:  # noqa: BLE001
            over = True
        if not over and _weight_bytes(model) < _PROTOBUF_LIMIT:
            raise
        raise _too_large(_weight_bytes(model)) from e


def _classes(model: nn.Module, shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return int(model(torch.zeros(1, *shape)).shape[1])


def _opset(proto) -> int:
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def default_path(checkpoint: Path) -> Path:
    """Where ``mnistlab export`` writes without ``--out``: beside the checkpoint, with its name (best.onnx)."""
    return checkpoint.with_suffix(".onnx")


def export_checkpoint(source: str | Path, out: str | Path | None = None, *, check: bool = True) -> ExportResult:
    """Export a checkpoint (a run folder: its best.ckpt) to ONNX, by default beside it (:func:`default_path`)."""
    require_export_packages(check)  # before reading the checkpoint: a missing extra is the first thing to know
    file = checkpoint_file(source)
    payload = read_checkpoint(file)
    model = model_from_checkpoint(payload, file)
    extra = {"mnistlab.weights_sha256": str(payload["weights_sha256"])}
    epoch, batch = payload.get("epoch"), payload.get("batch")
    if isinstance(epoch, int):
        extra["mnistlab.epoch"] = str(epoch)
        # A last.ckpt saved inside an epoch (Ctrl-C) has trained `batch` batches of the next one: "epoch" 0 alone
        # said nothing had been trained (evaluate --json says the same with its "batch").
        if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0:
            extra["mnistlab.batch"] = str(batch)
    target = default_path(file) if out is None else out
    if same_path(target, file):  # an atomic rename over it would replace the checkpoint with the graph
        raise MnistlabError(f"{target} is the checkpoint being exported: give the ONNX file another name (--out)")
    result = export_onnx(model, target, name=payload["model_name"], check=check, metadata=extra)
    result.checkpoint = file
    return result


def format_export(result: ExportResult) -> str:
    """What ``mnistlab export`` prints."""
    c, h, w = result.input_shape[1:]
    lines = [
        f"wrote {result.path} ({result.bytes / 1e6:.2f} MB, ONNX opset {result.opset}): {result.model}"
        + (f" from {result.checkpoint}" if result.checkpoint else ""),
        f"  input   {INPUT}: float32 [batch, {c}, {h}, {w}], pixels in [0, 1], light on dark "
        "(predict --save-preprocessed shows such inputs)",
        f"  outputs logits, probabilities: float32 [batch, {len(result.classes)}]"
        + (f" ({result.dataset}: {', '.join(result.classes)})" if result.dataset else ""),
    ]
    if result.check is None:
        lines.append("  not checked (--no-check)")
    else:
        k = result.check
        lines.append(f"  checked in ONNX Runtime: PyTorch's logits on {k.images} random images (batches of "
                     f"{' and '.join(map(str, k.batch_sizes))}; largest difference {k.max_difference:.2g} of the "
                     f"largest logit), the same class for {k.same_predictions} of {k.images}")
    return "\n".join(lines)
