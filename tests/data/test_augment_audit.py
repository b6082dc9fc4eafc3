"""Audit of augmentation and batching: images of other shapes and dtypes, empty batches, and stray indices."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from mnistlab.config import AugmentConfig
from mnistlab.data import Split, iterate_batches, to_float
from mnistlab.data.augment import augment

ALL = AugmentConfig(enabled=True, rotation=20.0, scale=0.1, shift=0.1, shear=10.0, elastic_alpha=6.0)


def centre_of_mass(images: torch.Tensor) -> torch.Tensor:
    """(N, 2): x and y in pixels of each image's centre of mass."""
    h, w = images.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    mass = images.float().sum((1, 2, 3))
    return torch.stack([(images.float() * xs).sum((1, 2, 3)), (images.float() * ys).sum((1, 2, 3))], 1) / mass[:, None]


def test_a_rotation_of_a_non_square_image_keeps_distances_in_pixels():
    # A blob 8 px right of the centre of a 24 x 40 image: any rotation keeps it 8 px from the centre. Rotated in
    # grid units (both sides span 2), a quarter turn put it 8 * 24 / 40 = 4.8 px above or below the centre.
    x = torch.zeros(64, 1, 24, 40)
    x[:, :, 11:13, 27:29] = 1.0
    torch.manual_seed(0)
    out = augment(x, AugmentConfig(enabled=True, rotation=90.0, scale=0.0, shift=0.0, shear=0.0))
    centre = torch.tensor([19.5, 11.5])
    distance = (centre_of_mass(out) - centre).norm(dim=1)
    assert (distance - 8.0).abs().max() < 0.2, distance


@pytest.mark.parametrize(("ours", "theirs"), [
    ({"rotation": 30.0, "scale": 0.2}, {"angle": 30.0, "scale": 1.2, "shear": [0.0, 0.0]}),
    ({"shear": 10.0}, {"angle": 0.0, "scale": 1.0, "shear": [10.0, 0.0]}),
])
def test_a_non_square_image_is_transformed_as_torchvision_transforms_it(monkeypatch, ours, theirs):
    # Every uniform draw at the top of its range: rotation +30 degrees with zoom 1.2, or shear +10. (Not both:
    # torchvision composes rotation and shear in another order; nor the shift, which it applies after the rest,
    # augment before.) torchvision's affine works in pixels, on any aspect.
    x = torch.zeros(2, 3, 20, 36)
    x[:, :, 5:9, 22:27] = torch.rand(2, 3, 4, 5)
    monkeypatch.setattr(torch, "rand", lambda *size, device=None: torch.ones(*size, device=device))
    out = augment(x, AugmentConfig(enabled=True, **{"rotation": 0.0, "scale": 0.0, "shift": 0.0, **ours}))
    expected = TF.affine(x, translate=[0, 0], interpolation=TF.InterpolationMode.BILINEAR, **theirs)
    assert (out - expected).abs().max() < 1e-4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_any_float_dtype_is_augmented_in_that_dtype(dtype):
    x = torch.rand(8, 1, 28, 28, dtype=dtype)
    torch.manual_seed(3)
    out = augment(x, ALL)
    torch.manual_seed(3)
    reference = augment(x.float(), ALL)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    if dtype == torch.float64:  # the same transforms, sampled in float64
        assert (out - reference).abs().max() < 1e-5
    else:  # sampled in float32 and rounded once to the dtype (through a bfloat16 grid it was up to 0.19 off)
        assert torch.equal(out, reference.to(dtype))


def test_uint8_images_are_augmented_as_uint8(mnist_small):
    x = mnist_small.train.images[:16]
    torch.manual_seed(4)
    out = augment(x, ALL)
    torch.manual_seed(4)
    reference = augment(to_float(x), ALL) * 255
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert ((out.float() - reference).abs() <= 0.5 + 1e-3).all()  # the float result, rounded
    assert not torch.equal(out, x)


def test_images_of_another_integer_dtype_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="float or uint8 images, got torch.int32"):
        augment(torch.zeros(2, 1, 28, 28, dtype=torch.int32), ALL)


def test_an_empty_batch_comes_back_as_it_is():
    # iterate_batches(part=...) may give a rank no rows of a small last batch.
    empty = torch.zeros(0, 1, 28, 28)
    assert augment(empty, ALL) is empty
    assert augment(empty, AugmentConfig(enabled=True, hflip=True)).shape == (0, 1, 28, 28)


@pytest.mark.parametrize("bad", [[0, 7, 1], [-1, 2]])
def test_an_order_with_indices_outside_the_split_is_refused_at_the_call(bad):
    split = Split(torch.zeros(5, 1, 2, 2, dtype=torch.uint8), torch.arange(5))
    with pytest.raises(ValueError, match=r"order must hold indices in \[0, 5\)"):
        iterate_batches(split, 2, order=torch.tensor(bad))  # before: IndexError at the batch holding the index


def test_a_batch_larger_than_the_split_is_one_batch_of_everything():
    split = Split(torch.arange(3, dtype=torch.uint8).view(3, 1, 1, 1), torch.arange(3))
    batches = list(iterate_batches(split, 1000, order=torch.tensor([2, 0, 1])))
    assert len(batches) == 1 and batches[0][1].tolist() == [2, 0, 1]
    assert torch.equal(batches[0][0].flatten(), torch.tensor([2.0, 0.0, 1.0]) / 255)
