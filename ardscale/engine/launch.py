"""Ray cluster connection shared by every job (sharding, encoding, training)."""
from __future__ import annotations

import os


def init_ray():
    """Connect to the running Ray cluster (``RAY_ADDRESS`` or a local ``ray start``), else start one
    on loopback.

    A cluster started here lives as long as this process (debugging / tests); the demo and
    production use ``ray start`` / ``ray job submit`` so jobs share one cluster.
    """
    import ray

    if ray.is_initialized():
        return ray
    try:
        ray.init(address=os.environ.get("RAY_ADDRESS", "auto"))
    except ConnectionError:
        keep_loopback()
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")
    return ray


def keep_loopback() -> None:
    """Make a one-node cluster started by this process listen on 127.0.0.1 only. Ray swaps node IP
    127.0.0.1 for the machine's address (``services.resolve_ip_for_localhost``), so every server
    binds all interfaces, unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: the processes it starts
    read that at start, this one read it when ``ray`` was imported (so its constant is set too).
    scripts/demo.sh exports it for ``ray start``."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
