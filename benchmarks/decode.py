"""AR-VAE decode of a long video with a sliding window: one window per call (the decoder before
batching, and its CPU default) against the windows stacked along the batch, 256 frames a call
(``ARVAE.decode(z, window, 256)``, its CUDA default), demo-size AR-VAE with random weights on the CPU.

    python benchmarks/decode.py            # writes benchmarks/results/decode.json
"""
import json
import platform
import time
from pathlib import Path

import torch

from ardscale.models.arvae import ARVAE, ARVAEConfig


def one_window_per_call(vae: ARVAE, z: torch.Tensor, window: int) -> torch.Tensor:
    """The decoder before batching: the first window, then one call per later frame."""
    tail = [vae.decode(z[:, i - window + 1:i + 1])[:, -1:] for i in range(window, z.shape[1])]
    return torch.cat([vae.decode(z[:, :window]), *tail], dim=1)


def timed(fn, *args) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


if __name__ == "__main__":
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = ARVAEConfig(image_size=64, patch_size=8, hidden_size=128, depth=2, num_heads=4, pixel_channels=16,
                      temporal=True)   # configs/demo_vae.yaml
    vae = ARVAE(cfg).eval()
    rows = []
    with torch.no_grad():
        for frames, window in ((32, 8), (128, 16)):
            z = torch.randn(1, frames, cfg.tokens_per_frame, cfg.latent_dim)
            vae.decode(z[:, :window])   # warm-up: first-call allocations
            old_s, old = timed(one_window_per_call, vae, z, window)
            new_s, new = timed(vae.decode, z, window, 256)
            rows.append({"F": frames, "window": window, "one_window_per_call_s": round(old_s, 3),
                         "batched_s": round(new_s, 3), "speedup": round(old_s / new_s, 2),
                         "max_abs_diff": float((old - new).abs().max())})
            print(json.dumps(rows[-1]), flush=True)
    out = {"device": f"CPU ({platform.processor() or platform.machine()}), 2 threads",
           "torch": torch.__version__,
           "model": "configs/demo_vae.yaml AR-VAE (64², width 128, depth 2, temporal), random weights",
           "batch": 1, "results": rows}
    (Path(__file__).parent / "results" / "decode.json").write_text(json.dumps(out, indent=2))
