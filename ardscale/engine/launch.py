"""Ray cluster connection shared by every job (sharding, encoding, training)."""
from __future__ import annotations

import os


def init_ray(num_cpus: int | None = None):
    """Connect to the running Ray cluster (``RAY_ADDRESS`` or a local ``ray start``), else start one.

    A cluster started here lives as long as this process (debugging / tests); the demo and
    production use ``ray start`` / ``ray job submit`` so jobs share one cluster.
    """
    import ray

    if ray.is_initialized():
        return ray
    try:
        ray.init(address=os.environ.get("RAY_ADDRESS", "auto"))
    except ConnectionError:
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1")  # loopback only
    return ray
