"""The common shape of every zoo model: normalize -> features -> flatten -> classifier."""

from __future__ import annotations

import platform
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, deterministic_refusal
from .checkpointing import checkpointed_features


class MapTooSmall(ConfigError):
    """The model's layers shrink the image below 1x1: ``build_model`` adds which option values would fit."""


def too_large(e: BaseException) -> bool:
    """Whether ``e`` says a tensor could not be made for its size: the allocator refused, or a size overflowed."""
    if isinstance(e, (MemoryError, OverflowError)):
        return True
    message = str(e).lower()
    return isinstance(e, (RuntimeError, TypeError)) and ("allocate" in message or "overflow" in message)


class Net(nn.Module):
    """A classifier made of a ``features`` extractor and a ``classifier`` head.

    The input is a float image batch in [0, 1] of shape (N, C, H, W), or uint8
    images (0-255, as the data splits hold them), which it scales; float images of
    another dtype than the model's (float64 from numpy) are converted to it. One
    image, (C, H, W), and for a one-channel model (H, W) images or an (N, H, W)
    batch, get the missing axes (:func:`image_batch`). The
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
    # (AlexNet lost); AlexNet keeps NCHW, the faster layout on the Xeon, and the VGGs train NHWC
    # (make_vgg: benchmarks/vgg_layout.py). Every ResNet
    # trains NHWC (make_resnet; ResNet-18 ran 1.1x NCHW's rate on the AVX2 EPYC), unless
    # one of its convs is one PyTorch's NHWC backward crashes on (fit.nhwc_crash_layer).
    channels_last_on_cpu: bool = False
    # Whether evaluation on a CPU runs ``features`` in oneDNN's blocked layout
    # (inference_forward). Measured per zoo model by benchmarks/evaluate_speed.py on the
    # AMD EPYC with AVX2 (evaluate_speed_epyc-avx2*.txt, evaluate_speed_zoo_epyc-avx2.txt):
    # cnn took 0.65-0.84x the seconds of its plain forward and fast 0.77-0.90x, in every
    # run; LeNet (0.78-1.01x), VGG-11 (0.74-1.09x) and AlexNet (0.92-1.01x) were slower
    # in some run, so they keep the plain forward. ResNets have layers it lacks.
    onednn_eval_on_cpu: bool = False
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
            raise MapTooSmall(f"model {name or type(self).__name__}: crop={crop} cuts {2 * crop} pixels from each axis "
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
            if too_large(e) or deterministic_refusal(e):  # not a shrinking map: its callers say what it is
                raise
            raise MapTooSmall(
                f"model {name or type(self).__name__} does not fit {self._size_text()}: "
                f"its layers shrink the image below 1x1 ({self._shrinking(dummy) or str(e).splitlines()[0]}); "
                f"use fewer pooling stages, a smaller kernel or stride, or more padding{self._crop_hint()}"
            ) from None
        finally:
            self.features.train(was_training)
        if out[0].numel() == 0:
            raise MapTooSmall(
                f"model {name or type(self).__name__} does not fit {self._size_text()}: "
                f"its feature map is {tuple(out.shape[1:])}; use fewer pooling stages, a smaller kernel or stride, "
                f"or more padding{self._crop_hint()}"
            )
        return int(out[0].numel())

    def _shrinking(self, dummy: torch.Tensor) -> str:
        """The map's size after each layer of ``features`` that changes it, up to the one that cannot run:
        which kernel, stride or pool to change ("" where the layers cannot be run one by one)."""
        if not isinstance(self.features, nn.Sequential):
            return ""
        x, steps = dummy, [f"{dummy.shape[2]}x{dummy.shape[3]}"]
        with torch.no_grad():
            for index, layer in enumerate(self.features):
                try:
                    y = layer(x)
                except RuntimeError:
                    where = f"{' -> '.join(steps)}; the {_layer_text(layer)} after that" if len(steps) > 1 else \
                        f"the {_layer_text(layer)} on the {steps[0]} input"
                    return f"{where}, features.{index}, cannot take {x.shape[2]}x{x.shape[3]}"
                if y.dim() == 4 and y.shape[2:] != x.shape[2:]:
                    steps.append(f"{y.shape[2]}x{y.shape[3]} after the {_layer_text(layer)}")
                x = y
        return ""

    def _size_text(self) -> str:
        h, w = self.image_size
        if not self.crop:
            return f"{h}x{w} images"
        return f"{h}x{w} images cropped to {h - 2 * self.crop}x{w - 2 * self.crop} (crop={self.crop})"

    def _crop_hint(self) -> str:
        return ", or a smaller crop" if self.crop else ""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # The crop is an attribute, not the buffer: a plain load_state_dict of weights trained with crop=2 into a
        # crop=1 model (same shapes for fast) copied crop_pixels=2 and went on cutting 1 pixel, silently giving
        # other predictions. Refused here as a size mismatch is, also with strict=False: nothing else would notice.
        stored = state_dict.get(prefix + "crop_pixels")
        if isinstance(stored, torch.Tensor) and stored.numel() == 1 and int(stored) != self.crop:
            error_msgs.append(f"crop_pixels: the weights were trained on images cropped by {int(stored)} pixels a "
                              f"side, but this model crops {self.crop}; build it with crop={int(stored)}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Set the per-channel input statistics (from the training split)."""
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        # (listed from the tensors: a single number is taken, and list(0.0) failed in the message itself)
        got_mean, got_std = mean_t.flatten().tolist(), std_t.flatten().tolist()
        if mean_t.shape[1] != self.in_channels or std_t.shape[1] != self.in_channels:
            raise ConfigError(f"mean/std need {self.in_channels} value(s), got {got_mean} / {got_std}")
        # NaN or infinite statistics made every output NaN, or (std = inf) every input 0: a constant prediction
        if not (torch.isfinite(mean_t).all() and torch.isfinite(std_t).all()):
            raise ConfigError(f"mean/std must be finite numbers, got {got_mean} / {got_std}")
        if not torch.all(std_t > 0):
            raise ConfigError(f"std must be positive, got {got_std}")
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

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        return (self._cropped(x) - self.mean) / self.std  # crop first: normalizing the border would be wasted work

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float64 met float32 weights in the first conv ("Input type (double) and bias type (float)"); mean holds
        # the model's dtype, and .to is free where it is already that
        x = self._normalized(image_batch(_as_float_images(x), self.in_channels).to(self.mean.dtype))
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            features = checkpointed_features(self.features, x)
        else:
            features = self.features(x)
        return self.classifier(torch.flatten(features, 1))

    def inference_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function that computes what ``self(x)`` does in eval mode without gradients, faster where it can.

        On a CPU, for a model marked ``onednn_eval_on_cpu``, it runs ``features``
        on oneDNN's own blocked-layout tensors (``Tensor.to_mkldnn``): the convs,
        pools, ReLUs and batch norms then pass their maps on without converting them
        back to PyTorch's layout in between. The result equals the plain forward's
        to float rounding (the sums run in another order). Everywhere else
        (another device, gradients on, training mode, autocast, another dtype,
        forward hooks, a layer oneDNN lacks) it returns ``self``. It reads the
        weights when called, so call it again after they change (evaluate does,
        once per pass).
        """
        layers = self._onednn_layers()
        if layers is None:
            return self

        def forward(x: torch.Tensor) -> torch.Tensor:
            if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled() or not len(x):
                return self(x)  # (oneDNN has no tensor of 0 images; uint8 images are scaled there)
            y = self._normalized(image_batch(x, self.in_channels)).to_mkldnn()
            for layer in layers:
                y = layer(y)
            return self.classifier(torch.flatten(y.to_dense(), 1))

        return forward

    def _onednn_layers(self) -> list[Callable[[torch.Tensor], torch.Tensor]] | None:
        """``features`` as oneDNN-layout functions, or None where the plain forward must run."""
        params = list(self.parameters())
        if (not self.onednn_eval_on_cpu or not _ON_X86
                or any(m.training for m in self.modules()) or torch.is_grad_enabled()  # one BN in train mode too
                or not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled
                or torch.is_autocast_enabled("cpu") or not isinstance(self.features, nn.Sequential)
                or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params)
                or has_forward_hooks(self)):
            return None
        layers = [_onednn_layer(m) for m in self.features]
        return None if any(f is None for f in layers) else layers


def _as_float_images(x: torch.Tensor) -> torch.Tensor:
    """The model's input as floats in [0, 1]: uint8 images (0-255, as the datasets' splits and ``np.uint8``
    arrays hold them) are scaled by 1/255, as ``evaluate`` and ``predict`` scale them. Without it, ``model(images)``
    on a split's images normalized 0-255 values with statistics of [0, 1] ones: logits ~250x too large and, on a
    trained cnn, 7.5% of the test images classified otherwise. Other integer or boolean images are refused: no
    scale is known for them."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(x).__name__}"
                        + (": torch.from_numpy(array)" if type(x).__module__ == "numpy" else ""))
    if x.dtype == torch.uint8:
        return x.float().div(255)
    if not x.is_floating_point():
        raise TypeError(f"images must be uint8 (0-255) or floating point in [0, 1], got {x.dtype}: convert them, "
                        "e.g. x.float() / 255 for 8-bit pixel values")
    return x


