"""Training engine on CPU: data-parallel step time for 1 → 2 Ray workers, and ZeRO 1/2/3 memory per rank.

DiT of the demo size (hidden 128, depth 4) on synthetic latents (F=8, L=32, D=4), micro batch
16, fp32, gloo. Step time: median over steps 5-29 (the first ones warm up). Memory per rank:
the bytes of each rank's optimizer partition and of the model file in the saved checkpoint,
i.e. what ZeRO splits across ranks.

    python -m benchmarks.engine            # writes benchmarks/results/engine.json
"""
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from ardscale.config import load
from ardscale.data.shards import npy_bytes, write_json, write_shard
from ardscale.train import launch

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")


def make_latents(root: Path, clips: int = 512) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(clips, 8, 32, 4))
    z = (2 * z / np.linalg.norm(z, axis=-1, keepdims=True)).astype(np.float16)   # tokens of norm √D (AR-VAE)
    rows = [{"__key__": f"c{i:05d}", "npy": npy_bytes(z[i]),
             "json": {"label": i % 10}} for i in range(clips)]
    write_shard(str(root / "latents" / "bench" / "train" / "shard-000000.tar"), rows)
    write_json(str(root / "latents" / "bench" / "train" / "_manifest.json"),
               {"vae_id": "bench", "num_frames": 8})


def run(root: Path, out: Path, workers: int, zero: str, steps: int) -> dict:
    run_dir = out / f"w{workers}-{zero}"
    launch(load(CONFIG, [f"data.root={root}", "data.vae_id=bench", f"train.run_dir={run_dir}",
                         f"train.steps={steps}", f"train.ckpt_every={steps}", f"scale.num_workers={workers}",
                         f"optim.deepspeed={zero}", f"tracking.tracking_uri=sqlite:///{out}/mlruns.db"]))
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step_s = statistics.median(r["step_time_s"] for r in rows[5:])
    ckpt = run_dir / "ckpt" / f"step-{steps:08d}"
    optim = sorted(p.stat().st_size for p in ckpt.glob("*optim_states.pt"))
    model = sorted(p.stat().st_size for p in ckpt.glob("*model_states.pt"))
    return {"workers": workers, "zero": zero, "median_step_s": round(step_s, 4),
            "samples_per_s": round(16 * workers / step_s, 1),
            "optimizer_mib_per_rank": [round(b / 2**20, 2) for b in optim],
            "model_file_mib_per_rank": [round(b / 2**20, 2) for b in model]}


if __name__ == "__main__":
    import ray

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}})
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "data", Path(tmp) / "runs"
        make_latents(root)
        rows = [run(root, out, 1, "zero2", 30), run(root, out, 2, "zero2", 30)]
        rows += [run(root, out, 2, z, 8) for z in ("zero1", "zero3")]
    params = sum(p.numel() for p in __import__("ardscale.models.dit", fromlist=["DiT"]).DiT(
        load(CONFIG, ["data.vae_id=x"]).model).parameters())
    result = {"device": f"CPU ({platform.processor() or platform.machine()}), {os.cpu_count()} cores",
              "torch": torch.__version__, "dit_params": params, "results": rows,
              "scaling_1_to_2": round(rows[1]["samples_per_s"] / rows[0]["samples_per_s"], 2)}
    path = Path(__file__).parent / "results" / "engine.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
