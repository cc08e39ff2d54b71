"""The task registry: what each ``task`` of a config trains (as torchtitan's ``ModelSpec``).

- ``dit`` (:mod:`.dit`): the paper's recipe on latent shards;
- ``vae`` (:mod:`.vae`): the AR-VAE stages on video shards.

``train`` and :func:`ardscale.runs.load_trained` build models, data, losses and checks through
this registry. What a run is evaluated with sits above ``tasks`` and picks by ``cfg.task`` itself:
``monitor``'s hooks and ``evaluate.EVALUATORS``.
"""
from __future__ import annotations

from ..compat import moved
from . import dit, vae
from .spec import LossFn, Models, TaskData, TaskSpec

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (dit.SPEC, vae.SPEC)}

__all__ = ["TASKS", "LossFn", "Models", "TaskData", "TaskSpec", "get_task"]


def get_task(name: str) -> TaskSpec:
    """The registered :class:`TaskSpec` called ``name``.

    Raises:
        ValueError: no such task (naming the key ``task`` and the known ones).
    """
    if name not in TASKS:
        raise ValueError(f"task: unknown task {name!r}: expected one of {sorted(TASKS)}")
    return TASKS[name]


__getattr__ = moved(__name__, {"load_trained": "ardscale.runs.load_trained"})
