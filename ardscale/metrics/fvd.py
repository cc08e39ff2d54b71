"""The standard video metrics: FVD16 / FVD128 and KVD with the Kinetics-400 I3D, FID / KID with
the Inception-v3, as the paper's Table 1 and its peers report them.

Protocol (StyleGAN-V, Skorokhodov et al. 2022, ``src/metrics/frechet_video_distance.py`` and
``metric_utils.py``; the paper's Table 1 follows it):
- a clip is ``frames`` consecutive frames (16 for FVD16, 128 for FVD128) from the video's start;
  longer generated videos are cut to their first ``frames``;
- every frame is resized to 224² (bilinear) and mapped to [-1, 1]; the feature is the I3D's 400
  Kinetics logits (:mod:`ardscale.metrics.i3d`);
- the Fréchet distance of the two feature sets in float64 (:mod:`ardscale.metrics.frechet`), with
  2,048 generated videos against the real set in the paper. On a CPU we use fewer: every report
  names its sample counts, and gives the kernel distance (KVD, unbiased at any count) beside it;
- FID: Inception-v3 pool features of frames (StyleGAN2-ADA), ``fid_frames`` frames spread over each
  clip, real and generated alike.

Real features are computed once and cached beside the shards
(``{root}/videos/{split}/_features/{net}-f{frames}-{size}px-n{N}-{hash}.npy``; the hash covers the
clips' pixels, so other clips, frames, fps or size never reuse a file). The cache is filled with
the atomic first-use rule of :mod:`ardscale.cache` (local) or one object write (``s3://``).

``python -m ardscale.metrics.fvd ROOT split=train against=test`` measures the real-vs-real floor.
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import cli
from ..cache import fill_file_once
from ..data.folders import FEATURES, video_dir
from ..data.loader import load_video_clips
from ..data.shards import join
from .frechet import frechet_distance, kernel_distance
from .i3d import load_i3d
from .inception import InceptionFeatures


class I3DFeatures:
    """FVD features of uint8 videos ``(N, T, H, W, 3)`` → float64 ``(N, 400)`` (T ≥ 9), in batches.

    Raises:
        FileNotFoundError / ValueError: at construction, see :func:`ardscale.metrics.i3d.load_i3d`.
    """

    def __init__(self, path: str | Path | None = None, device: str = "cpu", batch_size: int = 4):
        self.net, self.device, self.batch_size = load_i3d(path).to(device), device, batch_size

    @torch.no_grad()
    def __call__(self, videos: np.ndarray | torch.Tensor) -> torch.Tensor:
        out = []
        chunks = torch.as_tensor(videos).split(self.batch_size)
        for chunk in tqdm(chunks, desc="I3D features", leave=False, file=sys.stderr, disable=len(chunks) < 4):
            n, t = chunk.shape[:2]
            x = chunk.to(self.device).flatten(0, 1).permute(0, 3, 1, 2).float()       # (n·t, 3, H, W)
            x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False) / 127.5 - 1
            x = x.clamp(-1, 1).unflatten(0, (n, t)).permute(0, 2, 1, 3, 4)           # (n, 3, t, 224, 224)
            out.append(self.net(x).double().cpu())
        return torch.cat(out)


def spread_frames(clips: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` frames spread evenly over each clip ``(N, T, H, W, 3)`` → images ``(N·k, H, W, 3)``."""
    idx = torch.linspace(0, clips.shape[1] - 1, min(k, clips.shape[1])).round().long()
    return clips[:, idx].flatten(0, 1)


def cached_features(extract, clips: torch.Tensor, cache_dir: str, name: str) -> torch.Tensor:
    """``extract(clips)`` of real clips, read from / written to ``cache_dir`` (local or fsspec URL)."""
    digest = hashlib.sha256(clips.contiguous().numpy().tobytes()).hexdigest()[:16]
    n, t, h = clips.shape[:3]
    file = f"{name}-f{t}-{h}px-n{n}-{digest}.npy"
    if "://" not in cache_dir:
        def fill(tmp: Path) -> None:
            with tmp.open("wb") as f:
                np.save(f, extract(clips).numpy())

        return torch.from_numpy(np.load(fill_file_once(Path(cache_dir) / file, fill)))
    import fsspec

    fs, root = fsspec.core.url_to_fs(cache_dir)
    if fs.exists(f"{root}/{file}"):
        return torch.from_numpy(np.load(io.BytesIO(fs.cat_file(f"{root}/{file}"))))
    feats, buf = extract(clips), io.BytesIO()
    np.save(buf, feats.numpy())
    fs.pipe_file(f"{root}/{file}", buf.getvalue())   # one object write: whole or absent
    return feats


def distances(real: torch.Tensor, fake: torch.Tensor, fd: str, kd: str, subset_size: int = 1000) -> dict:
    """``{fd: Fréchet, kd: kernel mean, kd_std, fd_real, fd_fake}`` of two feature sets (names given)."""
    mean, std = kernel_distance(real, fake, subset_size=subset_size)
    return {fd: frechet_distance(real, fake), kd: mean, f"{kd}_std": std,
            f"{fd}_real": len(real), f"{fd}_fake": len(fake)}


