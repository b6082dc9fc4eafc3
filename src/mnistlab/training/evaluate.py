"""Evaluation: loss, accuracy, per-class accuracy, precision, recall and F1, and confusion matrix on one split."""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DataConfig
from ..data.augment import shift_images
from ..errors import ConfigError, DataError
from ..models.base import has_forward_hooks, image_batch
from ..models.summary import output_bytes
from ..data.batching import iterate_batches, to_float
from .allocator import MMAP_THRESHOLD


def stored_data(data: DataConfig, data_dir: str | None) -> DataConfig:
    """The data config a stored model is tested under (``evaluate``, ``ensemble``): its run's, with the folder
    ``data_dir`` where one is given, and the whole test set (a run's ``data.test_limit`` was its quick check).

    An empty ``data_dir`` (``--data-dir ""``, a shell variable that was not set) is a ConfigError: it was taken
    for the flag left out, and the run's own folder was read without a word.

    >>> stored_data(DataConfig(dir="/data"), "/elsewhere").dir
    '/elsewhere'
    >>> stored_data(DataConfig(test_limit=500), None).test_limit is None
    True
    """
    data = replace(data, test_limit=None)
    if data_dir is None:
        return data
    if not str(data_dir).strip():
        raise ConfigError("--data-dir needs a folder; leave it out for the data folder the checkpoint's run used")
    return replace(data, dir=data_dir)


def _inference(model: nn.Module):
    """The model's fastest eval-mode forward (:meth:`Net.inference_forward`; the model itself for others)."""
    fast = getattr(model, "inference_forward", None)
    return fast() if callable(fast) else model


def rows_per_pass(model: nn.Module, image: torch.Tensor, batch_size: int) -> int:
    """How many images a forward pass of ``model`` (in eval mode, without gradients) takes at once: on a CPU,
    at most as many as keep its largest activation under glibc's mmap threshold (32 MiB), else ``batch_size``.

    A larger buffer is mmapped afresh by every pass and faulted in page by page: a ResNet-50 at width 0.25
    spent 31 of its 31 s evaluating 10,000 images at 500 a pass in the kernel, against 13.5 s with no
    mmap at all. The small CNNs stay under it at 500 (``cnn``: 25 MB). ``image`` is one image (1 x C x H x W),
    whose forward pass measures the activations; a model with forward hooks keeps ``batch_size`` (the hooks
    would see that extra pass).
    """
    if image.device.type != "cpu" or batch_size <= 1 or image.shape[0] == 0 or has_forward_hooks(model):
        return batch_size
    largest = max(output_bytes(model, to_float(image[:1]) if image.dtype == torch.uint8 else image[:1].float()),
                  default=0)
    return max(1, min(batch_size, MMAP_THRESHOLD // largest)) if largest else batch_size


def tta_views(x: torch.Tensor, shift: int) -> list[torch.Tensor]:
    """The batch and its copies shifted by every distance from 1 to ``shift`` pixels right, left, down and up."""
    return [x] + [shift_images(x, dx * k, dy * k) for k in range(1, shift + 1)
                  for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))]


def class_metrics(confusion: torch.Tensor) -> list[dict[str, float | int | None]]:
    """Each class's precision, recall (its accuracy), F1 and image count from a [true, predicted] confusion
    matrix, as scikit-learn's classification_report has them with zero_division=0 where every class has images:
    a class with images that is never predicted has precision 0 and F1 0. None where nothing defines a value:
    recall for a class with no images (scikit-learn's 0, which lowers its macro recall), precision and F1 for a
    class neither present nor predicted.

    >>> [(m["precision"], m["recall"], m["f1"], m["images"]) for m in class_metrics(torch.tensor([[3, 1], [0, 0]]))]
    [(1.0, 0.75, 0.8571428571428571, 4), (0.0, None, 0.0, 0)]
    """
    rows = []
    for i in range(confusion.shape[0]):
        hit, images, predicted = int(confusion[i, i]), int(confusion[i].sum()), int(confusion[:, i].sum())
        precision = hit / predicted if predicted else (0.0 if images else None)
        recall = hit / images if images else None
        f1 = 2 * hit / (images + predicted) if images + predicted else None  # 2TP / (2TP + FP + FN)
        rows.append({"precision": precision, "recall": recall, "f1": f1, "images": images})
    return rows


