"""Where a dataset root keeps its files: the one place that names them.

Every job reads and writes a data root (a local folder or an fsspec URL) through these names::

    {root}/videos/{split}/shard-NNNNNN.tar      data_prep/shard_videos.py (mp4 + json per clip)
    {root}/videos/{split}/_report.json          its report: classes, fps, skipped videos
    {root}/videos/{split}/_features/            cached I3D / Inception features of the real clips
    {root}/latents/{vae_id}/{split}/…tar        tools/encode_latents.py (npy latents per clip)
    {root}/latents/{vae_id}/{split}/_manifest.json     the VAE run and tag, frames, text encoder
    {root}/latents/{vae_id}/{split}/_null_caption.npz  CFG's null caption (text latents)

They sit in :mod:`ardscale.data` rather than :mod:`ardscale.runs` because the shard and encode jobs
(``data_prep/``, ``tools/``) and the loaders below the training stack need them too; the files of
a *run* folder are named in :mod:`ardscale.runs`.
"""
from __future__ import annotations

from .shards import join

REPORT = "_report.json"
MANIFEST = "_manifest.json"
NULL_CAPTION = "_null_caption.npz"
FEATURES = "_features"


def video_dir(root: str, split: str) -> str:
    """``{root}/videos/{split}``: a split's video shards."""
    return join(root, "videos", split)


def latents_root(root: str) -> str:
    """``{root}/latents``: one folder per vae_id."""
    return join(root, "latents")


def latent_dir(root: str, vae_id: str, split: str) -> str:
    """``{root}/latents/{vae_id}/{split}``: a split's latent shards made by one VAE."""
    return join(root, "latents", vae_id, split)
