"""On-device augmentation of whole batches: style strokes, stroke thickness, affine warps."""

from __future__ import annotations

import math

import torch
from torch import nn


def random_affine(
    images: torch.Tensor,
    *,
    background: float,
    noise: torch.Tensor,
    max_degrees: float = 10.0,
    max_scale: float = 0.1,
    max_shift_pixels: float = 2.0,
) -> torch.Tensor:
    """Warp each image of a normalised N x 1 x H x W batch by its own random affine map.

    `noise` is N x 4 uniform in [0, 1): angle, scale and the two shifts. One `grid_sample` call
    for the whole batch, so it costs a fraction of a training step.
    """
    height = images.shape[2]
    angle, scale, shift_x, shift_y = (noise * 2 - 1).unbind(1)
    angle = angle * math.radians(max_degrees)
    scale = 1 + scale * max_scale
    shift = max_shift_pixels * 2 / height  # grid coordinates span 2 across the image
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift_x * shift], 1), torch.stack([sin, cos, shift_y * shift], 1)],
        1,
    ).to(images.dtype)
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    # Sample the image minus its background so that pixels pulled in from outside are background.
    warped = nn.functional.grid_sample(images - background, grid, align_corners=False)
    return warped + background


def random_thickness(
    images: torch.Tensor,
    *,
    background: float,
    share: float,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Thicken or thin the strokes of a random `share` of a normalised batch by about a pixel.

    Grey-level dilation (a 2x2 or 3x3 maximum) or erosion (a 2x2 minimum): felt pens and fine
    pens write strokes that MNIST's rarely match. The batch comes in random order, so the
    share is taken from its end: a fixed size, as a CUDA graph needs.
    """
    kept, images = _split(images, share, at_end=True)
    padded = nn.functional.pad(images, (0, 1, 0, 1), value=background)
    thicker = nn.functional.max_pool2d(padded, 2, stride=1)
    thinner = -nn.functional.max_pool2d(-padded, 2, stride=1)
    thickest = nn.functional.max_pool2d(images, 3, stride=1, padding=1)
    pick = noise[len(kept) :].view(-1, 1, 1, 1)  # uniform draws in [0, 1)
    # Half of them get one pixel more, a quarter two pixels more, a quarter one less.
    out = torch.where(pick < 0.5, thicker, thinner)
    out = torch.where((pick >= 0.5) & (pick < 0.75), thickest, out)
    return torch.cat([kept, out])


def _split(images: torch.Tensor, share: float, *, at_end: bool) -> tuple[torch.Tensor, ...]:
    """The batch cut in two at round(share * N): (rest, share) if at_end, else (share, rest)."""
    count = round(share * len(images))
    if at_end:
        return images[: len(images) - count], images[len(images) - count :]
    return images[:count], images[count:]


def add_style_strokes(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    background: float,
    ink: float,
    share: float,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Draw the strokes some writers add and MNIST's writers rarely did, on a `share` of a batch.

    A flag (and often a foot) on 1s, a bar across 7s, and a slash or a dot inside 0s, placed
    from each digit's own bounding box, so they land on real handwriting of every slant and size.
    The share is taken from the start of the (randomly ordered) batch: a fixed size, as a CUDA
    graph needs. `noise` is N x 3 uniform in [0, 1): which variant, pen width, flag length.
    """
    images, rest = _split(images, share, at_end=False)
    n, _, height, width = images.shape
    labels = labels[:n]
    form, pen_draw, flag_draw = noise[:n].unbind(1)

    mask = images[:, 0] > (background + ink) / 2
    rows, cols = mask.any(2), mask.any(1)
    top = rows.float().argmax(1)
    bottom = height - 1 - rows.flip(1).float().argmax(1)
    left = cols.float().argmax(1)
    right = width - 1 - cols.flip(1).float().argmax(1)
    tall = (bottom - top + 1).float()
    x_top, x_bottom = _ink_column(mask, top), _ink_column(mask, bottom)
    middle = (top + 0.55 * tall).long().clamp(0, height - 1)
    x_middle = _ink_column(mask, middle)
    y_top, y_bottom, y_middle = top + 0.5, bottom + 0.5, middle + 0.5
    pen = 1.6 + 1.2 * pen_draw  # stroke width in pixels, about MNIST's
    chosen = rows.any(1)
    flag = 0.25 * tall * (0.7 + 0.6 * flag_draw)
    one_flag = (x_top - flag, y_top + 0.8 * flag, x_top, y_top)
    one_foot = (x_bottom - 0.28 * tall, y_bottom, x_bottom + 0.28 * tall, y_bottom)
    seven_bar = (x_middle - 0.22 * tall, y_middle, x_middle + 0.22 * tall, y_middle)
    x_mid, y_mid = (left + right + 1).float() / 2, (top + bottom + 1).float() / 2
    zero_slash = ((right + 1).float(), top.float(), left.float(), (bottom + 1).float())
    zero_dot = (x_mid, y_mid, x_mid, y_mid)
    is_one, is_seven, is_zero = labels == 1, labels == 7, labels == 0
    slash = form < 0.6

    def pick(*choices: tuple[torch.Tensor, tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """N x 5 line ends and widths: the first choice whose condition holds, per image."""
        line = torch.stack([*choices[-1][1], pen], 1)
        for where, ends in reversed(choices[:-1]):
            line = torch.where(where[:, None], torch.stack([*ends, pen], 1), line)
        return line

    first = pick((is_one, one_flag), (is_seven, seven_bar), (slash, zero_slash), (~slash, zero_dot))
    first[:, 4] += 1.5 * (is_zero & ~slash)  # a dot is a blob, wider than a stroke
    lines = torch.stack([first, pick((is_one, one_foot), (~is_one, one_foot))], 1)
    drawn = torch.stack([chosen & (is_one | is_seven | is_zero), chosen & is_one & slash], 1)
    cover = _segments(height, width, lines) * drawn[..., None]
    ink_cover = cover.amax(1).view(n, 1, height, width).to(images.dtype)
    return torch.cat([torch.maximum(images, background + ink_cover * (ink - background)), rest])


def _ink_column(mask: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """The mean x (pixel centres) of the ink on `row` of each N x H x W mask."""
    line = mask.gather(1, row.view(-1, 1, 1).expand(-1, 1, mask.shape[2])).squeeze(1).float()
    xs = torch.arange(mask.shape[2], device=mask.device, dtype=torch.float32) + 0.5
    return (line * xs).sum(1) / line.sum(1).clamp_min(1)


def _segments(height: int, width: int, lines: torch.Tensor) -> torch.Tensor:
    """N x S x (H*W) coverage in [0, 1] of anti-aliased lines, N x S x (x0, y0, x1, y1, width)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=lines.device) + 0.5,
        torch.arange(width, device=lines.device) + 0.5,
        indexing="ij",
    )
    points = torch.stack([xs, ys], -1).view(1, 1, -1, 2)
    start, along = lines[..., None, 0:2], (lines[..., 2:4] - lines[..., 0:2])[..., None, :]
    t = ((points - start) * along).sum(-1) / (along * along).sum(-1).clamp_min(1e-6)
    distance = (points - start - t.clamp(0, 1)[..., None] * along).norm(dim=-1)
    return (lines[..., 4:5] / 2 + 0.5 - distance).clamp(0, 1)


NOISE_COLUMNS = 8  # uniform draws per image that `augment` consumes


def augment(
    images: torch.Tensor,
    labels: torch.Tensor,
    noise: torch.Tensor,
    *,
    background: float,
    ink: float,
    thickness: float,
    styles: float,
) -> torch.Tensor:
    """Style strokes, then stroke thickness, then a random affine warp, all from `noise`.

    `noise` (N x NOISE_COLUMNS, uniform in [0, 1)) is drawn by the caller, so the same
    function runs eagerly or inside a CUDA graph, whose random numbers must come from outside.
    """
    out = images
    if styles > 0:
        out = add_style_strokes(
            out, labels, background=background, ink=ink, share=styles, noise=noise[:, 0:3]
        )
    if thickness > 0:
        out = random_thickness(out, background=background, share=thickness, noise=noise[:, 3])
    return random_affine(out, background=background, noise=noise[:, 4:8])
