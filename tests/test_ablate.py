"""tools/ablate.py table3's pieces that need no training (the sweep itself runs in
tests/test_pipeline.py::test_ablation_tables_and_continuation_drift)."""
import argparse

import mlflow
import pytest

from tools.ablate import _drift_mlflow, _finished_runs, _param_space, _parent_run, _run_of, _table3_markdown
from tools.ablate import main as ablate


def test_table3_without_runs_fails_before_ray(tmp_path):
    with pytest.raises(ValueError, match="no runs"):
        ablate(["table3", "--variants", "--out", str(tmp_path)])


@pytest.mark.slow   # MLflow's sqlite schema: ~5 s
def test_sweep_parent_run_is_reopened_by_the_same_sweep(tmp_path):
    """The sweep's MLflow run is made once; a resumed sweep reopens it (RUNNING again); a new one is
    made when it was deleted (or is in no store of that URI)."""
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    exp = client.create_experiment("ablate")
    a = argparse.Namespace(variants=["fopp", "eps"], seeds=1, steps=2, set=[])
    exp_dir = tmp_path / "tune" / "table3-x"
    first = _parent_run(client, exp, "table3-x", exp_dir, a)
    client.set_terminated(first, "FAILED")
    assert _parent_run(client, exp, "table3-x", exp_dir, a) == first
    run = client.get_run(first)
    assert run.info.status == "RUNNING" and run.info.run_name == "table3-x"
    assert run.data.params["variants"] == "fopp,eps" and run.data.tags["sweep"] == "table3-x"
    client.delete_run(first)
    assert _parent_run(client, exp, "table3-x", exp_dir, a) not in (first, None)


def test_table3_markdown_gives_mean_and_spread_of_the_metrics_every_run_reports():
    results = {"fopp": [{"fvd16": 2100.0, "fid": 300.0, "fvd_local": 1.0}, {"fvd16": 2200.0, "fid": 310.0}],
               "equal": [{"fvd16": 2000.0, "fid": 320.0}]}
    lines = _table3_markdown(results).splitlines()
    assert lines[0] == "| variant | fvd16 | fid | runs |"   # fvd_local: not in every run
    assert lines[2] == "| fopp | 2150.000 ± 70.711 | 305.000 ± 7.071 | 2 |"
    assert lines[3] == "| equal | 2000.000 | 320.000 | 1 |"


def test_drift_logs_nothing_for_a_run_that_tracks_nothing(tmp_path, monkeypatch):
    """A DiT trained with ``tracking.enabled=false`` (no MLflow extra needed): the drift study's curves
    stay in its own files; no MLflow store is made (the config's sqlite URI names a file here)."""
    from ardscale.config import load
    from tools.ablate import CONFIG

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    cfg = load(CONFIG, ["tracking.enabled=false", f"tracking.tracking_uri={uri}"])
    monkeypatch.setattr(mlflow, "set_tracking_uri", lambda *_: pytest.fail("MLflow was used"))
    a = argparse.Namespace(dit_run=str(tmp_path / "dit"), out=str(tmp_path))
    assert _drift_mlflow(a, cfg, {"s=2": {"psnr": [20.0]}}, 4) is None
    assert not (tmp_path / "mlruns.db").exists()


def test_table3_trials_run_every_variant_at_a_seed_before_the_next_seed():
    """The order Tune's grid makes its trials in (BasicVariantGenerator uses generate_variants)."""
    from ray.tune.search.variant_generator import generate_variants

    order = [_run_of(spec) for _, spec in generate_variants(_param_space(["fopp", "naive"], 3))]
    assert order == [("fopp", 0), ("naive", 0), ("fopp", 1), ("naive", 1), ("fopp", 2), ("naive", 2)]


def test_table3_names_the_runs_an_interrupted_sweep_did_not_finish():
    """Tune's results after an interrupt: a trial that never started comes back without a config."""
    from types import SimpleNamespace as R

    grid = [R(config={"run": {"variant": "fopp", "seed": 0}}, error=None, metrics={"eval": {"fvd16": 1.0}}),
            R(config={"run": {"variant": "naive", "seed": 0}}, error=RuntimeError("stop"), metrics={}),
            R(config={"run": {"variant": "fopp", "seed": 1}}, error=None, metrics={}),
            R(config=None, error=None, metrics=None)]
    by_run, bad = _finished_runs(grid, ["fopp", "naive"], 2)
    assert set(by_run) == {("fopp", 0), ("naive", 0), ("fopp", 1)}
    assert bad == ["naive-s0: stop", "fopp-s1: no result (interrupted)",
                   "naive-s1: no result (interrupted)"]
    assert any(r.error for r in by_run.values())   # the sweep's status: FAILED, not KILLED
    assert _finished_runs(grid[:1], ["fopp"], 1)[1] == []
