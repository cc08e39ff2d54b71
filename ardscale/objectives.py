"""What one training micro step computes, per task (``cfg.task``).

- ``dit``: the paper's recipe (Sec. 3.2-3.3): per-frame timesteps from FoPP, block-causal DiT,
  x0 MSE (or eps / v), label dropout for CFG.
- ``vae``: the AR-VAE stages (Sec. 4.1): L1 + L2 (+ LPIPS where weights exist); with
  ``vae_loss.adversarial > 0`` a PatchGAN discriminator trained with the hinge loss, and the
  generator's adversarial term scaled by VQGAN's adaptive weight from ``vae_loss.disc_start`` on.

A :class:`Task` holds the model(s), the data and ``micro_step``, which runs forward, backward and
``engine.step()`` for one micro batch and returns its detached losses.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .data.loader import load_latents, load_video_clips
from .data.video import encode_mp4, video_grid, write_gif
from .diffusion.schedule import GaussianDiffusion
from .diffusion.timesteps import sample_timesteps
from .engine import checkpoint
from .engine.flops import dit_train_flops
from .engine.guard import NonFiniteGuard
from .metrics import psnr, ssim
from .models.arvae import ARVAE
from .models.discriminator import PatchDiscriminator, adaptive_weight, hinge_d_loss
from .models.dit import DiT
from .models.lpips import LPIPS

NUM_BUCKETS = 10   # DiT loss is also logged per tenth of the timestep range


@dataclass
class Task:
    """A training task: its model (and GAN discriminator), dataset size, tokens per sample (for
    throughput), ``micro_step`` (forward, backward and ``engine.step()`` for one micro batch; returns
    detached losses) and its non-finite guards."""

    model: nn.Module
    num_samples: int
    tokens_per_sample: int
    micro_step: Callable  # (engine, disc_engine | None, idx, gen, step) -> dict[str, Tensor]
    discriminator: nn.Module | None = None
    guards: list[NonFiniteGuard] = field(default_factory=list)   # their `skipped` counts NaN/inf losses
    flops_per_sample: float | None = None                         # training FLOPs, for MFU


def make_diffusion(cfg: Config) -> GaussianDiffusion:
    d = cfg.diffusion
    return GaussianDiffusion(d.num_timesteps, d.beta_schedule, d.beta_start, d.beta_end, d.prediction)


def dit_loss(model, latents: torch.Tensor, labels: torch.Tensor, cfg: Config,
             diffusion: GaussianDiffusion, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MSE on FoPP-corrupted latents ``(B, F, L, D)`` (Sec. 3.2-3.3); the target is x0 as in the
    paper, or eps / v when ``diffusion.prediction`` says so.

    Returns:
        the loss (scalar), the detached per-frame MSE ``(B, F)`` and the timesteps ``(B, F)``.
    """
    B, Fr = latents.shape[:2]
    x0 = latents * cfg.diffusion.scale_factor
    t = sample_timesteps(cfg.diffusion.timestep_sampler, B, Fr, cfg.diffusion.num_timesteps, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    drop = torch.rand(B, generator=gen) < cfg.diffusion.class_dropout
    y = torch.where(drop, cfg.model.num_classes, labels)
    dev, dtype = model.device, next(model.parameters()).dtype
    x_t = diffusion.q_sample(x0, t, noise)
    pred = model(x_t.to(dev, dtype), t.to(dev), y.to(dev))
    err = (pred.float() - diffusion.target(x0, noise, t).to(dev)).pow(2)
    return err.mean(), err.detach().mean(dim=(2, 3)).cpu(), t


def bucket_losses(per_frame: torch.Tensor, t: torch.Tensor, num_timesteps: int) -> dict:
    """Sums and counts of per-frame losses ``(B, F)`` in NUM_BUCKETS equal timestep ranges."""
    b = (t * NUM_BUCKETS // num_timesteps).flatten()
    return {"bucket_sum": torch.zeros(NUM_BUCKETS).index_add_(0, b, per_frame.flatten().float()),
            "bucket_count": torch.bincount(b, minlength=NUM_BUCKETS).float()}


def check_vae(cfg: Config, manifest: dict) -> None:
    """Refuse latents that another VAE produced than the one the config names.

    Raises:
        ValueError: the manifest's ``vae_id`` differs from ``data.vae_id``, or from the digest of
            the newest checkpoint of ``data.vae_run`` (when set).
    """
    got = manifest.get("vae_id")
    if got != cfg.data.vae_id:
        raise ValueError(f"latents under vae_id={cfg.data.vae_id} were made by VAE {got!r} (per their _manifest.json)")
    if cfg.data.vae_run:
        digest = checkpoint.weights_digest(checkpoint.load_weights(cfg.data.vae_run, ema=True)[0])
        if digest != got:
            raise ValueError(f"data.vae_run={cfg.data.vae_run} has weights {digest}, but the latents come from "
                             f"VAE {got}: re-encode with tools/encode_latents.py --vae-run {cfg.data.vae_run}")


def _dit_task(cfg: Config) -> Task:
    latents, labels, manifest = load_latents(cfg.data.root, cfg.data.vae_id, cfg.data.split)
    check_vae(cfg, manifest)
    if labels.max() >= cfg.model.num_classes:
        raise ValueError(f"label {int(labels.max())} ≥ model.num_classes={cfg.model.num_classes}")
    diffusion, guard = make_diffusion(cfg), NonFiniteGuard()

    def micro_step(engine, disc, idx, gen, step):
        loss, per_frame, t = dit_loss(engine, latents[idx], labels[idx], cfg, diffusion, gen)
        guard.backward_step(engine, loss)
        return {"loss": loss.detach().float().cpu(), **bucket_losses(per_frame, t, cfg.diffusion.num_timesteps)}

    return Task(DiT(cfg.model), len(latents), latents.shape[1] * latents.shape[2], micro_step, guards=[guard],
                flops_per_sample=dit_train_flops(cfg.model, latents.shape[1]))


def temporal_crop(videos: torch.Tensor, frames: int, gen: torch.Generator) -> torch.Tensor:
    """A random run of ``frames`` consecutive frames per clip: ``(B, F, ...)`` → ``(B, frames, ...)``."""
    B, F = videos.shape[:2]
    if frames <= 0 or frames >= F:
        return videos
    start = torch.randint(F - frames + 1, (B, 1), generator=gen)
    return videos[torch.arange(B)[:, None], start + torch.arange(frames)]


def to_model_range(videos: torch.Tensor) -> torch.Tensor:
    """uint8 clips ``(B, F, H, W, 3)`` → float ``(B, F, 3, H, W)`` in [-1, 1]."""
    return videos.permute(0, 1, 4, 2, 3).float() / 127.5 - 1


def load_perceptual(cfg: Config) -> LPIPS | None:
    """LPIPS from the configured weight files (``config.load`` checked they exist), or None when
    ``vae_loss.perceptual`` is 0."""
    c = cfg.vae_loss
    return LPIPS.from_files(c.perceptual_vgg, c.perceptual_lin) if c.perceptual > 0 else None


class VAEObjective:
    """One AR-VAE micro step: reconstruction (+ LPIPS), then the GAN terms once they are on."""

    def __init__(self, cfg: Config):
        self.c, self.patch = cfg.vae_loss, cfg.vae.patch_size
        self.guard, self.disc_guard = NonFiniteGuard(), NonFiniteGuard()
        self.lpips = load_perceptual(cfg)
        self._last = {}     # input of the decoder's last conv, for the adaptive weight
        self._hooked = None

    def _watch_last_layer(self, vae: ARVAE) -> None:
        if self._hooked is not vae:
            vae.pixel_head.conv_out.register_forward_hook(lambda m, inp, out: self._last.update(inp=inp[0]))
            self._hooked = vae

    def _nll(self, fake: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Reconstruction loss of frames ``(N, 3, H, W)`` and its parts."""
        c = self.c
        parts = {"l1": F.l1_loss(fake, real), "l2": F.mse_loss(fake, real)}
        nll = c.l1 * parts["l1"] + c.l2 * parts["l2"]
        if self.lpips is not None:
            parts["perceptual"] = self.lpips.to(fake.device)(fake, real).mean()
            nll = nll + c.perceptual * parts["perceptual"]
        return nll, parts

    def _adaptive_weight(self, fake: torch.Tensor, real: torch.Tensor, disc: nn.Module, dtype) -> torch.Tensor:
        leaf = fake.detach().requires_grad_(True)                               # (B, F, 3, H, W)
        nll, _ = self._nll(leaf.flatten(0, 1), real)
        g_adv = -disc(leaf.flatten(0, 1).to(dtype)).float().mean()
        inp, conv = self._last["inp"].detach().float(), self._hooked.pixel_head.conv_out
        shape = getattr(conv.weight, "ds_shape", conv.weight.shape)              # ZeRO-3 partitions W
        weight_grad = lambda g: torch.nn.grad.conv2d_weight(inp, shape, g.flatten(0, 1), padding=conv.padding)
        return adaptive_weight(nll, g_adv, leaf, weight_grad)

    def __call__(self, engine, disc, videos: torch.Tensor, step: int) -> dict:
        c = self.c
        dtype = next(engine.module.parameters()).dtype
        self._watch_last_layer(engine.module)
        clips = to_model_range(videos).to(engine.device)                       # (B, F, 3, H, W)
        fake = engine(clips.to(dtype)).float()
        real = clips.flatten(0, 1)
        nll, parts = self._nll(fake.flatten(0, 1), real)
        loss, gan = nll, disc is not None and step >= c.disc_start
        if gan:
            # The generator's term goes through D's plain module with D frozen: its gradients must
            # reach neither D's parameters nor D's engine (which would reduce them).
            d = disc.module.requires_grad_(False)
            g_adv = -d(fake.flatten(0, 1).to(dtype)).float().mean()
            weight = c.adversarial * self._adaptive_weight(fake, real, d, dtype)
            d.requires_grad_(True)
            loss = nll + weight * g_adv
            parts.update(g_adv=g_adv, adaptive_weight=weight)
        self.guard.backward_step(engine, loss)
        if gan:
            d_loss = hinge_d_loss(disc(real.to(dtype)).float(), disc(fake.detach().flatten(0, 1).to(dtype)).float())
            self.disc_guard.backward_step(disc, d_loss)
            parts["d_loss"] = d_loss
        parts["loss"] = loss
        return {k: v.detach().float().cpu() for k, v in parts.items()}


def _vae_task(cfg: Config) -> Task:
    videos, _ = load_video_clips(cfg.data.root, cfg.data.split)
    k = cfg.data.clip_frames or videos.shape[1]
    objective = VAEObjective(cfg)
    disc = None
    if cfg.vae_loss.adversarial > 0:
        disc = PatchDiscriminator(cfg.vae.in_channels, cfg.vae_loss.disc_channels, cfg.vae_loss.disc_layers)

    def micro_step(engine, disc_engine, idx, gen, step):
        return objective(engine, disc_engine, temporal_crop(videos[idx], k, gen), step)

    return Task(ARVAE(cfg.vae), len(videos), k * cfg.vae.num_patches, micro_step, disc,
                guards=[objective.guard, objective.disc_guard])


def build_task(cfg: Config) -> Task:
    """The :class:`Task` for ``cfg.task`` (``vae`` or ``dit``), with its training data loaded."""
    return _vae_task(cfg) if cfg.task == "vae" else _dit_task(cfg)


@torch.no_grad()
def evaluate_vae(model: ARVAE, videos: torch.Tensor, out_dir, fps: float = 8.0) -> dict:
    """PSNR/SSIM of reconstructions of held-out clips ``(N, F, H, W, 3)`` uint8, and a
    side-by-side video (real | reconstruction, 4 clips) written to ``out_dir/recon.{mp4,gif}``.

    Returns:
        ``{"val/psnr": dB, "val/ssim": …, "val/psnr_frame0": dB}``, means over clips and frames.
    """
    model.eval()
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    recs = [model(to_model_range(v).to(device, dtype)).float().cpu() for v in videos.split(8)]
    rec = ((torch.cat(recs).clamp(-1, 1) + 1) / 2).flatten(0, 1)             # (N*F, 3, H, W) in [0, 1]
    real = to_model_range(videos).add(1).div(2).flatten(0, 1)
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
