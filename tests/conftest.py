import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Every cache starts empty for each test session, as on a fresh machine: nothing a test sees may
# come from what an earlier run left in ~/.cache. Set before any test, Ray worker or subprocess
# starts, so they all inherit it.
SESSION_CACHE = Path(tempfile.mkdtemp(prefix="ardscale-test-cache-"))
os.environ["XDG_CACHE_HOME"] = str(SESSION_CACHE)
for var, sub in {"HF_HOME": "huggingface", "TORCH_HOME": "torch", "TRITON_CACHE_DIR": "triton",
                 "TORCH_EXTENSIONS_DIR": "torch_extensions", "MPLCONFIGDIR": "matplotlib"}.items():
    os.environ[var] = str(SESSION_CACHE / sub)

UCF = Path(__file__).resolve().parents[2] / "shared" / "data" / "ucf101-subset"


@pytest.fixture(scope="module")
def latent_root(tmp_path_factory):
    """Two latent shards of 12 clips (F=4, L=32, D=4) with a class-dependent mean, per test module."""
    from helpers import write_latent_shards

    root = tmp_path_factory.mktemp("data")
    write_latent_shards(root)
    return root


@pytest.fixture(scope="session")
def ucf_root() -> Path:
    if not UCF.is_dir():
        if os.environ.get("CI"):   # CI has ../shared beside the clone: a missing copy is a failure
            pytest.fail(f"CI: real UCF-101 clips not found at {UCF}")
        pytest.skip(f"real UCF-101 clips not found at {UCF}")
    return UCF


@pytest.fixture(scope="module")
def clip_root(ucf_root, tmp_path_factory):
    """Two 4-frame train clips at 32² from a real UCF-101 video, as video shards."""
    from ardscale.data.sources import VideoItem
    from data_prep.shard_videos import shard_one

    root = tmp_path_factory.mktemp("clips")
    name = "v_Archery_g01_c01"
    shard_one([VideoItem(str(ucf_root / "videos" / "Archery" / f"{name}.avi"), 2, "Archery", name)],
              str(root / "videos" / "train" / "shard-000000.tar"), num_frames=4, fps=8, size=32, max_clips=2,
              split="train")
    return root


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

    from ardscale.engine.launch import keep_loopback

    Config.initialize("")
    keep_loopback()                # as init_ray starts a cluster; inherited by later subprocesses
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}})
    yield ray
    ray.shutdown()


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(SESSION_CACHE, ignore_errors=True)
