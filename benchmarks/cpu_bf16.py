"""bf16 autocast on the CPU (oneDNN, AVX512-BF16 here) against fp32 for the demo's two training
steps: the demo DiT (configs/demo.yaml: 128 wide, 4 deep, 8 frames, micro batch 16) and the demo
AR-VAE (configs/demo_vae.yaml: 64², width 128, temporal blocks, 8 frames, micro batch 8), forward +
backward + AdamW, plain PyTorch (no DeepSpeed), 2 threads. Each precision trains the same
initial weights on the same batches for ``--steps`` steps; the step time is the median after 3
warm-up steps, and the losses of the two runs are compared step by step.

    python benchmarks/cpu_bf16.py            # writes benchmarks/results/cpu_bf16.json
"""
import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ardscale.diffusion.schedule import GaussianDiffusion
from ardscale.diffusion.timesteps import sample_timesteps
from ardscale.models.arvae import ARVAE, ARVAEConfig
from ardscale.models.dit import DiT, DiTConfig


def dit_batches(steps: int, gen: torch.Generator) -> list[tuple]:
    d, out = GaussianDiffusion(), []
    for _ in range(steps):
        x0 = torch.nn.functional.normalize(torch.randn(16, 8, 32, 4, generator=gen), dim=-1)
        t = sample_timesteps("fopp", 16, 8, 1000, generator=gen)
        x_t = d.q_sample(x0, t, torch.randn(x0.shape, generator=gen))
        out.append((x_t, t, torch.randint(0, 101, (16,), generator=gen), x0))
    return out


def vae_batches(steps: int, gen: torch.Generator) -> list[tuple]:
    return [(torch.rand(8, 8, 3, 64, 64, generator=gen) * 2 - 1,) for _ in range(steps)]


def train(model, batches, loss_fn, bf16: bool) -> tuple[list[float], list[float]]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    losses, times = [], []
    for batch in batches:
        t0 = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, *batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    return losses, times


def compare(name: str, model, batches, loss_fn) -> dict:
    fp32_losses, fp32_times = train(copy.deepcopy(model), batches, loss_fn, False)
    bf16_losses, bf16_times = train(copy.deepcopy(model), batches, loss_fn, True)
    step32, step16 = statistics.median(fp32_times[3:]), statistics.median(bf16_times[3:])
    rel = [abs(a - b) / abs(a) for a, b in zip(fp32_losses, bf16_losses)]
    row = {"model": name, "steps": len(batches), "fp32_step_s": round(step32, 4),
           "bf16_step_s": round(step16, 4), "speedup": round(step32 / step16, 2),
           "loss_first": [fp32_losses[0], bf16_losses[0]],
           "loss_last": [fp32_losses[-1], bf16_losses[-1]], "max_rel_loss_diff": max(rel),
           "mean_rel_loss_diff": sum(rel) / len(rel)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    dit = DiT(DiTConfig(hidden_size=128, depth=4, num_heads=4, num_classes=101, attn_backend="sdpa")).train()
    vae = ARVAE(ARVAEConfig(image_size=64, patch_size=8, hidden_size=128, depth=2, num_heads=4,
                            pixel_channels=16, temporal=True)).train()
    rows = [compare("demo DiT", dit, dit_batches(a.steps, gen),
                    lambda m, x, t, y, x0: (m(x, t, y).float() - x0).pow(2).mean()),
            compare("demo AR-VAE (L1 + L2)", vae, vae_batches(a.steps, gen),
                    lambda m, v: ((r := m(v).float()) - v).abs().mean() + (r - v).pow(2).mean())]
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    out = {"device": f"CPU ({platform.processor() or platform.machine()}), 2 threads",
           "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
           "torch": torch.__version__, "results": rows}
    (Path(__file__).parent / "results" / "cpu_bf16.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
