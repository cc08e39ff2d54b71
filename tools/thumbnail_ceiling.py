"""What a bottleneck of k floats per frame can keep, measured without training anything.

Each held-out frame is shrunk to s×s pixels (area average: 3·s² floats) and blown back up
(bicubic), and the result is scored like an AR-VAE reconstruction: PSNR to the real frame (dB,
peak 1) and ``motion_ratio``, the mean absolute difference of consecutive frames against the real
clips' (:func:`ardscale.evaluate.motion`). A learned decoder should beat a thumbnail of the same
size, but a blurry one loses motion the same way, so the table says which PSNR a reconstruction
needs before its motion can come near the real clips' (issue 23: AR-VAE targets).

    python tools/thumbnail_ceiling.py --root runs/demo/data --out runs/thumbnail_ceiling.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ardscale.data.loader import load_video_clips
from ardscale.data.transforms import to_uint8, to_unit
from ardscale.evaluate import motion
from ardscale.metrics import psnr


def thumbnail(videos: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(N, F, H, W, 3)`` → the same shape, each frame shrunk to ``size``² and blown back up."""
    x = to_unit(videos)                                                     # (N, F, 3, H, W)
    flat = x.flatten(0, 1)
    small = F.interpolate(flat, size=(size, size), mode="area")
    back = F.interpolate(small, size=flat.shape[-2:], mode="bicubic").clamp(0, 1)
    return to_uint8(back.view_as(x) * 2 - 1)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="video shards (data_prep/shard_videos.py output)")
    p.add_argument("--split", default="test")
    p.add_argument("--sizes", default="4,6,8,11,16,23,32", help="thumbnail sides, comma-separated")
    p.add_argument("--out", default="", help="JSON file for the table")
    a = p.parse_args(argv)
    real, _ = load_video_clips(a.root, a.split)
    rows = []
    for s in (int(v) for v in a.sizes.split(",")):
        fake = thumbnail(real, s)
        row = {"side": s, "floats": 3 * s * s,
               "psnr": psnr(to_unit(fake).flatten(0, 1), to_unit(real).flatten(0, 1)).mean().item(),
               **motion(fake, real)}
        rows.append(row)
        print(f"{s:>3}² thumbnail ({row['floats']:>5} floats): PSNR {row['psnr']:.2f} dB, "
              f"motion ratio {row['motion_ratio']:.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps({"root": a.root, "split": a.split, "clips": len(real),
                                           "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
