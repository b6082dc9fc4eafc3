"""Audit 137: what the model sees is exactly the data it should be, checked against independent references.

torchvision reads the same IDX files (``torchvision.datasets.MNIST``), and its ``transforms.v2.functional``
defines what a rotation, shift, zoom and shear of a given size mean; the rest is recomputed here in plain torch:
the split's disjointness and coverage, the statistics the model normalizes with (from the training split only),
every epoch's coverage of the training images (with the merged last batch, micro-batches and the split between
processes), resuming inside an epoch, and that the trainer augments training images only.
"""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision.datasets
import torchvision.transforms.functional as TF1
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

import mnistlab.data.augment as augment_module
from mnistlab import Config, apply_overrides, build_model, fit
from mnistlab.config import AugmentConfig, DataConfig
from mnistlab.data import DATASETS, epoch_permutation, iterate_batches, load_data, load_test, split_indices, to_float
from mnistlab.data.augment import augment, elastic_offsets
from mnistlab.data.datasets import Split
from mnistlab.training.fit import class_weights


@pytest.fixture(scope="module")
def reference(mnist_root):
    """MNIST as torchvision reads it: (train images, train labels, test images, test labels)."""
    train = torchvision.datasets.MNIST(str(mnist_root), train=True, download=False)
    test = torchvision.datasets.MNIST(str(mnist_root), train=False, download=False)
    return train.data, train.targets, test.data, test.targets


@pytest.fixture(scope="module")
def limited(mnist_root):
    return load_data(DataConfig(dir=str(mnist_root), val_size=5000, split_seed=3, train_limit=2000, download=False))


@pytest.fixture(scope="module")
def whole(mnist_root):
    return load_data(DataConfig(dir=str(mnist_root), val_size=5000, split_seed=3, download=False))


# ---------------------------------------------------------------------------
# load_data / load_test


def test_every_image_and_label_is_torchvisions_in_the_documented_order(limited, whole, reference, mnist_root):
    train_x, train_y, test_x, test_y = reference
    for data in (limited, whole):
        for split in (data.train, data.val):  # indices: positions in the training file
            assert torch.equal(split.images[:, 0], train_x[split.indices])
            assert torch.equal(split.labels, train_y[split.indices])
        # the test split is the test file, whole and in its order
        assert torch.equal(data.test.images[:, 0], test_x) and torch.equal(data.test.labels, test_y)
        assert torch.equal(data.test.indices, torch.arange(10_000))
    scoring = load_test(DataConfig(dir=str(mnist_root), download=False))
    assert torch.equal(scoring.test.images[:, 0], test_x) and torch.equal(scoring.test.labels, test_y)


def test_validation_is_disjoint_and_train_limit_draws_from_the_training_part_only(limited, whole):
    train, val = set(whole.train.indices.tolist()), set(whole.val.indices.tolist())
    assert len(train) == 55_000 and len(val) == 5_000 and not train & val and train | val == set(range(60_000))
    # the limit changes the training part only: the same validation images, a subset of the same training part
    assert torch.equal(limited.val.indices, whole.val.indices)
    assert len(limited.train) == 2_000 and set(limited.train.indices.tolist()) <= train


def test_the_split_is_the_same_in_another_process_and_ignores_the_global_seed():
    def digest(train, val):
        return hashlib.sha256(train.numpy().tobytes() + b"|" + val.numpy().tobytes()).hexdigest()

    torch.manual_seed(1)
    here = digest(*split_indices(60_000, 5_000, 3, 2_000))
    torch.manual_seed(2)  # train.seed seeds the global RNG: the split must not follow it
    assert digest(*split_indices(60_000, 5_000, 3, 2_000)) == here
    code = ("import hashlib, torch; from mnistlab.data import split_indices; "
            "t, v = split_indices(60000, 5000, 3, 2000); "
            "torch.manual_seed(7); print(hashlib.sha256(t.numpy().tobytes() + b'|' + v.numpy().tobytes()).hexdigest())")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert there == here
    assert digest(*split_indices(60_000, 5_000, 4, 2_000)) != here  # split_seed does move it


def test_loading_and_batching_leave_the_global_rng_alone(mnist_root):
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    data = load_data(DataConfig(dir=str(mnist_root), val_size=100, train_limit=300, download=False))
    list(iterate_batches(data.train, 64, order=epoch_permutation(len(data.train), 0, 1)))
    assert torch.equal(torch.rand(4), expected)


