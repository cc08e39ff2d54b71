"""Per-frame Gaussian diffusion (paper Sec. 3.2, Eq. 1-4).

Every function takes timesteps of shape ``(B, F)``: one DDPM index per frame, ``0 … T-1``
(the paper's ``t = index + 1``). Latents are ``(B, F, L, D)``.
"""
from __future__ import annotations

import math

import torch


def make_betas(schedule: str, num_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Noise schedule ``betas`` ``(T,)`` float64.

    ``linear``: DDPM linspace; ``scaled_linear``: linspace in sqrt space (LDM);
    ``cosine``: Nichol & Dhariwal (beta_start/end ignored).

    Raises:
        ValueError: unknown schedule name.
    """
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    if schedule == "cosine":
        s = 0.008
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown beta schedule {schedule!r}: expected linear, scaled_linear or cosine")


class GaussianDiffusion:
    """Holds ``alphas_cumprod`` and applies Eq. 2-4 frame by frame.

    Args:
        num_timesteps: T (paper: 1000).
        schedule, beta_start, beta_end: see :func:`make_betas`. Table 6 of the paper prints a
            linear end of 0.002, which leaves ``alphas_cumprod[T-1] ≈ 0.35`` (not pure noise,
            so sampling from N(0, I) would be off-distribution); the default is DDPM's 0.02.
    """

    def __init__(self, num_timesteps: int = 1000, schedule: str = "linear",
                 beta_start: float = 1e-4, beta_end: float = 2e-2):
        self.num_timesteps = num_timesteps
        self.betas = make_betas(schedule, num_timesteps, beta_start, beta_end)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``alphas_cumprod`` at ``t`` ``(B, F)`` broadcast to ``like`` ``(B, F, L, D)``; index -1 = clean."""
        abar = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod]).to(like.device)
        return abar[t + 1].to(like.dtype)[:, :, None, None]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Corrupt clean latents, Eq. 3 in its correct form ``sqrt(ᾱ)x0 + sqrt(1-ᾱ)ε``.

        The paper prints ``(1-ᾱ)ε``; the variance of Eq. 2 requires the square root.

        Args:
            x0: ``(B, F, L, D)`` clean latents. t: ``(B, F)`` long DDPM indices; -1 means clean.
            noise: ``(B, F, L, D)`` standard normal.
        """
        abar = self._abar(t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def ddim_step(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
                  eta: float = 0.0, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Re-corrupt an x0 prediction from ``t`` to the less noisy ``t_next`` (DDIM; Eq. 4 when eta=1).

        Args:
            x_t: ``(B, F, L, D)`` current latents at ``t`` ``(B, F)``.
            x0: ``(B, F, L, D)`` model prediction of the clean latents.
            t_next: ``(B, F)`` target indices, ``-1`` = clean (then x0 is returned for that frame).
            eta: 0 = deterministic DDIM, 1 = DDPM posterior variance.
        Frames with ``t_next == t`` are returned unchanged (the paper's frozen-frame mask).
        """
        abar_t, abar_n = self._abar(t, x_t), self._abar(t_next, x_t)
        eps = (x_t - abar_t.sqrt() * x0) / (1 - abar_t).sqrt().clamp(min=1e-12)
        sigma = eta * ((1 - abar_n) / (1 - abar_t).clamp(min=1e-12) * (1 - abar_t / abar_n)).clamp(min=0).sqrt()
        out = abar_n.sqrt() * x0 + (1 - abar_n - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            out = out + sigma * (torch.randn_like(x_t) if noise is None else noise)
        frozen = (t_next == t)[:, :, None, None]
        return torch.where(frozen, x_t, out)
