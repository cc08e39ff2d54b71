"""tools/compare_runs.py on a real MLflow store: selection by experiment, tag, ids and parent."""
import mlflow
import pytest

from tools.compare_runs import main


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("ablate")
    ids = {}
    with mlflow.start_run(run_name="parent") as parent:
        ids["parent"] = parent.info.run_id
        for name, sampler, fvd in (("fopp", "fopp", [9.0, 4.0]), ("equal", "equal", [9.5, 6.5])):
            with mlflow.start_run(run_name=name, nested=True) as r:
                ids[name] = r.info.run_id
                mlflow.set_tag("ablation", "scheduler")
                mlflow.log_params({"diffusion.timestep_scheduler": sampler, "train.seed": 0})
                for step, (loss, f) in enumerate(zip([1.0, 0.5], fvd)):
                    mlflow.log_metrics({"loss": loss, "eval/fvd_local": f, "samples_per_s": 100.0 + step},
                                       step=step)
    with mlflow.start_run(run_name="other"):
        mlflow.log_metric("loss", 3.0)
    mlflow.set_tracking_uri("")
    return uri, ids


def test_compare_by_tag_ids_and_parent(store, tmp_path):
    uri, ids = store
    text = main(["--tracking-uri", uri, "--experiment", "ablate", "--tag", "ablation=scheduler", "--out",
                 str(tmp_path / "a")])
    lines = text.splitlines()
    cells = lambda line: [c.strip() for c in line.split("|")[2:-1]]
    assert set(cells(lines[0])) == {"fopp", "equal"}
    row = next(r for r in lines if r.startswith("| eval/fvd_local (last)"))
    by_run = dict(zip(cells(lines[0]), cells(row)))
    assert by_run == {"fopp": "4", "equal": "6.5"}
    assert "| diffusion.timestep_scheduler |" in text
    for png in ("loss.png", "fvd_local.png", "throughput.png"):
        assert (tmp_path / "a" / png).stat().st_size > 1000
    assert "| other" not in main(["--tracking-uri", uri, "--parent", ids["parent"], "--out",
                                  str(tmp_path / "b")])
    assert cells(main(["--tracking-uri", uri, "--run-ids", ids["equal"], "--out",
                       str(tmp_path / "c")]).splitlines()[0]) == ["equal"]
    with pytest.raises(ValueError, match="no MLflow experiment named 'nope'"):
        main(["--tracking-uri", uri, "--experiment", "nope"])
