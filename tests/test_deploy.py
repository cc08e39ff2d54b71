"""cluster/ and docker/: the files parse, name things that exist, and pass hadolint where installed."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_ray_cluster_launcher_yaml():
    c = yaml.safe_load((ROOT / "cluster" / "ray-cluster.yaml").read_text())
    assert c["head_node_type"] in c["available_node_types"]
    gpus = {k: v["resources"].get("GPU", 0) for k, v in c["available_node_types"].items()}
    assert gpus["gpu_h100"] == gpus["gpu_a100"] == 8 and gpus[c["head_node_type"]] == 0
    assert sum(v["max_workers"] for k, v in c["available_node_types"].items() if k != "head") >= c["max_workers"]


def test_kuberay_rayjob_runs_the_training_entry_point():
    job = yaml.safe_load((ROOT / "cluster" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    words = job["spec"]["entrypoint"].split()
    assert words[:3] == ["python", "-m", "ardscale.train"] and (ROOT / words[3]).is_file()
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert re.fullmatch(r"\d+\.\d+\.\d+", job["spec"]["rayClusterSpec"]["rayVersion"])


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
