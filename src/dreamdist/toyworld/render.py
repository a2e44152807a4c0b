"""Vectorised renderer: attribute triples -> small RGB images, deterministic from a seed.

Each shape is a signed distance field evaluated on a pixel grid for the whole batch at once,
then anti-aliased and composited over a procedural grey texture. Thousands of 32 x 32 images a
second on one CPU core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dreamdist.toyworld.attributes import COLOUR_RGB, COLOURS, SHAPES, Combo, sample_combos, split_combos
from dreamdist.toyworld.captions import caption_batch


@dataclass
class Nuisance:
    """Ranges of the continuous nuisance; the defaults are what the base model is trained on."""

    radius: tuple[float, float] = (0.26, 0.36)  # shape radius, fraction of the image side
    offset: float = 0.10  # centre jitter, fraction of the side, each axis
    rotation_deg: float = 15.0  # +- rotation of the shape
    colour_gain: tuple[float, float] = (0.85, 1.08)  # brightness factor of the shape colour
    colour_shift: float = 0.04  # std of a per-channel additive shift of the shape colour
    grey: tuple[float, float] = (0.30, 0.80)  # base grey of the background
    contrast: tuple[float, float] = (0.18, 0.30)  # texture contrast
    noise: tuple[float, float] = (0.0, 0.03)  # std of per-pixel Gaussian noise


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws from U(low, high), shape (n,)."""
    return low + (high - low) * torch.rand(n, generator=generator)


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in [0, 1], each (H, W); y grows downwards."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    return xx, yy


def _star_boundary(angle: torch.Tensor, outer: float = 1.15, inner: float = 0.48) -> torch.Tensor:
    """Radius of a five-pointed star's outline along ``angle`` (tip at angle 0), any shape."""
    sector = 2 * math.pi / 5
    a = torch.remainder(angle, sector)
    a = torch.minimum(a, sector - a)  # fold to [0, sector / 2]: tip at 0, inner vertex at 36 deg
    tip = (outer, 0.0)
    vertex = (inner * math.cos(sector / 2), inner * math.sin(sector / 2))
    edge = (vertex[0] - tip[0], vertex[1] - tip[1])
    # ray r * (cos a, sin a) meets the line tip + u * edge at r = cross(tip, edge) / cross(dir, edge)
    numerator = tip[0] * edge[1] - tip[1] * edge[0]
    return numerator / (torch.cos(a) * edge[1] - torch.sin(a) * edge[0])


