"""Latent encoding throughput: the bare AR-VAE encoder against the whole Ray job.

Bare: ``model.encode`` on clips already decoded in memory (batch 16, all threads of this
process). Job: ``tools/encode_latents.py``'s ``run`` on the same split into a scratch root
(Ray already started: its start-up is not counted), shard reading, mp4 decoding and shard
writing included. The goal is job / bare ≥ 0.8 on a GPU, where decoding runs on other cores.

    python -m benchmarks.encode --vae-run runs/demo/vae --root runs/demo/data   # after scripts/demo.sh
"""
import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ardscale.data.shards import list_shards, read_shard
from ardscale.data.transforms import to_model_range
from ardscale.data.video import decode_mp4
from tools.encode_latents import load_vae, run


def bare(vae_run: str, root: str, split: str, clips: int) -> dict:
    model, _, _ = load_vae(vae_run)
    videos, t0 = [], time.perf_counter()
    for url in list_shards(f"{root}/videos/{split}"):
        videos += [decode_mp4(s["mp4"]) for s in read_shard(url)]
        if len(videos) >= clips:
            break
    decode_s = time.perf_counter() - t0
    v = to_model_range(torch.from_numpy(np.stack(videos[:clips])))
    with torch.no_grad():
        model.encode(v[:16])
        t0 = time.perf_counter()
        for chunk in v.split(16):
            model.encode(chunk)
        dt = time.perf_counter() - t0
    return {"clips": len(v), "seconds": round(dt, 3), "clips_per_s": round(len(v) / dt, 1),
            "threads": torch.get_num_threads(),
            "read_decode_clips_per_s_1_thread": round(len(videos) / decode_s, 1)}


def job(vae_run: str, root: str, split: str, actors: int) -> dict:
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "videos").mkdir()
        os.symlink(Path(root, "videos", split).resolve(), Path(tmp, "videos", split))
        t0 = time.perf_counter()
        m = run(vae_run, tmp, split, num_actors=actors)
        dt = time.perf_counter() - t0
    ray.shutdown()
    return {"clips": m["clips"], "shards": m["shards"], "actors": actors, "seconds": round(dt, 2),
            "clips_per_s": round(m["clips"] / dt, 1)}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--vae-run", default="runs/demo/vae")
    p.add_argument("--root", default="runs/demo/data")
    p.add_argument("--split", default="train")
    p.add_argument("--actors", type=int, default=os.cpu_count())
    a = p.parse_args()
    b = bare(a.vae_run, a.root, a.split, 512)
    j = job(a.vae_run, a.root, a.split, a.actors)
    out = {"device": f"CPU ({platform.processor() or platform.machine()}), {os.cpu_count()} cores",
           "torch": torch.__version__, "bare_encoder": b, "job": j,
           "job_over_bare": round(j["clips_per_s"] / b["clips_per_s"], 2)}
    path = Path(__file__).parent / "results" / "encode.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
