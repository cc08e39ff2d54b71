"""The paper's DiT recipe (Sec. 3.2-3.3) on latent shards: per-frame timesteps from the FoPP
scheduler (Alg. 1), block-causal DiT, x0 MSE (or eps / v), label (or caption) dropout for CFG."""
from __future__ import annotations

from contextlib import closing
from functools import partial
from pathlib import Path

import fsspec
import torch

from ..config import Config, DiffusionConfig
from ..data.folders import MANIFEST, NULL_CAPTION, latent_dir
from ..data.loader import (
    available_vae_ids,
    check_latent_scale,
    check_token_norms,
    check_vae,
    latent_sample,
    latent_text_sample,
)
from ..data.shards import join, list_shards, load_npz, read_json, read_shard
from ..data.stream import ShardSet
from ..diffusion.losses import bucket_losses, dit_loss
from ..diffusion.schedule import GaussianDiffusion, make_diffusion
from ..diffusion.timesteps import sample_timesteps
from ..engine.flops import dit_train_flops
from ..models.dit import DiT, TextCondition
from .spec import Models, TaskData, TaskSpec


def draw_noising(x0: torch.Tensor, d: DiffusionConfig, dropout: float,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One micro batch's randomness, drawn in this order from ``gen``: per-frame timesteps ``t``
    ``(B, F)`` long from the timestep scheduler (FoPP, Alg. 1: non-decreasing over frames), noise
    like ``x0`` ``(B, F, L, D)`` (Eq. 1) and the CFG condition drop ``(B,)`` bool (probability
    ``dropout``)."""
    B, F = x0.shape[:2]
    t = sample_timesteps(d.timestep_scheduler, B, F, d.num_timesteps, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    drop = torch.rand(B, generator=gen) < dropout
    return t, noise, drop


def make_batch(raw: dict, gen: torch.Generator, *, cfg: Config, where: str) -> dict:
    """A collated micro batch of latent shards → the DiT's inputs: ``x0`` ``(B, F, L, D)`` (scaled
    by ``diffusion.scale_factor``), ``y`` (labels ``(B,)`` or a TextCondition), and
    :func:`draw_noising`'s ``t``, ``noise``, ``drop``.

    Raises:
        ValueError: latents off the AR-VAE's sphere, ``diffusion.scale_factor`` that does not make
            their tokens unit-norm (:func:`~ardscale.data.loader.check_latent_scale`), or a label
            ≥ ``dit.num_classes`` or < 0 (a class DiT on captioned latents).
    """
    text = cfg.dit.condition == "text"
    check_token_norms(raw["x0"], where)
    check_latent_scale(raw["x0"], cfg.diffusion.scale_factor, where)
    if not text and raw["y"].min() < 0:   # captioned sources store label -1: no class
        raise ValueError(f"label {int(raw['y'].min())} in {where}: these latents carry no class "
                         "(captioned video?); train them with dit.condition=text")
    if not text and raw["y"].max() >= cfg.dit.num_classes:
        raise ValueError(f"label {int(raw['y'].max())} in {where} ≥ dit.num_classes={cfg.dit.num_classes}")
    x0 = raw["x0"] * cfg.diffusion.scale_factor
    dropout = cfg.dit.caption_dropout if text else cfg.dit.class_dropout
    t, noise, drop = draw_noising(x0, cfg.diffusion, dropout, gen)
    y = TextCondition(raw["text_tokens"], raw["text_mask"].bool(), raw["text_pooled"]) if text \
        else raw["y"].long()
    return {"x0": x0, "y": y, "t": t, "noise": noise, "drop": drop}


def load_data(cfg: Config) -> TaskData:
    """The latent shards ``data.vae_id`` of ``data.split`` (checked against ``data.vae_run``)."""
    where = latent_dir(cfg.data.root, cfg.data.vae_id, cfg.data.split)
    manifest = read_json(join(where, MANIFEST))
    check_vae(cfg.data.vae_id, cfg.data.vae_run, manifest)
    frames, text = manifest["num_frames"], cfg.dit.condition == "text"
    if text:
        _check_text(cfg, manifest, where)
    return TaskData(ShardSet.from_dir(where), latent_text_sample if text else latent_sample,
                    partial(make_batch, cfg=cfg, where=where),
                    frames * cfg.dit.tokens_per_frame, dit_train_flops(cfg.dit, frames))


def _check_text(cfg: Config, manifest: dict, where: str) -> None:
    """Latents for a text DiT carry encoded captions that fit ``dit.text_dim`` / ``dit.text_tokens``.

    Raises:
        ValueError: no encoded captions or null caption, or captions of another size (naming the keys).
    """
    t = manifest.get("text")
    if not t:
        raise ValueError(f"dit.condition=text, but the latents under {where} have no encoded captions: "
                         "encode them with tools/encode_latents.py --text-encoder minilm")
    fs, null = fsspec.core.url_to_fs(join(where, NULL_CAPTION))
    if not fs.exists(null):
        raise ValueError(f"{where}/{NULL_CAPTION} (CFG's null caption) is missing: encode the latents "
                         "again with tools/encode_latents.py --text-encoder")
    if (t["dim"], t["tokens"]) != (cfg.dit.text_dim, cfg.dit.text_tokens):
        raise ValueError(f"the captions under {where} are {t['tokens']} tokens × {t['dim']} "
                         f"({t['encoder']}): set dit.text_tokens={t['tokens']} dit.text_dim={t['dim']}")


def build_model(cfg: Config) -> DiT:
    """The DiT; a text DiT gets the null caption its latents were encoded with (when they are
    reachable: a trained run's state dict carries it too)."""
    model = DiT(cfg.dit)
    if cfg.dit.condition == "text":
        null = join(latent_dir(cfg.data.root, cfg.data.vae_id, cfg.data.split), NULL_CAPTION)
        try:
            with fsspec.open(null, "rb") as f:
                z = load_npz(f.read())
        except FileNotFoundError:
            return model
        one = {k: torch.from_numpy(v)[None] for k, v in z.items()}   # one caption: a batch of 1
        model.y_embedder.set_null(TextCondition(one["tokens"].float(), one["mask"], one["pooled"].float()))
    return model


def step_loss(models: Models, b: dict, step: int, *, diffusion: GaussianDiffusion) -> tuple[dict, dict]:
    """The x0 (eps / v) MSE of a micro batch from :func:`make_batch`, with its per-timestep buckets."""
    value, per_frame = dit_loss(models.model, diffusion, b["x0"], b["y"], b["t"], b["noise"], b["drop"])
    buckets = bucket_losses(per_frame, b["t"], diffusion.num_timesteps)
    return {"model": value}, {"loss": value.detach(), **buckets}


def build_loss(cfg: Config):
    return partial(step_loss, diffusion=make_diffusion(cfg.diffusion))


def preflight(cfg: Config) -> None:
    """``data.vae_id`` is set and its latents exist under ``data.root`` (their manifest is written
    last); ``diffusion.scale_factor`` makes the first stored clip's tokens unit-norm; ``train.eval_every``
    has its ``eval.local`` network.

    Raises:
        ValueError: ``data.vae_id`` empty; ``diffusion.scale_factor`` off 1/√D (measured on one clip).
        FileNotFoundError: no ``eval.local`` file while ``train.eval_every`` is on; no latents
            (naming the vae_id, where they were looked for and the vae_ids that exist).
    """
    if not cfg.data.vae_id:
        raise ValueError("data.vae_id is empty; set it to the vae_id that tools/encode_latents.py printed")
    if cfg.train.eval_every and not Path(cfg.eval.local).is_file():
        raise FileNotFoundError(f"train.eval_every={cfg.train.eval_every} needs eval.local, the "
                                f"ucf101_local feature network ({cfg.eval.local} not found): train it with "
                                "`python -m ardscale.metrics.local root=DATA out=PATH`, or set "
                                "train.eval_every=0")
    where = latent_dir(cfg.data.root, cfg.data.vae_id, cfg.data.split)
    if read_json(join(where, MANIFEST)) is None:
        found = available_vae_ids(cfg.data.root)
        raise FileNotFoundError(f"no latents data.vae_id={cfg.data.vae_id!r} for split {cfg.data.split!r}: "
                                f"{where}/{MANIFEST} does not exist (latents under {cfg.data.root}: "
                                f"{found or 'none'}); encode them with tools/encode_latents.py")
    first = _first_clip(where)
    if first is not None:
        check_latent_scale(first, cfg.diffusion.scale_factor, where)


def _first_clip(where: str) -> torch.Tensor | None:
    """The latents ``(F, L, D)`` float32 of the first clip of the first shard under ``where`` (the
    shard is streamed up to that clip, not fetched whole), or None when there is none."""
    shards = list_shards(where)
    if not shards:
        return None
    with closing(read_shard(shards[0])) as samples:   # closes the shard's file after one clip
        first = next(samples, None)
    return None if first is None else torch.from_numpy(latent_sample(first, 0)["x0"])


SPEC = TaskSpec("dit", build_model, load_data, build_loss, preflight)
