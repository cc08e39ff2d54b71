"""scripts/demo.sh fails loudly: a failing step ends it with a non-zero status and its name, the
Ray cluster it started is stopped, and neither "done" nor the summary is printed."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_names_the_failing_step_and_never_says_done(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "ray_calls"
    # A stand-in `ray` (start/stop only, logged) and a `python` whose shard job fails as a real
    # one would; every other python call is the real interpreter.
    (bin_dir / "ray").write_text(f'#!/bin/sh\necho "$@" >>{calls}\n')
    (bin_dir / "python").write_text(
        '#!/bin/sh\ncase "$1" in data_prep/shard_videos.py) echo "corrupt source" >&2; exit 3;; esac\n'
        f'exec {sys.executable} "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    src = tmp_path / "videos"
    src.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok")}
    # a port nobody listens on, so the demo starts (our stand-in) Ray itself
    script = (ROOT / "scripts" / "demo.sh").read_text().replace("127.0.0.1/6379", "127.0.0.1/9")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "demo.sh").write_text(script)   # it runs from the folder above it
    r = subprocess.run(["bash", str(tmp_path / "scripts" / "demo.sh"), str(src), str(tmp_path / "out")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 3, r.stderr
    assert f"FAILED (exit 3) in step: sharding {src}" in r.stderr
    assert "corrupt source" in r.stderr
    assert "done" not in r.stdout and "demo finished" not in r.stdout
    assert calls.read_text().splitlines()[0].startswith("start --head")
    assert calls.read_text().splitlines()[-1] == "stop --force"
