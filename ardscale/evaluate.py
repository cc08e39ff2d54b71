"""Measure what a trained run generates: ``python -m ardscale.evaluate RUN_DIR [key=value …]``.

A class DiT: sample ``per_class`` videos for every class of the held-out split that the run
trained on (AD scheduler ``s``, ``steps`` DDIM steps, CFG ``cfg_scale``). A text DiT: sample one
video per held-out caption (``prompts`` of them, spread over the split; 0 = every held-out clip's
caption), encoded by the text encoder its latents name. The videos are decoded with the AR-VAE of
the training latents and compared with the split's real clips:

- ``fvd_local`` / ``fid_local``: Fréchet distances of the ``ucf101_local`` network's video / frame
  features (:mod:`ardscale.metrics.local`; the key ``local`` names its checkpoint);
- ``class_accuracy``: how often that network classifies a generated video as the class it was
  asked for (a class DiT's label; for a text DiT, the class of the held-out clip whose caption was
  the prompt, when the captions file gave one): prompt–video agreement.
  ``real_class_accuracy`` is the same network on the real held-out clips (its ceiling), and
  ``chance`` one over the number of classes asked for;
- ``fvd16`` / ``kvd16`` (± ``kvd16_std``) and ``fid`` / ``kid``: the standard metrics (the
  Kinetics-400 I3D and the Inception-v3 of their registry packages; the protocol is
  :mod:`ardscale.metrics.fvd`'s), each with its counts (``fvd16_real``, ``fvd16_fake``), against
  the held-out clips of the trained classes, and ``…_train`` against the train clips (``references``;
  the report names each), and ``…_floor_train``: the train clips scored as if generated against
  the test clips, what a perfect generator reaches at these counts. Their real clips are
  ``fvd_frames`` long (``real_root``: shards cut that long), so a DiT trained on shorter clips is
  sampled that long with its sliding window.
  ``fvd_frames=128`` gives FVD128. ``standard=false`` skips them;
- ``gen_s_per_video``: sampling + decoding wall time per video.

``frames`` beyond the training length generates long videos with a sliding window (the paper's
FVD128 setting, Table 1): each non-overlapping training-length segment is compared with the real
clips (``fvd_local_segments``, one value per segment: drift shows as growth), and ``fvd_local``
pools all segments.

An AR-VAE run: ``rfvd_local`` and ``rfvd16`` (``rkvd16``, ``rfid``) of reconstructions against the
originals, with PSNR/SSIM. Both tasks report ``motion`` / ``motion_real`` / ``motion_ratio``
(:func:`motion`): how much the videos move against the real clips. Every run writes
``report.json`` and a grid video under ``out`` (default
``RUN_DIR/eval/<tag>-…``) and logs the metrics (prefix ``eval/``) at the checkpoint's step to a
child run of the training's MLflow run (``eval-<run>-<out>``, the ``eval`` settings as its params).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from . import cli
from .config import EvalConfig, SampleConfig, refuse_old_keys
from .data.folders import FEATURES, video_dir
from .data.loader import load_video_clips
from .data.shards import join
from .data.transforms import to_model_range, to_uint8, to_unit
from .data.video import write_grid
from .diffusion.sampler import frames_in_flight, sample
from .diffusion.schedule import make_diffusion
from .engine import checkpoint
from .engine.tracking import Tracker
from .metrics import frechet_distance, per_frame_motion, psnr, ssim
from .metrics.fvd import I3DFeatures, StandardReference
from .metrics.inception import InceptionFeatures
from .metrics.local import LocalFeatures
from .runs import RunData, load_trained, mlflow_run_id


def parse(overrides: list[str], base: EvalConfig | None = None) -> EvalConfig:
    """``key=value`` strings (Hydra's grammar) over ``base`` (a run's ``eval`` section) →
    :class:`EvalConfig`.

    Raises:
        ValueError: an old key (``s=`` is now ``sample.s=`` …), naming the new one.
        omegaconf errors: an unknown key or a wrong type, named.
    """
    refuse_old_keys({}, overrides, "evaluate", prefix="eval.")
    return cli.parse(base or EvalConfig(), overrides)


@dataclass
class HeldOut:
    """The real clips of a held-out split: ``clips`` ``(N, F, H, W, 3)`` uint8, ``labels`` ``(N,)``
    long (-1: no class) and ``captions`` (N strings, "" where the shards carry none)."""

    clips: torch.Tensor
    labels: torch.Tensor
    captions: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, rows: torch.Tensor) -> HeldOut:
        """The clips at ``rows`` (a bool mask or an index tensor)."""
        idx = rows.nonzero().flatten() if rows.dtype == torch.bool else rows
        return HeldOut(self.clips[idx], self.labels[idx], [self.captions[i] for i in idx.tolist()])


class Reference:
    """The real clips ``(N, F, H, W, 3)`` uint8 and their ``ucf101_local`` features, computed once, to compare
    generated (or reconstructed) clips against with :meth:`compare`. With their ``labels``
    ``(N,)`` it also gives the local network's accuracy on them (``real_class_accuracy``).

    Raises:
        FileNotFoundError / ValueError: a feature network file missing or unreadable (named).
    """

    def __init__(self, real: torch.Tensor, e: EvalConfig, labels: torch.Tensor | None = None):
        self.frames = real.shape[1]
        self.local = LocalFeatures(e.local)
        self.real_v, self.real_f = self.local(real)
        self.real_accuracy = None if labels is None else self.local.accuracy(self.real_v, labels)

    def compare(self, fake: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        """Fréchet distances of uint8 ``fake (M, F', H, W, 3)``. ``F' = k·F`` (long videos): fake
        segments of F frames are compared one by one (``fvd_local_segments``) and pooled.
        ``labels`` ``(M,)``: the class each fake was asked for (→ ``class_accuracy`` of its first
        segment, when the local network knows those classes).

        Raises:
            ValueError: ``F' < F`` (nothing to compare with the real clips).
        """
        F = self.frames
        if fake.shape[1] < F:
            raise ValueError(f"generated videos of {fake.shape[1]} frames against real clips of {F}: "
                             f"sample at least {F} frames (eval.sample.frames)")
        seg_feats = [self.local(fake[:, i * F:(i + 1) * F]) for i in range(fake.shape[1] // F)]
        out = {"fvd_local": frechet_distance(self.real_v, torch.cat([v for v, _ in seg_feats])),
               "fid_local": frechet_distance(self.real_f, torch.cat([f for _, f in seg_feats]))}
        if len(seg_feats) > 1:
            out["fvd_local_segments"] = [frechet_distance(self.real_v, v) for v, _ in seg_feats]
        found = None if labels is None else self.local.accuracy(seg_feats[0][0], labels)
        if found is not None:
            out.update(class_accuracy=found, chance=1 / len(torch.unique(labels[labels >= 0])))
            if self.real_accuracy is not None:
                out["real_class_accuracy"] = self.real_accuracy
        return out


@torch.no_grad()
def generate_videos(data: RunData, dit, labels, sc: SampleConfig,
                    batch_size: int) -> tuple[torch.Tensor, float]:
    """Sample (``sc``, frames and window 0 = the training length) and decode one video per
    condition (class labels ``(N,)``, or a text DiT's :class:`~ardscale.models.dit.TextCondition`
    of N prompts), ``batch_size`` at a time; returns uint8 ``(N, F, H, W, 3)`` and seconds per video."""
    sc = data.resolve(sc)
    diffusion, gen = make_diffusion(data.cfg.diffusion), torch.Generator().manual_seed(sc.seed)
    videos, start = [], time.perf_counter()
    for i in tqdm(range(0, len(labels), batch_size), desc="sampling videos", file=sys.stderr):
        z = sample(dit, diffusion, labels[i:i + batch_size], sc, generator=gen)
        videos.append(torch.from_numpy(data.decode(z, sc.window)))
    return torch.cat(videos), (time.perf_counter() - start) / len(labels)


@torch.no_grad()
def reconstruct(vae, real: torch.Tensor, batch_size: int) -> torch.Tensor:
    """AR-VAE reconstructions of uint8 clips ``(N, F, H, W, 3)`` → uint8, same shape."""
    out = [to_uint8(vae(to_model_range(c))) for c in tqdm(real.split(batch_size), desc="reconstructing",
                                                          file=sys.stderr)]
    return torch.cat(out)


def _log(run_cfg, run_dir: str, metrics: dict, step: int, out: Path, e: EvalConfig) -> str | None:
    """Log the scalar metrics (``eval/`` prefix, at the checkpoint's ``step``), the report and the
    grid to a child run of the training's MLflow run, named after ``out`` and holding the
    ``eval`` settings as params: an evaluation after training adds a run beside the training's
    ``eval/*`` curves instead of a second value at their last step."""
    tracker = Tracker(run_cfg.tracking.tracking_uri, run_cfg.tracking.experiment, run_cfg.tracking.enabled)
    tracker.start(None, f"eval-{Path(run_dir).name}-{out.name}", {"eval": asdict(e)},
                  parent_run_id=mlflow_run_id(run_dir))
    tracker.set_tags({"checkpoint": checkpoint.tag(step), "task": run_cfg.task})
    tracker.log_metrics({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, float)}, step)
    for name in ("report.json", "samples.mp4", "samples.gif"):
        if (out / name).is_file():
            tracker.log_artifact(str(out / name), f"eval/{out.name}")
    tracker.end()
    return tracker.run_id


def held_out(data: RunData, e: EvalConfig, root: str = "") -> HeldOut:
    """The real clips of ``e.split`` under ``root`` (default: the run's data root), restricted to
    the classes the run trained on (a DiT cannot be asked for a class it never saw; a held-out
    split may hold classes the train split lacks) and to ``e.max_real`` clips when set."""
    meta: list[dict] = []
    real, labels = load_video_clips(root or data.cfg.data.root, e.split, meta)
    held = HeldOut(real, labels, [m.get("caption", "") for m in meta])
    trained = data.classes
    if trained:
        held = held[torch.isin(labels, torch.tensor(trained))]
    if e.max_real and e.max_real < len(held):   # spread over the split, not its first shards
        held = held[torch.linspace(0, len(held) - 1, e.max_real).round().long()]
    return held


def standard_references(data: RunData, e: EvalConfig) -> list[tuple[str, StandardReference]]:
    """``(split, StandardReference)`` for each split of ``e.references``: real clips of
    ``e.fvd_frames`` frames from ``e.real_root`` (default: the run's data root), of the classes the
    run trained on, ``e.max_real`` spread over the split; their features cached beside the shards.

    Raises:
        ValueError: the shards' clips are shorter than ``e.fvd_frames`` (naming the folder and the fix).
    """
    root = e.real_root or data.cfg.data.root
    i3d = I3DFeatures(e.i3d or None)
    inception = InceptionFeatures(e.inception or None) if e.fid_frames else None
    refs = []
    for split in [s.strip() for s in e.references.split(",") if s.strip()]:
        held = held_out(data, replace(e, split=split), root)
        if held.clips.shape[1] < e.fvd_frames:
            n = e.fvd_frames
            raise ValueError(f"{video_dir(root, split)}: clips of {held.clips.shape[1]} frames; FVD{n} "
                             f"needs {n}: shard the split with data_prep/shard_videos.py --num-frames {n} "
                             "into another root and set real_root=, or standard=false")
        name = f"{split} clips of {root} ({len(held)} clips, {len(torch.unique(held.labels))} classes)"
        cache = join(video_dir(root, split), FEATURES)
        refs.append((split, StandardReference(held.clips[:, :e.fvd_frames], cache, name, i3d, inception,
                                              e.fid_frames)))
    return refs


def dit_conditions(data: RunData, held: HeldOut, e: EvalConfig) -> tuple:
    """What a DiT is evaluated on: ``(conditions, labels (M,) long, prompts)``. A class DiT:
    ``per_class`` of every held-out class, the labels themselves, no prompts. A text DiT:
    ``prompts`` captions of held-out clips, spread over the split (0 = every captioned clip),
    encoded as a TextCondition, their clips' labels, and the captions; or the rows of
    ``prompts_file`` (:func:`_file_prompts`).

    Raises:
        ValueError: a text DiT and no held-out clip with a caption (naming the split).
    """
    if data.cfg.dit.condition != "text":
        if e.videos:   # the real set's class frequencies: evenly spaced picks of its sorted labels
            y = held.labels.sort().values[torch.linspace(0, len(held) - 1, e.videos).round().long()]
        else:
            y = torch.unique(held.labels).repeat_interleave(e.per_class)
        return y, y, []
    if e.prompts_file:
        return _file_prompts(data, held, e)
    captioned = torch.tensor([i for i, c in enumerate(held.captions) if c], dtype=torch.long)
    if not len(captioned):
        raise ValueError(f"none of the {len(held)} held-out clips ({e.split}) has a caption: shard that "
                         "split with data_prep/shard_videos.py --source captions")
    n = min(e.prompts or len(captioned), len(captioned))
    pick = captioned[torch.linspace(0, len(captioned) - 1, n).round().long()]
    prompts = [held.captions[i] for i in pick.tolist()]
    return data.encode_prompts(prompts), held.labels[pick], prompts


def _file_prompts(data: RunData, held: HeldOut, e: EvalConfig) -> tuple:
    """The prompts of ``e.prompts_file`` (JSON lines: ``caption``, optional ``label``, e.g. new
    wordings of the held-out classes), each ``max(1, e.prompts // rows)`` times; a row whose label
    is not among the held-out clips' is left out, as the real clips of that class are.

    Raises:
        FileNotFoundError: no such file. ValueError: a row that is not JSON with a ``caption``, or
        no row left (naming the file and line).
    """
    rows = []
    for i, line in enumerate(Path(e.prompts_file).read_text().splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError as err:
            raise ValueError(f"{e.prompts_file}:{i}: not JSON ({err})") from None
        if row is not None and not (isinstance(row, dict) and row.get("caption")):
            raise ValueError(f"{e.prompts_file}:{i}: a prompt row needs a non-empty \"caption\"")
        rows += [row] if row is not None else []
    classes = set(held.labels.tolist())
    rows = [r for r in rows if int(r.get("label", -1)) < 0 or int(r["label"]) in classes]
    if not rows:
        raise ValueError(f"{e.prompts_file}: no prompt whose label is one of the held-out classes "
                         f"{sorted(classes)}")
    rows = rows * max(1, e.prompts // len(rows))
    prompts = [r["caption"] for r in rows]
    return data.encode_prompts(prompts), torch.tensor([int(r.get("label", -1)) for r in rows]), prompts


def evaluate_dit_run(data: RunData, dit, held: HeldOut, e: EvalConfig) -> tuple:
    """Generated videos against the real held-out clips (see the module docstring): (uint8
    videos, metrics, report fields)."""
    y, labels, prompts = dit_conditions(data, held, e)
    fake, per_video = generate_videos(data, dit, y, e.sample, e.batch_size)
    metrics = {**Reference(held.clips, e, held.labels).compare(fake, labels), **motion(fake, held.clips),
               "gen_s_per_video": per_video}
    info = {"classes": torch.unique(labels).tolist(), "generated": len(labels), "frames": fake.shape[1]}
    return fake, metrics, info | ({"prompts": prompts} if prompts else {})


def evaluate_vae_run(data: RunData, vae, held: HeldOut, e: EvalConfig) -> tuple:
    """Reconstructions of the real clips: (uint8 videos, ``rfvd_local`` … PSNR, SSIM, {})."""
    real = held.clips
    fake = reconstruct(vae, real, e.batch_size)
    metrics = {("r" + k if "fvd" in k else k): v for k, v in Reference(real, e).compare(fake).items()}
    fake01, real01 = to_unit(fake).flatten(0, 1), to_unit(real).flatten(0, 1)   # (N·F, 3, H, W)
    metrics.update(psnr=psnr(fake01, real01).mean().item(), ssim=ssim(fake01, real01).mean().item(),
                   **motion(fake, real))
    return fake, metrics, {}


def motion(fake: torch.Tensor, real: torch.Tensor) -> dict:
    """How much uint8 videos ``(N, F, H, W, 3)`` move: ``motion`` (``fake``) and ``motion_real``,
    the mean absolute difference of consecutive frames in uint8 levels (mean over frame pairs,
    clips and pixels), and ``motion_ratio`` = motion / motion_real (inf for still real clips).
    Blurry reconstructions and frozen samples score < 1; jittery ones > 1 (issue 23)."""
    f, r = (sum(m) / len(m) for m in (per_frame_motion(fake), per_frame_motion(real)))
    return {"motion": f, "motion_real": r, "motion_ratio": f / r if r > 0 else float("inf")}


def standard_metrics(task: str, model, refs: list, fake: torch.Tensor, batch_size: int) -> dict:
    """FVD/KVD (and FID/KID) of a DiT's videos ``fake`` against every reference of
    :func:`standard_references` (the first unsuffixed, the others ``_<split>``), or of an AR-VAE's
    reconstructions of the first reference's own clips (``rfvd16`` …)."""
    if task == "vae":
        ref = refs[0][1]
        return {f"r{k}": v for k, v in ref.compare(reconstruct(model, ref.clips, batch_size)).items()}
    metrics = {}
    for i, (split, ref) in enumerate(refs):
        metrics.update(ref.compare(fake, "" if i == 0 else f"_{split}"))
        if i:   # the floor: these real clips scored as if generated, against the first reference
            metrics.update(refs[0][1].floor(ref, f"_floor_{split}"))
    return metrics


EVALUATORS = {"dit": evaluate_dit_run, "vae": evaluate_vae_run}
"""What ``python -m ardscale.evaluate`` runs for each task: ``(data, model, held, e) -> (uint8 videos,
metrics, report fields)``."""


def _check_window(sc: SampleConfig, window: int) -> None:
    """Fail before any sampling when the videos would be shorter than the held-out clips (of the
    training length ``window``), or when AD with ``sc.s`` keeps more frames in flight than the
    sliding window holds.

    Raises:
        ValueError: naming the frames, s and steps, and the fix.
    """
    if 0 < sc.frames < window:
        raise ValueError(f"eval.sample.frames={sc.frames} is shorter than the held-out clips ({window} "
                         f"frames) the metrics compare with: sample at least {window} (0 = the clip length)")
    if sc.frames <= window:
        return
    need = frames_in_flight(sc.frames, sc.steps, sc.s)
    if need > window:
        raise ValueError(f"{sc.frames} frames with s={sc.s}, steps={sc.steps} keep {need} frames in flight, "
                         f"more than the training length {window} the sliding window holds: raise sample.s "
                         f"(about steps / {window} or more) or sample fewer frames")


def evaluate(run_dir: str, overrides: list[str] | None = None) -> dict:
    """Evaluate a DiT or AR-VAE run (see the module docstring) with its ``eval`` settings and
    ``overrides``; returns the report.

    Raises:
        FileNotFoundError: no checkpoint, no held-out shards, or no local feature network.
        ValueError: an old or unknown key; too few frames in the window for ``sample.s``.
    """
    which = parse(overrides or []).checkpoint    # a bad key fails before the run loads
    run_cfg, model, tag, _ = load_trained(run_dir, which or None)
    data, e = RunData(run_cfg), parse(overrides or [], run_cfg.eval)
    held = held_out(data, e)
    if e.standard and run_cfg.task == "dit":   # FVD16 of an 8-frame model: the sliding window goes on
        frames = max(e.sample.frames or held.clips.shape[1], e.fvd_frames)
        e = replace(e, sample=replace(e.sample, frames=frames))
    if run_cfg.task == "dit":
        _check_window(e.sample, held.clips.shape[1])
    report = {"run_dir": run_dir, "checkpoint": tag, "task": run_cfg.task, "eval": asdict(e),
              "real_clips": len(held)}
    if e.standard and run_cfg.task == "vae":   # reconstructions are scored against their own clips only
        e = replace(e, references=e.references.split(",")[0])
    refs = standard_references(data, e) if e.standard else []   # before sampling: fail early
    fake, metrics, extra = EVALUATORS[run_cfg.task](data, model, held, e)
    if refs:
        report["references"] = {split: ref.name for split, ref in refs}
        metrics = standard_metrics(run_cfg.task, model, refs, fake, e.batch_size) | metrics
    report.update(extra, metrics=metrics)
    out = Path(e.out or Path(run_dir) / "eval" / f"{tag}-s{e.sample.s}-n{len(fake)}-f{fake.shape[1]}")
    write_grid(fake[:16].numpy(), out, data.fps)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if e.mlflow:
        report["mlflow_run_id"] = _log(run_cfg, run_dir, metrics, checkpoint.step_of(tag), out, e)
    report["out"] = str(out)
    return report


def _job(argv: list[str]) -> dict:
    if "=" in argv[0]:
        raise ValueError(f"the first argument is the run folder, not {argv[0]!r}")
    report = evaluate(argv[0], argv[1:])
    print(json.dumps({k: report[k] for k in ("metrics", "out")}, indent=2))
    return report


def main(argv: list[str] | None = None) -> dict:
    return cli.run(_job, argv, __doc__, "python -m ardscale.evaluate RUN_DIR", EvalConfig)


if __name__ == "__main__":
    main()
