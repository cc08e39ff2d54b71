"""A trained run and the data it was trained on.

A run folder (``train.run_dir``) holds::

    config.yaml          the composed config (saved by rank 0 at every start)
    mlflow_run_id        the MLflow run the training logs to (evaluations add to it)
    metrics.jsonl        one row per step; events.jsonl: starts, resumes, stops
    STOP                 a stop request (written by the driver or an operator)
    ckpt/step-NNNNNNNN/  DeepSpeed checkpoints (tags: :func:`ardscale.engine.checkpoint.tag`)
    eval/  samples/      evaluation reports and sample grids

:func:`load_trained` rebuilds a run's model from those files; :class:`RunData` reads, once, what
sampling needs from the data the run names (the latent manifest, its VAE, the trained classes,
fps, captions). The dataset root's own files are named in :mod:`ardscale.data.folders`.
"""
from __future__ import annotations

import json
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import yaml

from .config import Config, SampleConfig, from_dict
from .data.folders import MANIFEST, REPORT, latent_dir, video_dir
from .data.loader import check_latent_scale, load_latents
from .data.shards import join, list_shards, read_json, read_shard
from .data.transforms import to_uint8
from .engine import checkpoint
from .models.dit import TextCondition
from .models.text import TextEncoder
from .tasks import get_task

CONFIG_FILE = "config.yaml"
MLFLOW_RUN_ID = "mlflow_run_id"
METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
STOP_FILE = "STOP"


def mlflow_run_id(run_dir: str) -> str | None:
    """The MLflow run id a training run logged to, or None (no run there, or tracking never started)."""
    f = Path(run_dir) / MLFLOW_RUN_ID
    return f.read_text().strip() if f.is_file() else None


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
    cfg_file = Path(run_dir) / CONFIG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{run_dir}: not a training run (no {CONFIG_FILE})")
    cfg = from_dict(yaml.safe_load(cfg_file.read_text()))
    if task is not None and cfg.task != task:
        raise ValueError(f"{run_dir} is a {cfg.task!r} run; a {task!r} run is needed here")
    state, tag = checkpoint.load_weights(run_dir, which, ema=True)
    model = get_task(cfg.task).build_model(cfg)
    model.load_state_dict(state)
    return cfg, model.eval(), tag, checkpoint.weights_digest(state)


