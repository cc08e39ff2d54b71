import os
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

UCF = Path(__file__).resolve().parents[2] / "shared" / "data" / "ucf101-subset"


@pytest.fixture(scope="session")
def ucf_root() -> Path:
    if not UCF.is_dir():
        pytest.skip(f"real UCF-101 clips not found at {UCF}")
    return UCF


@pytest.fixture(scope="session")
def ray_local():
    """A new local Ray instance (loopback, 2 CPUs; never a cluster already running here) for the tests."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}})
    yield ray
    ray.shutdown()
