"""Throughput of the standard metric networks on this machine: the Kinetics-400 I3D (FVD16 clips
of 16 frames at 64², resized to 224² inside) and the Inception-v3 (64² frames resized to 299²),
fp32, all threads, batch sizes as ``ardscale.evaluate`` uses them. Median of ``--reps`` timed
passes after one warm-up; each run adds its entry to ``benchmarks/results/metrics.json``.

    python benchmarks/metrics.py --label cpu
"""
import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ardscale.metrics.fvd import I3DFeatures
from ardscale.metrics.inception import InceptionFeatures

OUT = Path(__file__).resolve().parent / "results" / "metrics.json"


def _rate(fn, x: torch.Tensor, reps: int) -> float:
    fn(x)   # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return len(x) / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    videos = torch.randint(0, 256, (a.clips, a.frames, 64, 64, 3), dtype=torch.uint8, generator=g)
    entry = {
        "label": a.label, "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "i3d_clips_per_s": _rate(I3DFeatures(), videos, a.reps),
        "inception_images_per_s": _rate(InceptionFeatures(), videos[:, :4].flatten(0, 1), a.reps),
        "frames": a.frames,
    }
    results = json.loads(OUT.read_text()) if OUT.is_file() else []
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps([*results, entry], indent=2) + "\n")
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main()
