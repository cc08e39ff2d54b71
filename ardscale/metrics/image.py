"""Reconstruction metrics: PSNR and SSIM (Wang et al. 2004, 11×11 Gaussian window, σ = 1.5).

Both take images ``(N, C, H, W)`` float in [0, 1] and return one value per image ``(N,)`` float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for a peak of 1; ``inf`` where x == y."""
    mse = (x.double() - y.double()).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1.0 / mse)


def _gaussian_window(size: int, sigma: float, channels: int) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity per image over valid (unpadded) windows, channels averaged.

    Raises:
        ValueError: images smaller than the window.
    """
    if min(x.shape[-2:]) < window:
        raise ValueError(f"images of {tuple(x.shape[-2:])} are smaller than the "
                         f"{window}×{window} SSIM window")
    x, y = x.double(), y.double()
    c = x.shape[1]
    w = _gaussian_window(window, sigma, c).to(x.device)
    blur = lambda t: F.conv2d(t, w, groups=c)
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3))


def per_frame_motion(videos: torch.Tensor) -> list[float]:
    """Mean absolute difference between frame j and j-1 of uint8 ``videos (N, F, H, W, 3)``, in
    uint8 levels, mean over clips and pixels: F - 1 floats, the first for frame 1."""
    v = videos.float()
    return (v[:, 1:] - v[:, :-1]).abs().mean(dim=(0, 2, 3, 4)).tolist()
