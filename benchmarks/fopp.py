"""FoPP draw speed (Alg. 1): ms per batch of B=256 compositions, T=1000, for F=16 and F=128.

    python benchmarks/fopp.py            # writes benchmarks/results/fopp.json
"""
import json
import platform
import time
from pathlib import Path

import torch

from ardscale.diffusion.timesteps import sample_timesteps


def bench(name: str, batch: int, frames: int, steps: int = 1000, reps: int = 200) -> float:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):  # warm-up: fopp_dp builds its DP tables; the allocator settles
        sample_timesteps(name, batch, frames, steps, generator=gen)
    t0 = time.perf_counter()
    for _ in range(reps):
        sample_timesteps(name, batch, frames, steps, generator=gen)
    return (time.perf_counter() - t0) / reps * 1e3


if __name__ == "__main__":
    torch.set_num_threads(1)
    rows = [{"scheduler": n, "B": 256, "F": f, "T": 1000, "ms_per_batch": round(bench(n, 256, f), 3)}
            for n in ("fopp", "fopp_dp", "naive") for f in (16, 128)]
    out = {"device": f"CPU ({platform.processor() or platform.machine()}), 1 thread",
           "torch": torch.__version__,
           "results": rows}
    path = Path(__file__).parent / "results" / "fopp.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