class StandardReference:
    """The real clips of one reference set and their I3D (and Inception) features, cached beside the
    shards, to score generated videos with :meth:`compare`.

    Args:
        clips: real uint8 clips ``(N, T, H, W, 3)``, T = the FVD length (16, 128).
        cache_dir: where the real features are cached (``{root}/videos/{split}/_features``).
        name: the reference set, for reports (``"UCF-101 test split, 17 classes"``).
        fid_frames: frames per clip for FID/KID (0 = no FID).
    Raises:
        ValueError: fewer than 2 clips, or T < 9 (the I3D needs 9 frames).
    """

    def __init__(self, clips: torch.Tensor, cache_dir: str, name: str, i3d: I3DFeatures,
                 inception: InceptionFeatures | None = None, fid_frames: int = 2):
        if len(clips) < 2 or clips.shape[1] < 9:
            raise ValueError(f"{name}: FVD needs ≥ 2 real clips of ≥ 9 frames, got {tuple(clips.shape)}")
        self.clips, self.frames, self.name, self.fid_frames = clips, clips.shape[1], name, fid_frames
        self.i3d, self.inception = i3d, inception
        self.real = cached_features(i3d, clips, cache_dir, "i3d")
        self.real_img = None
        if inception is not None and fid_frames:
            images = lambda c: inception(spread_frames(c, fid_frames))
            self.real_img = cached_features(images, clips, cache_dir, f"inception{fid_frames}")

    def floor(self, other: StandardReference, suffix: str = "_floor") -> dict:
        """The same distances between two real sets (``other`` against this one, features from the
        caches): what a perfect generator would score at these sample counts."""
        t = self.frames
        out = distances(self.real, other.real, f"fvd{t}{suffix}", f"kvd{t}{suffix}")
        if self.real_img is not None and other.real_img is not None:
            out.update(distances(self.real_img, other.real_img, f"fid{suffix}", f"kid{suffix}"))
        return out

    def compare(self, fake: torch.Tensor, suffix: str = "", fid: bool = True) -> dict:
        """``fvd{T}``, ``kvd{T}`` (± std), and ``fid``/``kid`` of uint8 videos ``(M, T', H, W, 3)``
        (T' ≥ T; their first T frames), each with its counts; ``suffix`` names the reference,
        ``fid=False`` skips FID/KID.

        Raises:
            ValueError: T' < T.
        """
        t = self.frames
        if fake.shape[1] < t:
            raise ValueError(f"FVD{t} needs videos of ≥ {t} frames, got {fake.shape[1]}")
        out = distances(self.real, self.i3d(fake[:, :t]), f"fvd{t}{suffix}", f"kvd{t}{suffix}")
        if fid and self.real_img is not None:
            fake_img = self.inception(spread_frames(fake[:, :t], self.fid_frames))
            out.update(distances(self.real_img, fake_img, f"fid{suffix}", f"kid{suffix}"))
        return out


@dataclass
class FloorJob:
    """The real-vs-real floor: FVD/KVD (and FID/KID) of one split's clips against another's."""

    split: str = "train"             # the clips scored as if generated
    against: str = "test"            # the reference split
    against_root: str = ""           # its data root (default: ROOT)
    max_clips: int = 256             # clips per side, spread over the split
    fid_frames: int = 2              # frames per clip for FID/KID (0 = none)
    out: str = ""                    # write the report (JSON) here


def floor(root: str, a: FloorJob) -> dict:
    """The real-vs-real floor of ``a.split`` under ``root`` against ``a.against`` (both cached)."""
    i3d, inception = I3DFeatures(), InceptionFeatures() if a.fid_frames else None
    sides = []
    for where, split in ((a.against_root or root, a.against), (root, a.split)):
        clips, _ = load_video_clips(where, split)
        clips = clips[torch.linspace(0, len(clips) - 1, min(a.max_clips, len(clips))).round().long()]
        sides.append((clips, join(video_dir(where, split), FEATURES)))
    ref, other = (StandardReference(clips, cache, split, i3d, inception, a.fid_frames)
                  for (clips, cache), split in zip(sides, (a.against, a.split)))   # both sides cached
    report = {"clips": f"{a.split} of {root}", "reference": f"{a.against} of {a.against_root or root}",
              "metrics": ref.floor(other, suffix="")}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _job(argv: list[str]) -> dict:
    if "=" in argv[0]:
        raise ValueError(f"the first argument is the data root (video shards under ROOT/videos/SPLIT), "
                         f"not {argv[0]!r}")
    report = floor(argv[0], cli.parse(FloorJob, argv[1:]))
    print(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> dict:
    return cli.run(_job, argv, __doc__, "python -m ardscale.metrics.fvd ROOT", FloorJob)


if __name__ == "__main__":
    main()
