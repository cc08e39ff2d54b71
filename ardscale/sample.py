"""Sample videos from a trained DiT: ``python -m ardscale.sample RUN_DIR [options]``.

Runs the AD scheduler (Eq. 5, ``--s``) over ``--steps`` DDIM steps with classifier-free guidance,
decodes with the AR-VAE that produced the training latents, writes ``samples.mp4`` and
``samples.gif`` (a grid, one cell per sample) and logs both to the run's MLflow run.

``--frames`` may exceed the training length: the DiT and the VAE decoder then slide a window of
the training length over frames. ``--context K`` continues real videos: the first K frames are
the latents of clips from ``--context-split`` (encoded by tools/encode_latents.py), and their
labels are used. A text DiT (``dit.condition=text``) samples one video per ``--prompt "…"``, the
prompts encoded by the text encoder its latents were made with.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from .data.loader import latent_dir, load_latents
from .data.shards import join, list_shards, read_json, read_shard
from .data.transforms import to_uint8
from .data.video import encode_mp4, video_grid, write_gif
from .diffusion.sampler import sample
from .diffusion.schedule import make_diffusion
from .engine.tracking import Tracker
from .tasks import load_trained


def trained_classes(cfg) -> list[int]:
    """The classes of the training split (its shard report); empty when the report is missing or
    names no class (captioned videos without a ``label`` are class -1)."""
    report = read_json(join(cfg.data.root, "videos", cfg.data.split, "_report.json"), {})
    return sorted(int(k) for k in report.get("classes", {}) if int(k) >= 0)


def default_labels(cfg, n: int) -> torch.Tensor:
    """Cycle through the classes present in the training split's shard report."""
    classes = trained_classes(cfg) or [0]
    return torch.tensor([classes[i % len(classes)] for i in range(n)])


def default_prompts(cfg, n: int) -> list[str]:
    """``n`` captions spread over the first ``4·n`` distinct captions of the video shards of the
    held-out split (``eval.split``), else of the training split; shards are read only until those
    are found (the shard job mixes videos over shards, so the first shards hold varied ones).

    Raises:
        ValueError: neither split's shards carry captions (shard them with ``--source captions``).
    """
    for split in (cfg.eval.split, cfg.data.split):
        found: dict[str, None] = {}                            # distinct, in shard order
        for url in list_shards(join(cfg.data.root, "videos", split)):
            captions = (json.loads(s["json"]).get("caption") for s in read_shard(url))
            found.update((c, None) for c in captions if c)
            if len(found) >= 4 * n:
                break
        if found:
            found = list(found)
            return [found[i] for i in torch.linspace(0, len(found) - 1, n).round().long().tolist()]
    raise ValueError(f"no captions in the video shards of {cfg.eval.split!r} or {cfg.data.split!r} under "
                     f"{cfg.data.root}: shard the videos with data_prep/shard_videos.py --source captions")


