"""Training entry point: ``python -m ardscale.train CONFIG [key=value ...]``.

``task: vae`` trains the AR-VAE on video shards (reconstruction loss); ``task: dit`` trains the
causal DiT on latent shards with the paper's recipe: per-frame timesteps from the FoPP scheduler
(Alg. 1, non-decreasing), block-causal attention, x0-prediction MSE, label dropout for CFG.
Ray Train runs one DeepSpeed engine per worker (``scale.num_workers``; 0 = in this process).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from .config import Config, from_dict, load, to_dict
from .data.loader import StepSampler
from .engine import checkpoint
from .engine.deepspeed import build_engine
from .engine.ema import EMA
from .engine.flops import peak_tflops
from .engine.tracking import Tracker
from .monitor import DiTEvaluator, DiTSampler, VAEEvaluator
from .objectives import build_task


def _trim_metrics(path: Path, start: int) -> None:
    """Drop rows of steps >= ``start``: a crash after the last checkpoint repeats those steps."""
    if path.is_file():
        rows = [r for r in path.read_text().splitlines() if json.loads(r)["step"] < start]
        path.write_text("".join(r + "\n" for r in rows))


def _load_previous_stage(model, state: dict, source: str) -> None:
    """Load a previous stage's weights; only parameters under ``model.stage_added`` (e.g. the
    AR-VAE's zero-initialised temporal blocks) may be missing, and they keep their init.

    Raises:
        RuntimeError: other missing or unexpected keys (naming them and ``source``).
    """
    missing, unexpected = model.load_state_dict(state, strict=False)
    added = tuple(getattr(model, "stage_added", ()))
    missing = [k for k in missing if not (added and k.startswith(added))]
    if missing or unexpected:
        raise RuntimeError(f"train.init_from={source}: weights do not fit this model: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")


def _engines(cfg: Config, task, world: int):
    """DeepSpeed engines for the model (and the discriminator), resumed from the run's newest
    complete checkpoint or started from ``train.init_from``, and the EMA (when ``optim.ema_decay``).
    Returns (engine, disc, ema, client state); the client state holds the resumed ``tag``."""
    if cfg.train.init_from:  # weights of a previous stage; this run's own checkpoint, if any, wins below
        _load_previous_stage(task.model, checkpoint.load_weights(cfg.train.init_from)[0], cfg.train.init_from)
        if task.discriminator is not None and checkpoint.latest_tag(cfg.train.init_from, "ckpt_disc"):
            task.discriminator.load_state_dict(checkpoint.load_weights(cfg.train.init_from, sub="ckpt_disc")[0])
    if cfg.train.checkpoint_url:  # a fresh node or a wiped disk starts from the remote mirror
        checkpoint.pull(cfg.train.run_dir, cfg.train.checkpoint_url)
    run, tag = cfg.train.run_dir, checkpoint.latest_tag(cfg.train.run_dir)
    saved_world = checkpoint.saved_world_size(run, tag)
    universal = saved_world is not None and saved_world != world   # e.g. 2 workers → 1: re-partition
    if universal:
        print(f"resuming {tag} written by {saved_world} workers on {world}: via a universal checkpoint",
              file=sys.stderr, flush=True)
        checkpoint.to_universal(run, tag)
        if task.discriminator is not None and checkpoint.saved_world_size(run, tag, "ckpt_disc"):
            checkpoint.to_universal(run, tag, "ckpt_disc")
    engine = build_engine(task.model, cfg, world, load_universal=universal)
    disc = None
    if task.discriminator is not None:
        disc = build_engine(task.discriminator, cfg, world, lr=cfg.vae_loss.disc_lr, betas=(0.5, 0.9),
                            load_universal=universal)
    client = checkpoint.resume(engine, run, which=tag, universal=universal) or {}
    ema = None
    if cfg.optim.ema_decay > 0:
        ema = EMA(engine.module, cfg.optim.ema_decay, zero3=engine.zero_optimization_stage() == 3)
        if client and Path(checkpoint.ema_path(run, tag)).is_file():
            ema.load(checkpoint.ema_path(run, tag))
    # The model's tag is the commit point; a discriminator saved at that tag goes with it.
    if disc is not None and client and (Path(checkpoint.ckpt_dir(run, "ckpt_disc")) / tag).is_dir():
        checkpoint.resume(disc, run, "ckpt_disc", which=tag, universal=universal)
    return engine, disc, ema, ({**client, "tag": tag} if client else {})


def _event(run_dir: Path, kind: str, **fields) -> None:
    """Append a line to ``{run_dir}/events.jsonl`` (rank 0): starts, resumes, stops and why."""
    with open(run_dir / "events.jsonl", "a") as f:
        f.write(json.dumps({"time": time.time(), "event": kind, **fields}) + "\n")


def _reduce(parts: list[dict], world: int) -> dict:
    """Scalars: mean over micro batches and ranks. ``bucket_sum``/``bucket_count``: summed, then
    reported as ``loss_t/LO-HI`` (mean loss of the frames whose timestep falls in that range)."""
    scalars = sorted(k for k, v in parts[0].items() if v.ndim == 0)
    vec = torch.cat([torch.stack([torch.stack([p[k] for p in parts]).mean() for k in scalars])]
                    + [torch.stack([p[k] for p in parts]).sum(0) for k in ("bucket_sum", "bucket_count")
                       if k in parts[0]])
    dist.all_reduce(vec)
    out = {k: v / world for k, v in zip(scalars, vec[:len(scalars)].tolist())}
    if "bucket_sum" in parts[0]:
        sums, counts = vec[len(scalars):].view(2, -1)
        width = 1.0 / len(sums)
        for i, (s_, c_) in enumerate(zip(sums.tolist(), counts.tolist())):
            if c_:
                out[f"loss_t/{i * width:.1f}-{(i + 1) * width:.1f}"] = s_ / c_
    return out


STOP_FILE = "STOP"   # in run_dir: a stop request from the driver (see launch) or an operator


class _Stop:
    """A stop request (SIGTERM: preemption, ``ray job stop``, Kubernetes eviction; or the file
    ``{run_dir}/STOP``) asks for a checkpoint and a clean exit at the end of the current step.

    In-process, this process's SIGTERM handler sets it. Under Ray Train the training function
    does not run on the main thread, so the driver's handler writes the STOP file instead, and rank
    0 looks for it after every step.
    """

    def __init__(self, run_dir: Path, rank: int):
        self.requested, self.run_dir, self.rank = False, run_dir, rank
        self.own_signal = threading.current_thread() is threading.main_thread()
        if self.own_signal:
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        print("SIGTERM: saving a checkpoint after this step, then exiting", file=sys.stderr, flush=True)
        self.requested = True

    def agreed(self) -> bool:
        """True on every rank when any rank was asked to stop."""
        asked = self.requested or (self.rank == 0 and (self.run_dir / STOP_FILE).exists())
        flag = torch.tensor([float(asked)])
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _throughput(task, cfg: Config, dt: float, world: int) -> dict:
    samples = cfg.optim.micro_batch_size * cfg.optim.grad_accum * world
    out = {"step_time_s": dt, "samples_per_s": samples / dt, "tokens_per_s": samples * task.tokens_per_sample / dt}
    if task.flops_per_sample:
        tflops = task.flops_per_sample * samples / world / dt / 1e12
        out["tflops_per_device"] = tflops
        peak = peak_tflops(cfg.train.peak_tflops)
        if peak:
            out["mfu"] = tflops / peak
    if torch.cuda.is_available():
        out["gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _open_run(cfg_dict: dict, cfg: Config, client: dict, rank: int, world: int) -> tuple[Tracker, str]:
    """The MLflow run (the checkpoint's, when resuming) and the run dir's files (rank 0)."""
    start = client.get("step", 0)
    tracker = Tracker(cfg.tracking.tracking_uri, cfg.tracking.experiment, enabled=rank == 0)
    run_id = tracker.start(client.get("mlflow_run_id"), cfg.tracking.run_name, cfg_dict)
    run_dir = Path(cfg.train.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        _trim_metrics(run_dir / "metrics.jsonl", start)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg_dict))
        (run_dir / "mlflow_run_id").write_text(run_id)
        _event(run_dir, "start", step=start, world_size=world, resumed_from=client.get("tag"))
        if start == 0:
            tracker.log_artifact(str(run_dir / "config.yaml"))
    if dist.is_initialized():  # ranks > 0 learn the run id for the checkpoint from rank 0
        box = [run_id]
        dist.broadcast_object_list(box, src=0)
        run_id = box[0]
    return tracker, run_id


def _save(cfg: Config, step: int, engine, disc, ema, run_id: str) -> None:
    """EMA, then the discriminator, then the model (its `latest` commits all), then the mirror."""
    state, run = {"mlflow_run_id": run_id}, cfg.train.run_dir
    if ema is not None:
        ema.save(checkpoint.ema_path(run, checkpoint.tag(step)))
    if disc is not None:
        checkpoint.save(disc, run, step, state, cfg.train.keep_last, sub="ckpt_disc")
    checkpoint.save(engine, run, step, state, cfg.train.keep_last)
    if cfg.train.checkpoint_url:
        checkpoint.push(run, cfg.train.checkpoint_url, step, cfg.train.keep_last)


def train_worker(cfg_dict: dict) -> dict:
    """Per-worker loop (Ray Train ``train_loop_per_worker``, or in-process). Returns last metrics."""
    cfg = from_dict(cfg_dict)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    task = build_task(cfg)
    engine, disc, ema, client = _engines(cfg, task, world)
    start, run_dir = client.get("step", 0), Path(cfg.train.run_dir)
    tracker, run_id = _open_run(cfg_dict, cfg, client, rank, world)
    evaluate = None
    if rank == 0 and cfg.task == "vae":
        evaluate = VAEEvaluator(cfg, tracker)
    elif rank == 0 and cfg.train.eval_every:
        evaluate = DiTEvaluator(cfg, tracker, ema, engine.zero_optimization_stage() == 3)
    show = DiTSampler(cfg, tracker) if cfg.task == "dit" and cfg.train.sample_every and rank == 0 else None
    sampler = StepSampler(task.num_samples, cfg.optim.micro_batch_size, cfg.optim.grad_accum, rank, world,
                          cfg.train.seed)
    metrics, bad_run, stop = {}, 0, _Stop(run_dir, rank)
    for step in range(start, cfg.train.steps):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(hash((cfg.train.seed, step, rank)) & 0x7FFF_FFFF)
        skipped_before = sum(g.skipped for g in task.guards)
        parts = [task.micro_step(engine, disc, idx, gen, step) for idx in sampler.micro_batches(step)]
        skipped = sum(g.skipped for g in task.guards) - skipped_before
        if ema is not None:
            ema.update(engine.module)
        bad_run = bad_run + 1 if skipped else 0
        metrics = {**_reduce(parts, world), "lr": engine.get_lr()[0], "grad_norm": engine.get_global_grad_norm(),
                   "nonfinite_skipped": skipped, **_throughput(task, cfg, time.perf_counter() - t0, world)}
        metrics = {k: float(v) for k, v in metrics.items() if v is not None}
        halt = bad_run >= cfg.train.max_nonfinite_steps or stop.agreed()
        last = step + 1 == cfg.train.steps or halt
        if rank == 0:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
            if step % cfg.train.log_every == 0 or last:
                tracker.log_metrics(metrics, step)
                print(f"step {step:6d} loss {metrics['loss']:.5f} {metrics['samples_per_s']:.1f} samples/s",
                      flush=True)
            if evaluate and (last or (cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0)):
                metrics.update(evaluate(engine.module, step + 1))
            if show and (last or (step + 1) % cfg.train.sample_every == 0):
                show(engine.module, ema, engine.zero_optimization_stage() == 3, step + 1)
        if (step + 1) % cfg.train.ckpt_every == 0 or last:
            _save(cfg, step + 1, engine, disc, ema, run_id)
        if bad_run >= cfg.train.max_nonfinite_steps:
            if rank == 0:
                _event(run_dir, "stop", step=step + 1, reason="nonfinite loss")
            tracker.end("FAILED")
            raise RuntimeError(f"the loss was NaN/inf in {bad_run} steps in a row (last: step {step}); the updates "
                               f"were skipped and {checkpoint.tag(step + 1)} holds the last good weights")
        if halt:
            if rank == 0:
                _event(run_dir, "stop", step=step + 1, reason="stop request (SIGTERM or STOP file)")
            tracker.end("KILLED")
            if stop.own_signal:
                raise SystemExit(143)
            return {**metrics, "stopped": 1.0}   # under Ray: a clean return, so Ray does not retry
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
    """Run training per ``cfg.scale``: Ray Train ``TorchTrainer`` with N workers (elastic between
    ``min_workers`` and ``num_workers`` when set; a restart resumes from the newest checkpoint,
    through a universal checkpoint when the worker count changed), or in-process."""
    if cfg.scale.num_workers == 0:
        return _run_in_process(cfg)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from .engine.launch import init_ray

    init_ray()
    s = cfg.scale
    workers = (s.min_workers, s.num_workers) if 0 < s.min_workers < s.num_workers else s.num_workers
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=to_dict(cfg),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=s.use_gpu,
                                     resources_per_worker={"CPU": s.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        run_config=RunConfig(name=Path(cfg.train.run_dir).name,
                             storage_path=s.storage_path or str(Path(cfg.train.run_dir) / "ray"),
                             failure_config=FailureConfig(max_failures=s.max_failures)),
    )
    stop_file = Path(cfg.train.run_dir) / STOP_FILE
    stop_file.unlink(missing_ok=True)

    def forward_sigterm(signum, frame):  # the workers save and return; see _Stop
        print("SIGTERM: asking the workers to checkpoint and stop", file=sys.stderr, flush=True)
        stop_file.parent.mkdir(parents=True, exist_ok=True)
        stop_file.touch()

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, forward_sigterm) if main else None
    try:
        result = trainer.fit()
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    if stop_file.exists():
        stop_file.unlink()
        raise SystemExit(143)
    return result


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