def macro_average(rows: list[dict[str, float | int | None]]) -> dict[str, float | None]:
    """The mean of each metric of :func:`class_metrics` over the classes that have it (None where none has)."""
    means: dict[str, float | None] = {}
    for key in ("precision", "recall", "f1"):
        values = [r[key] for r in rows if r[key] is not None]
        means[key] = sum(values) / len(values) if values else None
    return means


@dataclass
class Evaluation:
    loss: float  # mean cross-entropy, with the label smoothing asked for (the training loss's, in a run)
    accuracy: float  # fraction correct
    per_class_accuracy: list[float]  # NaN for a class with no examples
    confusion: torch.Tensor  # [true, predicted] counts, int64, on the CPU
    predictions: torch.Tensor  # predicted class per example, CPU
    labels: torch.Tensor  # true class per example, CPU
    probabilities: torch.Tensor  # softmax outputs (N x classes), CPU
    # False when some output was not finite (weights that diverged): the accuracies are then NaN, since the
    # argmax of a row of NaNs is class 0 and would score as a made-up accuracy
    finite: bool = True
    # their logs (log_softmax, N x classes, CPU), kept where probabilities underflow to 0: an ensemble's loss
    # averages its members in log space from these (None where an Evaluation was made without them)
    log_probabilities: torch.Tensor | None = None

    def class_metrics(self) -> list[dict[str, float | int | None]]:
        """Each class's precision, recall, F1 and image count (:func:`class_metrics`); the three metrics None
        where the outputs were not finite."""
        rows = class_metrics(self.confusion)
        if not self.finite:
            rows = [{**r, "precision": None, "recall": None, "f1": None} for r in rows]
        return rows

    def to_dict(self, classes: list[str] | None = None, first: int = 10) -> dict[str, Any]:
        """A JSON-ready summary: metrics, per-class accuracy, each class's precision, recall, F1 and images and
        their macro average, confusion matrix, first predictions (the last two None where the outputs were not
        finite: their argmax is class 0, not a prediction)."""
        names = classes or [str(i) for i in range(len(self.per_class_accuracy))]
        rows = self.class_metrics()
        return {
            "test_loss": self.loss,
            "test_accuracy": self.accuracy,
            "examples": int(self.labels.numel()),
            "per_class_accuracy": {n: (None if a != a else a) for n, a in zip(names, self.per_class_accuracy)},
            "per_class": dict(zip(names, rows)),
            "macro_average": macro_average(rows),
            "confusion_matrix": self.confusion.tolist() if self.finite else None,
            "first_predictions": [
                {"index": i, "label": int(self.labels[i]), "predicted": int(self.predictions[i])}
                for i in range(min(first, self.labels.numel()))
            ] if self.finite else None,
        }


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode in the block; afterwards every layer in the mode it had. (``model.train(was)``
    would set them all alike: a frozen batch norm held in eval mode inside a training model would train.)"""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 images, [0, 1] float ones, or (as uint8) other integer ones holding 0-255; else a ValueError.

    The models normalize their input themselves: 0-255 floats, or images already normalized with the dataset's
    mean and std, gave confident wrong answers, and so did int64 images of 0-255 (numpy's default integer) taken
    as floats (logits ~900 off). One pass over the values, once per call: no cost worth a model's forward.
    """
    if images.dtype in (torch.uint8, torch.bool):  # bool images stay 0 and 1, as floats
        return images
    low, high = (images.min().item(), images.max().item()) if images.numel() else (0, 0)
    if images.is_floating_point():
        if low < -1e-4 or high > 1 + 1e-4:
            scale = "; divide 0-255 floats by 255" if high > 5 else ""  # normalized MNIST peaks at 2.8
            raise ValueError(f"float images must be in [0, 1] (the model normalizes them itself), these span "
                             f"[{low:g}, {high:g}]: pass them unnormalized, or as uint8 images{scale}")
        return images
    if low < 0 or high > 255:
        raise ValueError(f"integer images are taken as 8-bit pixel values, 0-255, but these {images.dtype} images "
                         f"span [{low}, {high}]: scale them to 0-255, or pass floats in [0, 1]")
    return images.to(torch.uint8)


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Logits for uint8 (or [0, 1] float) images, in eval mode, batch by batch: (N, classes), (0, classes)
    for no images.

    Integer images of another dtype (int64 from numpy) are taken as uint8 ones, and refused with a ValueError
    where a value is outside 0-255; float images outside [0, 1] are a ValueError too (:func:`_pixels`). A
    model with ``in_channels`` (every :class:`~mnistlab.models.Net`) takes the shapes its forward does
    (:func:`~mnistlab.models.base.image_batch`): one image, or a one-channel (N, H, W) batch.

    >>> predict_logits(model, torch.zeros(0, 1, 28, 28)).argmax(1)   # doctest: +SKIP
    tensor([], dtype=torch.int64)
    """
    _check_batch_size(batch_size, "predict_logits")
    images = _pixels(images)
    if isinstance(getattr(model, "in_channels", None), int):  # split into batches below: one image needs its axes
        images = image_batch(images, model.in_channels)
    device = _model_device(model, images.device)
    with eval_mode(model):
        _check_image_size(model, images)
        forward = _inference(model)
        batch_size = rows_per_pass(model, images[:1].to(device), batch_size)
        outs = []
        # No images pass once, as an empty batch: the model's own (0, classes) output, so .argmax(1) works
        for i in range(0, max(images.shape[0], 1), batch_size):
            x = images[i : i + batch_size].to(device)
            outs.append(forward(to_float(x) if x.dtype == torch.uint8 else x.float()).float())
        return torch.cat(outs)


def _check_labels(top: int, outputs: int, num_classes: int | None) -> None:
    """Refuse labels the model has no output for, before the loss: cross-entropy's "Target 12 is out of bounds"
    (or a CUDA assert) said nothing of a split from another dataset, or a model with another head. Refuse too a
    model with more outputs than the ``num_classes`` asked for: a prediction of a class past them made the
    confusion matrix a RuntimeError ("shape '[10, 10]' is invalid"), once the whole split had been scored."""
    if num_classes and outputs > num_classes:
        raise ConfigError(f"evaluate(): num_classes is {num_classes}, but the model has {outputs} outputs: give the "
                          "model's class count, or leave num_classes out")
    if top >= outputs:
        raise DataError(f"evaluate(): the labels go up to {top}, but the model has {outputs} outputs (classes 0 to "
                        f"{outputs - 1}): the split is of another dataset than the model was made for")


def _model_device(model: nn.Module, otherwise: torch.device) -> torch.device:
    """Where ``model``'s tensors are; ``otherwise`` for a model without any. One of buffers alone (a nearest-mean
    baseline) was a bare StopIteration from next(model.parameters())."""
    return next((t.device for t in (*model.parameters(), *model.buffers())), otherwise)


def _check_batch_size(batch_size: Any, caller: str) -> None:
    """A ConfigError unless ``batch_size`` is a whole number of at least 1: "256" and None were a bare TypeError
    ("'<=' not supported"), 2.5 another, and predict_logits' 0 "range() arg 3 must not be zero"."""
    if isinstance(batch_size, (bool, float)) or not hasattr(batch_size, "__index__") or batch_size < 1:
        raise ConfigError(f"{caller}(): batch_size must be a whole number of images, 1 or more, got {batch_size!r}")


