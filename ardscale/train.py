"""Training entry point: ``python -m ardscale.train CONFIG [key=value ...]``.

``task: vae`` trains the AR-VAE on video shards (reconstruction loss); ``task: dit`` trains the
causal DiT on latent shards with the paper's recipe: per-frame timesteps from the FoPP scheduler
(Alg. 1, non-decreasing), block-causal attention, x0-prediction MSE, label dropout for CFG.
Ray Train runs one DeepSpeed engine per worker (``scale.num_workers``; 0 = in this process).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import OmegaConf

from .config import Config, from_dict, load, to_dict
from .data.loader import StepSampler, load_latents, load_video_clips
from .diffusion.schedule import GaussianDiffusion
from .diffusion.timesteps import sample_timesteps
from .engine import checkpoint
from .engine.deepspeed import build_engine
from .engine.tracking import Tracker
from .models.arvae import ARVAE
from .models.dit import DiT


def make_diffusion(cfg: Config) -> GaussianDiffusion:
    d = cfg.diffusion
    return GaussianDiffusion(d.num_timesteps, d.beta_schedule, d.beta_start, d.beta_end, d.prediction)


def dit_loss(model, latents: torch.Tensor, labels: torch.Tensor, cfg: Config,
             diffusion: GaussianDiffusion, gen: torch.Generator) -> torch.Tensor:
    """MSE on FoPP-corrupted latents ``(B, F, L, D)`` (Sec. 3.2-3.3); the target is x0 as in the
    paper, or eps / v when ``diffusion.prediction`` says so."""
    B, Fr = latents.shape[:2]
    x0 = latents * cfg.diffusion.scale_factor
    t = sample_timesteps(cfg.diffusion.timestep_sampler, B, Fr, cfg.diffusion.num_timesteps, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    drop = torch.rand(B, generator=gen) < cfg.diffusion.class_dropout
    y = torch.where(drop, cfg.model.num_classes, labels)
    dev, dtype = model.device, next(model.parameters()).dtype
    x_t = diffusion.q_sample(x0, t, noise)
    pred = model(x_t.to(dev, dtype), t.to(dev), y.to(dev))
    return F.mse_loss(pred.float(), diffusion.target(x0, noise, t).to(dev))


def temporal_crop(videos: torch.Tensor, frames: int, gen: torch.Generator) -> torch.Tensor:
    """A random run of ``frames`` consecutive frames per clip: ``(B, F, ...)`` → ``(B, frames, ...)``."""
    B, F = videos.shape[:2]
    if frames <= 0 or frames >= F:
        return videos
    start = torch.randint(F - frames + 1, (B, 1), generator=gen)
    return videos[torch.arange(B)[:, None], start + torch.arange(frames)]


def vae_loss(model, videos: torch.Tensor) -> torch.Tensor:
    """L1 + L2 reconstruction of uint8 clips ``(B, F, H, W, 3)`` mapped to [-1, 1] (stage-1 loss)."""
    dtype = next(model.parameters()).dtype
    v = (videos.permute(0, 1, 4, 2, 3).float() / 127.5 - 1).to(model.device)
    rec = model(v.to(dtype)).float()
    return F.l1_loss(rec, v) + F.mse_loss(rec, v)


def build_task(cfg: Config):
    """Model, training tensors and a ``loss(engine, idx, gen)`` closure for ``cfg.task``."""
    if cfg.task == "vae":
        model = ARVAE(cfg.vae)
        videos, _ = load_video_clips(cfg.data.root, cfg.data.split)
        k = cfg.data.clip_frames or videos.shape[1]
        return model, len(videos), k * cfg.vae.num_patches, \
            lambda eng, idx, gen: vae_loss(eng, temporal_crop(videos[idx], k, gen))
    latents, labels, _ = load_latents(cfg.data.root, cfg.data.vae_id, cfg.data.split)
    if labels.max() >= cfg.model.num_classes:
        raise ValueError(f"label {int(labels.max())} ≥ model.num_classes={cfg.model.num_classes}")
    model, diffusion = DiT(cfg.model), make_diffusion(cfg)
    tokens = latents.shape[1] * latents.shape[2]
    return model, len(latents), tokens, \
        lambda eng, idx, gen: dit_loss(eng, latents[idx], labels[idx], cfg, diffusion, gen)


def _trim_metrics(path: Path, start: int) -> None:
    """Drop rows of steps >= ``start``: a crash after the last checkpoint repeats those steps."""
    if path.is_file():
        rows = [r for r in path.read_text().splitlines() if json.loads(r)["step"] < start]
        path.write_text("".join(r + "\n" for r in rows))


def train_worker(cfg_dict: dict) -> dict:
    """Per-worker loop (Ray Train ``train_loop_per_worker``, or in-process). Returns last metrics."""
    cfg = from_dict(cfg_dict)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model, num_samples, tokens_per_sample, loss_fn = build_task(cfg)
    if cfg.train.init_from:  # weights of a previous stage; this run's own checkpoint, if any, wins below
        model.load_state_dict(checkpoint.load_weights(cfg.train.init_from)[0])
    engine = build_engine(model, cfg, world)
    client = checkpoint.resume(engine, cfg.train.run_dir) or {}
    start = client.get("step", 0)
    tracker = Tracker(cfg.tracking.tracking_uri, cfg.tracking.experiment, enabled=rank == 0)
    run_id = tracker.start(client.get("mlflow_run_id"), cfg.tracking.run_name, cfg_dict)
    run_dir = Path(cfg.train.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        _trim_metrics(run_dir / "metrics.jsonl", start)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg_dict))
        (run_dir / "mlflow_run_id").write_text(run_id)
        if start == 0:
            tracker.log_artifact(str(run_dir / "config.yaml"))
    if dist.is_initialized():  # ranks > 0 learn the run id for the checkpoint from rank 0
        box = [run_id]
        dist.broadcast_object_list(box, src=0)
        run_id = box[0]
    sampler = StepSampler(num_samples, cfg.optim.micro_batch_size, cfg.optim.grad_accum, rank, world, cfg.train.seed)
    metrics = {}
    for step in range(start, cfg.train.steps):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(hash((cfg.train.seed, step, rank)) & 0x7FFF_FFFF)
        losses = []
        for idx in sampler.micro_batches(step):
            loss = loss_fn(engine, idx, gen)
            engine.backward(loss)
            engine.step()
            losses.append(loss.detach().float())
        loss = torch.stack(losses).mean()
        dist.all_reduce(loss)
        dt = time.perf_counter() - t0
        samples = cfg.optim.micro_batch_size * cfg.optim.grad_accum * world
        metrics = {"loss": loss.item() / world, "lr": engine.get_lr()[0], "step_time_s": dt,
                   "samples_per_s": samples / dt, "tokens_per_s": samples * tokens_per_sample / dt}
        if rank == 0:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
            if step % cfg.train.log_every == 0 or step + 1 == cfg.train.steps:
                tracker.log_metrics(metrics, step)
                print(f"step {step:6d} loss {metrics['loss']:.5f} {metrics['samples_per_s']:.1f} samples/s",
                      flush=True)
        if (step + 1) % cfg.train.ckpt_every == 0 or step + 1 == cfg.train.steps:
            checkpoint.save(engine, cfg.train.run_dir, step + 1, {"mlflow_run_id": run_id}, cfg.train.keep_last)
    tracker.end()
    return metrics


def _run_in_process(cfg: Config) -> dict:
    """num_workers=0: a one-process gloo group on loopback, for debugging and tests.

    The group is kept for the life of the process: DeepSpeed caches process groups, so a second
    launch in the same process must find the same group rather than a new one.
    """
    import socket

    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                          LOCAL_RANK="0")
        dist.init_process_group("gloo", rank=0, world_size=1)
    return train_worker(to_dict(cfg))


def launch(cfg: Config):
    """Run training per ``cfg.scale``: Ray Train ``TorchTrainer`` with N workers, or in-process."""
    if cfg.scale.num_workers == 0:
        return _run_in_process(cfg)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from .engine.launch import init_ray

    init_ray()
    s = cfg.scale
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=to_dict(cfg),
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                     resources_per_worker={"CPU": s.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        run_config=RunConfig(name=Path(cfg.train.run_dir).name, storage_path=str(Path(cfg.train.run_dir) / "ray"),
                             failure_config=FailureConfig(max_failures=s.max_failures)),
    )
    return trainer.fit()


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        raise SystemExit(2)
    cfg = load(argv[0], argv[1:])
    launch(cfg)
    print(f"run dir: {cfg.train.run_dir}  (checkpoint {checkpoint.latest_tag(cfg.train.run_dir)})")


if __name__ == "__main__":
    main()
