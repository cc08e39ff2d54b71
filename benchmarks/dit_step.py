"""Paper-size DiT forward + backward on this CPU: the cost of per-token vs per-frame adaLN.

DiT 1152 wide, 28 deep, 16 heads (Table 6), F=16 frames of L=32 tokens, batch 1, fp32, SDPA
with the block-causal mask, all threads. Median of ``--reps`` timed steps after one warm-up.
Run it once on a checkout before a change and once after, with a ``--label`` each; every run
adds its entry to ``benchmarks/results/dit_step.json``.

    python benchmarks/dit_step.py --label per-frame-adaln
"""
import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ardscale.models.dit import DiT, DiTConfig

OUT = Path(__file__).resolve().parent / "results" / "dit_step.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = DiTConfig(num_classes=101, attn_backend="sdpa")
    model = DiT(cfg)
    x = torch.randn(1, args.frames, cfg.tokens_per_frame, cfg.latent_dim)
    t, y = torch.randint(0, 1000, (1, args.frames)), torch.tensor([3])
    times = []
    for _ in range(args.reps + 1):
        start = time.perf_counter()
        model(x, t, y).square().mean().backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    entry = {"label": args.label, "frames": args.frames, "params": sum(p.numel() for p in model.parameters()),
             "step_s_median": statistics.median(times[1:]), "step_s_all": times[1:],
             "threads": torch.get_num_threads(), "torch": torch.__version__,
             "cpu": platform.processor() or platform.machine()}
    results = json.loads(OUT.read_text()) if OUT.exists() else []
    results = [r for r in results if r["label"] != args.label] + [entry]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(entry))


if __name__ == "__main__":
    main()