def context_latents(cfg, split: str, num_frames: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num_frames`` latents ``(n, k, L, D)`` (DiT scale) and labels of n random clips
    of ``split``."""
    lat, labels, _ = load_latents(cfg.data.root, cfg.data.vae_id, split)
    if num_frames >= lat.shape[1] + 1:
        raise ValueError(f"--context {num_frames} exceeds the {lat.shape[1]} frames of the {split} latents")
    pick = torch.randperm(len(lat), generator=torch.Generator().manual_seed(seed))[:n]
    return lat[pick, :num_frames] * cfg.diffusion.scale_factor, labels[pick]


def decode_frames(vae, z: torch.Tensor, scale_factor: float, window: int | None = None) -> np.ndarray:
    """DiT-space latents ``(B, F, L, D)`` → uint8 frames ``(B, F, H, W, 3)`` through the AR-VAE decoder."""
    with torch.no_grad():
        return to_uint8(vae.decode(z / scale_factor, window)).numpy()


def write_grid(frames: np.ndarray, out: Path, fps: float) -> None:
    """``samples.mp4`` and ``samples.gif`` (a grid, 4 videos per row) and ``samples.npy`` under ``out``."""
    grid = video_grid(frames, cols=min(4, len(frames)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.mp4").write_bytes(encode_mp4(grid, fps))
    write_gif(str(out / "samples.gif"), grid, fps)
    np.save(out / "samples.npy", frames)


def latent_manifest(cfg) -> dict:
    """The manifest of a DiT run's training latents (VAE, frames, text encoder).

    Raises:
        FileNotFoundError: it is missing.
    """
    manifest = read_json(join(latent_dir(cfg.data.root, cfg.data.vae_id, cfg.data.split), "_manifest.json"))
    if manifest is None:
        raise FileNotFoundError(f"latent manifest of vae_id={cfg.data.vae_id} not found under "
                                f"{cfg.data.root}")
    return manifest


def latent_vae(cfg):
    """The AR-VAE that made a DiT run's latents (named by their manifest), and the manifest.

    Raises:
        FileNotFoundError: the latent manifest is missing.
    """
    manifest = latent_manifest(cfg)
    return load_trained(manifest["vae_run"], manifest["vae_tag"])[1], manifest


def video_fps(cfg) -> float:
    """Frames per second of the run's video shards (their ``_report.json``; 8 when absent)."""
    report = read_json(join(cfg.data.root, "videos", cfg.data.split, "_report.json"), {})
    return report.get("params", {}).get("fps", 8.0)


def conditions(cfg, manifest: dict, labels: list[int] | None, prompts: list[str] | None, n: int):
    """What the samples are conditioned on: class labels ``(n,)`` (given, or cycling through the
    trained classes), or for a text DiT the prompts encoded by the text encoder its latents name.

    Raises:
        ValueError: prompts for a class DiT, or a text DiT without prompts.
    """
    if cfg.dit.condition != "text":
        if prompts:
            raise ValueError("--prompt needs a text DiT (dit.condition=text); this one takes --labels")
        return torch.tensor(labels) if labels else default_labels(cfg, n)
    if not prompts:
        raise ValueError("a text DiT samples from prompts: give --prompt \"…\" (once per video)")
    return encode_prompts(cfg, prompts, manifest)


def encode_prompts(cfg, prompts: list[str], manifest: dict | None = None):
    """A text DiT's ``prompts`` encoded by the text encoder its latents name (``manifest``, read
    when not given) → :class:`~ardscale.models.dit.TextCondition` of ``len(prompts)``."""
    from .models.text import TextEncoder

    t = (manifest or latent_manifest(cfg))["text"]
    return TextEncoder(t["encoder"], t["path"], t["tokens"]).encode(prompts)


def generate(run_dir: str, num_samples: int = 8, num_steps: int = 50, s: int = 2, cfg_scale: float = 2.0,
             num_frames: int | None = None, labels: list[int] | None = None, seed: int = 0,
             out_dir: str | None = None, log_mlflow: bool = True, context: int = 0,
             context_split: str = "test",
             window: int | None = None, kv_cache: bool = True, eta: float = 0.0,
             clip_x0: float = 0.0, prompts: list[str] | None = None) -> dict:
    """Generate, decode and write a sample grid; returns paths, labels (or prompts) and timings.

    Args:
        num_frames: frames to generate (default: the training clip length).
        context: continue this many real frames of ``context_split`` clips (0 = from noise; class
            DiT only).
        window: frames per DiT/decoder call (default: the training clip length).
        prompts: a text DiT's prompts, one video each (then ``num_samples`` is their number).
    Raises:
        FileNotFoundError: run without checkpoint, or its latent manifest (hence VAE) is missing.
        ValueError: see :func:`conditions`.
    """
    cfg, dit, tag, _ = load_trained(run_dir, task="dit")
    vae, manifest = latent_vae(cfg)
    y = conditions(cfg, manifest, labels, prompts, num_samples)
    ctx = None
    if context:
        ctx, y = context_latents(cfg, context_split, context, num_samples, seed)
    gen = torch.Generator().manual_seed(seed)
    window = window or manifest["num_frames"]
    t0 = time.perf_counter()
    z = sample(dit, make_diffusion(cfg.diffusion), y, num_frames or manifest["num_frames"], num_steps, s,
               cfg_scale, eta,
               generator=gen, progress=True, context=ctx, window=window, kv_cache=kv_cache, clip_x0=clip_x0)
    t1 = time.perf_counter()
    frames = decode_frames(vae, z, cfg.diffusion.scale_factor, window)
    t2 = time.perf_counter()
    if ctx is not None:  # a white bar marks the given frames
        frames[:, :context, :2] = 255
    out = Path(out_dir or Path(run_dir) / "samples" / f"{tag}-s{s}-cfg{cfg_scale}")
    write_grid(frames, out, video_fps(cfg))
    info = {"mp4": str(out / "samples.mp4"), "gif": str(out / "samples.gif"),
            **({"prompts": prompts} if prompts else {"labels": y.tolist()}),
            "checkpoint": tag, "s": s, "steps": num_steps, "cfg_scale": cfg_scale, "frames": frames.shape[1],
            "context": context, "window": window, "kv_cache": kv_cache,
            "generate_s": round(t1 - t0, 3), "decode_s": round(t2 - t1, 3), "pixel_std": float(frames.std())}
    (out / "samples.json").write_text(json.dumps(info, indent=2))
    run_id_file = Path(run_dir) / "mlflow_run_id"
    if log_mlflow and run_id_file.is_file():
        tracker = Tracker(cfg.tracking.tracking_uri, cfg.tracking.experiment)
        tracker.start(run_id_file.read_text().strip(), "", {})
        for name in ("samples.mp4", "samples.gif", "samples.json"):
            tracker.log_artifact(str(out / name), f"samples/{out.name}")
        tracker.end()
        info["mlflow_run_id"] = tracker.run_id
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="run dir of a DiT training run")
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps N")
    p.add_argument("--s", type=int, default=2, help="AD timestep difference (0 = synchronous)")
    p.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--frames", type=int, default=None, help="frames to generate (default: training F)")
    p.add_argument("--window", type=int, default=None, help="frames per DiT call (default: training F)")
    p.add_argument("--context", type=int, default=0, help="continue this many real frames (0 = off)")
    p.add_argument("--context-split", default="test", help="split whose latents give the context")
    p.add_argument("--no-kv-cache", action="store_true", help="recompute finished frames every step")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (1 = DDPM posterior noise)")
    p.add_argument("--clip-x0", type=float, default=0.0, help="clamp x0 estimates to ±this (0 = off)")
    p.add_argument("--labels", type=str, default=None, help="comma-separated class labels")
    p.add_argument("--prompt", action="append", default=None,
                   help="a text DiT's prompt (repeat it: one video each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    labels = [int(x) for x in a.labels.split(",")] if a.labels else None
    info = generate(a.run_dir, a.num_samples, a.steps, a.s, a.cfg, a.frames, labels, a.seed, a.out,
                    context=a.context, context_split=a.context_split, window=a.window,
                    kv_cache=not a.no_kv_cache, eta=a.eta, clip_x0=a.clip_x0, prompts=a.prompt)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