def _check_scoring(num_classes: Any, label_smoothing: Any) -> None:
    """A ConfigError for a ``num_classes`` or ``label_smoothing`` evaluate() cannot score with, before any image
    is scored. num_classes 10.0 was a TypeError from the confusion matrix once the whole split had been scored,
    and 0 was taken for "not given". A label smoothing outside [0, 1) (train.label_smoothing's range) was a
    RuntimeError from the first batch's loss where above 1, and where negative or NaN silently no smoothing."""
    if num_classes is not None and (isinstance(num_classes, (bool, float)) or not hasattr(num_classes, "__index__")
                                    or num_classes < 1):
        raise ConfigError(f"evaluate(): num_classes must be a whole number of classes, 1 or more (or None: the "
                          f"model's output count), got {num_classes!r}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) \
            or not 0.0 <= label_smoothing < 1.0:  # (NaN fails the comparison)
        raise ConfigError(f"evaluate(): label_smoothing must be a number in [0, 1), as train.label_smoothing, got "
                          f"{label_smoothing!r}")


def _check_image_size(model: nn.Module, images: torch.Tensor) -> None:
    """A DataError for images of another size than ``model`` (a :class:`~mnistlab.models.Net`) was built for,
    where its forward cannot take them: PyTorch's "mat1 and mat2 shapes cannot be multiplied" said nothing of
    the images. Models that take any size (ResNet's global pooling) still evaluate them. Call in eval mode."""
    built = tuple(getattr(model, "image_size", ()) or ())
    if not images.numel() or len(built) != 2 or tuple(images.shape[-2:]) == built or has_forward_hooks(model):
        return  # (hooks would see a pass the caller did not ask for)
    one = images[:1].to(next((p.device for p in model.parameters()), images.device))
    try:
        model(to_float(one) if one.dtype == torch.uint8 else one.float())
    except RuntimeError:
        side = "x".join(map(str, images.shape[-2:]))
        raise DataError(f"the images are {side}, but the model was built for "
                        f"{built[0]}x{built[1]} images and cannot take these") from None


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split,
    batch_size: int = 500,
    num_classes: int | None = None,
    tta_shift: int = 0,
    label_smoothing: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Evaluate ``model`` (in eval mode) on a data split (uint8 images, int64 labels).

    ``progress(done, total)`` is called after each forward pass with the images done so far
    (a run draws its progress bar with it: alexnet tests 10,000 images in minutes on a CPU).

    ``tta_shift > 0`` turns on test-time augmentation: the softmax outputs are
    averaged over 1 + 4 * ``tta_shift`` views of each image: itself, and shifted
    by every distance from 1 to ``tta_shift`` pixels left, right, up and down
    (1: five views; 2: nine). The loss is that of the average.
    ``label_smoothing`` (in [0, 1), as ``train.label_smoothing``; ``num_classes``, a whole number or None,
    refused otherwise before any image is scored) is that of the loss; a run passes its training's, so its
    val_loss and test_loss are the loss it trains on, as in Keras. (Plain
    cross-entropy would rise for a label-smoothed model as it grows more
    accurate, and be a poor criterion for choosing or stopping.)

    >>> ev = evaluate(model, data.test)                    # doctest: +SKIP
    >>> round(ev.accuracy, 4)                              # doctest: +SKIP
    0.9912
    """
    if not isinstance(model, nn.Module):  # a checkpoint's path was "'str' object has no attribute 'parameters'"
        path = isinstance(model, (str, os.PathLike))
        raise TypeError(f"evaluate() takes a model (a torch.nn.Module), got {type(model).__name__}"
                        + ("; for a checkpoint, evaluate(load_model(path), ...)" if path else ""))
    if not (isinstance(getattr(split, "images", None), torch.Tensor)
            and isinstance(getattr(split, "labels", None), torch.Tensor)):
        whole = " (a whole DataBundle: pass one of its splits, data.test or data.val)" if hasattr(split, "test") else ""
        raise TypeError(f"evaluate() takes a split with images and labels, such as data.test, got "
                        f"{type(split).__name__}{whole}")
    _check_batch_size(batch_size, "evaluate")
    _check_scoring(num_classes, label_smoothing)
    # 1.5 was range()'s bare TypeError; True a shift of 1 pixel
    if isinstance(tta_shift, (bool, float)) or not hasattr(tta_shift, "__index__"):
        raise ConfigError(f"a test-time shift must be a whole number of pixels, got {tta_shift!r}")
    if tta_shift < 0:
        raise ConfigError(f"a test-time shift must be zero or more pixels, got {tta_shift}")
    if tta_shift and tta_shift >= min(split.images.shape[-2:]):
        side = "x".join(map(str, split.images.shape[-2:]))
        raise ConfigError(f"a test-time shift of {tta_shift} pixels moves the {side} images out of view; "
                          "shifts of 1-3 pixels are the useful ones")
    total_loss = torch.zeros((), dtype=torch.float64)
    preds, probs, log_probs, done = [], [], [], 0
    low, top = (int(split.labels.min()), int(split.labels.max())) if split.labels.numel() else (0, -1)
    if low < 0:
        raise DataError(f"evaluate(): the labels must be class indices from 0, got {low}")
    # The batches go where the model is, as predict_logits sends them: a model on a GPU scoring load_data's CPU
    # split met CPU images (a device mismatch from the first layer)
    device = _model_device(model, split.images.device)
    with eval_mode(model):
        _check_image_size(model, split.images)
        forward = _inference(model)
        batch_size = rows_per_pass(model, split.images[:1].to(device), batch_size)
        for x, y in iterate_batches(split, batch_size):
            x, y = x.to(device), y.to(device)
            if tta_shift:
                # The views' probabilities averaged in log space (log of the mean = logsumexp - log n): the log
                # of float32 means that underflowed to 0 was clamped at 1e-12, which capped a confidently wrong
                # image's loss at 27.6 (200 without TTA). cross_entropy of log p is that of p (p sums to 1).
                views = [forward(v).float().log_softmax(1) for v in tta_views(x, tta_shift)]
                log_p = torch.stack(views).logsumexp(0) - math.log(len(views))
                p = log_p.exp()
                _check_labels(top, p.shape[1], num_classes)
                total_loss += F.cross_entropy(log_p, y, reduction="sum",
                                              label_smoothing=label_smoothing).double().cpu()
            else:
                logits = forward(x).float()
                _check_labels(top, logits.shape[1], num_classes)
                total_loss += F.cross_entropy(logits, y, reduction="sum",
                                              label_smoothing=label_smoothing).double().cpu()
                p, log_p = logits.softmax(1), logits.log_softmax(1)
            probs.append(p.cpu())
            log_probs.append(log_p.cpu())
            preds.append(p.argmax(1).cpu())
            if progress is not None:
                done += len(y)
                progress(done, len(split.labels))
    labels = split.labels.cpu()
    n = labels.numel()
    k = num_classes or (probs[0].shape[1] if probs else int(labels.max()) + 1 if n else 0)
    predictions = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
    confusion = torch.bincount(labels * k + predictions, minlength=k * k).reshape(k, k)
    per_class = confusion.diag().double() / confusion.sum(1).double()
    probabilities = torch.cat(probs) if probs else torch.empty(0, k)
    finite = bool(torch.isfinite(probabilities).all())
    if not finite:
        per_class = torch.full((k,), float("nan"), dtype=torch.float64)
    return Evaluation(
        loss=float(total_loss / n) if n else float("nan"),  # no images: no loss, as no accuracy (not 0)
        accuracy=float((predictions == labels).double().mean()) if n and finite else float("nan"),
        per_class_accuracy=[float(a) for a in per_class],
        confusion=confusion,
        predictions=predictions,
        labels=labels,
        probabilities=probabilities,
        finite=finite,
        log_probabilities=torch.cat(log_probs) if log_probs else torch.empty(0, k),
    )
