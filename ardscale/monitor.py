"""What rank 0 shows of a run while it trains, logged to MLflow next to the losses: hooks the
:class:`~ardscale.train.Trainer` calls after a step when their :meth:`Hook.should_run` says so.

- AR-VAE runs: PSNR/SSIM on held-out clips and a real | reconstruction video
  (``train.eval_every``, and at the end).
- DiT runs: a grid of sampled videos, decoded by the VAE that made the latents
  (``train.sample_every``, and at the end when it is set), and ``fvd_local`` / ``fid_local`` /
  ``class_accuracy`` of ``eval.per_class`` videos per held-out class, or for a text DiT of one
  video per held-out caption (``eval.prompts``) (``train.eval_every``, and at the end), both from
  the EMA weights when kept.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .config import Config, SampleConfig
from .data.loader import load_video_clips
from .data.transforms import to_model_range, to_unit
from .data.video import encode_mp4, video_grid, write_gif, write_grid
from .diffusion.sampler import sample
from .diffusion.schedule import make_diffusion
from .engine import checkpoint
from .engine.tracking import Tracker
from .evaluate import Reference, dit_conditions, generate_videos, held_out
from .metrics import psnr, ssim
from .models.arvae import ARVAE
from .models.dit import DiT
from .runs import RunData

log = logging.getLogger("ardscale.monitor")


class Hook:
    """Runs every ``every`` global steps (0 = never) and after the last step (``at_end``)."""

    every: int = 0
    at_end: bool = True

    def should_run(self, step: int, last: bool) -> bool:
        """``step``: finished global steps (1-based); ``last``: the run stops after this step."""
        return bool(self.every) and (step % self.every == 0 or (last and self.at_end))

    def __call__(self, module, step: int) -> dict:
        raise NotImplementedError


@torch.no_grad()
def reconstruction_report(model: ARVAE, videos: torch.Tensor, out_dir, fps: float = 8.0) -> dict:
    """PSNR/SSIM of reconstructions of held-out clips ``(N, F, H, W, 3)`` uint8, and a
    side-by-side video (real | reconstruction, 4 clips) written to ``out_dir/recon.{mp4,gif}``.

    Returns:
        ``{"val/psnr": dB, "val/ssim": …, "val/psnr_frame0": dB}``, means over clips and frames.
    """
    model.eval()
    device = next(model.parameters()).device
    recs = [model(to_model_range(v).to(device)).float().cpu() for v in videos.split(8)]
    rec = ((torch.cat(recs).clamp(-1, 1) + 1) / 2).flatten(0, 1)             # (N*F, 3, H, W) in [0, 1]
    real = to_unit(videos).flatten(0, 1)
    p, s = psnr(rec, real), ssim(rec, real)
    N, Fr = videos.shape[:2]
    rec_u8 = (rec * 255).round().byte().view(N, Fr, *rec.shape[1:]).permute(0, 1, 3, 4, 2).numpy()
    pairs = np.stack([x for i in range(min(4, N)) for x in (videos[i].numpy(), rec_u8[i])])
    grid = video_grid(pairs, cols=2)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "recon.mp4").write_bytes(encode_mp4(grid, fps))
    write_gif(str(out_dir / "recon.gif"), grid, fps)
    model.train()
    return {"val/psnr": p.mean().item(), "val/ssim": s.mean().item(),
            "val/psnr_frame0": p.view(N, Fr)[:, 0].mean().item()}


class VAEEvaluator(Hook):
    """Held-out PSNR/SSIM and reconstruction videos of the AR-VAE (``train.eval_every``, and at
    the end of every run)."""

    def __init__(self, cfg: Config, tracker: Tracker):
        self.cfg, self.tracker, self.videos = cfg, tracker, None
        self.every = cfg.train.eval_every
        try:
            videos = load_video_clips(cfg.data.root, cfg.data.eval_split)[0]
        except (FileNotFoundError, ValueError) as e:
            log.warning("no held-out evaluation: %s", e)
        else:  # clips spread over the split (neighbouring clips come from one video)
            videos = videos[torch.linspace(0, len(videos) - 1, min(cfg.data.eval_clips, len(videos))).long()]
            if cfg.data.clip_frames == 1:  # a single-frame stage is judged on single frames
                videos = videos.flatten(0, 1)[:, None]
            self.videos = videos
        self.fps = RunData(cfg).fps

    def should_run(self, step: int, last: bool) -> bool:
        return last or super().should_run(step, last)

    def __call__(self, model, step: int) -> dict:
        if self.videos is None:
            return {}
        out = Path(self.cfg.train.run_dir) / "eval" / checkpoint.tag(step)
        metrics = reconstruction_report(model, self.videos, out, self.fps)
        self.tracker.log_metrics(metrics, step)
        for name in ("recon.mp4", "recon.gif"):
            self.tracker.log_artifact(str(out / name), f"eval/{out.name}")
        (out / "metrics.json").write_text(json.dumps(metrics))
        log.info("step %6d held-out PSNR %.2f dB SSIM %.4f", step, metrics["val/psnr"], metrics["val/ssim"])
        return metrics


def sampling_model(cfg: Config, module, ema, zero3: bool):
    """The DiT to sample from: the EMA weights when kept, else the engine's module; None under
    ZeRO-3 without an EMA (the module's parameters are partitioned)."""
    if ema is not None:
        model = DiT(cfg.dit)
        model.load_state_dict(ema.shadow)
        return model
    if zero3:
        log.warning("no samples: ZeRO-3 partitions the DiT; keep an EMA (optim.ema_decay) to sample")
        return None
    return module


GRID = SampleConfig(steps=25)
"""The sample grid's settings: the defaults with 25 DDIM steps (a quick look, not a measurement)."""


class SampleGrid(Hook):
    """A grid of 4 samples (:data:`GRID`: 25 DDIM steps, AD s=2, CFG 2, the training length) from
    the DiT, from the EMA weights when kept (``train.sample_every``, and at the end): 4 classes of
    the training split, or for a text DiT 4 captions of the held-out split
    (:meth:`~ardscale.runs.RunData.default_prompts`)."""

    def __init__(self, cfg: Config, tracker: Tracker, ema, zero3: bool):
        self.cfg, self.tracker, self.ema, self.zero3 = cfg, tracker, ema, zero3
        self.every = cfg.train.sample_every
        self.data = RunData(cfg)
        self.sc = replace(self.data.resolve(GRID), window=0)   # no sliding window: F is the training length
        self.labels = self.data.encode_prompts(self.data.default_prompts(4)) if cfg.dit.condition == "text" \
            else self.data.default_labels(4)
        self.diffusion = make_diffusion(cfg.diffusion)

    def __call__(self, module, step: int) -> dict:
        """``module``: the engine's DiT."""
        model = sampling_model(self.cfg, module, self.ema, self.zero3)
        if model is None:
            return {}
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        z = sample(model, self.diffusion, self.labels.to(device), self.sc)
        model.train(was_training)
        out = Path(self.cfg.train.run_dir) / "samples" / checkpoint.tag(step)
        write_grid(self.data.decode(z), out, self.data.fps)
        for name in ("samples.mp4", "samples.gif"):
            self.tracker.log_artifact(str(out / name), f"samples/{out.name}")
        return {}


class DiTEvaluator(Hook):
    """``eval/fvd_local``, ``eval/fid_local`` and ``eval/class_accuracy`` of sampled videos
    (``eval.per_class`` per held-out class, or one per held-out caption for a text DiT:
    :func:`~ardscale.evaluate.dit_conditions`) against the real clips of ``eval.split``, with the
    ``eval.sample`` settings (``train.eval_every``, and at the end)."""

    def __init__(self, cfg: Config, tracker: Tracker, ema, zero3: bool):
        self.cfg, self.tracker, self.ema, self.zero3 = cfg, tracker, ema, zero3
        self.every = cfg.train.eval_every
        self.data = RunData(cfg)
        held = held_out(self.data, cfg.eval)
        self.reference = Reference(held.clips, cfg.eval, held.labels)   # real features once
        self.conditions, self.labels, _ = dit_conditions(self.data, held, cfg.eval)   # prompts encoded once

    def __call__(self, module, step: int) -> dict:
        model = sampling_model(self.cfg, module, self.ema, self.zero3)
        if model is None:
            return {}
        was_training = model.training
        e = self.cfg.eval
        fake, per_video = generate_videos(self.data, model.eval(), self.conditions, e.sample, e.batch_size)
        model.train(was_training)
        found = {**self.reference.compare(fake, self.labels), "gen_s_per_video": per_video}
        metrics = {f"eval/{k}": v for k, v in found.items() if isinstance(v, float)}
        self.tracker.log_metrics(metrics, step)
        agree = f"{found['class_accuracy']:.3f}" if "class_accuracy" in found else "-"
        log.info("step %6d fvd_local %.3f fid_local %.3f class_accuracy %s", step, metrics["eval/fvd_local"],
                 metrics["eval/fid_local"], agree)
        return metrics


def hooks_for(cfg: Config, tracker: Tracker, ema, zero3: bool) -> list[Hook]:
    """The hooks that watch a run of ``cfg.task`` on rank 0: an AR-VAE's held-out reconstructions;
    a DiT's evaluation (``train.eval_every``) and sample grid (``train.sample_every``)."""
    if cfg.task == "vae":
        return [VAEEvaluator(cfg, tracker)]
    hooks = [DiTEvaluator(cfg, tracker, ema, zero3)] if cfg.train.eval_every else []
    return hooks + ([SampleGrid(cfg, tracker, ema, zero3)] if cfg.train.sample_every else [])
