"""MLflow tracking on rank 0: one run per job, continued across restarts via the run id."""
from __future__ import annotations

import re
from pathlib import Path

SECRET_WORDS = ("key", "secret", "token", "password")
_URL_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dict → ``{"a.b.c": value}``, dropping secret-looking keys (S3 keys, tokens) and
    the credentials inside URLs (``s3://KEY:SECRET@bucket`` → ``s3://***@bucket``)."""
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        elif not any(w in k.lower() for w in SECRET_WORDS):
            out[name] = _URL_CREDENTIALS.sub(r"\1***@", v) if isinstance(v, str) else v
    return out


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
        mlflow.set_experiment(experiment)

    def start(self, run_id: str | None, run_name: str, params: dict) -> str | None:
        """Start (or, with ``run_id``, resume) the run; log params on a fresh run; return the run id."""
        if not self.enabled:
            return None
        run = self.mlflow.start_run(run_id=run_id, run_name=None if run_id else (run_name or None))
        self.run_id = run.info.run_id
        if run_id is None:
            flat = flatten(params)
            for i in range(0, len(flat), 100):
                self.mlflow.log_params(dict(list(flat.items())[i:i + 100]))
        return self.run_id

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
