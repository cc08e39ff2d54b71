"""The task registry: what each ``task`` of a config builds (as torchtitan's ``ModelSpec``).

A :class:`TaskSpec` says how to build the task's model (and GAN discriminator), load its data,
compute its losses (pure: no backward, no optimizer step), watch it train (monitor hooks) and
evaluate a trained run (``python -m ardscale.evaluate``).
``train``, :func:`load_trained` and ``config.load`` look tasks up here; nothing else compares
``cfg.task`` with a name.

- ``dit``: the paper's recipe (Sec. 3.2-3.3) on latent shards: per-frame timesteps from the FoPP
  scheduler (Alg. 1), block-causal DiT, x0 MSE (or eps / v), label dropout for CFG.
- ``vae``: the AR-VAE stages (Sec. 4.1) on video shards: L1 + L2 (+ LPIPS), then PatchGAN.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import fsspec
import torch
from torch import nn

from .config import Config, from_dict
from .data.loader import (
    available_vae_ids,
    check_token_norms,
    check_vae,
    latent_dir,
    latent_sample,
    latent_text_sample,
    video_sample,
)
from .data.shards import join, list_shards, load_npz, read_json, read_shard
from .data.stream import ShardSet
from .data.transforms import to_model_range
from .diffusion.losses import bucket_losses, dit_loss
from .diffusion.schedule import make_diffusion
from .diffusion.timesteps import sample_timesteps
from .engine import checkpoint
from .engine.flops import dit_train_flops
from .models.arvae import ARVAE
from .models.discriminator import PatchDiscriminator
from .models.dit import DiT, TextCondition
from .models.vae_loss import VAELoss, capture_input


@dataclass
class TaskData:
    """A task's training set: ``shards`` streamed by loader workers, each sample turned into arrays
    by ``decode(sample, seed)`` there (:class:`~ardscale.data.stream.ShardStream`), then
    ``batch(micro batch, gen) -> dict`` of CPU tensors on the rank (randomness drawn from ``gen``
    only, so a resumed step redraws the same batch)."""

    shards: ShardSet
    decode: Callable[[dict, int], dict]
    batch: Callable[[dict, torch.Generator], dict]
    tokens_per_sample: int                 # for tokens/s
    flops_per_sample: float | None = None  # training FLOPs, for MFU


@dataclass
class Models:
    """What a loss may use: ``model`` and ``disc`` (callable engines: forward only), ``module``
    (the model's ``nn.Module``) and ``disc_frozen`` (the discriminator with its parameters out of
    autograd, for the generator's adversarial term); the discriminator parts may be None."""

    model: Callable
    module: nn.Module
    disc: Callable | None = None
    disc_frozen: Callable | None = None


LossFn = Callable[[Models, dict, int], tuple[dict, dict]]
"""``(models, batch on the device, global step) -> (losses, metrics)``: ``losses`` maps an engine
name (``model``, ``disc``) to the scalar it minimises; ``metrics`` are detached values to log."""


@dataclass(frozen=True)
class TaskSpec:
    """What a task builds and computes; every callable takes the run's :class:`Config`.

    ``check_data`` runs in the launcher before any worker starts and raises FileNotFoundError
    when the task's data are absent; ``validate`` runs in ``config.load`` (ValueError /
    FileNotFoundError naming the key)."""

    name: str
    build_model: Callable[[Config], nn.Module]
    load_data: Callable[[Config], TaskData]
    build_loss: Callable[[Config], LossFn]
    monitors: Callable                          # (cfg, tracker, ema, zero3) -> list of monitor.Hook
    # (cfg, model, evaluate.HeldOut, eval cfg) -> (videos, metrics, info)
    evaluate: Callable
    build_discriminator: Callable[[Config], nn.Module | None] = lambda cfg: None
    validate: Callable[[Config, str], None] = lambda cfg, path: None
    check_data: Callable[[Config], None] = lambda cfg: None   # before any worker starts; raises if absent


# -- dit -------------------------------------------------------------------------------------------

def _dit_data(cfg: Config) -> TaskData:
    where = latent_dir(cfg.data.root, cfg.data.vae_id, cfg.data.split)
    manifest = read_json(join(where, "_manifest.json"))
    check_vae(cfg.data.vae_id, cfg.data.vae_run, manifest)
    d, frames, text = cfg.diffusion, manifest["num_frames"], cfg.dit.condition == "text"
    if text:
        _check_text(cfg, manifest, where)
    dropout = cfg.dit.caption_dropout if text else cfg.dit.class_dropout

    def batch(raw: dict, gen: torch.Generator) -> dict:
        check_token_norms(raw["x0"], where)
        if not text and raw["y"].max() >= cfg.dit.num_classes:
            raise ValueError(f"label {int(raw['y'].max())} in {where} ≥ "
                             f"dit.num_classes={cfg.dit.num_classes}")
        x0 = raw["x0"] * d.scale_factor
        B, F = x0.shape[:2]
        t = sample_timesteps(d.timestep_scheduler, B, F, d.num_timesteps, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        drop = torch.rand(B, generator=gen) < dropout
        y = TextCondition(raw["text_tokens"], raw["text_mask"].bool(), raw["text_pooled"]) if text \
            else raw["y"].long()
        return {"x0": x0, "y": y, "t": t, "noise": noise, "drop": drop}

    return TaskData(ShardSet.from_dir(where), latent_text_sample if text else latent_sample, batch,
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
    fs, null = fsspec.core.url_to_fs(join(where, "_null_caption.npz"))
    if not fs.exists(null):
        raise ValueError(f"{where}/_null_caption.npz (CFG's null caption) is missing: encode the latents "
                         "again with tools/encode_latents.py --text-encoder")
    if (t["dim"], t["tokens"]) != (cfg.dit.text_dim, cfg.dit.text_tokens):
        raise ValueError(f"the captions under {where} are {t['tokens']} tokens × {t['dim']} "
                         f"({t['encoder']}): set dit.text_tokens={t['tokens']} dit.text_dim={t['dim']}")


def _dit_model(cfg: Config) -> DiT:
    """The DiT; a text DiT gets the null caption its latents were encoded with (when they are
    reachable: a trained run's state dict carries it too)."""
    model = DiT(cfg.dit)
    if cfg.dit.condition == "text":
        null = join(latent_dir(cfg.data.root, cfg.data.vae_id, cfg.data.split), "_null_caption.npz")
        try:
            with fsspec.open(null, "rb") as f:
                z = load_npz(f.read())
        except FileNotFoundError:
            return model
        one = {k: torch.from_numpy(v)[None] for k, v in z.items()}   # one caption: a batch of 1
        model.y_embedder.set_null(TextCondition(one["tokens"].float(), one["mask"], one["pooled"].float()))
    return model


def _dit_loss(cfg: Config) -> LossFn:
    diffusion = make_diffusion(cfg.diffusion)

    def loss(models: Models, b: dict, step: int) -> tuple[dict, dict]:
        value, per_frame = dit_loss(models.model, diffusion, b["x0"], b["y"], b["t"], b["noise"], b["drop"])
        buckets = bucket_losses(per_frame, b["t"], diffusion.num_timesteps)
        return {"model": value}, {"loss": value.detach(), **buckets}

    return loss


def _dit_monitors(cfg: Config, tracker, ema, zero3: bool) -> list:
    from .monitor import DiTEvaluator, SampleGrid

    hooks = [DiTEvaluator(cfg, tracker, ema, zero3)] if cfg.train.eval_every else []
    return hooks + ([SampleGrid(cfg, tracker, ema, zero3)] if cfg.train.sample_every else [])


def _dit_check_data(cfg: Config) -> None:
    """The latents ``data.vae_id`` exist under ``data.root`` (their manifest is written last).

    Raises:
        FileNotFoundError: naming the vae_id, where it was looked for and the vae_ids that exist.
    """
    where = latent_dir(cfg.data.root, cfg.data.vae_id, cfg.data.split)
    if read_json(join(where, "_manifest.json")) is None:
        found = available_vae_ids(cfg.data.root)
        raise FileNotFoundError(f"no latents data.vae_id={cfg.data.vae_id!r} for split {cfg.data.split!r}: "
                                f"{where}/_manifest.json does not exist (latents under {cfg.data.root}: "
                                f"{found or 'none'}); encode them with tools/encode_latents.py")


def _dit_evaluate(*args) -> tuple:
    from .evaluate import evaluate_dit_run  # evaluate imports this module

    return evaluate_dit_run(*args)


def _dit_validate(cfg: Config, path: str) -> None:
    if not cfg.data.vae_id:
        raise ValueError(f"{path}: data.vae_id is empty; set it to the vae_id that "
                         "tools/encode_latents.py printed")
    if cfg.train.eval_every and not Path(cfg.eval.local).is_file():
        raise FileNotFoundError(f"{path}: train.eval_every={cfg.train.eval_every} needs eval.local, the "
                                f"ucf101_local feature network ({cfg.eval.local} not found): train it with "
                                "`python -m ardscale.metrics.local --root DATA --out PATH`, or set "
                                "train.eval_every=0")


# -- vae -------------------------------------------------------------------------------------------

def _vae_data(cfg: Config) -> TaskData:
    shards = ShardSet.from_dir(join(cfg.data.root, "videos", cfg.data.split))
    k = cfg.data.clip_frames or json.loads(next(read_shard(shards.urls[0]))["json"])["num_frames"]
    return TaskData(shards, partial(video_sample, frames=cfg.data.clip_frames),
                    lambda raw, gen: {"clips": to_model_range(raw["clips"])}, k * cfg.vae.num_patches)


def _vae_loss(cfg: Config) -> LossFn:
    objective = VAELoss.from_config(cfg.vae_loss)

    def loss(models: Models, b: dict, step: int) -> tuple[dict, dict]:
        clips = b["clips"]                                                      # (B, F, 3, H, W)
        last_conv = models.module.pixel_head.conv_out    # VQGAN's "last layer" for the adaptive weight
        with capture_input(last_conv) as last:
            fake = models.model(clips).float()
        real = clips.flatten(0, 1)
        gan = objective.gan_on(step, models.disc is not None)
        g_loss, parts = objective.generator(fake, real, models.disc_frozen if gan else None,
                                            last.get("input"), last_conv)
        losses = {"model": g_loss}
        if gan:
            losses["disc"] = parts["d_loss"] = objective.discriminator(models.disc, real, fake.flatten(0, 1))
        return losses, {"loss": g_loss.detach(), **{k: v.detach() for k, v in parts.items()}}

    return loss


def _vae_discriminator(cfg: Config) -> nn.Module | None:
    c = cfg.vae_loss
    return PatchDiscriminator(cfg.vae.in_channels, c.disc_channels,
                              c.disc_layers) if c.adversarial > 0 else None


def _vae_monitors(cfg: Config, tracker, ema, zero3: bool) -> list:
    from .monitor import VAEEvaluator

    return [VAEEvaluator(cfg, tracker)]


def _vae_check_data(cfg: Config) -> None:
    """Video shards exist under ``{data.root}/videos/{data.split}``.

    Raises:
        FileNotFoundError: none there (naming the folder and the shard job).
    """
    where = join(cfg.data.root, "videos", cfg.data.split)
    if not list_shards(where):
        raise FileNotFoundError(f"no video shards under {where}: make them with data_prep/shard_videos.py")


def _vae_evaluate(*args) -> tuple:
    from .evaluate import evaluate_vae_run

    return evaluate_vae_run(*args)


def _vae_validate(cfg: Config, path: str) -> None:
    c = cfg.vae_loss
    if c.perceptual <= 0:   # LPIPS is on only with both weight files present: nothing downloads
        return
    for key in ("perceptual_vgg", "perceptual_lin"):
        file = getattr(c, key)
        if not file or not Path(file).is_file():
            why = "not set" if not file else f"{file} not found"
            raise ValueError(f"{path}: vae_loss.perceptual={c.perceptual} needs vae_loss.{key}, a local "
                             f"weight file ({why}; nothing is downloaded). Set vae_loss.perceptual_vgg "
                             "(torchvision vgg16 .pth) and vae_loss.perceptual_lin (LPIPS "
                             "vgg.pth), or opt out of the perceptual loss with vae_loss.perceptual=0")


TASKS: dict[str, TaskSpec] = {
    "dit": TaskSpec("dit", _dit_model, _dit_data, _dit_loss, _dit_monitors, _dit_evaluate,
                    validate=_dit_validate, check_data=_dit_check_data),
    "vae": TaskSpec("vae", lambda cfg: ARVAE(cfg.vae), _vae_data, _vae_loss, _vae_monitors, _vae_evaluate,
                    build_discriminator=_vae_discriminator, validate=_vae_validate,
                    check_data=_vae_check_data),
}


def get_task(name: str) -> TaskSpec:
    """The registered :class:`TaskSpec` called ``name``.

    Raises:
        ValueError: no such task (the known ones are named).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: expected one of {sorted(TASKS)}")
    return TASKS[name]


def load_trained(run_dir: str, which: str | None = None, task: str | None = None):
    """Model of a training run in eval mode, built from its saved ``config.yaml`` (EMA weights
    when the run kept an EMA).

    Returns:
        ``(cfg, model, tag, digest)``: the run's :class:`~ardscale.config.Config`, its task's model
        with the tag's fp32 weights, the tag, and the first 12 hex digits of a sha256 over the
        weights (identifies e.g. the VAE behind a latent dataset).
    Raises:
        FileNotFoundError: no ``config.yaml`` or no checkpoint in ``run_dir``.
        ValueError: ``task`` given and the run is of another task.
    """
    import yaml

    cfg_file = Path(run_dir) / "config.yaml"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{run_dir}: not a training run (no config.yaml)")
    cfg = from_dict(yaml.safe_load(cfg_file.read_text()))
    if task is not None and cfg.task != task:
        raise ValueError(f"{run_dir} is a {cfg.task!r} run; a {task!r} run is needed here")
    state, tag = checkpoint.load_weights(run_dir, which, ema=True)
    model = get_task(cfg.task).build_model(cfg)
    model.load_state_dict(state)
    return cfg, model.eval(), tag, checkpoint.weights_digest(state)
