"""Compare MLflow runs side by side: a table of key params and final metrics, and PNG plots.

    python tools/compare_runs.py --tracking-uri sqlite:///runs/demo/mlruns.db --experiment ardscale-demo
    python tools/compare_runs.py --run-ids ID1 ID2 --out runs/compare
    python tools/compare_runs.py --experiment ardscale-ablate --tag ablation=fopp_vs_equal
    python tools/compare_runs.py --parent PARENT_RUN_ID

Selects runs by experiment (all its runs), tag (``key=value``, repeatable), explicit ids, or a
parent run (its nested runs, ``mlflow.parentRunId``). Prints a Markdown table (one column per run)
and writes ``table.md``, ``loss.png``, ``fvd_local.png`` (``eval/fvd_local`` against step) and
``throughput.png`` (samples/s) under ``--out``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

PARAMS = ("task", "diffusion.timestep_scheduler", "diffusion.prediction", "dit.causal", "dit.attention",
          "dit.hidden_size", "dit.depth", "optim.lr", "optim.micro_batch_size", "train.steps", "train.seed")
METRICS = ("loss", "eval/fvd_local", "eval/fid_local", "val/psnr", "samples_per_s", "mfu")
PLOTS = {"loss.png": "loss", "fvd_local.png": "eval/fvd_local", "throughput.png": "samples_per_s"}


def select_runs(client, experiment: str | None, tags: list[str], run_ids: list[str],
                parent: str | None) -> list:
    """MLflow runs by ids, or by experiment + tags (+ parent); newest first.

    Raises:
        ValueError: no selection given, an unknown experiment, or a tag not ``key=value``.
    """
    if run_ids:
        return [client.get_run(r) for r in run_ids]
    filters = []
    for t in tags:
        if "=" not in t:
            raise ValueError(f"--tag {t!r}: expected key=value")
        k, v = t.split("=", 1)
        filters.append(f"tags.`{k}` = '{v}'")
    if parent:
        filters.append(f"tags.`mlflow.parentRunId` = '{parent}'")
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ValueError(f"no MLflow experiment named {experiment!r}")
        ids = [exp.experiment_id]
    elif parent:
        ids = [client.get_run(parent).info.experiment_id]
    else:
        raise ValueError("select runs with --experiment, --run-ids or --parent")
    return client.search_runs(ids, " and ".join(filters), order_by=["attributes.start_time DESC"])


def table(runs) -> str:
    """Markdown: one row per param / final metric, one column per run."""
    head = "| | " + " | ".join(r.info.run_name or r.info.run_id[:8] for r in runs) + " |"
    rows = [head, "|---" * (len(runs) + 1) + "|"]
    for key in PARAMS:
        vals = [r.data.params.get(key) for r in runs]
        if any(v is not None for v in vals):
            rows.append(f"| {key} | " + " | ".join("" if v is None else str(v) for v in vals) + " |")
    for key in METRICS:
        vals = [r.data.metrics.get(key) for r in runs]
        if any(v is not None for v in vals):
            cells = " | ".join("" if v is None else f"{v:.4g}" for v in vals)
            rows.append(f"| {key} (last) | {cells} |")
    return "\n".join(rows)


def plot(client, runs, key: str, path: Path) -> bool:
    """One line per run of the metric ``key`` against step; False when no run logged it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = False
    for r in runs:
        hist = sorted(client.get_metric_history(r.info.run_id, key), key=lambda m: m.step)
        if hist:
            ax.plot([m.step for m in hist], [m.value for m in hist], marker="o" if len(hist) < 20 else None,
                    lw=1, label=r.info.run_name or r.info.run_id[:8])
            drawn = True
    if drawn:
        ax.set(xlabel="step", ylabel=key, yscale="log" if key == "loss" else "linear")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def main(argv=None) -> str:
    import mlflow

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", default="sqlite:///mlruns.db")
    p.add_argument("--experiment", default=None)
    p.add_argument("--tag", action="append", default=[], help="key=value (repeatable)")
    p.add_argument("--run-ids", nargs="*", default=[])
    p.add_argument("--parent", default=None, help="a parent run id: compare its nested runs")
    p.add_argument("--out", default="runs/compare")
    a = p.parse_args(argv)
    client = mlflow.MlflowClient(tracking_uri=a.tracking_uri)
    runs = select_runs(client, a.experiment, a.tag, a.run_ids, a.parent)
    if not runs:
        raise SystemExit("no runs match")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(runs)
    (out / "table.md").write_text(text + "\n")
    print(text)
    for name, key in PLOTS.items():
        if plot(client, runs, key, out / name):
            print(f"wrote {out / name}")
    return text


if __name__ == "__main__":
    main()
