"""Shard job throughput against bare PyAV decoding of the same videos.

Bare: ``read_clips`` (PyAV decode, resample to fps, resize + crop) of every video of the split in
one process; PyAV's decoder threads (``thread_type="AUTO"``) use every core. Job:
``data_prep/shard_videos.py``'s ``run`` on the same videos into a scratch folder, with Ray (already
started: its start-up is not counted), mp4 encoding and shard writing included. Both use the whole
machine; the goal is job / bare ≥ 0.8.

    python -m benchmarks.shard_job --src ../shared/data/ucf101-subset      # writes benchmarks/results/
"""
import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from ardscale.data.sources import ucf101_items
from ardscale.data.video import read_clips
from ardscale.engine.launch import init_ray
from data_prep.shard_videos import run


def bare(items, num_frames: int, fps: float, size: int, max_clips: int) -> dict:
    t0 = time.perf_counter()
    clips = sum(len(read_clips(it.path, num_frames, fps, size, max_clips)) for it in items)
    dt = time.perf_counter() - t0
    return {"videos": len(items), "clips": clips, "seconds": round(dt, 2),
            "videos_per_s": round(len(items) / dt, 2)}


def job(src: str, split: str, num_frames: int, fps: float, size: int, max_clips: int, per_shard: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        report = run(src, out, split, "ucf101", num_frames=num_frames, fps=fps, size=size,
                     max_clips=max_clips, videos_per_shard=per_shard)
        dt = time.perf_counter() - t0
    return {"videos": report["videos"], "clips": report["clips"], "shards": report["shards"],
            "seconds": round(dt, 2), "videos_per_s": round(report["videos"] / dt, 2)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default="../shared/data/ucf101-subset")
    p.add_argument("--split", default="train")
    p.add_argument("--videos-per-shard", type=int, default=8)
    p.add_argument("--out", default="benchmarks/results/shard_job.json")
    a = p.parse_args(argv)
    params = {"num_frames": 8, "fps": 8.0, "size": 64, "max_clips": 4}
    items = ucf101_items(a.src, a.split)
    cores = int(init_ray().cluster_resources().get("CPU", 1))
    b = bare(items, **params)   # after Ray's start, whose processes then idle
    j = job(a.src, a.split, per_shard=a.videos_per_shard, **params)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    result = {"machine": machine, "params": params,
              "bare": b, "job": j, "job_cores": cores,
              "job_over_bare": round(j["videos_per_s"] / b["videos_per_s"], 3)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
