"""What the shards hold, for training and evaluation: per-sample decoders for the training stream
(:mod:`ardscale.data.stream`), whole held-out splits in memory (evaluation, sampling contexts: small
by construction), and the checks that latents fit the VAE and the DiT."""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import fsspec
import numpy as np
import torch
from tqdm import tqdm

from ..engine import checkpoint
from .folders import MANIFEST, latent_dir, latents_root, video_dir
from .shards import join, list_shards, load_npy, load_npz, read_json, read_shard
from .video import VideoReadError, decode_mp4


def decoded_samples(url: str, failed: list[str]) -> Iterator[tuple[dict, np.ndarray]]:
    """``(sample, clip (F, H, W, 3) uint8)`` for each sample of a video shard whose mp4 decodes;
    the others are appended to ``failed`` as ``"url:key: reason"`` and skipped."""
    for s in read_shard(url):
        try:
            clip = decode_mp4(s["mp4"])
        except (VideoReadError, KeyError) as e:
            failed.append(f"{url}:{s['__key__']}: {e}")
            continue
        yield s, clip


def load_video_clips(root: str, split: str,
                     meta: list[dict] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All clips of ``{root}/videos/{split}`` → (videos ``(N, F, H, W, 3)`` uint8, labels ``(N,)`` long).

    ``meta``: when given, each kept clip's json (label, caption, source …) is appended to it, in order.
    A sample whose mp4 does not decode is skipped and reported (count and keys) on stderr.
    Raises:
        FileNotFoundError: no shards there (run data_prep/shard_videos.py first).
    """
    shards = list_shards(video_dir(root, split))
    if not shards:
        raise FileNotFoundError(f"no video shards under {video_dir(root, split)}: "
                                "run data_prep/shard_videos.py")
    videos, labels, bad = [], [], []
    for url in tqdm(shards, desc="loading video shards", leave=False):
        for s, clip in decoded_samples(url, bad):
            info = json.loads(s["json"])
            videos.append(clip)
            labels.append(info["label"])
            if meta is not None:
                meta.append(info)
    if bad:
        print(f"skipped {len(bad)} undecodable samples: {bad[:5]}", file=sys.stderr)
    if not videos:
        raise ValueError(f"no decodable clips under {video_dir(root, split)}")
    return torch.from_numpy(np.stack(videos)), torch.tensor(labels)


def available_vae_ids(root: str) -> list[str]:
    """The vae_ids that have a latents folder under ``{root}/latents`` (any fsspec URL)."""
    fs, path = fsspec.core.url_to_fs(latents_root(root))
    if not fs.isdir(path):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


def load_latents(root: str, vae_id: str, split: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """All latents of ``{root}/latents/{vae_id}/{split}`` → (``(N, F, L, D)`` float32, labels ``(N,)``,
    manifest).

    Raises:
        FileNotFoundError: no latent shards or manifest (run tools/encode_latents.py first).
    """
    where = latent_dir(root, vae_id, split)
    manifest = read_json(join(where, MANIFEST))
    shards = list_shards(where)
    if manifest is None or not shards:
        raise FileNotFoundError(f"no latent shards/manifest under {where}: run tools/encode_latents.py")
    lat, labels = [], []
    for url in shards:
        for s in read_shard(url):
            lat.append(load_npy(s["npy"]).astype(np.float32))
            labels.append(json.loads(s["json"])["label"])
    latents = torch.from_numpy(np.stack(lat))
    check_token_norms(latents, where)
    return latents, torch.tensor(labels), manifest


def check_token_norms(latents: torch.Tensor, where: str, rtol: float = 0.01) -> None:
    """The AR-VAE latent contract (:mod:`ardscale.models.arvae`): every token of ``(..., D)``
    latents has L2 norm √D (within ``rtol``: float16 storage rounds it).

    Raises:
        ValueError: a token off that sphere (latents from an AR-VAE without the contract).
    """
    expected = latents.shape[-1] ** 0.5
    dev = (latents.norm(dim=-1) - expected).abs().max().item()
    if dev > rtol * expected:
        raise ValueError(f"latents under {where} have tokens of norm off √D={expected:g} by up to {dev:.3g}: "
                         "they predate the AR-VAE's normalised latents; re-encode with "
                         "tools/encode_latents.py")


def check_latent_scale(latents: torch.Tensor, scale_factor: float, where: str, rtol: float = 1e-3) -> None:
    """The contract where latents meet the DiT: tokens of ``scale_factor · latents`` ``(..., D)`` have
    mean L2 norm 1 (within ``rtol``; the AR-VAE normalises exactly and float16 rounding averages out).

    That is the official code's DiT input: it L2-normalises every ``scale_factor · z`` token
    (``norm_preprocess: True`` in its DiT configs, ``F.normalize`` after the rescale in
    ``_preprocess_batch``, src/ardiff/base.py), so there the factor cannot change the scale; here
    it does, and only ``scale_factor = 1/√D`` reproduces it (paper Sec. 4.1: 0.5 for D = 4; the
    demo's D = 16 takes 0.25). Hence an error, not a warning.

    Raises:
        ValueError: the measured norm off 1 (naming ``diffusion.scale_factor``, the measured norm and
            the factor that fits).
    """
    mean = latents.float().norm(dim=-1).mean().item()
    if abs(scale_factor * mean - 1.0) > rtol:
        fit = 1 / max(mean, 1e-12)
        raise ValueError(f"diffusion.scale_factor={scale_factor:g} puts the tokens of the latents under "
                         f"{where} at mean L2 norm {scale_factor * mean:.4g} before the DiT; expected 1 (the "
                         f"official unit-norm tokens): set diffusion.scale_factor={fit:.4g} (1/√D)")


def latent_sample(sample: dict, seed: int) -> dict:
    """A latent shard's sample → ``{"x0": (F, L, D) float32, "y": label}`` (in loader workers)."""
    return {"x0": load_npy(sample["npy"]).astype(np.float32), "y": json.loads(sample["json"])["label"]}


def latent_text_sample(sample: dict, seed: int) -> dict:
    """:func:`latent_sample` plus the encoded caption (``tools/encode_latents.py --text-encoder``):
    ``text_tokens (S, C)`` / ``text_pooled (C,)`` float32, ``text_mask (S,)`` bool.

    Raises:
        KeyError: the sample has no ``txt.npz`` (latents encoded without ``--text-encoder``).
    """
    if "txt.npz" not in sample:
        raise KeyError(f"{sample['__key__']}: no encoded caption (txt.npz); encode the latents with "
                       "tools/encode_latents.py --text-encoder")
    text = load_npz(sample["txt.npz"])
    return {**latent_sample(sample, seed), "text_tokens": text["tokens"].astype(np.float32),
            "text_mask": text["mask"], "text_pooled": text["pooled"].astype(np.float32)}


def video_sample(sample: dict, seed: int, frames: int = 0) -> dict:
    """A video shard's sample → ``{"clips": (frames, H, W, 3) uint8}``: a run of ``frames``
    consecutive frames starting where ``seed`` says (``frames <= 0``: the whole clip). When the
    sample's json gives its ``num_frames``, decoding stops at the run's end (stage 1 keeps one frame).

    Raises:
        VideoReadError: the mp4 does not decode, or has fewer frames than its json says.
    """
    total = json.loads(sample.get("json") or b"{}").get("num_frames")
    start = lambda n: int(np.random.default_rng(seed).integers(n - frames + 1))
    if frames <= 0 or total is None or frames >= total:
        clip = decode_mp4(sample["mp4"])
        if not 0 < frames < len(clip):
            return {"clips": clip}
        first = start(len(clip))
        return {"clips": clip[first:first + frames]}
    first = start(total)
    clip = decode_mp4(sample["mp4"], stop=first + frames)[first:]
    if len(clip) != frames:
        raise VideoReadError(f"sample {sample.get('__key__')}: fewer frames than its json's {total}")
    return {"clips": clip}


def check_vae(vae_id: str, vae_run: str, manifest: dict) -> None:
    """Refuse latents that another VAE produced than the one the config names.

    Raises:
        ValueError: the manifest's ``vae_id`` differs from ``vae_id`` (``data.vae_id``), or from
            the digest of the newest checkpoint of ``vae_run`` (``data.vae_run``, when set).
    """
    got = manifest.get("vae_id")
    if got != vae_id:
        raise ValueError(f"latents under vae_id={vae_id} were made by VAE {got!r} (per their _manifest.json)")
    if vae_run:
        digest = checkpoint.weights_digest(checkpoint.load_weights(vae_run, ema=True)[0])
        if digest != got:
            raise ValueError(f"data.vae_run={vae_run} has weights {digest}, but the latents come from "
                             f"VAE {got}: re-encode with tools/encode_latents.py --vae-run {vae_run}")
