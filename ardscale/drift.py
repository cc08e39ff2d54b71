"""Continuation drift: how far a DiT's continuations of real clips wander from the real future.

The paper's claim against error accumulation (Sec. 1, Sec. 4.3): an auto-regressive generator
that continues a video frame by frame drifts away from it. Here the first ``context`` frames of
held-out clips longer than the training length (e.g. 24 frames against 8) are encoded by the
AR-VAE, the DiT generates the rest with the AD scheduler (sliding window of the training length),
and each result is measured per frame index against the real clip:

- ``psnr``: PSNR of generated frame j against real frame j, mean over clips (dB; pixel fidelity
  to the real future, which an ideal generator need not reach far from the context);
- ``fvd_local``: the local network's Fréchet distance between the windows of training length
  ending at frame j and the real held-out clips of the run (realism, whatever the future);
- ``fvd16`` (with a :class:`~ardscale.metrics.fvd.StandardReference` of 16-frame real clips): the
  standard FVD16 of each successive, non-overlapping 16-frame window (frames 0-15, 16-31, …);
- ``motion``: the mean absolute difference between frame j and frame j-1 (uint8 levels), beside
  the real clips' own (``real_motion``), and ``motion_vs_real``, the ratio of the two means over
  the generated frames: 1 moves like real video, above 1 too much (flicker, jumps), below too
  little (a frozen or blurred continuation).

Two references bound each curve: ``recon`` (the real clips through the AR-VAE: what the decoder
allows) and ``frozen`` (the last context frame repeated: a generator that stops moving).

:func:`next_frame` looks at the first generated frame alone, where drift starts: the DiT's one-step
x0 prediction of it from the real next frame noised to a given level, and the sampler's frame,
each against the real next frame and the last context frame, with the clip's own context and
with another clip's (is the context used, and does the frame move like real video?).
"""
from __future__ import annotations

import sys
from dataclasses import replace

import torch
from tqdm import tqdm

from .config import SampleConfig
from .data.transforms import to_model_range, to_unit
from .diffusion.sampler import sample
from .diffusion.schedule import make_diffusion
from .metrics import frechet_distance, per_frame_motion, psnr
from .metrics.fvd import StandardReference
from .metrics.local import LocalFeatures
from .runs import RunData


