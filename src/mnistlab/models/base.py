"""The common shape of every zoo model: normalize -> features -> flatten -> classifier."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .checkpointing import checkpointed_features


def too_large(e: BaseException) -> bool:
    """Whether ``e`` says a tensor could not be made for its size: the allocator refused, or a size overflowed."""
    if isinstance(e, (MemoryError, OverflowError)):
        return True
    message = str(e).lower()
    return isinstance(e, (RuntimeError, TypeError)) and ("allocate" in message or "overflow" in message)


class Net(nn.Module):
    """A classifier made of a ``features`` extractor and a ``classifier`` head.

    The input is a float image batch in [0, 1] of shape (N, C, H, W). The
    training split's mean and std are buffers of the model (so they travel in
    its ``state_dict`` and every checkpoint); ``forward`` normalizes with them.

    ``make_classifier(n)`` builds the head for ``n`` flattened features; ``n`` is
    found by a dry forward pass of ``features`` on the model's image size, so no
    layer size is ever hard-coded. A feature extractor that shrinks the image
    below 1x1 is reported as a ConfigError naming the model and the size.

    ``crop`` cuts that many pixels from each side of the image before anything
    else: MNIST's digits are scaled into a 20x20 box and centred in the 28x28
    frame, so the outer 2 pixels hold 0.24% of the training set's ink, while a
    5x5 unpadded first conv spends 31% of its work on them (24x24 outputs
    instead of 20x20). The input stays full size, and so do ``image_size``,
    test-time shifts and predict's preprocessing: the crop is part of the model.
    A cropping model holds it as the buffer ``crop_pixels`` too, so its weights
    say which pixels they were trained on: checkpoints rebuild with it, and
    loading them into a model with another crop is refused (a shift of the
    crop keeps every tensor's shape, so nothing else would notice).
    """

    # Whether NHWC (channels-last) memory speeds up this model's training on a CPU;
    # train.channels_last = none (auto) reads it. On CUDA auto always uses NHWC.
    # Measured per zoo model by benchmarks/roofline.py: faster for the small
    # conv-pool CNNs and ResNet-50 on both CPUs it ran on; slower for AlexNet, VGG
    # and ResNet-18 on an Intel Xeon. On an AMD EPYC VGG gained up to 1.16x from NHWC
    # (AlexNet lost, ResNet-18 was even); they keep NCHW, the faster layout on the Xeon.
    channels_last_on_cpu: bool = False
    # Recompute the activations of ``features`` in the backward pass instead of keeping
    # them (models/checkpointing.py); set with set_grad_checkpointing (train.grad_checkpoint).
    grad_checkpointing: bool = False

    def __init__(
        self,
        features: nn.Module,
        make_classifier: Callable[[int], nn.Module],
        *,
        in_channels: int,
        image_size: Sequence[int],
        name: str = "",
        crop: int = 0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.image_size = tuple(image_size)
        if isinstance(crop, bool) or not isinstance(crop, int) or crop < 0:
            raise ConfigError(f"model {name or type(self).__name__}: crop must be a whole number of pixels, 0 or more, "
                              f"got {crop!r}")
        if 2 * crop >= min(self.image_size):
            raise ConfigError(f"model {name or type(self).__name__}: crop={crop} cuts {2 * crop} pixels from each axis "
                              f"and leaves nothing of {self.image_size[0]}x{self.image_size[1]} images")
        self.crop = crop
        if crop:  # only then: uncropped models keep the state dict they always had
            self.register_buffer("crop_pixels", torch.tensor(crop))
        self.register_buffer("mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("std", torch.ones(1, in_channels, 1, 1))
        self.features = features
        self.num_features = self._feature_size(name)
        self.classifier = make_classifier(self.num_features)

    def _feature_size(self, name: str) -> int:
        dummy = self._cropped(torch.zeros(2, self.in_channels, *self.image_size))
        was_training = self.features.training
        self.features.eval()  # batch norm statistics must not move during the dry run
        try:
            with torch.no_grad():
                out = self.features(dummy)
        except RuntimeError as e:
            if too_large(e):  # not a shrinking map: build_model reports it as a model too large to build
                raise
            raise ConfigError(
                f"model {name or type(self).__name__} does not fit {self._size_text()}: "
                f"its layers shrink the image below 1x1 ({str(e).splitlines()[0]}); "
                f"use fewer pooling stages, a smaller kernel or more padding{self._crop_hint()}"
            ) from None
        finally:
            self.features.train(was_training)
        if out[0].numel() == 0:
            raise ConfigError(
                f"model {name or type(self).__name__} does not fit {self._size_text()}: "
                f"its feature map is {tuple(out.shape[1:])}; use fewer pooling stages, a smaller kernel or more "
                f"padding{self._crop_hint()}"
            )
        return int(out[0].numel())

    def _size_text(self) -> str:
        h, w = self.image_size
        if not self.crop:
            return f"{h}x{w} images"
        return f"{h}x{w} images cropped to {h - 2 * self.crop}x{w - 2 * self.crop} (crop={self.crop})"

    def _crop_hint(self) -> str:
        return ", or a smaller crop" if self.crop else ""

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Set the per-channel input statistics (from the training split)."""
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if mean_t.shape[1] != self.in_channels or std_t.shape[1] != self.in_channels:
            raise ConfigError(f"mean/std need {self.in_channels} value(s), got {list(mean)} / {list(std)}")
        if not torch.all(std_t > 0):
            raise ConfigError(f"std must be positive, got {list(std)}")
        self.mean.copy_(mean_t)
        self.std.copy_(std_t)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the activations of ``features`` segment by segment in backward (training only).

        It applies only in training mode with gradients enabled; evaluation and
        ``torch.no_grad`` forwards run as usual. The classifier is never
        recomputed: its activations are small next to the conv maps.
        """
        self.grad_checkpointing = enable

    @property
    def output_layer(self) -> str:
        """The name of the classifier's last linear layer, the one that outputs the class logits."""
        last = [name for name, m in self.classifier.named_modules() if isinstance(m, nn.Linear)][-1]
        return f"classifier.{last}" if last else "classifier"

    def _cropped(self, x: torch.Tensor) -> torch.Tensor:
        c = self.crop
        return x[:, :, c:x.shape[2] - c, c:x.shape[3] - c] if c else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (self._cropped(x) - self.mean) / self.std  # crop first: normalizing the border would be wasted work
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            features = checkpointed_features(self.features, x)
        else:
            features = self.features(x)
        return self.classifier(torch.flatten(features, 1))


def scaled(channels: int, width: float) -> int:
    """A channel count times the width multiplier, at least 1."""
    return max(1, int(round(channels * width)))