def test_mean_std_and_balanced_weights_come_from_the_training_split_only(limited, whole, reference):
    train_x, train_y, _, _ = reference
    for data in (limited, whole):
        pixels = train_x[data.train.indices].double() / 255
        assert data.mean[0] == pytest.approx(pixels.mean().item(), abs=1e-12)
        assert data.std[0] == pytest.approx(pixels.std(unbiased=False).item(), abs=1e-9)  # population std
        counts = torch.bincount(train_y[data.train.indices], minlength=10).double()
        expected = (counts.sum() / (10 * counts)).float()
        assert torch.allclose(class_weights("balanced", data), expected, rtol=0, atol=1e-6)
    # not the whole file's, nor the validation or test images': those would differ in the 4th decimal
    assert abs(whole.mean[0] - (train_x.double() / 255).mean().item()) > 1e-5
    assert abs(limited.mean[0] - (train_x[limited.val.indices].double() / 255).mean().item()) > 1e-4
    # the values every MNIST tutorial normalizes with (the training file's, to 4 decimals)
    assert round(whole.mean[0], 4) == 0.1307 and round(whole.std[0], 4) == 0.3081


def _write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes((0, 0, 8, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


@pytest.mark.parametrize("dataset", ["fashion-mnist", "kmnist"])
def test_other_datasets_load_as_torchvision_reads_them(tmp_path, dataset):
    spec = DATASETS[dataset]
    raw, rng = spec.raw_dir(tmp_path), np.random.default_rng(1)
    for prefix, n in (("train", 300), ("t10k", 50)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    theirs = [spec.torchvision_class(str(tmp_path), train=t, download=False) for t in (True, False)]
    data = load_data(DataConfig(dataset=dataset, dir=str(tmp_path), val_size=40, split_seed=5, train_limit=100,
                                download=False))
    for split in (data.train, data.val):
        assert torch.equal(split.images[:, 0], theirs[0].data[split.indices])
        assert torch.equal(split.labels, theirs[0].targets[split.indices])
    assert torch.equal(data.test.images[:, 0], theirs[1].data) and torch.equal(data.test.labels, theirs[1].targets)
    assert data.classes == list(theirs[0].classes)


# ---------------------------------------------------------------------------
# batching


def _split(n: int) -> Split:
    """n examples whose label is their position, and whose every pixel is position % 256."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return Split(images, torch.arange(n))


@pytest.mark.parametrize("n", [1, 9, 100, 101, 130])
@pytest.mark.parametrize("batch_size, world", [(1, 1), (4, 1), (32, 1), (4, 2), (32, 4)])
@pytest.mark.parametrize("min_last", [1, 2, 8])
def test_every_epoch_shows_each_training_example_exactly_once(n, batch_size, world, min_last):
    split, order = _split(n), epoch_permutation(n, 3, 2)
    seen = []
    for rank in range(world):
        for x, y in iterate_batches(split, batch_size, order=order, min_last=min_last,
                                    part=(rank, world) if world > 1 else None):
            assert torch.equal(x[:, 0, 0, 0], (y % 256).float() / 255)  # images travel with their labels
            seen += y.tolist()
    assert sorted(seen) == list(range(n))


def test_resuming_inside_an_epoch_continues_the_same_permutation():
    split, order = _split(101), epoch_permutation(101, 0, 4)
    whole = [y for _, y in iterate_batches(split, 10, order=order, min_last=2)]
    assert torch.equal(torch.cat(whole), order)
    for start in range(len(whole) + 1):
        rest = [y for _, y in iterate_batches(split, 10, order=epoch_permutation(101, 0, 4), start=start, min_last=2)]
        assert len(rest) == len(whole) - start and all(map(torch.equal, rest, whole[start:]))


def test_the_permutation_depends_on_seed_and_epoch_only():
    first = epoch_permutation(1000, 0, 1)
    assert torch.equal(first, epoch_permutation(1000, 0, 1))
    assert sorted(first.tolist()) == list(range(1000))
    others = [epoch_permutation(1000, 0, 2), epoch_permutation(1000, 1, 1), epoch_permutation(1000, 1, 2)]
    assert not any(torch.equal(first, other) for other in others)


def test_uint8_images_scale_to_0_1_as_torchvision_scales_them():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    # ToTensor's x / 255 exactly; v2's to_dtype multiplies by 1/255, which differs in the last bit of some values
    assert torch.equal(to_float(x)[0], TF1.to_tensor(x[0].permute(1, 2, 0).numpy()))
    assert torch.allclose(to_float(x), TF.to_dtype(x, torch.float32, scale=True), rtol=0, atol=6e-8)
    assert to_float(x).min() == 0 and to_float(x).max() == 1


# ---------------------------------------------------------------------------
# augmentation


@pytest.fixture
def at_the_range_end(monkeypatch):
    """Every random draw of augment at +its range: the transform of the config's values themselves."""
    def the_end(n, half, device):
        return torch.full((n,), float(half), device=device)

    monkeypatch.setattr(augment_module, "_uniform", the_end)


OFF = dict(enabled=True, rotation=0.0, scale=0.0, shift=0.0, shear=0.0)


@pytest.mark.parametrize("ours, theirs", [
    (dict(rotation=20.0), dict(angle=20.0)),  # counter-clockwise on screen, as torchvision
    (dict(shift=0.25), dict(translate=[7, 7])),  # a quarter of the side, right and down
    (dict(scale=0.2), dict(scale=1.2)),  # the digit grows by 1 + scale
    (dict(shear=20.0), dict(shear=[20.0, 0.0])),  # along x
])
def test_each_affine_parameter_means_what_torchvision_means(at_the_range_end, reference, ours, theirs):
    image = reference[2][:3].unsqueeze(1)  # three test digits, uint8
    kw = dict(angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, 0.0]) | theirs
    expected = TF.affine(image.float() / 255, interpolation=InterpolationMode.BILINEAR, **kw)
    got = augment(image.float() / 255, AugmentConfig(**OFF | ours))
    assert (got - expected).abs().max() < 1e-5
    assert got.min() >= 0 and got.max() <= 1
    got8 = augment(image, AugmentConfig(**OFF | ours))
    assert got8.dtype == torch.uint8 and (got8.int() - (expected * 255).round().int()).abs().max() <= 1


def test_zero_ranges_are_the_identity_exactly(reference):
    x = reference[2][:16].unsqueeze(1).float() / 255
    assert augment(x, AugmentConfig(**OFF, elastic_alpha=0.0, elastic_sigma=2.0)) is x
    assert augment(x, AugmentConfig(enabled=False, rotation=30.0, shift=0.3, elastic_alpha=30.0)) is x


def test_elastic_alpha_and_sigma_are_in_pixels_on_both_axes():
    torch.manual_seed(0)
    cfg = AugmentConfig(enabled=True, elastic_alpha=10.0, elastic_sigma=4.0)
    off = elastic_offsets(2000, (28, 40), cfg, torch.device("cpu"))  # grid units: 2 per side
    dx, dy = off[..., 0] * 40 / 2, off[..., 1] * 28 / 2  # in pixels
    assert dx.std().item() == pytest.approx(dy.std().item(), rel=0.05)
    # uniform noise in [-1, 1] smoothed by a unit-sum Gaussian of sigma 4 (2-D), then times alpha: about 0.049 alpha
    assert 0.3 < dx.std().item() < 0.7
    torch.manual_seed(0)
    doubled = elastic_offsets(2000, (28, 40), AugmentConfig(enabled=True, elastic_alpha=20.0), torch.device("cpu"))
    assert torch.allclose(doubled, 2 * off, atol=1e-6)


def test_the_trainer_augments_training_images_only_each_once_an_epoch(mnist_root, monkeypatch):
    data = load_data(DataConfig(dir=str(mnist_root), val_size=100, train_limit=301, download=False))
    seen: list[torch.Tensor] = []

    def recording(images, cfg):
        seen.append(images.clone())
        return augment(images, cfg)

    # the module by sys.modules: mnistlab.training.fit, as an attribute, is the function fit()
    monkeypatch.setattr(sys.modules["mnistlab.training.fit"], "augment", recording)
    cfg = apply_overrides(Config(), [
        "train.threads=1", "train.precision=fp32", "train.progress=false", "tensorboard.enabled=false",
        "train.epochs=2", "train.batch_size=100", "train.micro_batch_size=32", "augment.enabled=true",
        "train.compile=false",
    ])
    torch.manual_seed(0)
    model = build_model("cnn", mean=data.mean, std=data.std, width=0.25, dropout=0.0)
    fit(model, data, cfg)

    def keys(images: torch.Tensor) -> list[bytes]:
        return sorted(bytes(image.numpy().tobytes()) for image in images)

    # 301 images in batches of 100: the remainder of 1 joins the third batch; 3 batches an epoch, nothing else
    assert [len(x) for x in seen] == [100, 100, 101] * 2
    train = keys(data.train.images.float() / 255)
    for epoch in (seen[:3], seen[3:]):
        assert keys(torch.cat(epoch)) == train  # every training image once, no validation or test image
