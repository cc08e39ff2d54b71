"""The AR-VAE stages (paper Sec. 4.1) on video shards: L1 + L2 (+ LPIPS), then a PatchGAN."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from ..config import Config
from ..data.folders import video_dir
from ..data.loader import video_sample
from ..data.shards import list_shards, read_shard
from ..data.stream import ShardSet
from ..data.transforms import to_model_range
from ..engine.flops import forward_flops, measured_train_flops
from ..models.arvae import ARVAE
from ..models.discriminator import PatchDiscriminator
from ..models.titok import load_titok, read_titok, titok_to_arvae
from ..models.vae_loss import VAELoss, capture_input
from .spec import Models, TaskData, TaskSpec

log = logging.getLogger("ardscale.vae")


def make_batch(raw: dict, gen: torch.Generator) -> dict:
    """A collated micro batch of clips (uint8) → ``{"clips": (B, F, 3, H, W)}`` in [-1, 1]."""
    return {"clips": to_model_range(raw["clips"])}


DISC_PASSES = 10
"""Discriminator forwards' worth of FLOPs per training step with the GAN on: its own step, 3 × on the
real and on the fake frames; the generator's adversarial term and its adaptive weight, a forward and
an input-gradient pass through the frozen discriminator each (2 × forward)."""


def _meta_forward(build: Callable[[Config], torch.nn.Module], cfg: Config, shape: tuple) -> Callable:
    """One forward of ``build(cfg)`` on zeros of ``shape``, all on the meta device (for a FLOP count)."""
    def run():
        with torch.device("meta"):
            module, x = build(cfg), torch.zeros(shape)
        return module(x)
    return run


def train_flops(cfg: Config, frames: int) -> Callable[[int], float]:
    """Training FLOPs per clip of ``frames`` frames at a global step, for MFU: the AR-VAE's forward and
    backward (of its trainable parameters only, :func:`~ardscale.engine.flops.measured_train_flops`),
    plus, from ``vae_loss.disc_start`` on, :data:`DISC_PASSES` discriminator forwards of the clip's
    frames. Both are counted on meta tensors (:func:`~ardscale.engine.flops.forward_flops`). The
    perceptual loss's VGG is left out: MFU counts the model trained, as for the DiT."""
    c = cfg.vae
    frame = (c.in_channels, c.image_size, c.image_size)
    model = measured_train_flops(_meta_forward(build_model, cfg, (1, frames, *frame)))
    with torch.device("meta"):   # meta: building it here must not draw from the seeded CPU generator
        gan = build_discriminator(cfg) is not None
    if not gan:
        return lambda step: model
    disc = DISC_PASSES * forward_flops(_meta_forward(build_discriminator, cfg, (frames, *frame)))
    return lambda step: model + (disc if step >= cfg.vae_loss.disc_start else 0.0)


def load_data(cfg: Config) -> TaskData:
    """The video shards of ``data.split``; ``data.clip_frames`` random frames per clip (0 = all)."""
    shards = ShardSet.from_dir(video_dir(cfg.data.root, cfg.data.split))
    k = cfg.data.clip_frames or json.loads(next(read_shard(shards.urls[0]))["json"])["num_frames"]
    return TaskData(shards, partial(video_sample, frames=cfg.data.clip_frames), make_batch,
                    k * cfg.vae.num_patches, train_flops(cfg, k))


def step_loss(models: Models, b: dict, step: int, *, objective: VAELoss) -> tuple[dict, dict]:
    """The generator's reconstruction (+ perceptual, + adversarial from ``disc_start``) loss, and
    the discriminator's hinge loss when the GAN is on."""
    clips = b["clips"]                                                      # (B, F, 3, H, W)
    head = models.module.pixel_head            # its conv_out: VQGAN's "last layer" for the adaptive weight
    with capture_input(head.conv_out) as last:
        fake = models.model(clips).float()
    gan = objective.gan_on(step, models.disc is not None)
    g_loss, parts = objective.generator(fake, clips, models.disc_frozen if gan else None,
                                        last.get("input"), head)
    losses = {"model": g_loss}
    if gan:
        losses["disc"] = parts["d_loss"] = objective.discriminator(models.disc, clips.flatten(0, 1),
                                                                   fake.flatten(0, 1))
    return losses, {"loss": g_loss.detach(), **{k: v.detach() for k, v in parts.items()}}


