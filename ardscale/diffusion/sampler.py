"""AR-Diffusion sampling loop (paper Sec. 3.2 inference, Sec. 3.4 AD scheduler).

Each iteration: predict x0 with the DiT at the current composition, then re-corrupt it to the
next composition with a DDIM step; frames whose timestep does not change are kept as they are.
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from .ad import ad_timesteps, ddim_grid
from .schedule import GaussianDiffusion


@torch.no_grad()
def sample(model, diffusion: GaussianDiffusion, labels: torch.Tensor, num_frames: int,
           num_steps: int = 50, s: int = 0, cfg_scale: float = 1.0, eta: float = 0.0,
           generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Generate latents ``(B, F, L, D)`` (in the DiT's scaled latent space).

    Args:
        model: a DiT; ``model.config`` gives L, D and the null class for CFG.
        labels: ``(B,)`` long class labels.
        num_steps: DDIM steps N. s: AD timestep difference (0 = synchronous, ≥ N = auto-regressive).
        cfg_scale: classifier-free guidance weight w; 1 disables CFG (one model call per step).
        generator: CPU generator for the initial noise (and eta > 0 noise).
    """
    c = model.config
    device = next(model.parameters()).device
    B = labels.shape[0]
    x = torch.randn(B, num_frames, c.tokens_per_frame, c.latent_dim, generator=generator).to(device)
    grid = ddim_grid(num_steps, diffusion.num_timesteps).to(device)
    rows = ad_timesteps(num_frames, num_steps, s).to(device)
    null = torch.full_like(labels, c.num_classes)
    for i in tqdm(range(len(rows) - 1), desc="sampling", disable=not progress):
        t, t_next = grid[rows[i]].expand(B, -1), grid[rows[i + 1]].expand(B, -1)
        t_in = t.clamp(min=0)  # clean context frames enter at the least-noisy index
        if cfg_scale == 1.0:
            x0 = model(x, t_in, labels)
        else:
            both = model(torch.cat([x, x]), torch.cat([t_in, t_in]), torch.cat([labels, null]))
            cond, uncond = both.chunk(2)
            x0 = uncond + cfg_scale * (cond - uncond)
        noise = torch.randn(x.shape, generator=generator).to(device) if eta > 0 else None
        x = diffusion.ddim_step(x, x0, t, t_next, eta=eta, noise=noise)
    return x
