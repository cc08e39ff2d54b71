"""Training-stream throughput per loader worker, against what one H100 consumes at paper size.

One loader worker = the :class:`~ardscale.data.stream.ShardStream` iterated inline in a process pinned
to one core (``os.sched_setaffinity``: PyAV's decoder threads share it), from local shards and from S3
(``moto_server`` on loopback, which is a Python server: a floor, not S3's speed). Two kinds:

- latents, paper size ``(16, 32, 4)`` float16, 1,000 per shard (synthetic values: parsing cost does
  not depend on them), micro batches of 16;
- videos, paper size (16 frames at 256², H.264, cut from the real UCF-101 clips), stage-1 AR-VAE
  samples (decode the clip, take one frame), micro batches of 16.

GPU consumption: training FLOPs per sample (the DiT from ``engine/flops.py``; the AR-VAE counted
with ``torch.utils.flop_counter`` on one 256² frame, forward + backward) at a stated MFU of an
H100's 989 dense bf16 TFLOPS. Goal: latents, one core ≥ 20× one GPU's consumption; video: the
cores one GPU needs.

    python -m benchmarks.loader --src ../shared/data/ucf101-subset     # writes benchmarks/results/loader.json
"""
import argparse
import functools
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ardscale.data.loader import latent_sample, video_sample
from ardscale.data.shards import npy_bytes, sidecar_url, write_json, write_shard
from ardscale.data.sources import ucf101_items
from ardscale.data.stream import Layout, Plan, ShardSet, ShardStream, StreamLoader
from ardscale.data.video import encode_mp4, read_clips
from ardscale.engine.flops import dit_train_flops
from ardscale.models.arvae import ARVAE, ARVAEConfig
from ardscale.models.dit import DiTConfig

H100_TFLOPS = 989.0


def write_latents(root: Path, shards: int, per_shard: int) -> None:
    rng = np.random.default_rng(0)
    for s in range(shards):
        z = rng.normal(size=(per_shard, 16, 32, 4))
        z = (2 * z / np.linalg.norm(z, axis=-1, keepdims=True)).astype(np.float16)
        url = str(root / f"shard-{s:06d}.tar")
        write_shard(url, [{"__key__": f"z{s}_{k:05d}", "npy": npy_bytes(z[k]), "json": {"label": k % 101}}
                          for k in range(per_shard)])
        write_json(sidecar_url(url), {"clips": per_shard})


def write_videos(root: Path, src: str, videos: int, per_shard: int) -> int:
    """16-frame 256² clips of the first ``videos`` training videos (2 clips each)."""
    rows = []
    for it in ucf101_items(src, "train")[:videos]:
        for k, (start, frames) in enumerate(read_clips(it.path, 16, 8.0, 256, 2)):
            rows.append({"__key__": f"{it.key}-{k:03d}", "mp4": encode_mp4(frames, 8.0),
                         "json": {"label": it.label, "num_frames": 16}})
    for s in range(0, len(rows), per_shard):
        url = str(root / f"shard-{s // per_shard:06d}.tar")
        write_shard(url, rows[s:s + per_shard])
        write_json(sidecar_url(url), {"clips": len(rows[s:s + per_shard])})
    return len(rows)


def rate(where: str, decode, micro: int, seconds: float) -> dict:
    """Samples/s of one inline loader worker over about ``seconds`` (after one warm-up batch)."""
    plan = Plan(ShardSet.from_dir(where), Layout(1, 1, micro, 1), 0, 4)
    loader = StreamLoader(ShardStream(plan, 0, decode, tries=1), 0)
    loader.next()
    t0, batches = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        loader.next()
        batches += 1
    dt = time.perf_counter() - t0
    loader.close()
    return {"batches_per_s": round(batches / dt, 2), "samples_per_s": round(batches * micro / dt, 1)}


def moto(root: Path) -> tuple[subprocess.Popen, str]:
    """A moto_server on loopback with ``root``'s folders uploaded under s3://bench/."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([shutil.which("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(150):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    import fsspec

    fsspec.config.conf["s3"] = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}
    fs = fsspec.filesystem("s3")
    fs.mkdir("bench")
    fs.put(str(root) + "/", "bench/", recursive=True)
    return proc, "s3://bench"


def vae_frame_flops() -> float:
    """Forward + backward FLOPs of the paper-size AR-VAE on one 256² frame."""
    from torch.utils.flop_counter import FlopCounterMode

    model = ARVAE(ARVAEConfig())
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 1, 3, 256, 256)).square().mean().backward()
    return float(counter.get_total_flops())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default="../shared/data/ucf101-subset")
    p.add_argument("--videos", type=int, default=24, help="source videos for the 256² clip shards")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    p.add_argument("--mfu", type=float, nargs="*", default=[0.29, 0.5], help="MFUs to derive GPU needs at")
    p.add_argument("--out", default="benchmarks/results/loader.json")
    a = p.parse_args(argv)
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
    frame = functools.partial(video_sample, frames=1)   # stage 1 trains on one frame per clip
    with tempfile.TemporaryDirectory() as tmp:
        lat, vid = Path(tmp) / "latents", Path(tmp) / "videos"
        write_latents(lat, shards=4, per_shard=1000)
        result["video_clips"] = write_videos(vid, a.src, a.videos, per_shard=16)
        proc, s3 = moto(Path(tmp))   # before the pin: the server has its own cores
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        torch.set_num_threads(1)
        try:
            result["latents_local"] = rate(str(lat), latent_sample, 16, a.seconds)
            result["video_local"] = rate(str(vid), frame, 16, a.seconds)
            result["latents_s3"] = rate(f"{s3}/latents", latent_sample, 16, a.seconds)
            result["video_s3"] = rate(f"{s3}/videos", frame, 16, a.seconds)
        finally:
            proc.terminate()
    os.sched_setaffinity(0, range(os.cpu_count()))
    torch.set_num_threads(os.cpu_count())
    dit = dit_train_flops(DiTConfig(), 16)
    vae = vae_frame_flops()
    result["flops_per_sample"] = {"dit_f16": dit, "vae_stage1_frame": vae}
    result["gpu"] = {}
    for mfu in a.mfu:
        dit_rate, vae_rate = H100_TFLOPS * 1e12 * mfu / dit, H100_TFLOPS * 1e12 * mfu / vae
        result["gpu"][f"mfu_{mfu}"] = {
            "dit_samples_per_s": round(dit_rate, 1), "vae_frames_per_s": round(vae_rate, 1),
            "latent_core_over_gpu": round(result["latents_local"]["samples_per_s"] / dit_rate, 1),
            "latent_core_over_gpu_s3": round(result["latents_s3"]["samples_per_s"] / dit_rate, 1),
            "video_cores_per_gpu": round(vae_rate / result["video_local"]["samples_per_s"], 2)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
