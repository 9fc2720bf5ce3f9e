from __future__ import annotations

import pytest
import torch

from mnist_cli.data import NORMALIZATION
from mnist_cli.train.augmentation import (
    NOISE_COLUMNS,
    add_style_strokes,
    augment,
    random_affine,
    random_thickness,
)

BACKGROUND = -NORMALIZATION["mean"] / NORMALIZATION["std"]
INK = (1 - NORMALIZATION["mean"]) / NORMALIZATION["std"]


def _strokes(count: int) -> torch.Tensor:
    """Normalised 28x28 images of one upright bar each: a plain '1'."""
    images = torch.full((count, 1, 28, 28), BACKGROUND)
    images[:, :, 5:23, 13:15] = INK
    return images


def _ink(images: torch.Tensor) -> torch.Tensor:
    return (images - BACKGROUND).flatten(1).sum(1)


def test_style_strokes_add_ink_to_the_chosen_share_of_0s_1s_and_7s_only():
    images = _strokes(10)
    labels = torch.tensor([1, 7, 0, 2, 3, 1, 1, 1, 1, 1])
    out = add_style_strokes(
        images, labels, background=BACKGROUND, ink=INK, share=0.5, noise=torch.rand(10, 3)
    )
    added = _ink(out) - _ink(images)
    assert (added[:3] > 5).all()  # the first half: a flag on the 1, a bar on the 7, a 0's mark
    assert torch.equal(out[3:5], images[3:5])  # a 2 and a 3 get nothing
    assert torch.equal(out[5:], images[5:])  # outside the share: untouched
    assert (out >= images - 1e-6).all()  # strokes only ever add ink
    assert out.max() <= INK + 1e-5


def test_a_flag_lands_at_the_top_of_the_stroke():
    images = _strokes(1)
    out = add_style_strokes(
        images,
        torch.tensor([1]),
        background=BACKGROUND,
        ink=INK,
        share=1.0,
        noise=torch.tensor([[0.9, 0.5, 0.5]]),  # form 0.9: a flag without a foot
    )
    new = (out - images)[0, 0] > 0.5
    rows = new.nonzero()[:, 0]
    assert rows.min() >= 4 and rows.max() <= 14  # upper part of the bar
    assert new[:, :13].any()  # to the left of it, as flags go


def test_thickness_thickens_or_thins_the_share_at_the_end_of_the_batch():
    images = _strokes(8)
    noise = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.1, 0.6, 0.9, 0.2])
    out = random_thickness(images, background=BACKGROUND, share=0.5, noise=noise)
    assert torch.equal(out[:4], images[:4])
    change = _ink(out[4:]) - _ink(images[4:])
    assert change[0] > 0 and change[3] > 0  # one pixel thicker
    assert change[1] > change[0]  # two pixels thicker
    assert change[2] < 0  # one pixel thinner
    assert out.shape == images.shape


def test_affine_with_zero_motion_noise_keeps_the_image():
    images = _strokes(2)
    still = torch.tensor([[0.5, 0.5, 0.5, 0.5]] * 2)  # maps to no rotation, scale or shift
    assert torch.allclose(
        random_affine(images, background=BACKGROUND, noise=still), images, atol=1e-4
    )


@pytest.mark.parametrize("thickness, styles", [(0.0, 0.0), (0.3, 0.3), (1.0, 1.0)])
def test_augment_is_a_function_of_its_noise(thickness, styles):
    images, labels = _strokes(16), torch.randint(0, 10, (16,))
    noise = torch.rand(16, NOISE_COLUMNS, generator=torch.Generator().manual_seed(0))
    options = {"background": BACKGROUND, "ink": INK, "thickness": thickness, "styles": styles}
    first = augment(images, labels, noise, **options)
    assert torch.equal(first, augment(images, labels, noise, **options))
    assert first.shape == images.shape and torch.isfinite(first).all()
    other = augment(images, labels, torch.rand(16, NOISE_COLUMNS), **options)
    assert not torch.equal(first, other)
