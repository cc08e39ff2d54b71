"""MLflow as its users expect: a training run against a real ``mlflow server`` on loopback (a
database backend, a local artifact root) over HTTP, read back with the client: metrics, system
metrics, tags that say where the run came from, the training shards as an input, the config, and
the final EMA weights as a model the registry takes."""
import logging
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import write_latent_shards

from ardscale.config import load
from ardscale.data.stream import ShardSet
from ardscale.engine.tracking import EXPERIMENT_KIND, git_state
from ardscale.runs import load_trained, mlflow_run_id
from ardscale.train import launch

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` with a sqlite database and an artifact root, on 127.0.0.1 only."""
    exe = shutil.which("mlflow") or pytest.skip("the mlflow command is not installed")
    d = tmp_path_factory.mktemp("mlflow_server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (d / "server.log").open("w")
    proc = subprocess.Popen([exe, "server", "--backend-store-uri", f"sqlite:///{d}/mlflow.db",
                             "--artifacts-destination", str(d / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"mlflow server did not answer: {(d / 'server.log').read_text()[-2000:]}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.mark.slow
def test_a_run_tracked_by_an_mlflow_server_over_http(mlflow_server, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)      # the cluster's way: no config key
    root = tmp_path / "data"
    shards = write_latent_shards(root)
    run = str(tmp_path / "run")
    cfg = load(CONFIG, [f"data.root={root}", "data.vae_id=fake", f"train.run_dir={run}", "train.steps=6",
                        "train.log_every=1", "optim.ema_decay=0.9", "tracking.experiment=served",
                        "tracking.log_model=true", "tracking.system_metrics=true"])
    assert cfg.tracking.tracking_uri == mlflow_server
    launch(cfg)
    client = mlflow.MlflowClient(mlflow_server)
    r = client.get_run(mlflow_run_id(run))
    assert [h.step for h in client.get_metric_history(r.info.run_id, "loss")] == list(range(6))
    commit, dirty = git_state()
    tags = r.data.tags
    assert tags["mlflow.source.git.commit"] == commit and tags["git.dirty"] == str(dirty)
    assert (tags["world_size"], tags["zero_stage"], tags["nodes"], tags["task"], tags["vae_id"]) == \
        ("1", "2", "1", "dit", "fake")
    exp = client.get_experiment(r.info.experiment_id)
    assert exp.tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]            # model training, not GenAI
    [inp] = r.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == ("train", ShardSet.from_dir(shards).digest())
    assert [t.value for t in inp.tags if t.key == "mlflow.data.context"] == ["training"]
    assert "config.yaml" in {a.path for a in client.list_artifacts(r.info.run_id)}
    system = [k for k in r.data.metrics if k.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system, sorted(r.data.metrics)
    [model] = mlflow.search_logged_models(experiment_ids=[r.info.experiment_id], output_format="list")
    assert model.source_run_id == r.info.run_id
    loaded = mlflow.pytorch.load_model(f"models:/{model.model_id}")
    ema = load_trained(run)[1].state_dict()                             # the run's EMA weights
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ema.items())
    version = mlflow.register_model(f"models:/{model.model_id}", "ardscale-dit")   # the registry takes it
    assert version.version == "1" and version.run_id == r.info.run_id


def test_shards_input_survives_the_dataset_insert_race(tmp_path, monkeypatch):
    """Tune trials started side by side log the same shards at once; MLflow's sqlite store then
    fails one insert with a UNIQUE error (seen in test_ablation_tables…). The tracker retries, and
    the second call links the existing dataset row to the run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from ardscale.engine.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlruns.db", "race")
    run_id = tracker.start(None, "trial", {})
    real, calls = mlflow.log_input, []

    def lose_the_race_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            real(*args, **kwargs)   # the other trial's insert, which this one collides with
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: "
                                  "datasets.experiment_id, "
                                  "datasets.name, datasets.digest")
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", lose_the_race_once)
    tracker.log_shards(str(tmp_path), "train", "abc123")
    tracker.end()
    inputs = mlflow.MlflowClient().get_run(run_id).inputs.dataset_inputs
    assert len(calls) == 2 and [(d.dataset.name, d.dataset.digest) for d in inputs] == [("train", "abc123")]

    other = Tracker(f"sqlite:///{tmp_path}/mlruns.db", "race")
    other.start(None, "trial2", {})
    monkeypatch.setattr(mlflow, "log_input", lambda *a, **k: (_ for _ in ()).throw(MlflowException("no")))
    with pytest.raises(MlflowException, match="no"):   # any other store error is not retried
        other.log_shards(str(tmp_path), "train", "abc123")
    other.end()


def test_resuming_a_run_the_store_does_not_hold_starts_a_new_one_linked_to_it(tmp_path, caplog):
    """A checkpoint resumed against another tracking store (a run dir copied, a new cluster's
    server): its MLflow run id is unknown there, so a new run starts, tagged with the old id,
    instead of MLflow's "Run … not found" ending the job."""
    import mlflow

    from ardscale.engine.tracking import Tracker

    old = Tracker(f"sqlite:///{tmp_path}/a.db", "moved")
    old_id = old.start(None, "first", {"optim": {"lr": 0.1}})
    old.end()
    assert old.start(old_id, "first", {}) == old_id            # the same store: the same run
    old.end()
    new = Tracker(f"sqlite:///{tmp_path}/b.db", "moved")
    logger = logging.getLogger("ardscale")          # a training run in this process stops propagation
    logger.addHandler(caplog.handler)
    try:
        new_id = new.start(old_id, "first", {"optim": {"lr": 0.1}})
    finally:
        logger.removeHandler(caplog.handler)
    new.end()
    run = mlflow.MlflowClient().get_run(new_id)
    assert new_id != old_id and run.data.tags["ardscale.resumed_from_run"] == old_id
    assert run.data.params["optim.lr"] == "0.1"                  # a fresh run gets the config
    assert f"MLflow run {old_id} of this checkpoint is not in" in caplog.text