class RunData:
    """What a run's config names of its data, each file read once: the training split's shard
    report (classes, fps), and for a DiT run the latent manifest (frames, text encoder) and the
    AR-VAE it names (loaded on first use).

    Raises (on first use of what is missing):
        FileNotFoundError: the latent manifest (``manifest``, ``vae``, ``num_frames``).
    """

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.report = read_json(join(video_dir(cfg.data.root, cfg.data.split), REPORT), {})

    @cached_property
    def manifest(self) -> dict:
        """The manifest of a DiT run's training latents (VAE run and tag, frames, text encoder)."""
        d = self.cfg.data
        manifest = read_json(join(latent_dir(d.root, d.vae_id, d.split), MANIFEST))
        if manifest is None:
            raise FileNotFoundError(f"latent manifest of vae_id={d.vae_id} not found under {d.root}")
        return manifest

    @cached_property
    def vae(self):
        """The AR-VAE that made the training latents (named by their manifest), in eval mode."""
        return load_trained(self.manifest["vae_run"], self.manifest["vae_tag"])[1]

    @property
    def num_frames(self) -> int:
        """The training clip length F of the latents."""
        return self.manifest["num_frames"]

    @property
    def classes(self) -> list[int]:
        """The classes of the training split (its shard report); empty when the report is missing or
        names no class (captioned videos without a ``label`` are class -1)."""
        return sorted(int(k) for k in self.report.get("classes", {}) if int(k) >= 0)

    @property
    def fps(self) -> float:
        """Frames per second of the run's video shards (8 when the report is absent)."""
        return self.report.get("params", {}).get("fps", 8.0)

    def resolve(self, sc: SampleConfig) -> SampleConfig:
        """``sc`` with ``frames`` and ``window`` 0 replaced by the training length."""
        return replace(sc, frames=sc.frames or self.num_frames, window=sc.window or self.num_frames)

    def default_labels(self, n: int) -> torch.Tensor:
        """``(n,)`` long: cycling through the trained classes (class 0 when none is known)."""
        classes = self.classes or [0]
        return torch.tensor([classes[i % len(classes)] for i in range(n)])

    def default_prompts(self, n: int) -> list[str]:
        """``n`` captions spread over the first ``4·n`` distinct captions of the video shards of the
        held-out split (``eval.split``), else of the training split; shards are read only until
        those are found (the shard job mixes videos over shards, so the first shards hold varied ones).

        Raises:
            ValueError: neither split's shards carry captions (shard them with ``--source captions``).
        """
        d = self.cfg.data
        for split in (self.cfg.eval.split, d.split):
            found: dict[str, None] = {}                            # distinct, in shard order
            for url in list_shards(video_dir(d.root, split)):
                captions = (json.loads(s["json"]).get("caption") for s in read_shard(url))
                found.update((c, None) for c in captions if c)
                if len(found) >= 4 * n:
                    break
            if found:
                found = list(found)
                return [found[i] for i in torch.linspace(0, len(found) - 1, n).round().long().tolist()]
        raise ValueError(f"no captions in the video shards of {self.cfg.eval.split!r} or {d.split!r} under "
                         f"{d.root}: shard the videos with data_prep/shard_videos.py --source captions")

    def encode_prompts(self, prompts: list[str]) -> TextCondition:
        """A text DiT's ``prompts`` encoded by the text encoder its latents name → TextCondition of
        ``len(prompts)``."""
        t = self.manifest["text"]
        return TextEncoder(t["encoder"], t["path"], t["tokens"]).encode(prompts)

    def conditions(self, labels: list[int], prompts: list[str], n: int):
        """What ``n`` samples are conditioned on: class labels ``(n,)`` (given, or cycling through
        the trained classes), or for a text DiT its encoded ``prompts``.

        Raises:
            ValueError: prompts for a class DiT, or a text DiT without prompts.
        """
        if self.cfg.dit.condition != "text":
            if prompts:
                raise ValueError("prompts need a text DiT (dit.condition=text); this one takes labels=[…]")
            return torch.tensor(labels) if labels else self.default_labels(n)
        if not prompts:
            raise ValueError('a text DiT samples from prompts: give prompts=["…","…"] (one video each)')
        return self.encode_prompts(prompts)

    def context_latents(self, split: str, num_frames: int, n: int,
                        seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``num_frames`` latents ``(n, k, L, D)`` (DiT scale) and labels ``(n,)`` of n
        random clips of ``split``.

        Raises:
            ValueError: ``num_frames`` leaves nothing of the clips to continue; the latent scale
                contract broken (:meth:`to_dit`).
        """
        d = self.cfg.data
        lat, labels, _ = load_latents(d.root, d.vae_id, split)
        if num_frames >= lat.shape[1] + 1:
            raise ValueError(f"context={num_frames} exceeds the {lat.shape[1]} frames of the {split} latents")
        pick = torch.randperm(len(lat), generator=torch.Generator().manual_seed(seed))[:n]
        return self.to_dit(lat[pick, :num_frames], latent_dir(d.root, d.vae_id, split)), labels[pick]

    def to_dit(self, z: torch.Tensor, where: str) -> torch.Tensor:
        """AR-VAE latents ``(..., L, D)`` (tokens of norm √D) → the DiT's scale, ``scale_factor · z``.

        Raises:
            ValueError: those tokens are not unit-norm (:func:`~ardscale.data.loader.check_latent_scale`:
                ``diffusion.scale_factor`` is not 1/√D, or ``z`` is not the AR-VAE's), naming ``where``.
        """
        check_latent_scale(z, self.cfg.diffusion.scale_factor, where)
        return z * self.cfg.diffusion.scale_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor, window: int | None = None) -> np.ndarray:
        """DiT-space latents ``(B, F, L, D)`` → uint8 frames ``(B, F, H, W, 3)`` through the AR-VAE
        decoder (``window`` frames per call; None = the decoder's default)."""
        return to_uint8(self.vae.decode(z.float().cpu() / self.cfg.diffusion.scale_factor, window)).numpy()
