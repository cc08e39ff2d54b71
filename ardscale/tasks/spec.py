"""What a task is: the protocol each training recipe fills in (as torchtitan's ``ModelSpec``).

A :class:`TaskSpec` says how to build the task's model (and GAN discriminator), load its data and
compute its losses (pure: no backward, no optimizer step), and checks before any worker starts
that the config and the data fit (``preflight``). Watching a run train is
:mod:`ardscale.monitor`'s business, judging a trained one :mod:`ardscale.evaluate`'s.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..config import Config
from ..data.stream import ShardSet


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
    # training FLOPs per sample for MFU, or a function of the global step (a GAN's discriminator
    # joins at its start step); engine/flops.py
    flops_per_sample: float | Callable[[int], float] | None = None


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


def no_discriminator(cfg: Config) -> None:
    """A task trained without a GAN discriminator."""
    return


def no_pretrained(cfg: Config, model: nn.Module) -> None:
    """A task whose fresh runs start from the model's own initialisation."""
    return


@dataclass(frozen=True)
class TaskSpec:
    """What a task builds and computes; every callable takes the run's :class:`Config`.

    ``preflight`` runs in ``train.launch`` before any worker starts: it raises ValueError /
    FileNotFoundError, naming the config key or the folder, when the config or the data do not fit.
    ``load_pretrained(cfg, model)`` puts pretrained weights into the built model of a fresh run (one
    that resumes has its checkpoint's), before the engine takes it.
    """

    name: str
    build_model: Callable[[Config], nn.Module]
    load_data: Callable[[Config], TaskData]
    build_loss: Callable[[Config], LossFn]
    preflight: Callable[[Config], None]
    build_discriminator: Callable[[Config], nn.Module | None] = no_discriminator
    load_pretrained: Callable[[Config, nn.Module], None] = no_pretrained
