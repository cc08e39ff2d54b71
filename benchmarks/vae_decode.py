"""AR-VAE reconstructions of held-out clips, decoding the 8 frames jointly and one frame at a time.

For each run dir: 16 clips spread over the test split (as the training's held-out evaluation),
PSNR / SSIM of ``decode(encode(clip))`` (joint: the temporally causal decoder sees frames <= t)
and of each frame decoded alone. A stage-2 (per-frame) VAE should give the same numbers both ways.
With ``--figure``: a PNG of frames 0, 3, 7 of 3 clips, real then each run's joint reconstruction.

    python benchmarks/vae_decode.py --label new runs/demo/vae_gan runs/demo/vae --figure docs/vae.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ardscale.data.loader import load_video_clips
from ardscale.data.transforms import to_model_range, to_uint8, to_unit
from ardscale.metrics import psnr, ssim
from ardscale.runs import load_trained

OUT = Path(__file__).resolve().parent / "results" / "vae_decode.json"


@torch.no_grad()
def measure(run_dir: str) -> tuple[dict, np.ndarray]:
    cfg, vae, tag, _ = load_trained(run_dir)
    clips = load_video_clips(cfg.data.root, cfg.data.eval_split)[0]
    clips = clips[torch.linspace(0, len(clips) - 1, 16).long()]
    z = vae.encode(to_model_range(clips))
    joint = vae.decode(z)
    alone = torch.cat([vae.decode(z[:, i:i + 1]) for i in range(z.shape[1])], dim=1)
    frames = lambda v: to_unit(v).flatten(0, 1)                             # (N·F, 3, H, W) in [0, 1]
    real, j, a = frames(clips), frames(to_uint8(joint)), frames(to_uint8(alone))
    row = {"run": run_dir, "tag": tag, "clips": len(clips),
           "psnr_joint": psnr(j, real).mean().item(), "ssim_joint": ssim(j, real).mean().item(),
           "psnr_per_frame": psnr(a, real).mean().item(), "ssim_per_frame": ssim(a, real).mean().item(),
           "max_abs_diff_joint_vs_per_frame": (joint - alone).abs().max().item()}
    return row, to_uint8(joint).numpy()


def figure(path: str, clips: np.ndarray, recons: list[tuple[str, np.ndarray]]) -> None:
    """Rows: real, then each run; columns: frames 0, 3, 7 of clips 0, 5, 10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("real", clips)] + recons
    picks = [(c, f) for c in (0, 5, 10) for f in (0, 3, 7)]
    fig, axes = plt.subplots(len(rows), len(picks), figsize=(1.2 * len(picks), 1.3 * len(rows)))
    for r, (name, v) in enumerate(rows):
        for k, (c, f) in enumerate(picks):
            axes[r, k].imshow(v[c, f])
            axes[r, k].set_xticks([]), axes[r, k].set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=66)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--label", required=True)
    ap.add_argument("--save", default=None, help="also save the joint reconstructions (.npz) for a figure")
    ap.add_argument("--figure", default=None, help="PNG: real | each run; --with adds saved .npz runs")
    ap.add_argument("--with", dest="others", nargs="*", default=[], help="NAME=PATH.npz of other runs")
    a = ap.parse_args()
    results = json.loads(OUT.read_text()) if OUT.exists() else []
    recons = []
    for run in a.runs:
        row, rec = measure(run)
        row["label"] = a.label
        results = [r for r in results if (r["label"], r["run"]) != (a.label, run)] + [row]
        recons.append((f"{a.label}: {Path(run).name}", rec))
        print(json.dumps(row))
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    if a.save:
        np.savez_compressed(a.save, **{name: rec for name, rec in recons})
    if a.figure:
        cfg = load_trained(a.runs[0])[0]
        clips = load_video_clips(cfg.data.root, cfg.data.eval_split)[0]
        clips = clips[torch.linspace(0, len(clips) - 1, 16).long()].numpy()
        others = [(f"{k}", v) for o in a.others for k, v in np.load(o.split("=", 1)[1]).items()]
        figure(a.figure, clips, others + recons)


if __name__ == "__main__":
    main()
