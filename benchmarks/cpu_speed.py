"""The demo's three training steps on the CPU, eager against ``torch.compile`` (inductor's C++/OpenMP
kernels), each in fp32 and under bf16 autocast (oneDNN; this CPU has AVX512-BF16): the demo DiT
(configs/demo.yaml: 128 wide, 4 deep, 8 frames, micro batch 16), the AR-VAE's stage 1
(configs/demo_vae_frames.yaml: single 64² frames, micro batch 16) and stage 3 (configs/demo_vae.yaml:
8-frame clips, temporal blocks, micro batch 8). Models come from the configs, so they follow the
demo's defaults (``vae.pixel_head=both``; D = 8 when BENCHMARKS.md's figures were taken, 16 since).
Forward + backward + AdamW in plain PyTorch (no DeepSpeed, no GAN or perceptual loss: the model's
own step), 2 threads. Every mode trains the same initial weights on the same batches for
``--steps`` steps; the step time is the median after 3
warm-up steps (the first compiled step, which compiles, is reported apart), and each mode's losses
are compared step by step with eager fp32's.

    python benchmarks/cpu_speed.py            # writes benchmarks/results/cpu_speed.json
"""
import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ardscale.config import load
from ardscale.diffusion.schedule import GaussianDiffusion
from ardscale.diffusion.timesteps import sample_timesteps
from ardscale.tasks import dit as dit_task
from ardscale.tasks import vae as vae_task

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODES = {"eager fp32": (False, False), "eager bf16": (False, True),
         "compiled fp32": (True, False), "compiled bf16": (True, True)}


def dit_batches(cfg, steps: int, gen: torch.Generator) -> list[tuple]:
    c, d, out = cfg.dit, GaussianDiffusion(), []
    B, F = cfg.optim.micro_batch_size, 8
    for _ in range(steps):
        x0 = torch.nn.functional.normalize(torch.randn(B, F, c.tokens_per_frame, c.latent_dim, generator=gen),
                                           dim=-1) * cfg.diffusion.scale_factor * c.latent_dim**0.5
        t = sample_timesteps("fopp", B, F, 1000, generator=gen)
        x_t = d.q_sample(x0, t, torch.randn(x0.shape, generator=gen))
        out.append((x_t, t, torch.randint(0, c.num_classes, (B,), generator=gen), x0))
    return out


def vae_batches(cfg, frames: int, steps: int, gen: torch.Generator) -> list[tuple]:
    B, S = cfg.optim.micro_batch_size, cfg.vae.image_size
    return [(torch.rand(B, frames, 3, S, S, generator=gen) * 2 - 1,) for _ in range(steps)]


def train(model, batches, loss_fn, compiled: bool, bf16: bool) -> tuple[list[float], list[float]]:
    fn = torch.compile(model, dynamic=False) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    losses, times = [], []
    for batch in batches:
        t0 = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = loss_fn(fn, *batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    return losses, times


def compare(name: str, model, batches, loss_fn) -> dict:
    row, base = {"model": name, "steps": len(batches)}, None
    for mode, (compiled, bf16) in MODES.items():
        torch._dynamo.reset()
        losses, times = train(copy.deepcopy(model), batches, loss_fn, compiled, bf16)
        base = base or (losses, statistics.median(times[3:]))
        rel = [abs(a - b) / abs(a) for a, b in zip(base[0], losses)]
        row[mode] = {"step_s": round(statistics.median(times[3:]), 4), "first_step_s": round(times[0], 2),
                     "speedup": round(base[1] / statistics.median(times[3:]), 2),
                     "loss_last": losses[-1], "max_rel_loss_diff": max(rel),
                     "mean_rel_loss_diff": sum(rel) / len(rel)}
        print(name, mode, json.dumps(row[mode]), flush=True)
    return row


def vae_loss(m, v):
    r = m(v).float()
    return (r - v).abs().mean() + (r - v).pow(2).mean()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    dit_cfg = load(str(CONFIGS / "demo.yaml"))
    frames_cfg, clips_cfg = load(str(CONFIGS / "demo_vae_frames.yaml")), load(str(CONFIGS / "demo_vae.yaml"))
    rows = [compare("demo DiT", dit_task.build_model(dit_cfg).train(), dit_batches(dit_cfg, a.steps, gen),
                    lambda m, x, t, y, x0: (m(x, t, y).float() - x0).pow(2).mean()),
            compare("demo AR-VAE stage 1 (single frames)", vae_task.build_model(frames_cfg).train(),
                    vae_batches(frames_cfg, 1, a.steps, gen), vae_loss),
            compare("demo AR-VAE stage 3 (8-frame clips)", vae_task.build_model(clips_cfg).train(),
                    vae_batches(clips_cfg, 8, a.steps, gen), vae_loss)]
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    out = {"device": f"CPU ({platform.processor() or platform.machine()}), 2 threads",
           "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
           "torch": torch.__version__, "results": rows}
    (Path(__file__).parent / "results" / "cpu_speed.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
