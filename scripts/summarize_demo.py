"""Print where the demo's results are: loss curves (start → end), sample video, MLflow runs."""
import json
import sys
from pathlib import Path

out, seconds = Path(sys.argv[1]), int(sys.argv[2])
print(f"\n== ardscale demo finished in {seconds // 60} min {seconds % 60} s ==")
for stage in ("vae_frames", "vae", "dit"):
    rows = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
    head, tail = rows[: max(1, len(rows) // 10)], rows[-max(1, len(rows) // 10):]
    mean = lambda rs: sum(r["loss"] for r in rs) / len(rs)
    run_id = (out / stage / "mlflow_run_id").read_text().strip()
    print(f"{stage:>10}: {len(rows)} steps, loss {mean(head):.4f} (first 10%) -> {mean(tail):.4f} (last 10%), "
          f"MLflow run {run_id}")
info = json.loads((out / "samples" / "samples.json").read_text())
print(f"samples: {info['mp4']}\n         {info['gif']}  (labels {info['labels']}, pixel std {info['pixel_std']:.1f})")
print(f"MLflow:  mlflow ui --backend-store-uri sqlite:///{out}/mlruns.db   (experiment ardscale-demo)")
