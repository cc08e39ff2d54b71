"""cluster/ and docker/: the files parse, name things that exist, and pass hadolint where installed."""
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_ray_cluster_launcher_yaml():
    c = yaml.safe_load((ROOT / "cluster" / "ray-cluster.yaml").read_text())
    assert c["head_node_type"] in c["available_node_types"]
    gpus = {k: v["resources"].get("GPU", 0) for k, v in c["available_node_types"].items()}
    assert gpus["gpu_h100"] == gpus["gpu_a100"] == 8 and gpus[c["head_node_type"]] == 0
    workers = [v for k, v in c["available_node_types"].items() if k != "head"]
    assert sum(v["max_workers"] for v in workers) >= c["max_workers"]
    starts = c["head_start_ray_commands"][1:] + c["worker_start_ray_commands"][1:]
    assert starts and all(cmd.startswith("RAY_AUTH_MODE=token ray start") for cmd in starts)
    assert "--dashboard-host=127.0.0.1" in c["head_start_ray_commands"][1]
    assert list(c["file_mounts"]) == ["~/.ray/auth_token"]


def test_kuberay_rayjob_launches_a_training_that_loads_and_fits_its_cluster():
    import ray

    from ardscale.config import load

    job = yaml.safe_load((ROOT / "cluster" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "ardscale.train"] and (ROOT / words[3]).is_file()
    # what it would run: the config and every override load (a renamed key would fail here)
    cfg = load(str(ROOT / words[3]), [w.replace("REPLACE_WITH_VAE_ID", "x") for w in words[4:]])
    assert cfg.task == "dit" and cfg.scale.use_gpu and cfg.data.root.startswith("s3://")
    spec = job["spec"]["rayClusterSpec"]
    groups = spec["workerGroupSpecs"]
    limits = [g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in groups]
    gpus = [int(lim["nvidia.com/gpu"]) for lim in limits]
    assert sum(g["minReplicas"] * n for g, n in zip(groups, gpus)) <= cfg.scale.num_workers
    assert cfg.scale.num_workers <= sum(g["maxReplicas"] * n for g, n in zip(groups, gpus))
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in groups]
    launcher = yaml.safe_load((ROOT / "cluster" / "ray-cluster.yaml").read_text())
    assert {c["image"] for c in containers} == {launcher["docker"]["image"]}
    assert spec["rayVersion"] == ray.__version__   # the Ray the project is tested with
    for c in containers:   # token authentication, the token from a Secret (never in the file)
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "ardscale-ray-token"


@pytest.mark.parametrize("name", ["Dockerfile.cuda", "Dockerfile.cpu"])
def test_dockerfiles(name):
    path = ROOT / "docker" / name
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0].startswith("FROM ")
    assert "torch==2.13.0" in path.read_text()
    for ln in lines:
        m = re.match(r"COPY (\S+) ", ln)
        if m and m.group(1) != ".":
            assert (ROOT / m.group(1)).exists(), f"{name}: COPY {m.group(1)} does not exist"
    if shutil.which("hadolint"):
        result = subprocess.run(["hadolint", str(path)], check=False, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def _connect(gcs: str, env: dict) -> subprocess.CompletedProcess:
    code = f"import ray; ray.init(address={gcs!r}, log_to_driver=False); print('connected')"
    return subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True,
                          timeout=120)


def test_ray_cluster_refuses_a_client_without_its_token(ray_local, tmp_path):
    import os

    gcs = ray_local.get_runtime_context().gcs_address
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    base["HOME"] = str(tmp_path)            # no ~/.ray/auth_token to fall back on
    wrong = tmp_path / "wrong_token"   # a client with another token (a client with none is refused alike)
    wrong.write_text("0" * 64)
    out = _connect(gcs, {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)})
    assert out.returncode != 0 and "connected" not in out.stdout, out.stdout[-500:]
    assert "Authentication token is missing or incorrect" in out.stderr, out.stderr[-2000:]
    token = os.environ["RAY_AUTH_TOKEN_PATH"]
    ok = _connect(gcs, {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token})
    assert ok.returncode == 0 and "connected" in ok.stdout, ok.stderr[-2000:]
