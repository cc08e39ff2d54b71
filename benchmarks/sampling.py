"""Sampling cost of the AD scheduler with and without the KV cache (tiny DiT, CPU).

For F=16 (s = 0, 5, 15) and F=128 (s = 5), N=50 DDIM steps, batch 2, no CFG: wall time, DiT
calls and frame-evaluations (frames fed to the DiT, summed over calls), and the largest
difference between the cached and uncached videos. Then the sampler's modes (``eager``,
``static``, ``compiled``; each timed on its second video: the first compiles or warms up) at
F=16 and F=128 with s=5.

    python benchmarks/sampling.py            # writes benchmarks/results/sampling.json
"""
import json
import platform
import time
from pathlib import Path

import torch

from ardscale.config import SampleConfig
from ardscale.diffusion.sampler import sample
from ardscale.diffusion.schedule import GaussianDiffusion
from ardscale.models.dit import DiT, DiTConfig


class Counter(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config
        self.calls = self.frames = 0

    def forward(self, x, t, y, cache=None, cache_frames=0):
        self.calls += 1
        self.frames += x.shape[1]
        return self.model(x, t, y, cache, cache_frames)


def run(model, frames: int, s: int, kv_cache: bool, steps: int = 50) -> tuple[dict, torch.Tensor]:
    counter = Counter(model)
    t0 = time.perf_counter()
    sc = SampleConfig(s=s, steps=steps, cfg_scale=1.0, frames=frames, kv_cache=kv_cache)
    z = sample(counter, GaussianDiffusion(1000), torch.tensor([1, 2]), sc)
    row = {"F": frames, "s": s, "N": steps, "kv_cache": kv_cache,
           "seconds": round(time.perf_counter() - t0, 3),
           "dit_calls": counter.calls, "frame_evals": counter.frames}
    return row, z


if __name__ == "__main__":
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = DiT(DiTConfig.tiny()).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    rows = []
    for frames, s in [(16, 0), (16, 5), (16, 15), (128, 5)]:
        cached, z1 = run(model, frames, s, True)
        plain, z2 = run(model, frames, s, False)
        cached["max_abs_diff_vs_uncached"] = float((z1 - z2).abs().max())
        cached["speedup"] = round(plain["seconds"] / cached["seconds"], 2)
        rows += [plain, cached]
        print(json.dumps(plain), json.dumps(cached), sep="\n", flush=True)
    modes = []
    for frames in (16, 128):
        ref = None
        for mode in ("eager", "static", "compiled"):
            sc = SampleConfig(s=5, steps=50, cfg_scale=1.0, frames=frames, mode=mode)
            walls = []
            for _ in range(2):   # the second run is timed: the first compiles (compiled) or warms up
                t0 = time.perf_counter()
                z = sample(model, GaussianDiffusion(1000), torch.tensor([1, 2]), sc)
                walls.append(round(time.perf_counter() - t0, 3))
            ref = z if ref is None else ref
            row = {"F": frames, "s": 5, "mode": mode, "first_s": walls[0], "seconds": walls[1],
                   "max_abs_diff_vs_eager": float((z - ref).abs().max())}
            modes.append(row)
            print(json.dumps(row), flush=True)
    c = model.config
    out = {"device": f"CPU ({platform.processor() or platform.machine()}), 2 threads",
           "torch": torch.__version__,
           "model": f"DiTConfig.tiny(): hidden {c.hidden_size}, depth {c.depth}, L={c.tokens_per_frame}",
           "batch": 2, "results": rows, "modes": modes}
    path = Path(__file__).parent / "results" / "sampling.json"
    path.write_text(json.dumps(out, indent=2))
