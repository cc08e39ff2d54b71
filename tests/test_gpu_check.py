"""The GPU check runs on the CPU with --tiny, so it cannot rot between the sessions that get a GPU."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_tiny_runs_every_part_on_cpu(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "OUT": str(out)}
    subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--tiny"], check=True, env=env,
                   timeout=300,
                   capture_output=True)
    r = json.loads((out / "gpu_check.json").read_text())
    assert r["tiny"] and not [k for k in ("attention", "train", "sampling", "encode") if "error" in r[k]]
    a = r["attention"]
    assert set(a["sdpa"]) == {"out", "dq", "dk", "dv", "kv_cache_out"}
    assert set(a["flex"]) == {"out", "kv_cache_out"}                          # no flex backward on CPU
    assert max(a["sdpa"].values()) < 1e-6 and max(a["flex"].values()) < 1e-5   # fp32 against fp64 math
    t = r["train"]
    assert t["engine"].startswith("deepspeed") and "ZeRO-2" in t["engine"]
    assert t["tokens_per_s"] > 0 and t["tflops"] > 0 and t["mfu"] is None  # no datasheet peak on a CPU
    assert 0 < t["profile"]["optimizer"]["ms"] < t["profile"]["step_ms"] and t["profile"]["forward"]["ms"] > 0
    for case in ("F4_s0", "F12_s3"):
        eager, compiled = r["sampling"][f"{case}_eager"], r["sampling"][f"{case}_compiled"]
        assert eager["generate_s"] > 0 and eager["decode_s"] > 0 and compiled["frames_per_s"] > 0
        assert compiled["max_abs_diff_vs_eager"] < 1e-5   # fp32 on the CPU: the same video
    assert r["encode"]["clips_per_s"] > 0
    assert (out / "gpu_check.log").stat().st_size > 0
