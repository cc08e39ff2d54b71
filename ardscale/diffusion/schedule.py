"""Per-frame Gaussian diffusion (paper Sec. 3.2, Eq. 1-4).

Every function takes timesteps of shape ``(B, F)``: one DDPM index per frame, ``0 … T-1``
(the paper's ``t = index + 1``). Latents are ``(B, F, L, D)``.
"""
from __future__ import annotations

import copy
import math

import torch


def make_betas(schedule: str, num_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Noise schedule ``betas`` ``(T,)`` float64.

    ``scaled_linear``: linspace in sqrt space, ``betas = linspace(√start, √end)²``. This is what
    LDM and the official AR-Diffusion code call "linear" (``LatentDiffusion`` with
    ``linear_start=1e-4, linear_end=0.02``), and the default; the name is diffusers'.
    ``linear``: DDPM's plain linspace (ᾱ at t=500 is 0.078 against 0.331 above: far noisier).
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


PREDICTIONS = ("x0", "eps", "v")


class GaussianDiffusion:
    """Holds ``alphas_cumprod`` and applies Eq. 1-4 frame by frame.

    Timesteps ``t`` are ``(B, F)`` long DDPM indices; ``-1`` means clean (``ᾱ = 1``), which the
    sampler uses for finished frames. Tensors are ``(B, F, L, D)``; results keep their dtype.

    Args:
        num_timesteps: T (paper: 1000).
        schedule, beta_start, beta_end: see :func:`make_betas`; the default is the official
            code's LDM schedule from 1e-4 to 0.02. Table 6 of the paper prints an end of 0.002,
            which no official config uses and which leaves ``alphas_cumprod[T-1]`` far from 0
            (sampling from N(0, I) would be off-distribution).
        prediction: what the network outputs: ``x0`` (the paper, Sec. 3.2), ``eps`` or ``v``
            (Salimans & Ho). :meth:`target` and :meth:`to_x0` convert.
    Raises:
        ValueError: unknown schedule or prediction type.
    """

    def __init__(self, num_timesteps: int = 1000, schedule: str = "scaled_linear",
                 beta_start: float = 1e-4, beta_end: float = 2e-2, prediction: str = "x0"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}: expected one of {PREDICTIONS}")
        self.num_timesteps = num_timesteps
        self.prediction = prediction
        self.betas = make_betas(schedule, num_timesteps, beta_start, beta_end)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self._abar_ext = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod])

    def to(self, device) -> GaussianDiffusion:
        """This schedule with its tables on ``device`` (a copy; self if already there): a compiled
        sampler step then reads them without a host-to-device copy, which CUDA graphs cannot hold."""
        if self._abar_ext.device == torch.device(device):
            return self
        moved = copy.copy(self)
        moved.betas, moved.alphas_cumprod, moved._abar_ext = (
            v.to(device) for v in (self.betas, self.alphas_cumprod, self._abar_ext))
        return moved

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``alphas_cumprod`` at ``t`` ``(B, F)`` broadcast to ``like`` ``(B, F, L, D)``; index -1 = clean."""
        return self._abar_ext.to(like.device)[t + 1].to(like.dtype)[:, :, None, None]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Corrupt clean latents, Eq. 3 in its correct form ``sqrt(ᾱ)x0 + sqrt(1-ᾱ)ε``.

        The paper prints ``(1-ᾱ)ε``; the variance of Eq. 2 requires the square root.

        Args:
            x0: ``(B, F, L, D)`` clean latents. t: ``(B, F)`` long DDPM indices; -1 means clean.
            noise: ``(B, F, L, D)`` standard normal.
        """
        abar = self._abar(t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                    t_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``q(x_{t_prev} | x_t, x0)`` for any ``t_prev < t`` (Eq. 4).

        With ``t_prev = t - 1`` this is DDPM's posterior; a larger gap is the same formula with
        ``α_{t|t_prev} = ᾱ_t / ᾱ_{t_prev}`` (the strided DDIM grid).

        Returns:
            mean ``(B, F, L, D)`` and variance ``(B, F, 1, 1)``.
        """
        abar_t, abar_p = self._abar(t, x_t), self._abar(t_prev, x_t)
        beta = 1 - abar_t / abar_p
        denom = (1 - abar_t).clamp(min=1e-12)
        mean = abar_p.sqrt() * beta / denom * x0 + (abar_t / abar_p).sqrt() * (1 - abar_p) / denom * x_t
        return mean, (1 - abar_p) / denom * beta

    # -- conversions between x0, eps and v at timestep t ------------------------------------
    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """``ε = (x_t - sqrt(ᾱ)x0) / sqrt(1-ᾱ)``; 0 for clean frames (t = -1)."""
        abar = self._abar(t, x_t)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt().clamp(min=1e-12)

    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x0 = (x_t - sqrt(1-ᾱ)ε) / sqrt(ᾱ)``."""
        abar = self._abar(t, x_t)
        return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()

    def v_from(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``v = sqrt(ᾱ)ε - sqrt(1-ᾱ)x0``."""
        abar = self._abar(t, x0)
        return abar.sqrt() * eps - (1 - abar).sqrt() * x0

    def x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``x0 = sqrt(ᾱ)x_t - sqrt(1-ᾱ)v``."""
        abar = self._abar(t, x_t)
        return abar.sqrt() * x_t - (1 - abar).sqrt() * v

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target for ``self.prediction`` given the clean latents and the noise."""
        if self.prediction == "x0":
            return x0
        return noise if self.prediction == "eps" else self.v_from(x0, noise, t)

    def to_x0(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip: float = 0.0) -> torch.Tensor:
        """The network output (``self.prediction``) as an x0 estimate, clamped to ``[-clip, clip]``
        when ``clip > 0`` (DDPM's ``clip_denoised``, with a bound for the scaled latent range)."""
        if self.prediction == "eps":
            out = self.x0_from_eps(x_t, t, out)
        elif self.prediction == "v":
            out = self.x0_from_v(x_t, t, out)
        return out.clamp(-clip, clip) if clip > 0 else out

    def ddim_step(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
                  eta: float = 0.0, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Re-corrupt an x0 prediction from ``t`` to the less noisy ``t_next`` (DDIM; eta=1 samples
        the posterior of Eq. 4, see :meth:`q_posterior`).

        Args:
            x_t: ``(B, F, L, D)`` current latents at ``t`` ``(B, F)``.
            x0: ``(B, F, L, D)`` x0 estimate (see :meth:`to_x0`).
            t_next: ``(B, F)`` target indices, ``-1`` = clean (then x0 is returned for that frame).
            eta: 0 = deterministic DDIM, 1 = DDPM posterior variance.
            noise: ``(B, F, L, D)`` standard normal for eta > 0 (default: ``randn_like``).
        Frames with ``t_next == t`` are returned unchanged (the paper's frozen-frame mask).
        """
        abar_t, abar_n = self._abar(t, x_t), self._abar(t_next, x_t)
        eps = self.eps_from_x0(x_t, t, x0)
        var = (1 - abar_n) / (1 - abar_t).clamp(min=1e-12) * (1 - abar_t / abar_n)
        sigma = eta * var.clamp(min=0).sqrt()
        out = abar_n.sqrt() * x0 + (1 - abar_n - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            out = out + sigma * (torch.randn_like(x_t) if noise is None else noise)
        frozen = (t_next == t)[:, :, None, None]
        return torch.where(frozen, x_t, out)


def make_diffusion(c) -> GaussianDiffusion:
    """The :class:`GaussianDiffusion` of a ``diffusion`` config section (``num_timesteps``,
    ``beta_schedule``, ``beta_start``, ``beta_end``, ``prediction``)."""
    return GaussianDiffusion(c.num_timesteps, c.beta_schedule, c.beta_start, c.beta_end, c.prediction)