def shape_distance(shape: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance (negative inside) to each image's shape, in shape-radius units.

    Args:
        shape: long (N,), index into ``SHAPES``.
        px, py: (N, H, W) coordinates relative to the shape centre, rotated, divided by radius.

    Returns:
        (N, H, W) distances.
    """
    radius = torch.sqrt(px**2 + py**2)  # (N, H, W)
    d = {
        "circle": radius - 1.0,
        "square": torch.maximum(px.abs(), py.abs()) - 0.85,
        # apex-up equilateral triangle, inradius 0.6: max over the three edge half-planes
        "triangle": torch.stack(
            [py, 0.866 * px - 0.5 * py, -0.866 * px - 0.5 * py],
            dim=0,
        ).amax(0)
        - 0.6,
        "cross": torch.minimum(
            torch.maximum(px.abs() - 1.0, py.abs() - 0.34), torch.maximum(px.abs() - 0.34, py.abs() - 1.0)
        ),
        "star": 0.8 * (radius - _star_boundary(torch.atan2(px, -py))),  # tip pointing up
    }
    out = torch.empty_like(px)
    for index, name in enumerate(SHAPES):
        mask = shape == index
        out[mask] = d[name][mask]
    return out


def background_texture(
    background: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor, size: int, generator: torch.Generator
) -> torch.Tensor:
    """Texture pattern in [0, 1] (1 = the second tone) per image.

    Args:
        background: long (N,), index into ``BACKGROUNDS`` (plain, striped, checkered, dotted).
        xx, yy: (H, W) pixel-centre coordinates in [0, 1].
        size: image side in pixels (periods are set in 32-pixel units and scale with it).
        generator: torch RNG.

    Returns:
        (N, H, W) pattern.
    """
    n = background.shape[0]
    px = size / 32.0  # pixels per 32-pixel unit
    x = xx[None] * size  # (1, H, W) in pixels
    y = yy[None] * size
    phase_x = _uniform(n, 0, 64, generator)[:, None, None] * px
    phase_y = _uniform(n, 0, 64, generator)[:, None, None] * px
    soft = 0.75 * px  # edge width of the soft square waves, in pixels

    def square_wave(t: torch.Tensor, period: torch.Tensor) -> torch.Tensor:
        # 1 on the first half of each period, 0 on the second, anti-aliased: (N, H, W)
        tri = torch.abs(torch.remainder(t / period, 1.0) - 0.5) * period  # distance-like in pixels
        return torch.clamp((tri - period / 4) / soft + 0.5, 0.0, 1.0)

    # striped: any angle, period 6..9 px
    angle = _uniform(n, 0, math.pi, generator)[:, None, None]
    period = _uniform(n, 6, 9, generator)[:, None, None] * px
    along = x * torch.cos(angle) + y * torch.sin(angle) + phase_x
    striped = square_wave(along, period)
    # checkered: axis-aligned cells of 4..6 px
    cell = _uniform(n, 4, 6, generator)[:, None, None] * px
    cx = square_wave(x + phase_x, 2 * cell)
    cy = square_wave(y + phase_y, 2 * cell)
    checkered = cx * (1 - cy) + cy * (1 - cx)
    # dotted: a grid of dots, spacing 6..8 px, radius 1.3..1.9 px
    spacing = _uniform(n, 6, 8, generator)[:, None, None] * px
    dot_r = _uniform(n, 1.3, 1.9, generator)[:, None, None] * px
    dx = torch.remainder(x + phase_x, spacing) - spacing / 2
    dy = torch.remainder(y + phase_y, spacing) - spacing / 2
    dotted = torch.clamp(dot_r - torch.sqrt(dx**2 + dy**2) + 0.5, 0.0, 1.0)
    plain = torch.zeros_like(striped)
    patterns = torch.stack([plain, striped, checkered, dotted], dim=1)  # (N, 4, H, W)
    return patterns[torch.arange(n), background]  # (N, H, W)


def render_images(
    combos: torch.Tensor, size: int = 32, seed: int = 0, nuisance: Nuisance | None = None
) -> torch.Tensor:
    """Render one image per attribute triple.

    Args:
        combos: long (N, 3): colour, shape, background indices.
        size: image side in pixels (32 is the toy model's resolution).
        seed: seeds every nuisance draw; the same inputs give the same pixels.
        nuisance: ranges of the continuous nuisance (defaults: ``Nuisance()``).

    Returns:
        Float (N, 3, size, size) in [0, 1].
    """
    nu = nuisance or Nuisance()
    generator = torch.Generator().manual_seed(seed)
    n = combos.shape[0]
    colour, shape, background = combos[:, 0], combos[:, 1], combos[:, 2]
    xx, yy = _grid(size)  # (H, W)

    # shape geometry, in unit coordinates
    radius = _uniform(n, *nu.radius, generator)[:, None, None]  # (N, 1, 1)
    cx = 0.5 + _uniform(n, -nu.offset, nu.offset, generator)[:, None, None]
    cy = 0.5 + _uniform(n, -nu.offset, nu.offset, generator)[:, None, None]
    theta = torch.deg2rad(_uniform(n, -nu.rotation_deg, nu.rotation_deg, generator))[:, None, None]
    rx, ry = xx[None] - cx, yy[None] - cy  # (N, H, W)
    px = (torch.cos(theta) * rx + torch.sin(theta) * ry) / radius
    py = (-torch.sin(theta) * rx + torch.cos(theta) * ry) / radius
    distance = shape_distance(shape, px, py) * radius * size  # (N, H, W) in pixels
    alpha = torch.clamp(0.5 - distance, 0.0, 1.0)[:, None]  # (N, 1, H, W) anti-aliased coverage

    # shape colour with jitter
    base = torch.tensor([COLOUR_RGB[name] for name in COLOURS])[colour]  # (N, 3)
    gain = _uniform(n, *nu.colour_gain, generator)[:, None]
    shift = nu.colour_shift * torch.randn(n, 3, generator=generator)
    fill = torch.clamp(base * gain + shift, 0.0, 1.0)[:, :, None, None]  # (N, 3, 1, 1)

    # two-tone grey background
    grey = _uniform(n, *nu.grey, generator)
    contrast = _uniform(n, *nu.contrast, generator)
    direction = torch.where(grey > 0.55, -1.0, 1.0)  # keep the second tone inside [0, 1]
    pattern = background_texture(background, xx, yy, size, generator)  # (N, H, W)
    tone = grey[:, None, None] + direction[:, None, None] * contrast[:, None, None] * pattern
    backdrop = tone[:, None].expand(n, 3, size, size)  # (N, 3, H, W)

    image = alpha * fill + (1 - alpha) * backdrop
    noise_std = _uniform(n, *nu.noise, generator)[:, None, None, None]
    image = image + noise_std * torch.randn(n, 3, size, size, generator=generator)
    return image.clamp(0.0, 1.0)


@dataclass
class RenderedBatch:
    """Images with their ground-truth attributes and captions."""

    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    combos: torch.Tensor  # long (N, 3): colour, shape, background
    captions: list[str]


def render(
    n: int,
    seed: int = 0,
    size: int = 32,
    split: str = "all",
    combos: list[Combo] | None = None,
    caption_dropout: float = 0.0,
    nuisance: Nuisance | None = None,
) -> RenderedBatch:
    """Draw ``n`` random attribute triples, render them and caption them, all from ``seed``.

    Args:
        n: number of images.
        seed: RNG seed; equal arguments give equal outputs.
        size: image side in pixels.
        split: ``"seen"``, ``"held_out"`` or ``"all"`` combos (ignored when ``combos`` is given).
        combos: explicit list of allowed ``(colour, shape, background)`` index triples.
        caption_dropout: probability of dropping each attribute from a caption (see captions).
        nuisance: ranges of the continuous nuisance.

    Returns:
        A ``RenderedBatch`` with images (n, 3, size, size).
    """
    generator = torch.Generator().manual_seed(seed)
    drawn = sample_combos(n, combos if combos is not None else split_combos(split), generator)  # (n, 3)
    image_seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    images = render_images(drawn, size=size, seed=image_seed, nuisance=nuisance)
    captions = caption_batch(drawn, seed=image_seed + 1, dropout=caption_dropout)
    return RenderedBatch(images=images, combos=drawn, captions=captions)