def encode_clips(data: RunData, clips: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """uint8 clips ``(N, F, H, W, 3)`` → DiT-space latents ``(N, F, L, D)`` (``scale_factor · z``,
    the scale checked: :meth:`~ardscale.runs.RunData.to_dit`)."""
    with torch.no_grad():
        z = torch.cat([data.vae.encode(to_model_range(c)) for c in clips.split(batch_size)])
    return data.to_dit(z, "the run's AR-VAE encoding")


@torch.no_grad()
def continue_clips(dit, data: RunData, clips: torch.Tensor, labels: torch.Tensor, context: int,
                   sc: SampleConfig, batch_size: int = 16) -> torch.Tensor:
    """Continue the first ``context`` frames of uint8 ``clips (N, F, H, W, 3)`` to F frames with
    the sampling settings ``sc`` (its ``frames`` is F; ``window`` 0 = the training length). The
    AR-VAE decodes with a window of the training length whatever the DiT's, so sets sampled with
    other DiT windows differ only in their latents.

    Returns uint8 ``(N, F, H, W, 3)``; its first ``context`` frames are the AR-VAE's reconstructions.
    Raises:
        ValueError: ``context >= F`` (nothing to generate), or a window too small for ``sc.s``.
    """
    sc = data.resolve(replace(sc, frames=clips.shape[1]))
    diffusion, gen = make_diffusion(data.cfg.diffusion), torch.Generator().manual_seed(sc.seed)
    out = []
    for c, y in tqdm(list(zip(clips.split(batch_size), labels.split(batch_size))),
                     desc=f"continuing (s={sc.s})", file=sys.stderr):
        ctx = encode_clips(data, c[:, :context])
        z = sample(dit, diffusion, y, sc, generator=gen, context=ctx)
        out.append(torch.from_numpy(data.decode(z, data.num_frames)))
    return torch.cat(out)


NEXT_FRAME_LEVELS = (999, 900, 700, 500)   # DDPM indices of the one-step x0 predictions


@torch.no_grad()
def next_frame(dit, data: RunData, clips: torch.Tensor, labels: torch.Tensor, context: int, sc: SampleConfig,
               levels: tuple[int, ...] = NEXT_FRAME_LEVELS) -> dict:
    """How the first generated frame (index ``context``) of uint8 ``clips (N, F, H, W, 3)`` relates to
    the real one. Every frame is compared in pixels after the AR-VAE (the real frames through
    encode → decode, so the decoder's blur is on both sides), PSNR in dB:

    - ``real_next_vs_last``: the real next frame against the last context frame (real motion);
    - ``x0@t`` for each DDPM index t of ``levels``: the DiT's x0 prediction of the next frame from
      the real next frame noised to t (one call, the context as the sampler feeds it: clean at
      index 0, or noised to ``sc.context_noise``; CFG ``sc.cfg_scale``);
    - ``sampled``: the sampler's next frame (``sc`` with ``frames = context + 1``);
    - each of these also with the context of another clip (the batch rolled by one: ``…/swapped``).
    Each entry holds ``vs_real`` (against the clip's real next frame) and ``vs_last`` (against the
    last frame of the context it was given), means over the N clips.

    Raises:
        ValueError: ``context`` < 1 or ≥ F.
    """
    if not 1 <= context < clips.shape[1]:
        raise ValueError(f"context={context}: need 1 ≤ context < {clips.shape[1]} frames")
    z = encode_clips(data, clips[:, :context + 1])                       # (N, k+1, L, D), DiT scale
    recon = to_unit(torch.from_numpy(data.decode(z)))                    # (N, k+1, 3, H, W) in [0, 1]
    real, last = recon[:, context], recon[:, context - 1]
    diffusion, gen = make_diffusion(data.cfg.diffusion), torch.Generator().manual_seed(sc.seed)
    out = {"real_next_vs_last": psnr(real, last).mean().item()}
    swapped = z[:, :context].roll(1, dims=0)
    for tag, ctx, ctx_last in (("", z[:, :context], last), ("/swapped", swapped, last.roll(1, dims=0))):
        preds = {f"x0@{t}": _one_step_x0(dit, diffusion, ctx, z[:, context], labels, t, sc.cfg_scale, gen,
                                         sc.context_noise) for t in levels}
        preds["sampled"] = sample(dit, diffusion, labels, replace(sc, frames=context + 1, window=0),
                                  generator=gen, context=ctx)[:, context]
        for name, frame in preds.items():
            pixels = to_unit(torch.from_numpy(data.decode(torch.cat([ctx, frame[:, None]], dim=1))))[:, -1]
            out[name + tag] = {"vs_real": psnr(pixels, real).mean().item(),
                               "vs_last": psnr(pixels, ctx_last).mean().item()}
    return out


def _one_step_x0(dit, diffusion, ctx: torch.Tensor, x0: torch.Tensor, labels, t: int, cfg_scale: float,
                 gen: torch.Generator, context_noise: int = 0) -> torch.Tensor:
    """The DiT's x0 ``(N, L, D)`` for a frame ``x0 (N, L, D)`` noised to DDPM index ``t`` after the
    clean frames ``ctx (N, k, L, D)``, with classifier-free guidance ``cfg_scale``; the context is
    fed as the sampler feeds it (noised to ``context_noise`` when > 0, see ``sample.context_noise``)."""
    n, k = ctx.shape[:2]
    steps = torch.tensor([[context_noise] * k + [t]]).expand(n, -1)
    noisy = diffusion.q_sample(x0[:, None], steps[:, -1:], torch.randn(x0[:, None].shape, generator=gen))
    if context_noise:
        ctx = diffusion.q_sample(ctx, steps[:, :k], torch.randn(ctx.shape, generator=gen))
    x = torch.cat([ctx, noisy], dim=1)
    if cfg_scale == 1.0:
        out = dit(x, steps, labels)
    else:
        cond, uncond = dit(torch.cat([x, x]), torch.cat([steps, steps]), dit.with_null(labels)).chunk(2)
        out = uncond + cfg_scale * (cond - uncond)
    return diffusion.to_x0(out, x, steps)[:, -1]


def reconstruct_long(data: RunData, clips: torch.Tensor, window: int) -> torch.Tensor:
    """The ``recon`` reference: uint8 clips through the run's AR-VAE (decoder window of training length)."""
    z = encode_clips(data, clips)
    return torch.from_numpy(data.decode(z, window))


def frozen(videos: torch.Tensor, context: int) -> torch.Tensor:
    """The ``frozen`` reference: frame ``context - 1`` of uint8 ``videos`` repeated after the context."""
    out = videos.clone()
    out[:, context:] = videos[:, context - 1:context]
    return out


def per_frame_psnr(fake: torch.Tensor, real: torch.Tensor) -> list[float]:
    """PSNR (dB, peak 1) of uint8 ``fake`` against ``real`` ``(N, F, H, W, 3)`` at each frame index,
    mean over the N clips: a list of F floats."""
    a, b = to_unit(fake), to_unit(real)                           # (N, F, 3, H, W)
    return [psnr(a[:, j], b[:, j]).mean().item() for j in range(fake.shape[1])]


def motion_vs_real(fake: list[float], real: list[float], context: int) -> float:
    """Mean of ``fake``'s :func:`per_frame_motion` over the generated frames (from frame
    ``context`` on) divided by the same mean of ``real``'s (inf when the real clips stand still)."""
    gen = slice(max(context - 1, 0), None)   # motion index j-1 is frame j
    f, r = sum(fake[gen]) / len(fake[gen]), sum(real[gen]) / len(real[gen])
    return f / r if r > 0 else float("inf")


def window_fvd(local: LocalFeatures, real_feats: torch.Tensor, videos: torch.Tensor,
               window: int) -> list[float]:
    """``fvd_local`` of each window ``videos[:, j-window+1 : j+1]`` against ``real_feats (M, C)``
    (the local net's video features of real clips of length ``window``): F - window + 1 floats,
    the first for the window ending at frame ``window - 1``."""
    out = []
    for start in range(videos.shape[1] - window + 1):
        feats, _ = local(videos[:, start:start + window])
        out.append(frechet_distance(real_feats, feats))
    return out


def successive_fvd(ref: StandardReference, videos: torch.Tensor) -> list[float]:
    """The standard FVD (``ref.frames`` = T frames, e.g. FVD16) of each successive non-overlapping
    window ``videos[:, iT:(i+1)T]`` of uint8 ``videos (N, F, H, W, 3)``: F // T floats."""
    t = ref.frames
    windows = range(videos.shape[1] // t)
    return [ref.compare(videos[:, i * t:(i + 1) * t], fid=False)[f"fvd{t}"] for i in windows]


def measure(videos: dict[str, torch.Tensor], real: torch.Tensor, local: LocalFeatures,
            real_feats: torch.Tensor, window: int, standard: StandardReference | None = None,
            context: int = 1) -> dict:
    """Per-frame ``psnr``, ``motion`` and ``motion_vs_real`` (after the ``context`` given frames),
    and per-window ``fvd_local`` of each named uint8 video set ``(N, F, H, W, 3)`` against the real
    long clips ``real`` (same shape) and the real training-length features; with ``standard``,
    ``fvd16`` of successive 16-frame windows too (:func:`successive_fvd`). The real clips' own
    motion is under the key ``real_motion`` of every set."""
    real_motion = per_frame_motion(real)
    out = {}
    for name, v in videos.items():
        motion = per_frame_motion(v)
        out[name] = {"psnr": per_frame_psnr(v, real), "fvd_local": window_fvd(local, real_feats, v, window),
                     "motion": motion, "real_motion": real_motion,
                     "motion_vs_real": motion_vs_real(motion, real_motion, context)}
    if standard is not None:
        for name, v in videos.items():
            out[name][f"fvd{standard.frames}"] = successive_fvd(standard, v)
    return out
