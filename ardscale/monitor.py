"""What rank 0 shows of a run while it trains, logged to MLflow next to the losses.

- AR-VAE runs: PSNR/SSIM on held-out clips and a real | reconstruction video
  (``train.eval_every``, and at the end).
- DiT runs: a grid of sampled videos, decoded by the VAE that made the latents
  (``train.sample_every``, and at the end when it is set), and ``fvd_local`` / ``fid_local`` of
  ``eval.per_class`` videos per held-out class (``train.eval_every``, and at the end), both from
  the EMA weights when kept.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from .config import Config
from .data.loader import load_video_clips
from .diffusion.sampler import sample
from .engine.tracking import Tracker
from .models.dit import DiT
from .objectives import evaluate_vae, make_diffusion
from .sample import decode_frames, default_labels, latent_vae, video_fps, write_grid


class VAEEvaluator:
    """Held-out PSNR/SSIM and reconstruction videos of the AR-VAE."""

    def __init__(self, cfg: Config, tracker: Tracker):
        self.cfg, self.tracker, self.videos = cfg, tracker, None
        try:
            videos = load_video_clips(cfg.data.root, cfg.data.eval_split)[0]
        except (FileNotFoundError, ValueError) as e:
            print(f"no held-out evaluation: {e}", file=sys.stderr, flush=True)
        else:  # clips spread over the split (neighbouring clips come from one video)
            videos = videos[torch.linspace(0, len(videos) - 1, min(cfg.data.eval_clips, len(videos))).long()]
            if cfg.data.clip_frames == 1:  # a single-frame stage is judged on single frames
                videos = videos.flatten(0, 1)[:, None]
            self.videos = videos
        self.fps = video_fps(cfg)

    def __call__(self, model, step: int) -> dict:
        if self.videos is None:
            return {}
        out = Path(self.cfg.train.run_dir) / "eval" / f"step-{step:08d}"
        metrics = evaluate_vae(model, self.videos, out, self.fps)
        self.tracker.log_metrics(metrics, step)
        for name in ("recon.mp4", "recon.gif"):
            self.tracker.log_artifact(str(out / name), f"eval/{out.name}")
        (out / "metrics.json").write_text(json.dumps(metrics))
        print(f"step {step:6d} held-out PSNR {metrics['val/psnr']:.2f} dB SSIM {metrics['val/ssim']:.4f}", flush=True)
        return metrics


def sampling_model(cfg: Config, module, ema, zero3: bool):
    """The DiT to sample from: the EMA weights when kept, else the engine's module; None under
    ZeRO-3 without an EMA (the module's parameters are partitioned)."""
    if ema is not None:
        model = DiT(cfg.model)
        model.load_state_dict(ema.shadow)
        return model
    if zero3:
        print("no samples: ZeRO-3 partitions the DiT; keep an EMA (optim.ema_decay) to sample",
              file=sys.stderr, flush=True)
        return None
    return module


class DiTSampler:
    """A grid of 4 class-conditional samples (25 DDIM steps, AD s=2, CFG 2) from the DiT."""

    def __init__(self, cfg: Config, tracker: Tracker):
        self.cfg, self.tracker = cfg, tracker
        self.vae, manifest = latent_vae(cfg)
        self.frames, self.fps = manifest["num_frames"], video_fps(cfg)
        self.labels, self.diffusion = default_labels(cfg, 4), make_diffusion(cfg)

    def __call__(self, module, ema, zero3: bool, step: int) -> None:
        """``module``: the engine's DiT; ``ema``: an :class:`~ardscale.engine.ema.EMA` or None."""
        model = sampling_model(self.cfg, module, ema, zero3)
        if model is None:
            return
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        z = sample(model, self.diffusion, self.labels.to(device), self.frames, num_steps=25, s=2, cfg_scale=2.0,
                   generator=torch.Generator().manual_seed(0))
        model.train(was_training)
        out = Path(self.cfg.train.run_dir) / "samples" / f"step-{step:08d}"
        write_grid(decode_frames(self.vae, z.float().cpu(), self.cfg.diffusion.scale_factor), out, self.fps)
        for name in ("samples.mp4", "samples.gif"):
            self.tracker.log_artifact(str(out / name), f"samples/{out.name}")


class DiTEvaluator:
    """``eval/fvd_local`` and ``eval/fid_local`` of ``eval.per_class`` sampled videos per held-out
    class (``eval.split``) against the real clips, with the ``eval`` settings (s, steps, CFG)."""

    def __init__(self, cfg: Config, tracker: Tracker, ema, zero3: bool):
        from .evaluate import Reference, generate_videos, held_out

        self.cfg, self.tracker, self.ema, self.zero3 = cfg, tracker, ema, zero3
        self.generate = generate_videos
        real, labels = held_out(cfg, cfg.eval)
        self.reference = Reference(real, cfg.eval)    # real features once, not at every evaluation
        self.labels = torch.unique(labels).repeat_interleave(cfg.eval.per_class)

    def __call__(self, module, step: int) -> dict:
        model = sampling_model(self.cfg, module, self.ema, self.zero3)
        if model is None:
            return {}
        was_training = model.training
        fake, per_video = self.generate(self.cfg, model.eval(), self.labels, self.cfg.eval)
        model.train(was_training)
        found = {**self.reference.compare(fake), "gen_s_per_video": per_video}
        metrics = {f"eval/{k}": v for k, v in found.items() if isinstance(v, float)}
        self.tracker.log_metrics(metrics, step)
        print(f"step {step:6d} fvd_local {metrics['eval/fvd_local']:.3f} fid_local {metrics['eval/fid_local']:.3f}",
              flush=True)
        return metrics
