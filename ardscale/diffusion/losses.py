"""The DiT's training loss (paper Sec. 3.2-3.3): pure, as DiT's ``training_losses``.

The caller draws the per-frame timesteps (FoPP, Alg. 1), the noise and the CFG label-dropout
mask, and runs backward and the optimizer step; :func:`dit_loss` only computes.
"""
from __future__ import annotations

import torch

from .schedule import GaussianDiffusion

NUM_BUCKETS = 10   # the DiT loss is also logged per tenth of the timestep range


def dit_loss(model, diffusion: GaussianDiffusion, x0: torch.Tensor, y, t: torch.Tensor,
             noise: torch.Tensor, drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE between the DiT's output on ``q_sample(x0, t, noise)`` and the target of
    ``diffusion.prediction`` (x0 as in the paper; eps / v for the ablation).

    Args:
        x0: ``(B, F, L, D)`` float clean latents in the DiT's scale (``scale_factor · z``).
        y: ``(B,)`` long labels, or a :class:`~ardscale.models.dit.TextCondition` (text DiT).
        t: ``(B, F)`` long per-frame timesteps. noise: like x0.
        drop: ``(B,)`` bool, labels (captions) replaced by the null class (caption): CFG training.
    All tensors on the model's device; the DiT casts its input to its own dtype.
    Returns:
        the loss (scalar, float32) and the detached per-frame MSE ``(B, F)``.
    """
    x_t = diffusion.q_sample(x0, t, noise)
    err = (model(x_t, t, y, drop=drop).float() - diffusion.target(x0, noise, t)).pow(2)
    return err.mean(), err.detach().mean(dim=(2, 3))


def bucket_losses(per_frame: torch.Tensor, t: torch.Tensor, num_timesteps: int) -> dict:
    """Sums and counts of per-frame losses ``(B, F)`` in NUM_BUCKETS equal timestep ranges (CPU)."""
    b = (t.cpu() * NUM_BUCKETS // num_timesteps).flatten()
    return {"bucket_sum": torch.zeros(NUM_BUCKETS).index_add_(0, b, per_frame.cpu().flatten().float()),
            "bucket_count": torch.bincount(b, minlength=NUM_BUCKETS).float()}