def image_batch(x: torch.Tensor, in_channels: int) -> torch.Tensor:
    """``x`` as the (N, C, H, W) batch a model of ``in_channels`` channels takes: one image, (C, H, W) or for one
    channel (H, W), gets the batch axis, and a one-channel (N, H, W) batch (as numpy MNIST arrays come) the
    channel axis. Other shapes are a ValueError naming those taken: an (N, H, W) batch broadcast against the
    (1, C, 1, 1) mean into one image of N channels, and the first conv failed on its channel count; an
    (N, 1, H, W) batch given to a 3-channel model broadcast into 3 channels and was classified. Only the
    shape is read, never a value: the forward pass of every training step pays nothing for it.

    >>> [tuple(image_batch(torch.zeros(s), 1).shape) for s in [(28, 28), (5, 28, 28), (5, 1, 28, 28)]]
    [(1, 1, 28, 28), (5, 1, 28, 28), (5, 1, 28, 28)]
    """
    if x.dim() == 4 and x.shape[1] == in_channels:
        return x
    if in_channels == 1 and x.dim() == 3:
        return x.unsqueeze(1)
    if (in_channels == 1 and x.dim() == 2) or (x.dim() == 3 and x.shape[0] == in_channels):
        return x.reshape(1, in_channels, *x.shape[-2:])
    taken = ("(N, 1, H, W), (N, H, W) or one (H, W) image" if in_channels == 1
             else f"(N, {in_channels}, H, W) or one ({in_channels}, H, W) image")
    raise ValueError(f"images must be a batch {taken} for this {in_channels}-channel model, got shape "
                     f"{tuple(x.shape)}")


