"""Training entry point: ``python -m ardscale.train CONFIG [key=value ...]``.

``task: vae`` trains the AR-VAE on video shards (reconstruction loss); ``task: dit`` trains the
causal DiT on latent shards with the paper's recipe: per-frame timesteps from the FoPP scheduler
(Alg. 1, non-decreasing), block-causal attention, x0-prediction MSE, label dropout for CFG.
Ray Train runs one DeepSpeed engine per worker (``scale.num_workers``; 0 = in this process).
Ray and MLflow are optional extras: with ``scale.num_workers=0`` and ``tracking.enabled=false`` a
machine without either trains (a GPU box with torch alone, a laptop); Ray is imported only where
a Ray Train job needs it.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch.profiler import record_function

from . import cli
from .compat import moved
from .config import Config, from_dict, load, to_dict
from .data.stream import Layout, Plan, ShardStream, StreamLoader
from .engine import checkpoint, profile
from .engine.checkpoint import CheckpointManager, Resume
from .engine.deepspeed import build_engine, frozen, fused_adamw
from .engine.ema import EMA
from .engine.flops import peak_tflops
from .engine.guard import NonFiniteGuard
from .engine.launch import init_ray
from .engine.logs import setup_logging
from .engine.tracking import Tracker, git_state
from .monitor import hooks_for
from .runs import CONFIG_FILE, EVENTS_FILE, METRICS_FILE, MLFLOW_RUN_ID, STOP_FILE
from .tasks import Models, TaskData, get_task

log = logging.getLogger("ardscale.train")
PROFILE_DIR = "profile"   # {run_dir}/profile/rank{r}.*, and the run's MLflow artifacts


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


def _event(run_dir: Path, kind: str, **fields) -> None:
    """Append a line to ``{run_dir}/events.jsonl`` (rank 0): starts, resumes, stops and why."""
    with open(run_dir / EVENTS_FILE, "a") as f:
        f.write(json.dumps({"time": time.time(), "event": kind, **fields}) + "\n")


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of a rank's randomness in one global step (timesteps, noise, CFG drop): a CRC-32 of
    ``seed/step/rank``, the same in every process and Python version (``hash()`` of a tuple is an
    implementation detail), so a resumed step redraws the same batch."""
    return zlib.crc32(f"{seed}/{step}/{rank}".encode())


def _reduce(parts: list[dict], world: int, sums: dict[str, float]) -> dict:
    """Scalars: mean over micro batches and ranks. ``bucket_sum``/``bucket_count``: summed, then
    reported as ``loss_t/LO-HI`` (mean loss of the frames whose timestep falls in that range).
    ``sums``: per-rank counts, summed over ranks."""
    scalars = sorted(k for k, v in parts[0].items() if v.ndim == 0)
    buckets = [torch.stack([p[k] for p in parts]).sum(0) for k in ("bucket_sum", "bucket_count")
               if k in parts[0]]
    vec = torch.cat([torch.stack([torch.stack([p[k] for p in parts]).mean() for k in scalars]),
                     torch.tensor(list(sums.values()), dtype=torch.float32)] + buckets)
    dist.all_reduce(vec)
    out = {k: v / world for k, v in zip(scalars, vec[:len(scalars)].tolist())}
    out.update(zip(sums, vec[len(scalars):len(scalars) + len(sums)].tolist()))
    if buckets:
        sums_, counts = vec[len(scalars) + len(sums):].view(2, -1)
        width = 1.0 / len(sums_)
        for i, (s_, c_) in enumerate(zip(sums_.tolist(), counts.tolist())):
            if c_:
                out[f"loss_t/{i * width:.1f}-{(i + 1) * width:.1f}"] = s_ / c_
    return out


def stop_key(run_name: str) -> str:
    """The key in Ray's internal KV store (the GCS, reachable from every node) that asks the
    training of Ray Train run ``run_name`` to stop: no shared disk needed."""
    return f"ardscale:stop:{run_name}"


def _running_ray():
    """The ``ray`` module when this process is connected to a Ray cluster, else None (without
    importing Ray: a process that never imported it is not in a cluster)."""
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def _kv():
    from ray.experimental import internal_kv
    return internal_kv


