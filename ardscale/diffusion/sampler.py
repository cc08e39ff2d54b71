"""AR-Diffusion sampling loop (paper Sec. 3.2 inference, Sec. 3.4 AD scheduler).

Each iteration: predict x0 with the DiT at the current composition, then re-corrupt it to the
next composition with a DDIM step (Eq. 4 when eta = 1). Frames whose timestep does not change
keep their latents (the paper's mask) and are not computed:

- frames after the last changing frame are skipped (block-causal: nothing before reads them);
- clean frames enter a :class:`~ardscale.models.dit.KVCache` once, with their final latents, and
  are never recomputed;
- ``context`` gives clean first frames (video continuation);
- ``window`` caps the frames the DiT sees at once, so videos longer than the training length
  slide a window over frames (first in, first out; positions restart at the window's start).
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from ..config import SampleConfig
from ..models.dit import KVCache
from .ad import ad_timesteps, ddim_grid
from .schedule import GaussianDiffusion


def composition_rows(num_frames: int, num_steps: int, s: int, num_context: int = 0) -> torch.Tensor:
    """AD compositions ``(I, F)`` as DDIM step indices, with ``num_context`` clean (0) first frames."""
    rows = ad_timesteps(num_frames - num_context, num_steps, s)
    return torch.cat([rows.new_zeros(rows.shape[0], num_context), rows], dim=1)


def frames_in_flight(num_frames: int, num_steps: int, s: int, num_context: int = 0) -> int:
    """The most frames that one AD iteration moves at once (first to last changing frame): a
    sliding window must hold at least this many (about N/s for 0 < s < N)."""
    rows = composition_rows(num_frames, num_steps, s, num_context)
    moving = rows[:-1] != rows[1:]                                           # (I-1, F)
    idx = torch.arange(num_frames).expand_as(moving)
    first = torch.where(moving, idx, num_frames).min(1).values
    last = torch.where(moving, idx, -1).max(1).values
    return int((last - first + 1).max())


def _window_start(start: int, first_changing: int, end: int, window: int | None) -> int:
    """Move the window start forward just enough that frames ``start … end-1`` fit ``window``."""
    if window is None or end - start <= window:
        return start
    if end - first_changing > window:
        raise ValueError(f"{end - first_changing} frames are denoised at once but window={window}: "
                         f"raise s (AD keeps about N/s frames in flight) or the window")
    return end - window


@torch.no_grad()
def sample(model, diffusion: GaussianDiffusion, labels, sc: SampleConfig,
           generator: torch.Generator | None = None, progress: bool = False,
           context: torch.Tensor | None = None) -> torch.Tensor:
    """Generate latents ``(B, F, L, D)`` (in the DiT's scaled latent space) with the settings ``sc``.

    Args:
        model: a DiT; ``model.config`` gives L, D and the null class for CFG.
        labels: ``(B,)`` long class labels, or a :class:`~ardscale.models.dit.TextCondition`
            (text DiT: encoded prompts; CFG then guides against the null caption).
        sc: ``frames`` F (> 0: total frames including ``context``; a run's
            :meth:`~ardscale.runs.RunData.resolve` fills 0 with the training length), ``steps``
            N, ``s`` (0 = synchronous, ≥ N = auto-regressive), ``cfg_scale`` w (1 = one model call
            per step), ``eta`` (0 = DDIM, 1 = DDPM posterior noise), ``window`` (most frames per DiT
            call, e.g. the training length; 0 = no limit), ``kv_cache`` (reuse keys/values of
            finished frames: same result within float tolerance; off for a bidirectional DiT,
            ``config.causal=False``, which is fed every frame every step), ``clip_x0`` (clamp x0
            estimates to ``[-clip_x0, clip_x0]``; 0 = off).
        generator: CPU generator for the initial noise and the eta > 0 noise (drawn for the full
            video every iteration, so cached and uncached runs see the same noise); default: one
            seeded with ``sc.seed``.
        context: ``(B, k, L, D)`` clean latents of the first k frames (video continuation).
    Raises:
        ValueError: ``sc.frames`` ≤ 0, context longer than the video, a window too small for s
            (see above), or a bidirectional DiT asked for more frames than its window.
    """
    num_frames, num_steps, s, cfg_scale, eta = sc.frames, sc.steps, sc.s, sc.cfg_scale, sc.eta
    window, kv_cache, clip_x0 = sc.window or None, sc.kv_cache, sc.clip_x0
    if num_frames <= 0:
        raise ValueError(f"frames={num_frames}: resolve the SampleConfig against its run first "
                         "(RunData.resolve)")
    if generator is None:
        generator = torch.Generator().manual_seed(sc.seed)
    c = model.config
    if not c.causal:   # bidirectional (ablation): every frame reads every frame, at every step
        if window is not None and num_frames > window:
            raise ValueError(f"a bidirectional DiT generates at most window={window} frames, "
                             f"not {num_frames}")
        kv_cache = False
    device = next(model.parameters()).device
    B = len(labels)
    k = 0 if context is None else context.shape[1]
    if k >= num_frames:
        raise ValueError(f"context has {k} frames; num_frames={num_frames} leaves none to generate")
    # (B, F, L, D)
    x = torch.randn(B, num_frames, c.tokens_per_frame, c.latent_dim, generator=generator).to(device)
    if k:
        x[:, :k] = context.to(device, x.dtype)
    grid = ddim_grid(num_steps, diffusion.num_timesteps)   # index bookkeeping stays on the CPU
    rows = composition_rows(num_frames, num_steps, s, k)   # (R, F) DDIM indices per frame; 0 = clean
    guided = cfg_scale != 1.0
    y = (model.with_null(labels) if guided else labels).to(device)   # B or 2B conditions
    start, cache = 0, KVCache()
    for i in tqdm(range(len(rows) - 1), desc="sampling", disable=not progress):
        cur, nxt = rows[i], rows[i + 1]
        changing = (cur != nxt).nonzero().flatten()                  # frames this iteration moves
        noise = torch.randn(x.shape, generator=generator).to(device) if eta > 0 else None
        end = int(changing[-1]) + 1 if c.causal else num_frames
        new_start = _window_start(start, int(changing[0]), end, window)
        if new_start != start:
            start, cache = new_start, KVCache()   # positions shift with the window: cache is stale
        lo = start + (cache.num_frames if kv_cache else 0)
        clean = int((cur[lo:end] == 0).cumprod(0).sum())  # clean frames lead the input (rows non-decreasing)
        t = grid[cur[lo:end]].to(device).expand(B, -1)                 # (B, n) with n = end - lo
        t_next = grid[nxt[lo:end]].to(device).expand(B, -1)
        x_in, t_in = x[:, lo:end], t.clamp(min=0)   # clean frames enter at the least-noisy index
        if guided:
            x_in, t_in = torch.cat([x_in, x_in]), torch.cat([t_in, t_in])
        # (B or 2B, n, L, D)
        out = model(x_in, t_in, y, cache if kv_cache else None, clean if kv_cache else 0)
        if guided:
            cond, uncond = out.chunk(2)
            out = uncond + cfg_scale * (cond - uncond)
        x0 = diffusion.to_x0(out, x[:, lo:end], t, clip_x0)
        x[:, lo:end] = diffusion.ddim_step(x[:, lo:end], x0, t, t_next, eta,
                                           None if noise is None else noise[:, lo:end])
    return x
