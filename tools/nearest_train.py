"""Are generated videos copies of training clips? Each video's nearest training clip, in pixels.

For every generated video (the ``samples.npy`` that ``python -m ardscale.evaluate`` writes, uint8
``(N, F, H, W, 3)``) and every held-out real clip, the training clip with the least mean squared
difference over the first ``frames`` frames, reported as PSNR (dB, peak 1). Held-out real clips
are new scenes by the split's construction, so their PSNR to the nearest training clip is what
"not a copy" scores; an AR-VAE reconstruction of a training clip (its held-out PSNR) is what a
copy decoded through the AR-VAE would score. Samples between the two are new scenes; samples
near the second are memorised.

    python tools/nearest_train.py --root runs/demo/data runs/demo/eval_dit/samples.npy
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ardscale.data.loader import load_video_clips


def nearest_psnr(videos: torch.Tensor, train: torch.Tensor, chunk: int = 256
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``videos (N, F, H, W, 3)`` and ``train (M, F, H, W, 3)`` → ``(psnr (N,) dB, index (N,))``
    of each video's nearest training clip (least mean squared difference, pixels in [0, 1]).

    Raises:
        ValueError: the two sets' clips differ in frames, size or channels."""
    if videos.shape[1:] != train.shape[1:]:
        raise ValueError(f"videos {tuple(videos.shape[1:])} and training clips {tuple(train.shape[1:])} "
                         "differ")
    x = videos.flatten(1).double() / 255
    best_mse = torch.full((len(x),), torch.inf, dtype=torch.float64)
    best = torch.zeros(len(x), dtype=torch.long)
    for start in range(0, len(train), chunk):   # chunks bound the (N, chunk) distance matrix
        y = train[start:start + chunk].flatten(1).double() / 255
        mse = torch.cdist(x, y).pow(2) / x.shape[1]
        value, idx = mse.min(1)
        better = value < best_mse
        best_mse[better], best[better] = value[better], idx[better] + start
    return -10 * torch.log10(best_mse.clamp_min(1e-12)), best


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("samples", nargs="+", help="samples.npy files (uint8 (N, F, H, W, 3))")
    p.add_argument("--root", required=True, help="video shards the model trained on")
    p.add_argument("--split", default="train")
    p.add_argument("--reference-split", default="test", help="held-out real clips: the not-a-copy level")
    p.add_argument("--out", default="", help="JSON file for the figures")
    a = p.parse_args(argv)
    train, _ = load_video_clips(a.root, a.split)
    frames = train.shape[1]
    sets = {f"held-out real ({a.reference_split})": load_video_clips(a.root, a.reference_split)[0]}
    sets |= {s: torch.from_numpy(np.load(s))[:, :frames] for s in a.samples}
    report = {}
    for name, videos in sets.items():
        value, _ = nearest_psnr(videos, train)
        report[name] = {"videos": len(videos), "median_db": value.median().item(),
                        "max_db": value.max().item()}
        print(f"{name}: {len(videos)} videos, nearest training clip at median {value.median():.2f} dB "
              f"(closest {value.max():.2f} dB)")
    if a.out:
        Path(a.out).write_text(json.dumps({"root": a.root, "frames": frames, "sets": report}, indent=1))
    return report


if __name__ == "__main__":
    main()
