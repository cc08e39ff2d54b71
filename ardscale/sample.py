"""Sample videos from a trained DiT: ``python -m ardscale.sample RUN_DIR [key=value …]``.

Runs the AD scheduler (Eq. 5, ``s``) over ``steps`` DDIM steps with classifier-free guidance
(``cfg_scale``), decodes with the AR-VAE that produced the training latents, writes
``samples.mp4`` and ``samples.gif`` (a grid, one cell per sample) and logs both to the run's MLflow
run.

``frames`` may exceed the training length: the DiT and the VAE decoder then slide a window of the
training length over frames. ``context=K`` continues real videos: the first K frames are the
latents of clips from ``context_split`` (encoded by tools/encode_latents.py), and their labels are
used. A text DiT (``dit.condition=text``) samples one video per prompt
(``prompts=["a surfer rides a wave","…"]``), encoded by the text encoder its latents were made with.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from .cli import parse, run
from .compat import moved
from .config import SampleConfig
from .data.video import write_grid
from .diffusion.sampler import sample
from .diffusion.schedule import make_diffusion
from .engine.tracking import Tracker
from .runs import RunData, load_trained, mlflow_run_id


@dataclass
class SampleJob(SampleConfig):
    """A sampling job: the sampling settings and what to sample."""

    num_samples: int = 8             # videos (a text DiT: one per prompt instead)
    labels: list[int] = field(default_factory=list)    # class labels (default: cycle the trained classes)
    prompts: list[str] = field(default_factory=list)   # a text DiT's prompts, one video each
    context: int = 0                 # continue this many real frames (0 = from noise; class DiT)
    context_split: str = "test"      # split whose latents give the context
    out: str = ""                    # default RUN_DIR/samples/<tag>-s<s>-cfg<cfg_scale>
    mlflow: bool = True              # log the grid to the run's MLflow run
    checkpoint: str = ""             # the tag (step-00002000) or step (2000) sampled; "" = the newest


OLD_FLAGS = {"--num-samples": "num_samples=N", "--steps": "steps=N", "--s": "s=N", "--cfg": "cfg_scale=W",
             "--frames": "frames=N", "--window": "window=N", "--context": "context=K",
             "--context-split": "context_split=SPLIT", "--no-kv-cache": "kv_cache=false", "--eta": "eta=X",
             "--clip-x0": "clip_x0=X", "--labels": "labels=[1,2]", "--prompt": 'prompts=["…","…"]',
             "--seed": "seed=N", "--out": "out=DIR"}
"""The argparse flags of earlier versions → the key that replaced each."""


def generate(run_dir: str, job: SampleJob) -> dict:
    """Generate, decode and write a sample grid; returns paths, labels (or prompts) and timings.

    Raises:
        FileNotFoundError: run without checkpoint, or its latent manifest (hence VAE) is missing.
        ValueError: see :meth:`~ardscale.runs.RunData.conditions` and
            :meth:`~ardscale.runs.RunData.context_latents`.
    """
    cfg, dit, tag, _ = load_trained(run_dir, job.checkpoint or None, task="dit")
    data = RunData(cfg)
    sc = data.resolve(job)
    n = len(job.prompts) if job.prompts else job.num_samples
    y = data.conditions(job.labels, job.prompts, n)
    ctx = None
    if job.context:
        ctx, y = data.context_latents(job.context_split, job.context, n, job.seed)
    t0 = time.perf_counter()
    z = sample(dit, make_diffusion(cfg.diffusion), y, sc, progress=True, context=ctx)
    t1 = time.perf_counter()
    frames = data.decode(z, sc.window)
    t2 = time.perf_counter()
    if ctx is not None:  # a white bar marks the given frames
        frames[:, :job.context, :2] = 255
    out = Path(job.out or Path(run_dir) / "samples" / f"{tag}-s{sc.s}-cfg{sc.cfg_scale}")
    write_grid(frames, out, data.fps)
    settings = {f.name: getattr(sc, f.name) for f in fields(SampleConfig)}
    info = {**settings, "context": job.context, "out": str(out), "mp4": str(out / "samples.mp4"),
            "gif": str(out / "samples.gif"),
            **({"prompts": job.prompts} if job.prompts else {"labels": y.tolist()}),
            "checkpoint": tag, "frames": frames.shape[1],
            "generate_s": round(t1 - t0, 3), "decode_s": round(t2 - t1, 3),
            "frames_per_s": round(frames.shape[0] * frames.shape[1] / (t2 - t0), 2),   # end to end
            "pixel_std": float(frames.std())}
    (out / "samples.json").write_text(json.dumps(info, indent=2))
    run_id = mlflow_run_id(run_dir)
    if job.mlflow and run_id:
        tracker = Tracker(cfg.tracking.tracking_uri, cfg.tracking.experiment)
        tracker.start(run_id, "", {})
        for name in ("samples.mp4", "samples.gif", "samples.json"):
            tracker.log_artifact(str(out / name), f"samples/{out.name}")
        tracker.end()
        info["mlflow_run_id"] = tracker.run_id
    return info


def _job(argv: list[str]) -> dict:
    old = [a.split("=", 1)[0] for a in argv if a.split("=", 1)[0] in OLD_FLAGS]
    if old:
        raise ValueError("flags are now key=value: " + ", ".join(f"{f} is now {OLD_FLAGS[f]}" for f in old))
    if "=" in argv[0]:
        raise ValueError(f"the first argument is the DiT run folder, not {argv[0]!r}")
    info = generate(argv[0], parse(SampleJob, argv[1:]))
    print(json.dumps(info))
    return info


def main(argv: list[str] | None = None) -> dict:
    return run(_job, argv, __doc__, "python -m ardscale.sample DIT_RUN_DIR", SampleJob)


if __name__ == "__main__":
    main()


__getattr__ = moved(__name__, {
    "latent_vae": "ardscale.runs.RunData(cfg).vae and .manifest",
    "latent_manifest": "ardscale.runs.RunData(cfg).manifest",
    "trained_classes": "ardscale.runs.RunData(cfg).classes", "video_fps": "ardscale.runs.RunData(cfg).fps",
    "default_labels": "ardscale.runs.RunData(cfg).default_labels",
    "default_prompts": "ardscale.runs.RunData(cfg).default_prompts",
    "encode_prompts": "ardscale.runs.RunData(cfg).encode_prompts",
    "conditions": "ardscale.runs.RunData(cfg).conditions",
    "context_latents": "ardscale.runs.RunData(cfg).context_latents",
    "decode_frames": "ardscale.runs.RunData(cfg).decode", "write_grid": "ardscale.data.video.write_grid"})