class _Stop:
    """A stop request asks for a checkpoint and a clean exit at the end of the current step: SIGTERM
    (preemption, ``ray job stop``, Kubernetes eviction), the file ``{run_dir}/STOP`` on rank 0's
    disk (an operator), or under Ray Train the key :func:`stop_key` in Ray's KV store.

    In-process, this process's SIGTERM handler sets it. Under Ray Train the training function
    does not run on the main thread, so the driver's handler sets the KV key (and writes the STOP
    file beside it), and rank 0 looks for both after every step.
    """

    def __init__(self, run_dir: Path, rank: int, kv_key: str | None = None):
        self.requested, self.run_dir, self.rank, self.kv_key = False, run_dir, rank, kv_key
        self.own_signal = threading.current_thread() is threading.main_thread()
        if self.own_signal:
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        print("SIGTERM: saving a checkpoint after this step, then exiting", file=sys.stderr, flush=True)
        self.requested = True

    def _asked_here(self) -> bool:
        if self.requested or (self.run_dir / STOP_FILE).exists():
            return True
        return self.kv_key is not None and _kv()._internal_kv_exists(self.kv_key)

    def agreed(self) -> bool:
        """True on every rank when any rank was asked to stop."""
        asked = self.requested or (self.rank == 0 and self._asked_here())
        flag = torch.tensor([float(asked)])
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def report_to_ray(run_dir: Path, step: int, metrics: dict) -> None:
    """Every rank, after the checkpoint of ``step``: its files of the tag and the step's metrics to
    ``ray.train.report``, which merges the ranks' files into one checkpoint on
    ``scale.storage_path`` named by the tag. ``trainer.fit()``'s Result then carries the last
    metrics and the newest complete checkpoint (a run-dir-shaped folder that
    :func:`~ardscale.engine.checkpoint.load_weights` reads)."""
    import ray.train

    with tempfile.TemporaryDirectory(dir=run_dir, prefix=".ray-report-") as tmp:
        checkpoint.stage_rank_files(str(run_dir), step, Path(tmp))
        ray.train.report({**metrics, "step": step}, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=checkpoint.tag(step))


