"""Training-time augmentation, applied to whole batches on the CPU.

The aim is generalisation across slides: a cell looks the same whichever way
up it lies (all eight flips/quarter turns plus a free rotation), and slides
differ in stain hue and intensity, illumination, focus and magnification, so
colour, gamma, blur, noise and scale are jittered a little. Every draw comes
from the torch.Generator passed in, so a run is reproducible from its seed.
"""

import math

import torch
import torch.nn.functional as F


def _u(g, n, lo, hi):
    return lo + (hi - lo) * torch.rand(n, generator=g)


def augment(x, g):
    """x: float32 [B,3,H,W] in [0,1] (before mean/std). Returns a new tensor in [0,1]."""
    b = x.shape[0]

    # Dihedral group: transpose + flips give all 8 orientations exactly.
    t = torch.rand(b, generator=g) < 0.5
    x = torch.where(t.view(b, 1, 1, 1), x.transpose(2, 3), x)
    fh = torch.rand(b, generator=g) < 0.5
    x = torch.where(fh.view(b, 1, 1, 1), x.flip(3), x)
    fv = torch.rand(b, generator=g) < 0.5
    x = torch.where(fv.view(b, 1, 1, 1), x.flip(2), x)

    # Free rotation, small zoom (magnification) and shift; reflection padding
    # keeps the plasma background instead of inventing black corners.
    ang = _u(g, b, -math.pi / 4, math.pi / 4)
    scale = _u(g, b, 0.88, 1.12)
    tx, ty = _u(g, b, -0.06, 0.06), _u(g, b, -0.06, 0.06)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # Focus: Gaussian blur on a random subset, sigma per image.
    blur = torch.rand(b, generator=g) < 0.3
    if blur.any():
        sig = _u(g, b, 0.4, 1.4)
        r = torch.arange(-3, 4, dtype=x.dtype)
        k1 = torch.exp(-(r[None, :] ** 2) / (2 * sig[:, None] ** 2))
        k1 = k1 / k1.sum(1, keepdim=True)  # [B,7]
        kx = k1.repeat_interleave(3, 0).view(b * 3, 1, 1, 7)
        ky = kx.view(b * 3, 1, 7, 1)
        y = x.reshape(1, b * 3, *x.shape[2:])
        y = F.conv2d(F.pad(y, (3, 3, 0, 0), mode="reflect"), kx, groups=b * 3)
        y = F.conv2d(F.pad(y, (0, 0, 3, 3), mode="reflect"), ky, groups=b * 3)
        x = torch.where(blur.view(b, 1, 1, 1), y.view_as(x), x)

    # Colour: per-channel gain (stain hue), brightness, contrast, saturation, gamma.
    gain = _u(g, b * 3, 0.93, 1.07).view(b, 3, 1, 1)
    bright = _u(g, b, 0.85, 1.15).view(b, 1, 1, 1)
    x = x * gain * bright
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    sat = _u(g, b, 0.8, 1.2).view(b, 1, 1, 1)
    x = grey + sat * (x - grey)
    mean = grey.mean(dim=(2, 3), keepdim=True)
    con = _u(g, b, 0.85, 1.15).view(b, 1, 1, 1)
    x = mean + con * (x - mean)
    x = x.clamp(0, 1)
    gamma = torch.exp(_u(g, b, math.log(0.8), math.log(1.25))).view(b, 1, 1, 1)
    x = x.clamp_min(1e-6) ** gamma

    # Sensor noise.
    sd = _u(g, b, 0.0, 0.02).view(b, 1, 1, 1)
    x = x + sd * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)
