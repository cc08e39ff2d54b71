"""Print where the demo's results are (loss start → end, sample video, MLflow) and plot the loss curves."""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STAGES = ("vae_frames", "vae_gan", "vae", "dit", "text_dit")   # text_dit when the source has captions


def main(out: Path, seconds: int) -> None:
    print(f"\n== ardscale demo finished in {seconds // 60} min {seconds % 60} s ==")
    stages = [s for s in STAGES if (out / s / "metrics.jsonl").is_file()]
    fig, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 3))
    for ax, stage in zip(axes, stages):
        rows = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
        k = max(1, len(rows) // 10)
        head = sum(r["loss"] for r in rows[:k]) / k
        tail = sum(r["loss"] for r in rows[-k:]) / k
        run_id = (out / stage / "mlflow_run_id").read_text().strip()
        evals = sorted((out / stage / "eval").glob("step-*/metrics.json"))
        held_out = ""
        if evals:
            m = json.loads(evals[-1].read_text())
            held_out = f", held-out PSNR {m['val/psnr']:.2f} dB SSIM {m['val/ssim']:.3f}"
        print(f"{stage:>10}: {len(rows)} steps, loss {head:.4f} (first 10%) -> {tail:.4f} (last 10%)"
              f"{held_out}, MLflow run {run_id}")
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=0.8)
        ax.set(title=stage, xlabel="step", ylabel="loss", yscale="log")
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=100)
    info = json.loads((out / "samples" / "samples.json").read_text())
    print(f"   samples: {info['mp4']}\n            {info['gif']}  (labels {info['labels']})")
    long = out / "samples_long" / "samples.json"
    if long.is_file():
        info = json.loads(long.read_text())
        print(f"    longer: {info['mp4']}  ({info['context']} real frames continued to {info['frames']}, "
              f"window {info['window']}, {info['generate_s']} s)")
    text = out / "samples_text" / "samples.json"
    if text.is_file():
        info = json.loads(text.read_text())
        print(f"      text: {info['mp4']}  (prompts {info['prompts']})")
    for name in ("eval_dit", "eval_vae", "eval_text_dit"):
        report = out / name / "report.json"
        if report.is_file():
            m = json.loads(report.read_text())["metrics"]
            print(f"{name:>13}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float)))
    local = out / "ucf101_local.json"
    if local.is_file():
        r = json.loads(local.read_text())
        print(f"     local: ucf101_local test accuracy {r['test_accuracy']:.3f} "
              f"({r['test_clips']} held-out clips)")
    skipped = out / "skipped.txt"
    for line in skipped.read_text().splitlines() if skipped.is_file() else []:
        print(f"   skipped: {line}")
    print(f"    curves: {out / 'loss_curves.png'}")
    print(f"    MLflow: mlflow ui --backend-store-uri sqlite:///{out}/mlruns.db"
          "   (experiments ardscale-demo, ardscale-text)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