def _throughput(data: TaskData, cfg: Config, dt: float, world: int, step: int, peak: float | None) -> dict:
    """Step time, samples/s, tokens/s and, when the task counts its FLOPs, model TFLOPS per device and
    MFU against ``peak`` TFLOPS (:func:`~ardscale.engine.flops.peak_tflops`)."""
    samples = cfg.optim.micro_batch_size * cfg.optim.grad_accum * world
    out = {"step_time_s": dt, "samples_per_s": samples / dt,
           "tokens_per_s": samples * data.tokens_per_sample / dt}
    flops = data.flops_per_sample(step) if callable(data.flops_per_sample) else data.flops_per_sample
    if flops:
        tflops = flops * samples / world / dt / 1e12
        out["tflops_per_device"] = tflops
        if peak:
            out["mfu"] = tflops / peak
    if torch.cuda.is_available():
        out["gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _stream(cfg: Config, data: TaskData, rank: int, world: int, state: dict | None) -> StreamLoader:
    """This rank's micro batches, from the checkpoint's data position ``state`` on."""
    d, o = cfg.data, cfg.optim
    layout = Layout(world, max(1, d.loader_workers), o.micro_batch_size, o.grad_accum)
    plan = Plan(data.shards, layout, cfg.train.seed, d.shuffle_shards)
    stream = ShardStream(plan, rank, data.decode, d.read_tries, d.read_backoff_s)
    loader = StreamLoader(stream, d.loader_workers)
    if state:
        loader.load_state_dict(state, d.replan)
    if rank == 0:
        log.info("%d samples in %d shards: %d steps per epoch; starting at epoch %d", data.shards.num_samples,
                 len(data.shards.sizes), plan.steps_per_epoch, plan.epoch)
    return loader


def run_tags(cfg: Config, world: int, zero_stage: int) -> dict:
    """Where a run came from, as MLflow tags: git commit (MLflow's own key) and dirty flag, world
    size, ZeRO stage, nodes, the Ray job, the task and, for a DiT, the latents' ``vae_id``. All
    ranks call it (the node count is gathered)."""
    ray = _running_ray()
    node = ray.get_runtime_context().get_node_id() if ray else socket.gethostname()
    nodes = [None] * world
    dist.all_gather_object(nodes, node)
    commit, dirty = git_state()
    tags = {"mlflow.source.git.commit": commit, "git.dirty": dirty, "world_size": world,
            "zero_stage": zero_stage, "nodes": len(set(nodes)), "task": cfg.task}
    if ray:
        tags["ray.job_id"] = ray.get_runtime_context().get_job_id()
    return tags | ({"vae_id": cfg.data.vae_id} if cfg.task == "dit" else {})


def _open_run(cfg_dict: dict, cfg: Config, resume: Resume, rank: int, tags: dict) -> tuple[Tracker, str]:
    """The MLflow run (the checkpoint's, when resuming) with its ``tags``, and the run dir's files
    (rank 0)."""
    start = resume.step
    tracker = Tracker(cfg.tracking.tracking_uri, cfg.tracking.experiment,
                      enabled=rank == 0 and cfg.tracking.enabled)
    run_id = tracker.start(resume.mlflow_run_id, cfg.tracking.run_name, cfg_dict,
                           system_metrics=cfg.tracking.system_metrics)
    tracker.set_tags(tags)
    run_dir = Path(cfg.train.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        _trim_metrics(run_dir / METRICS_FILE, start)
        (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg_dict))
        if run_id:
            (run_dir / MLFLOW_RUN_ID).write_text(run_id)
        _event(run_dir, "start", step=start, world_size=tags["world_size"], resumed_from=resume.tag)
        if start == 0:
            tracker.log_artifact(str(run_dir / CONFIG_FILE))
    if dist.is_initialized():  # ranks > 0 learn the run id for the checkpoint from rank 0
        box = [run_id]
        dist.broadcast_object_list(box, src=0)
        run_id = box[0]
    return tracker, run_id


class Trainer:
    """One worker's training (Ray Train ``train_loop_per_worker``, or in-process), as torchtitan's:
    ``Trainer(cfg, cfg_dict).train()`` runs :meth:`train_step` per global step, then the monitor
    hooks and the checkpoint when they are due, until ``train.steps`` or a halt (:meth:`_halt`)."""

    def __init__(self, cfg: Config, cfg_dict: dict, under_ray: bool = False):
        self.cfg, self.rank, self.world = cfg, dist.get_rank(), dist.get_world_size()
        self.spec, t = get_task(cfg.task), cfg.train
        torch.manual_seed(t.seed)  # identical initial weights on every rank
        disc = self.spec.build_discriminator(cfg)   # before the model: the RNG order fixes both inits
        model = self.spec.build_model(cfg)
        self.data, self.loss = self.spec.load_data(cfg), self.spec.build_loss(cfg)
        if t.init_from:   # a previous stage's weights; this run's own checkpoint, if any, wins below
            _load_previous_stage(model, checkpoint.load_weights(t.init_from)[0], t.init_from)
            if disc is not None and checkpoint.latest_tag(t.init_from, "ckpt_disc"):
                disc.load_state_dict(checkpoint.load_weights(t.init_from, sub="ckpt_disc")[0])
        tag, universal = CheckpointManager.prepare(t.run_dir, self.world, t.checkpoint_url, disc is not None)
        if tag is None:   # a fresh run; a resumed one loads its own weights below
            self.spec.load_pretrained(cfg, model)
        self.engine = build_engine(model, cfg.optim, self.world, cfg.scale.use_gpu, load_universal=universal)
        self.disc = None if disc is None else build_engine(
            disc, cfg.optim, self.world, cfg.scale.use_gpu, lr=cfg.vae_loss.disc_lr, betas=(0.5, 0.9),
            load_universal=universal)
        zero3 = self.engine.zero_optimization_stage() == 3
        self.ema = EMA(self.engine.module, cfg.optim.ema_decay, zero3) if cfg.optim.ema_decay > 0 else None
        self.ckpt = CheckpointManager(t.run_dir, self.engine, self.disc, self.ema, t.ckpt_every, t.keep_last,
                                      t.checkpoint_url, tag, universal)
        resume = self.ckpt.restore()
        self.start, self.run_dir = resume.step, Path(t.run_dir)
        tags = run_tags(cfg, self.world, self.engine.zero_optimization_stage())
        self.tracker, self.run_id = _open_run(cfg_dict, cfg, resume, self.rank, tags)
        self.tracker.log_shards(self.data.shards.urls[0].rsplit("/", 1)[0], cfg.data.split,
                                self.data.shards.digest())
        self.hooks = hooks_for(cfg, self.tracker, self.ema, zero3) if self.rank == 0 else []
        self.models = Models(self.engine, self.engine.module, self.disc,
                             None if self.disc is None else frozen(self.disc.module))
        self.engines = {"model": self.engine, "disc": self.disc}
        self.guards = {"model": NonFiniteGuard(), "disc": NonFiniteGuard()}
        self.loader = _stream(cfg, self.data, self.rank, self.world, resume.data)
        self.under_ray = under_ray
        kv_key = None
        if under_ray:
            import ray.train
            kv_key = stop_key(ray.train.get_context().get_experiment_name())
        self.stop, self.bad_run = _Stop(self.run_dir, self.rank, kv_key), 0
        # once, before the first step: on a CPU this measures the matmul rate (engine/flops.py)
        self.peak = peak_tflops(t.peak_tflops, self.engine.device.type)
        cuda = self.engine.device.type == "cuda"
        self.profiler = profile.StepProfiler(t.profile_at, t.profile_steps, self.run_dir / PROFILE_DIR,
                                             self.rank, cuda, self._log_profile)

    def train_step(self, step: int) -> dict:
        """One global step: per micro batch, the task's losses, then backward and ``engine.step()``
        per engine through its non-finite guard; then the EMA; returns the reduced metrics."""
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(step_seed(self.cfg.train.seed, step, self.rank))
        skipped_before = sum(g.skipped for g in self.guards.values())
        parts = []
        for _ in range(self.cfg.optim.grad_accum):   # record_function: the phases of a profile
            with record_function("data"):
                raw = self.data.batch(self.loader.next(), gen)
                batch = {k: v.to(self.engine.device) for k, v in raw.items()}
            with record_function("forward"):
                losses, metrics = self.loss(self.models, batch, step)
            for name, loss in losses.items():
                self.guards[name].backward_step(self.engines[name], loss)
            parts.append({k: v.float().cpu() for k, v in metrics.items()})
        skipped = sum(g.skipped for g in self.guards.values()) - skipped_before
        if self.ema is not None:
            with record_function("ema"):
                self.ema.update(self.engine.module)
        self.bad_run = self.bad_run + 1 if skipped else 0
        faults = {"data/skipped_shards": len(self.loader.faults["shards"]),
                  "data/skipped_samples": self.loader.faults["samples"]}
        metrics = {**_reduce(parts, self.world, faults), "epoch": self.loader.epoch,
                   "lr": self.engine.get_lr()[0],
                   "grad_norm": self.engine.get_global_grad_norm(), "nonfinite_skipped": skipped,
                   **_throughput(self.data, self.cfg, time.perf_counter() - t0, self.world, step, self.peak)}
        return {k: float(v) for k, v in metrics.items() if v is not None}

    def train(self) -> dict:
        """Steps from the checkpoint's to ``train.steps``; returns the last step's metrics."""
        cfg, metrics = self.cfg, {}
        for step in range(self.start, cfg.train.steps):
            with self.profiler.step(step):
                metrics = self.train_step(step)
            halt = ("nonfinite" if self.bad_run >= cfg.train.max_nonfinite_steps
                    else "stop" if self.stop.agreed() else None)
            done, last = step + 1, step + 1 == cfg.train.steps or halt is not None
            self._log(step, metrics, last)
            for hook in self.hooks:
                if hook.should_run(done, last):
                    metrics.update(hook(self.engine.module, done))
            if self.ckpt.should_save(done, last):
                self.ckpt.save(done, self.run_id, self.loader.state_dict())
                if self.under_ray:
                    report_to_ray(self.run_dir, done, metrics)
            if halt:
                return self._halt(halt, done, metrics)
        self.loader.close()
        self.profiler.close()
        if self.tracker.enabled and cfg.tracking.log_model:   # rank 0 alone has an enabled tracker
            self._log_model(cfg.train.steps)
        self.tracker.end()
        return metrics

    def _log_model(self, step: int) -> None:
        """The final weights (the EMA's when kept) as an MLflow model, with the config and vae_id
        (rank 0; none under ZeRO-3 without an EMA: the module is partitioned)."""
        if self.ema is None and self.engine.zero_optimization_stage() == 3:
            log.warning("no MLflow model: ZeRO-3 partitions the weights; keep an EMA (optim.ema_decay)")
            return
        module = self.spec.build_model(self.cfg)   # a plain copy: the engine's holds DeepSpeed's hooks
        weights = self.ema.shadow if self.ema is not None else self.engine.module.state_dict()
        module.load_state_dict({k: v.detach().float().cpu() for k, v in weights.items()})
        meta = {"task": self.cfg.task, "checkpoint": checkpoint.tag(step), "ema": self.ema is not None,
                **({"vae_id": self.cfg.data.vae_id} if self.cfg.task == "dit" else {})}
        self.tracker.log_model(module, [str(self.run_dir / CONFIG_FILE)], meta,
                               self.cfg.tracking.registered_model)

    def _log(self, step: int, metrics: dict, last: bool) -> None:
        if self.rank != 0:
            return
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if step % self.cfg.train.log_every == 0 or last:
            self.tracker.log_metrics(metrics, step)
            mfu = f", MFU {100 * metrics['mfu']:.1f} %" if "mfu" in metrics else ""
            log.info("step %6d loss %.5f %.1f samples/s%s", step, metrics["loss"], metrics["samples_per_s"],
                     mfu)

    def _log_profile(self, folder: Path) -> None:
        """A finished profile's files to MLflow under ``profile/`` (rank 0's tracker; no-op elsewhere)."""
        for file in sorted(folder.iterdir()):
            self.tracker.log_artifact(str(file), PROFILE_DIR)

    def _halt(self, reason: str, step: int, metrics: dict) -> dict:
        """Every early stop ends here, after its checkpoint: a non-finite loss fails the run; a stop
        request (SIGTERM, STOP file) exits with 143 in-process and returns cleanly under Ray."""
        nonfinite = reason == "nonfinite"
        self.loader.close()
        self.profiler.close()
        if self.rank == 0:
            _event(self.run_dir, "stop", step=step,
                   reason="nonfinite loss" if nonfinite else "stop request (SIGTERM or STOP file)")
        self.tracker.end("FAILED" if nonfinite else "KILLED")
        if nonfinite:
            raise RuntimeError(f"the loss was NaN/inf in {self.bad_run} steps in a row (last: step "
                               f"{step - 1}); the updates were skipped and {checkpoint.tag(step)} holds the "
                               "last good weights")
        if self.stop.own_signal:
            raise SystemExit(143)
        return {**metrics, "stopped": 1.0}   # under Ray: a clean return, so Ray does not retry


def train_worker(cfg_dict: dict, under_ray: bool = True) -> dict:
    """Per-worker entry point (Ray Train ``train_loop_per_worker``, or in-process with
    ``under_ray=False``); the last metrics.

    ``$VARS`` in ``train.run_dir`` expand here, on the worker's node (a node-local disk such as
    ``$TMPDIR``: with ``train.checkpoint_url`` set, nodes need no shared disk)."""
    setup_logging(dist.get_rank())
    t = cfg_dict["train"]
    cfg_dict = {**cfg_dict, "train": {**t, "run_dir": os.path.expandvars(t["run_dir"])}}
    return Trainer(from_dict(cfg_dict), cfg_dict, under_ray).train()


def _run_in_process(cfg: Config) -> dict:
    """num_workers=0: a one-process gloo group, for debugging and tests.

    Its rendezvous store is an in-memory ``HashStore``: a ``TCPStore`` (the ``MASTER_PORT`` way)
    would listen on every interface whatever ``MASTER_ADDR`` says. The group is kept for the life
    of the process: DeepSpeed caches process groups, so a second launch in the same process must
    find the same group rather than a new one.
    """
    if not dist.is_initialized():
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    return train_worker(to_dict(cfg), under_ray=False)


def check_resources(have: dict, s) -> None:
    """The Ray cluster ``have`` (``ray.cluster_resources()``) can place the fewest workers the
    ``scale`` section ``s`` accepts (``min_workers`` when elastic, else ``num_workers``).

    Raises:
        RuntimeError: it cannot (naming what is missing and the keys that change it); Ray would
            otherwise wait for resources forever.
    """
    need = s.min_workers if 0 < s.min_workers < s.num_workers else s.num_workers
    gpus, cpus = have.get("GPU", 0), have.get("CPU", 0)
    if s.use_gpu and gpus < need:
        raise RuntimeError(f"scale.use_gpu=true with {need} workers needs {need} GPUs; the Ray cluster has "
                           f"{gpus:g}. Set scale.use_gpu=false to train on CPUs, lower scale.num_workers (or "
                           "scale.min_workers), or scale.check_resources=false on an autoscaling cluster")
    if cpus < need * s.cpus_per_worker:
        raise RuntimeError(f"{need} workers × scale.cpus_per_worker={s.cpus_per_worker} need "
                           f"{need * s.cpus_per_worker} CPUs; the Ray cluster has {cpus:g}. Lower "
                           "scale.num_workers or scale.cpus_per_worker, or scale.check_resources=false on an "
                           "autoscaling cluster")


def launch(cfg: Config):
    """Run training per ``cfg.scale``: Ray Train ``TorchTrainer`` with N workers (elastic between
    ``min_workers`` and ``num_workers`` when set; a restart resumes from the newest checkpoint,
    through a universal checkpoint when the worker count changed), or in-process."""
    get_task(cfg.task).preflight(cfg)   # before any worker: a typo in vae_id fails here, not in Ray
    fused_adamw(cfg.optim.fused, False)   # the same for the keys that only the workers read
    profile.check(cfg.train.profile_at, cfg.train.profile_steps)
    if cfg.scale.num_workers == 0:
        return _run_in_process(cfg)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray_ = init_ray()
    s, t = cfg.scale, cfg.train
    workers = (s.min_workers, s.num_workers) if 0 < s.min_workers < s.num_workers else s.num_workers
    if s.check_resources:
        check_resources(ray_.cluster_resources(), s)
    name = ray_run_name(cfg)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=to_dict(cfg),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=s.use_gpu,
                                     resources_per_worker={"CPU": s.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=s.storage_path or str(Path(t.run_dir) / "ray"),
                             failure_config=FailureConfig(max_failures=s.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=t.keep_last or None),
                             worker_runtime_env={"env_vars": _git_env()}),
    )
    stop_file = Path(t.run_dir) / STOP_FILE
    stop_file.unlink(missing_ok=True)
    _kv()._internal_kv_del(stop_key(name))   # a request left by an earlier driver

    def forward_sigterm(signum, frame):  # the workers save and return; see _Stop
        print("SIGTERM: asking the workers to checkpoint and stop", file=sys.stderr, flush=True)
        request_stop(name)
        stop_file.parent.mkdir(parents=True, exist_ok=True)
        stop_file.touch()

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, forward_sigterm) if main else None
    try:
        result = trainer.fit()
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    stopped = _kv()._internal_kv_exists(stop_key(name))
    _kv()._internal_kv_del(stop_key(name))
    if stop_file.exists() or stopped:
        stop_file.unlink(missing_ok=True)
        raise SystemExit(143)
    return result


