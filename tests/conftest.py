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
def ray_local(tmp_path_factory):
    """A new local Ray instance (loopback, 2 CPUs; never a cluster already running here) for the
    tests, with token authentication: a token made for this session, in a file only we can read."""
    import secrets

    token = tmp_path_factory.mktemp("ray_auth") / "token"
    token.touch(mode=0o600)
    token.write_text(secrets.token_hex(32))
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    import ray
    from ray._raylet import Config  # Ray caches its auth mode; re-read it from the environment

    Config.initialize("")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}})
    yield ray
    ray.shutdown()
