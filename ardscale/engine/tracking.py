"""MLflow tracking on rank 0: one run per job, continued across restarts via the run id.

The experiment is marked as model training (``mlflow.experimentKind``), so MLflow 3's UI opens it
in its model-training view. A run gets system metrics (CPU, memory, and GPU through
``nvidia-ml-py`` where one exists), tags that say where it came from (:func:`git_state`, world
size, ZeRO stage, nodes, Ray job), its training shards as an MLflow input, and at the end its
weights as a model the registry can take.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from pathlib import Path

SECRET_WORDS = {"key", "secret", "token", "password"}
_URL_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dict → ``{"a.b.c": value}``, dropping secret-looking keys (S3 keys, tokens) and
    the credentials inside URLs (``s3://KEY:SECRET@bucket`` → ``s3://***@bucket``)."""
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        elif not _secret(k):
            out[name] = _URL_CREDENTIALS.sub(r"\1***@", v) if isinstance(v, str) else v
    return out


def _secret(key: str) -> bool:
    """Whether a word of ``key`` (snake_case or camelCase) is a secret word: ``aws_session_token`` and
    ``apiKey`` are, ``tokens_per_frame`` is not."""
    words = re.split(r"[_\W]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())
    return bool(SECRET_WORDS.intersection(words))


EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
"""The experiment tag (and value) MLflow 3's UI reads to show model training rather than GenAI."""


def git_state(where: str | Path | None = None) -> tuple[str, bool | None]:
    """``(commit, dirty)`` of the git checkout holding ``where`` (default: this package), or of
    ``ARDSCALE_GIT_COMMIT`` / ``ARDSCALE_GIT_DIRTY`` when the launcher set them (a Ray worker's
    copy of the code has no ``.git``); ``("unknown", None)`` outside a checkout."""
    if os.environ.get("ARDSCALE_GIT_COMMIT"):
        return os.environ["ARDSCALE_GIT_COMMIT"], os.environ.get("ARDSCALE_GIT_DIRTY") == "1"
    where = str(where or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return commit, bool(status.strip())


class Tracker:
    """Thin MLflow wrapper; every method is a no-op when ``enabled`` is False (ranks > 0)."""

    def __init__(self, tracking_uri: str, experiment: str, enabled: bool = True):
        self.enabled = enabled
        self.run_id = None
        if not enabled:
            return
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri)
        if mlflow.get_experiment_by_name(experiment) is None:
            # sqlite stores would otherwise put artifacts under the *current* directory
            art = None
            if tracking_uri.startswith("sqlite:///"):
                art = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
            mlflow.create_experiment(experiment, artifact_location=art)
        exp = mlflow.set_experiment(experiment)
        if EXPERIMENT_KIND[0] not in exp.tags:
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)

    def start(self, run_id: str | None, run_name: str, params: dict, parent_run_id: str | None = None,
              system_metrics: bool = False) -> str | None:
        """Start (or, with ``run_id``, resume) the run, a child of ``parent_run_id`` when given,
        sampling system metrics when asked; log params on a fresh run; return the run id.

        A ``run_id`` this tracking store does not hold (the checkpoint moved to another cluster's
        server, or its run dir was copied) starts a new run tagged ``ardscale.resumed_from_run``,
        with a warning: the training goes on, its metrics from the resumed step on.
        """
        if not self.enabled:
            return None
        previous = None
        if run_id is not None and not self._holds(run_id):
            logging.getLogger("ardscale").warning(
                "MLflow run %s of this checkpoint is not in %s: starting a new run (tag "
                "ardscale.resumed_from_run)", run_id, self.mlflow.get_tracking_uri())
            previous, run_id = run_id, None
        run = self.mlflow.start_run(run_id=run_id, run_name=None if run_id else (run_name or None),
                                    parent_run_id=parent_run_id, log_system_metrics=system_metrics or None)
        self.run_id = run.info.run_id
        if run_id is None:
            flat = flatten(params)
            for i in range(0, len(flat), 100):
                self.mlflow.log_params(dict(list(flat.items())[i:i + 100]))
        if previous:
            self.mlflow.set_tag("ardscale.resumed_from_run", previous)
        return self.run_id

    def _holds(self, run_id: str) -> bool:
        try:
            self.mlflow.MlflowClient().get_run(run_id)
        except self.mlflow.exceptions.MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return False
        return True

    def set_tags(self, tags: dict) -> None:
        if self.enabled:
            self.mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_shards(self, root: str, split: str, digest: str, context: str = "training") -> None:
        """The shards a run reads as an MLflow input: a dataset named ``split`` at ``root`` (any
        URL) with the digest of the shard list (:meth:`~ardscale.data.stream.ShardSet.digest`)."""
        if not self.enabled:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        dataset = MetaDataset(resolve_dataset_source(root), name=split, digest=digest)
        for attempt in range(3):
            try:
                self.mlflow.log_input(dataset, context=context)
                return
            except self.mlflow.exceptions.MlflowException as e:
                # Runs started side by side (Tune trials) insert the same dataset row at once; the
                # store's check-then-insert loses that race with a UNIQUE error. The row exists now,
                # so the next call finds it and links it to this run.
                if "UNIQUE constraint failed" not in str(e) or attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def log_model(self, module, files: list[str], metadata: dict, registered_name: str = "") -> None:
        """``module`` (an ``nn.Module``) as an MLflow PyTorch model named ``model``, with ``files``
        beside it (the run's config) and ``metadata`` (task, vae_id, tag); registered as
        ``registered_name`` when given. Requirements are stated, not inferred (inference imports
        the model in a subprocess)."""
        if not self.enabled:
            return
        import mlflow.pytorch as mlflow_pytorch
        import torch

        torch_pin = f"torch=={torch.__version__.split('+')[0]}"
        # pickle: the "pt2" default traces forward() with an example input, which a DiT's (x, t, y)
        # call and a text DiT's TextCondition do not fit
        mlflow_pytorch.log_model(module, name="model", extra_files=files, metadata=metadata,
                                 pip_requirements=[torch_pin, "ardscale"], serialization_format="pickle",
                                 registered_model_name=registered_name or None)

    def log_metrics(self, metrics: dict, step: int) -> None:
        if self.enabled:
            self.mlflow.log_metrics(metrics, step=step)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.mlflow.log_artifact(path, artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        """End the run with an MLflow status: FINISHED, FAILED or KILLED."""
        if self.enabled and self.mlflow.active_run() is not None:
            self.mlflow.end_run(status)