def _git_env() -> dict[str, str]:
    """The driver's git state for the workers' run tags (their copy of the code has no ``.git``)."""
    commit, dirty = git_state()
    return {"ARDSCALE_GIT_COMMIT": commit, "ARDSCALE_GIT_DIRTY": "1" if dirty else "0"}


def ray_run_name(cfg: Config) -> str:
    """The Ray Train run's name: the run dir's (its storage under ``scale.storage_path``, and the
    key of its stop request)."""
    return Path(cfg.train.run_dir).name


def request_stop(run_name: str) -> None:
    """Ask the Ray Train run ``run_name`` (the run dir's name) to checkpoint and stop after its
    current step, from any process connected to the Ray cluster (the driver's SIGTERM handler, an
    operator's script): the workers need no shared disk to see it."""
    _kv()._internal_kv_put(stop_key(run_name), b"1")


def _print_config(argv: list[str]) -> None:
    """``--cfg``: the composed config as YAML (Hydra's ``--cfg job``)."""
    args = [a for a in argv if a != "job"]
    print(OmegaConf.to_yaml(to_dict(load(args[0], args[1:]))), end="")


def _job(argv: list[str]):
    cfg = load(argv[0], argv[1:])
    launch(cfg)
    print(f"run dir: {cfg.train.run_dir}  (checkpoint {checkpoint.latest_tag(cfg.train.run_dir)})")


def main(argv: list[str] | None = None):
    return cli.run(_job, argv, __doc__, "python -m ardscale.train CONFIG.yaml", Config,
                   {"--cfg": _print_config})


if __name__ == "__main__":
    main()


__getattr__ = moved(__name__, {"STOP_FILE": "ardscale.runs.STOP_FILE"})