def has_forward_hooks(model: nn.Module) -> bool:
    """Whether a forward pass of ``model`` calls hooks (its modules' or global ones): code that would run the
    model differently, or once more, than the caller asked leaves such a model alone."""
    return bool(any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
                or nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks)


_ON_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")  # the oneDNN path was measured on x86 only


def _onednn_layer(m: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """One feature layer on oneDNN tensors, or None for a layer it has no kernel for here."""
    if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
        weight = m.weight.detach().to_mkldnn()  # reordered to the conv's own layout by oneDNN, per call
        bias = None if m.bias is None else m.bias.detach()
        return lambda x: torch.mkldnn_convolution(x, weight, bias, m.padding, m.stride, m.dilation, m.groups)
    if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
        return lambda x: torch.batch_norm(x, m.weight, m.bias, m.running_mean, m.running_var, False, 0.0, m.eps,
                                          False)
    if type(m) in (nn.ReLU, nn.MaxPool2d):
        return m
    return None


def scaled(channels: int, width: float) -> int:
    """A channel count times the width multiplier, at least 1."""
    return max(1, int(round(channels * width)))


def _layer_text(layer: nn.Module) -> str:
    """A conv or pool by its shape ("5x5 conv (stride 100, padding 2)"); any other layer by its class name."""
    kind = {nn.Conv2d: "conv", nn.MaxPool2d: "max-pool", nn.AvgPool2d: "average pool"}.get(type(layer))
    if kind is None:
        return type(layer).__name__

    def side(v: int | str | Sequence[int]) -> str:  # 2 or (2, 2) -> "2", (2, 3) -> "2x3"; "same" as it is
        if isinstance(v, str):
            return v
        a, b = (v, v) if isinstance(v, int) else v
        return str(a) if a == b else f"{a}x{b}"

    kh, kw = (layer.kernel_size,) * 2 if isinstance(layer.kernel_size, int) else layer.kernel_size
    plain_stride = 1 if kind == "conv" else layer.kernel_size  # a pool's stride is its kernel unless set
    options = [f"stride {side(layer.stride)}"] if side(layer.stride) != side(plain_stride) else []
    if side(layer.padding) != "0":
        options.append(f"padding {side(layer.padding)}")
    return f"{kh}x{kw} {kind}" + (f" ({', '.join(options)})" if options else "")