def build_loss(cfg: Config):
    return partial(step_loss, objective=VAELoss.from_config(cfg.vae_loss))


def build_model(cfg: Config) -> ARVAE:
    """The AR-VAE, its parameters trainable per ``vae.trainable`` (``temporal``: the official stage 3,
    only the temporal blocks; the optimizer holds just those)."""
    return ARVAE(cfg.vae).set_trainable(cfg.vae.trainable)


def load_pretrained(cfg: Config, model: ARVAE) -> None:
    """A fresh run's AR-VAE from TiTok-L-32's weights when ``vae.init_from_titok`` is set (paper Sec.
    4.1; :mod:`ardscale.models.titok`), logged: our tensors and parameters loaded of all, TiTok's
    skipped and why.

    Raises:
        FileNotFoundError, ValueError: as :func:`~ardscale.models.titok.load_titok`.
    """
    if cfg.vae.init_from_titok:
        log.info(load_titok(model, cfg.vae.init_from_titok).summary())


def build_discriminator(cfg: Config) -> PatchDiscriminator | None:
    c = cfg.vae_loss
    return PatchDiscriminator(cfg.vae.in_channels, c.disc_channels,
                              c.disc_layers) if c.adversarial > 0 else None


def check_titok(cfg: Config) -> None:
    """``vae.init_from_titok``, when set, fits: not with ``train.init_from``, and the file's tensors map
    onto this AR-VAE (checked on the meta device against the memory-mapped file: nothing is read).

    Raises:
        ValueError: both keys set (naming them); the file is no TiTok state dict or does not fit the
            ``vae.*`` sizes (:func:`~ardscale.models.titok.titok_to_arvae`).
        FileNotFoundError: no such file (naming the key).
    """
    titok = cfg.vae.init_from_titok
    if titok and cfg.train.init_from:
        raise ValueError(f"vae.init_from_titok={titok} and train.init_from={cfg.train.init_from}: a run "
                         "starts from one of them (TiTok-L-32 starts stage 1, a previous stage's run the "
                         "later stages); unset one")
    if titok:
        with torch.device("meta"):
            model = build_model(cfg)
        titok_to_arvae(read_titok(titok), model, titok)


def preflight(cfg: Config) -> None:
    """The perceptual loss's weight files exist when it is on (nothing downloads), the TiTok weights fit
    when set (:func:`check_titok`), and video shards exist under ``{data.root}/videos/{data.split}``.

    Raises:
        ValueError: ``vae_loss.perceptual > 0`` without both weight files (naming the keys);
            :func:`check_titok`'s.
        FileNotFoundError: no shards there (naming the folder and the shard job); no TiTok file.
    """
    c = cfg.vae_loss
    for key in ("perceptual_vgg", "perceptual_lin") if c.perceptual > 0 else ():
        file = getattr(c, key)
        if not file or not Path(file).is_file():
            why = "not set" if not file else f"{file} not found"
            raise ValueError(f"vae_loss.perceptual={c.perceptual} needs vae_loss.{key}, a local weight "
                             f"file ({why}; nothing is downloaded). Set vae_loss.perceptual_vgg (torchvision "
                             "vgg16 .pth) and vae_loss.perceptual_lin (LPIPS vgg.pth), or opt out of the "
                             "perceptual loss with vae_loss.perceptual=0")
    check_titok(cfg)
    where = video_dir(cfg.data.root, cfg.data.split)
    if not list_shards(where):
        raise FileNotFoundError(f"no video shards under {where}: make them with data_prep/shard_videos.py")


SPEC = TaskSpec("vae", build_model, load_data, build_loss, preflight, build_discriminator, load_pretrained)
