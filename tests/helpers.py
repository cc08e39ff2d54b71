"""What several test files build: latent shards as tools/encode_latents.py writes them, and sampling
settings."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ardscale.config import SampleConfig
from ardscale.data.folders import MANIFEST, latent_dir
from ardscale.data.shards import npy_bytes, sidecar_url, write_json, write_shard
from ardscale.models.dit import DiT, DiTConfig

TINY_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def sphere(z: np.ndarray) -> np.ndarray:
    """Latents ``(..., D)`` scaled to tokens of norm √D (the AR-VAE's contract), float16."""
    d = z.shape[-1]
    return (d ** 0.5 * z / np.linalg.norm(z, axis=-1, keepdims=True)).astype(np.float16)


def write_latent_shards(root, shards: int = 2, per_shard: int = 12, classes: int = 3, frames: int = 4,
                        vae_id: str = "fake", sidecars: bool = False, seed: int = 0) -> str:
    """``shards`` latent shards of ``per_shard`` clips (F=``frames``, L=32, D=4) under
    ``{root}/latents/{vae_id}/train`` (a local folder or an fsspec URL), labels cycling over
    ``classes`` with a class-dependent mean (label - 1), so a DiT can learn them; the manifest is
    written last. Returns the split's folder."""
    where = latent_dir(str(root), vae_id, "train")
    rng = np.random.default_rng(seed)
    for s in range(shards):
        rows = []
        for k in range(per_shard):
            label = (s * per_shard + k) % classes
            z = sphere(rng.normal(label - 1.0, 1.0, size=(frames, 32, 4)))
            rows.append({"__key__": f"clip{s}_{k:03d}", "npy": npy_bytes(z), "json": {"label": label}})
        url = f"{where}/shard-{s:06d}.tar"
        write_shard(url, rows)
        if sidecars:
            write_json(sidecar_url(url), {"clips": per_shard})
    write_json(f"{where}/{MANIFEST}", {"vae_id": vae_id, "num_frames": frames})
    return where


def sc(frames: int, steps: int, s: int = 0, cfg_scale: float = 1.0, **kw) -> SampleConfig:
    """Sampling settings for the sampler's tests: ``frames`` F, ``steps`` N, AD ``s``, no CFG by default."""
    return SampleConfig(s=s, steps=steps, cfg_scale=cfg_scale, frames=frames, **kw)


_MLFLOW_TEMPLATE: list[Path] = []


def empty_mlflow_store(path: Path) -> None:
    """An empty MLflow sqlite store at ``path`` unless one is there: a copy of one this process made
    once. MLflow builds a new store with ~2-3 s of schema migrations; the suite makes ~30 of them.
    (test_tracking and the pipeline tests still have MLflow create theirs.)"""
    if path.exists():
        return
    if not _MLFLOW_TEMPLATE:
        import mlflow

        where = Path(tempfile.mkdtemp(prefix="ardscale-mlflow-"))
        atexit.register(shutil.rmtree, where, ignore_errors=True)
        mlflow.MlflowClient(f"sqlite:///{where}/mlruns.db").search_experiments()
        _MLFLOW_TEMPLATE.append(where / "mlruns.db")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_MLFLOW_TEMPLATE[0], path)


def mlflow_uri(folder) -> str:
    """``sqlite:///{folder}/mlruns.db``, an empty store made there first (:func:`empty_mlflow_store`)."""
    empty_mlflow_store(Path(folder) / "mlruns.db")
    return f"sqlite:///{folder}/mlruns.db"


def overrides(root, run_dir, **kw) -> list[str]:
    """``key=value`` overrides of configs/tiny.yaml for a training run on the latent shards under
    ``root``, writing to ``run_dir`` with its own sqlite MLflow store; ``kw`` adds or replaces keys.
    With ``tracking.enabled=false`` no store is made, so a test can check that MLflow wrote none."""
    tracking = str(kw.get("tracking.enabled", "true")).lower() != "false"
    uri = mlflow_uri(Path(run_dir).parent) if tracking else f"sqlite:///{Path(run_dir).parent}/mlruns.db"
    base = {"data.root": root, "data.vae_id": "fake", "train.run_dir": run_dir,
            "tracking.tracking_uri": uri, **kw}
    return [f"{k}={v}" for k, v in base.items()]


def random_dit(**kw) -> DiT:
    """A tiny DiT (``DiTConfig.tiny(**kw)``, eval mode) with every weight drawn from N(0, 0.05²):
    the zero-initialised adaLN and output layers too, so every frame matters."""
    torch.manual_seed(0)
    model = DiT(DiTConfig.tiny(**kw)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model
