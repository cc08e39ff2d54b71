"""The paper's Tables 2 and 3 at demo scale, one command each, on the demo's latents and clips.

    python tools/ablate.py table3 --root runs/demo/data --vae-id ID --local runs/demo/ucf101_local.pt
    python tools/ablate.py table2 --dit-run runs/ablate/fopp-s0 --local runs/demo/ucf101_local.pt
    python tools/ablate.py drift --dit-run runs/demo/dit --clips runs/drift/data \
        --local runs/demo/ucf101_local.pt

``table3`` trains one DiT per variant and seed at equal compute (configs/demo.yaml, the same steps
and batch), evaluates each (``fvd_local``, ``fid_local``: 8 videos per held-out class, AD s=2,
50 DDIM steps, CFG 2) and reports mean ± spread over seeds. The runs are a Ray Tune grid on the
Ray cluster (``RAY_ADDRESS`` or ``ray start``, else a local one): one trial per variant and seed,
every variant at seed 0 first, then at seed 1, … (a sweep stopped part-way has paired rows),
each training in its own worker process as one in-process run (``scale.num_workers=0``) on
``--cpus-per-trial`` CPUs, side by side as the cluster allows (``--max-concurrent``). The Tune
experiment is ``{out}/tune/table3-HASH`` (HASH: of the options that make the runs and their
evaluation); running the same command again resumes it: finished trials are kept, interrupted or
failed ones start again, and their training continues from the run dir's newest checkpoint. With
several nodes, ``--out`` (and the data) must be on storage every node sees. A training stopped on
request (its run dir's ``STOP`` file) fails its trial; the next run of the command resumes it.
Table 3 at several budgets from the same runs: keep their checkpoints (``--set train.ckpt_every=200
train.keep_last=6``) and evaluate each run's earlier ones with the trial's settings, e.g.
``python -m ardscale.evaluate OUT/fopp-s0 checkpoint=400 local=… per_class=8 sample.s=10 sample.steps=50
split=test real_root=… references=test max_real=128`` (RESULTS.md, "Table 3 at three budgets").

Variants: the FoPP timestep scheduler against the independent, equal and naive ones; causal
against bidirectional attention and the official code's attention (77 context tokens that read
and are read by every frame); x0 against eps prediction.

``table2`` evaluates one trained DiT at several AD steps ``s`` (0 = synchronous … N =
auto-regressive): ``fvd_local`` and generation time per video. ``drift`` continues the first
``--context`` frames of longer held-out clips (``--clips``: a data root whose ``videos/{split}``
shards hold e.g. 24-frame clips, made by data_prep/shard_videos.py ``--num-frames 24``) at each
``--s-values`` and plots, per frame index, PSNR to the real future and ``fvd_local`` of the window
ending there (:mod:`ardscale.drift`), with ``drift.png``. ``--sample-variant NAME:KEY=VALUE,…``
adds, at every s, a set sampled with those ``sample.*`` settings changed (e.g.
``ctx100:context_noise=100`` or ``sink2:sink=2``); the next-frame diagnosis runs for each too.

Runs are tagged (``ablation``, ``variant``) in the MLflow experiment ``ardscale-ablate`` of
``--tracking-uri``; ``tools/compare_runs.py --tag ablation=table3`` plots them. A ``table3`` sweep
is one MLflow run (named ``table3-HASH``) whose children are its training runs
(``tools/compare_runs.py --parent ID``). Results go to ``--out`` as ``table3.json`` /
``table2.json`` and Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import fields, replace
from pathlib import Path

import torch

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
VARIANTS = {
    "fopp": [],
    "independent": ["diffusion.timestep_scheduler=independent"],
    "equal": ["diffusion.timestep_scheduler=equal"],
    "naive": ["diffusion.timestep_scheduler=naive"],
    "bidirectional": ["dit.causal=false"],
    "eps": ["diffusion.prediction=eps"],
    "official": ["dit.attention=official"],   # the official context tokens and mask (not temporally causal)
}
EXPERIMENT = "ardscale-ablate"
# The options that make table3's runs and their evaluation: the sweep's Tune experiment is named by
# their hash, so the same command resumes it and another one starts its own.
TABLE3_OPTIONS = ("root", "vae_id", "local", "variants", "seeds", "steps", "set", "ddim_steps", "per_class",
                  "split", "max_real", "s", "real_root", "tracking_uri", "out")


def _config(opts: dict, name: str, seed: int):
    """The training config of one table3 run: configs/demo.yaml, in-process (``scale.num_workers=0``)."""
    from ardscale.config import load

    run_dir = str(Path(opts["out"]) / f"{name}-s{seed}")
    return load(CONFIG, [f"data.root={opts['root']}", f"data.vae_id={opts['vae_id']}",
                         f"train.run_dir={run_dir}", f"train.seed={seed}", f"train.steps={opts['steps']}",
                         "scale.num_workers=0", "train.sample_every=0",
                         f"tracking.tracking_uri={opts['tracking_uri']}", f"tracking.experiment={EXPERIMENT}",
                         f"tracking.run_name={name}-s{seed}", *VARIANTS[name], *opts["set"]])


def _trial(config: dict, opts: dict) -> None:
    """One Ray Tune trial of ``table3``: trains the variant and seed of ``config`` (:func:`_run_of`)
    in this process, as one training run of ``configs/demo.yaml``
    (``scale.num_workers=0``: a one-process gloo group, DeepSpeed on this worker's CPUs or GPU),
    evaluates it and reports ``{"run": run dir, "eval": metrics}`` to Tune.

    The training run is the MLflow child of the sweep's run ``opts["parent_run_id"]``. A trial
    started again (a resumed sweep) uses the same run dir, so the training continues from its newest
    checkpoint (a finished one trains no step) and is evaluated again. A training stopped on request
    (the run dir's STOP file) fails the trial, which the next ``table3`` resumes.
    """
    import os

    if Path(opts["cwd"]).is_dir():
        os.chdir(opts["cwd"])   # Tune starts a trial in its own folder; the paths are the driver's
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")   # before ardscale imports deepspeed
    torch.set_num_threads(opts["cpus_per_trial"])   # the trials side by side share the node's cores
    import mlflow
    from ray import tune

    from ardscale.evaluate import evaluate
    from ardscale.runs import STOP_FILE, mlflow_run_id
    from ardscale.train import launch

    (name, seed), a = _run_of(config), argparse.Namespace(**opts)
    cfg = _config(opts, name, seed)
    run_dir = str(Path(opts["out"]) / f"{name}-s{seed}")   # as given (the config's is absolute)
    try:
        last = launch(cfg)
    finally:   # the training run (once it has one, failed or not) as the sweep run's child
        if run_id := mlflow_run_id(run_dir):
            client = mlflow.MlflowClient(cfg.tracking.tracking_uri)
            for key, value in {"ablation": "table3", "variant": name, "sweep": opts["sweep"],
                               "mlflow.parentRunId": opts["parent_run_id"]}.items():
                client.set_tag(run_id, key, value)
    if last.get("stopped"):   # in-process, a stop request ends the training cleanly, before its steps
        (Path(run_dir) / STOP_FILE).unlink(missing_ok=True)
        raise RuntimeError(f"{run_dir}: the training was asked to stop (STOP file) before "
                           f"train.steps={a.steps}; run the same table3 command again to resume it")
    rep = evaluate(run_dir, [f"local={a.local}", f"per_class={a.per_class}", f"sample.s={a.s}",
                             f"sample.steps={a.ddim_steps}", f"split={a.split}", *_standard(a)])
    metrics = {k: v for k, v in rep["metrics"].items() if isinstance(v, float)}
    print(name, seed, metrics, flush=True)
    tune.report({"run": run_dir, "eval": metrics})


def _standard(a) -> list[str]:
    """evaluate overrides for the standard metrics: on against ``--real-root``, else off."""
    if not a.real_root:
        return ["standard=false"]
    return [f"real_root={a.real_root}", f"references={a.split}", f"max_real={a.max_real}"]


def _spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def _param_space(variants: list[str], seeds: int) -> dict:
    """table3's Tune grid: one axis of (variant, seed) runs, every variant at seed 0, then every
    variant at seed 1, ..., so a sweep stopped part-way has paired rows (each variant at the same
    seeds). Two grid axes would not do: Tune orders axes by key name and varies the first fastest,
    which runs every seed of one variant before the next variant."""
    from ray import tune

    return {"run": tune.grid_search([{"variant": v, "seed": s} for s in range(seeds) for v in variants])}


def _run_of(config: dict) -> tuple[str, int]:
    """(variant, seed) of a trial's config (also of a sweep made before the one-axis grid)."""
    run = config.get("run", config)
    return run["variant"], run["seed"]


def _trial_name(trial) -> str:
    variant, seed = _run_of(trial.config)
    return f"{variant}-s{seed}"


def _parent_run(client, experiment_id: str, sweep: str, exp_dir: Path, a) -> str:
    """The sweep's MLflow run (the parent of every trial's training run): the one this sweep made
    before (its id in the sweep's Tune folder), running again, or a new one."""
    from mlflow.exceptions import MlflowException

    id_file = exp_dir / "mlflow_parent_run_id"
    if id_file.is_file():
        run_id = id_file.read_text().strip()
        try:
            client.update_run(run_id, status="RUNNING")
            return run_id
        except MlflowException as e:   # deleted, or another tracking store
            print(f"table3: the sweep's MLflow run {run_id} is gone ({e.error_code}); starting a new one")
    run = client.create_run(experiment_id, run_name=sweep, tags={"sweep": sweep, "ablation_sweep": "table3"})
    for key, value in {"variants": ",".join(a.variants), "seeds": a.seeds, "train.steps": a.steps,
                       "set": " ".join(a.set), "tune_dir": str(exp_dir)}.items():
        client.log_param(run.info.run_id, key, value)
    exp_dir.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run.info.run_id)
    return run.info.run_id


def table3(a) -> dict:
    """Every variant × seed as one Ray Tune grid: a trial per run (:func:`_trial`), side by side
    as the cluster's CPUs allow (``--cpus-per-trial`` each), in the Tune experiment
    ``{out}/tune/table3-HASH`` (HASH: of the options that make the runs and their evaluation).
    Running the same command again restores that experiment: finished trials are kept as they are,
    interrupted and failed ones run again and resume their training from the run dir."""
    if not a.variants or a.seeds < 1:
        raise ValueError("table3: no runs to make (--variants, --seeds)")
    import hashlib
    import os

    import mlflow
    from ray import tune

    from ardscale.engine.launch import init_ray
    from ardscale.engine.tracking import Tracker

    opts = {k: getattr(a, k) for k in TABLE3_OPTIONS}
    sweep = "table3-" + hashlib.sha1(json.dumps(opts, sort_keys=True).encode()).hexdigest()[:8]
    storage = Path(a.out, "tune").resolve()
    exp_dir = storage / sweep
    cfg = _config(opts, a.variants[0], 0)   # a bad --set fails here, before any trial
    # The experiment (and a sqlite store's tables) made here, so the trials do not race to make them.
    tracker = Tracker(cfg.tracking.tracking_uri, cfg.tracking.experiment)
    client = mlflow.MlflowClient(cfg.tracking.tracking_uri)
    experiment_id = tracker.mlflow.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    parent = _parent_run(client, experiment_id, sweep, exp_dir, a)
    opts |= {"sweep": sweep, "parent_run_id": parent, "cpus_per_trial": a.cpus_per_trial, "cwd": os.getcwd()}
    gpus = a.gpus_per_trial or (1 if cfg.scale.use_gpu else 0)
    init_ray()
    trainable = tune.with_resources(tune.with_parameters(_trial, opts=opts),
                                    {"cpu": a.cpus_per_trial, "gpu": gpus})
    if tune.Tuner.can_restore(str(exp_dir)):
        print(f"table3: resuming the sweep in {exp_dir}", flush=True)
        tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(a.variants, a.seeds),
            # A fresh worker process per trial: the in-process training keeps its gloo group (and
            # DeepSpeed its caches) for the life of the process.
            tune_config=tune.TuneConfig(max_concurrent_trials=a.max_concurrent or None, reuse_actors=False,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name=sweep, storage_path=str(storage), verbose=1))
    status = "KILLED"   # unless the sweep ends (FINISHED) or fails (FAILED)
    try:
        by_run, bad = _finished_runs(tuner.fit(), a.variants, a.seeds)
        if bad:
            status = "FAILED" if any(r.error for r in by_run.values()) else "KILLED"
            raise RuntimeError(f"table3 ({exp_dir}): " + "; ".join(bad)
                               + ". Run the same command again to resume the sweep.")
        status = "FINISHED"
    finally:
        client.set_terminated(parent, status)
    results = {}
    for name in a.variants:
        for seed in range(a.seeds):
            m = by_run[(name, seed)].metrics
            results.setdefault(name, []).append({"seed": seed, "run": m["run"], **m["eval"]})
    return {"results": results, "markdown": _table3_markdown(results), "sweep": sweep,
            "tune_dir": str(exp_dir), "mlflow_parent_run_id": parent}


def _finished_runs(grid, variants: list[str], seeds: int) -> tuple[dict, list[str]]:
    """table3's Tune results by (variant, seed), and the runs without an evaluation (each as
    "NAME: why"). A trial that never started (a sweep interrupted
    before it) has no config in ``grid``: it is named from the grid it is missing from."""
    by_run = {_run_of(r.config): r for r in grid if r.config}
    bad = []
    for seed in range(seeds):
        for v in variants:
            r = by_run.get((v, seed))
            if r is None or r.error or "eval" not in (r.metrics or {}):
                why = r.error if r is not None and r.error else "no result (interrupted)"
                bad.append(f"{v}-s{seed}: {why}")
    return by_run, bad


def _table3_markdown(results: dict[str, list[dict]]) -> str:
    """One row a variant: mean ± spread over its seeds of each metric every run reports."""
    keys = [k for k in ("fvd16", "kvd16", "fid", "fvd_local", "fid_local")
            if all(k in r for rows in results.values() for r in rows)]
    lines = ["| variant | " + " | ".join(keys) + " | runs |", "|---" * (len(keys) + 2) + "|"]
    for name, rows in results.items():
        cells = " | ".join(_spread([r[k] for r in rows]) for k in keys)
        lines.append(f"| {name} | {cells} | {len(rows)} |")
    return "\n".join(lines)


def table2(a) -> dict:
    from ardscale.evaluate import evaluate

    rows = []
    for s in a.s_values:
        rep = evaluate(a.dit_run, [f"local={a.local}", f"per_class={a.per_class}", f"sample.s={s}",
                                   f"checkpoint={a.checkpoint}",
                                   f"sample.steps={a.ddim_steps}", f"split={a.split}",
                                   f"sample.seed={a.seed}", f"out={Path(a.out) / f'table2-s{s}'}",
                                   *_standard(a)])
        rows.append({"s": s, **{k: v for k, v in rep["metrics"].items() if isinstance(v, float)}})
        print(rows[-1], flush=True)
    lines = ["| s | fvd_local | fid_local | s per video |", "|---|---|---|---|"]
    lines += [f"| {r['s']} | {r['fvd_local']:.3f} | {r['fid_local']:.3f} | {r['gen_s_per_video']:.3f} |"
              for r in rows]
    return {"results": rows, "markdown": "\n".join(lines)}


def drift(a) -> dict:
    from ardscale import drift as d
    from ardscale.config import SampleConfig
    from ardscale.evaluate import held_out, parse
    from ardscale.metrics.local import LocalFeatures
    from ardscale.runs import RunData, load_trained

    run_cfg, dit, tag, _ = load_trained(a.dit_run, a.checkpoint or None, task="dit")
    data = RunData(run_cfg)
    window, e = data.num_frames, parse([f"split={a.split}"], run_cfg.eval)
    long_clips = held_out(data, e, a.clips)
    real, labels = long_clips.clips, long_clips.labels
    if a.per_class:
        keep = torch.cat([torch.nonzero(labels == c)[:a.per_class, 0] for c in torch.unique(labels)])
        real, labels = real[keep], labels[keep]
    local = LocalFeatures(a.local)
    real_feats = local(held_out(data, e).clips)[0]
    recon = d.reconstruct_long(data, real, window)
    videos = {"recon": recon, "frozen": d.frozen(recon, a.context)}
    variants = _sample_variants(a.sample_variant)
    for s in a.s_values:
        for suffix, change in variants.items():
            sc = replace(SampleConfig(s=s, steps=a.ddim_steps, cfg_scale=a.cfg_scale, seed=a.seed), **change)
            videos[f"s={s}{suffix}"] = d.continue_clips(dit, data, real, labels, a.context, sc)
    standard = None
    if a.real_root:   # FVD16 of successive 16-frame windows against the 16-frame held-out clips
        from ardscale.evaluate import standard_references
        std_e = parse([*_standard(a), "fid_frames=0"], run_cfg.eval)
        standard = standard_references(data, std_e)[0][1]
    results = d.measure(videos, real, local, real_feats, window, standard, a.context)
    _drift_outputs(a, results, {"real": real, **videos}, window)
    nxt, seen = {}, []
    for suffix, change in variants.items():
        sc = replace(SampleConfig(s=a.s_values[0], steps=a.ddim_steps, cfg_scale=a.cfg_scale, seed=a.seed),
                     **change)
        reads = replace(sc, window=0, sink=0)   # the next frame is sampled without a window
        if reads in seen:   # a variant that acts on a sliding window only: the plain rows hold
            continue
        seen.append(reads)
        for key, value in d.next_frame(dit, data, real, labels, a.context, sc).items():
            base, swapped, _ = key.partition("/swapped")   # "x0@500/swapped" → "x0@500 ctx100/swapped"
            nxt[key if isinstance(value, float) else base + suffix + swapped] = value
    return {"run": a.dit_run, "checkpoint": tag, "clips": len(real), "frames": real.shape[1],
            "context": a.context, "window": window, "cfg_scale": a.cfg_scale, "results": results,
            "next_frame": nxt, "markdown": _drift_table(a, results) + "\n\n" + _next_frame_table(nxt),
            "mlflow_run_id": _drift_mlflow(a, run_cfg, results, window)}


def _sample_variants(specs: list[str]) -> dict[str, dict]:
    """``NAME:KEY=VALUE,KEY=VALUE`` → ``{" NAME": {key: value}}`` (typed as ``SampleConfig``'s
    fields), after the plain settings ``{"": {}}``.

    Raises:
        ValueError: a spec without ``NAME:``, or a key ``SampleConfig`` does not have.
    """
    from ardscale.config import SampleConfig

    types = {f.name: type(getattr(SampleConfig(), f.name)) for f in fields(SampleConfig)}
    out = {"": {}}
    for spec in specs:
        name, sep, body = spec.partition(":")
        if not sep or not name:
            raise ValueError(f"--sample-variant {spec!r}: expected NAME:KEY=VALUE[,KEY=VALUE]")
        change = {}
        for item in filter(None, body.split(",")):
            key, _, value = item.partition("=")
            if key not in types:
                raise ValueError(f"--sample-variant {spec!r}: sample has no key {key!r} ({sorted(types)})")
            change[key] = types[key](value) if types[key] is not bool else value.lower() in ("1", "true")
        out[f" {name}"] = change
    return out


def _next_frame_table(nxt: dict) -> str:
    """The first generated frame (:func:`ardscale.drift.next_frame`): PSNR against the real next
    frame and the last context frame, with the clip's own context and another clip's."""
    lines = [f"Real next frame vs last context frame: {nxt['real_next_vs_last']:.2f} dB (real motion)", "",
             ("| next frame | vs real next (own context) | vs last context (own) | vs real next (other "
              "clip's context) | vs that clip's last frame |"), "|---|---|---|---|---|"]
    for name, r in nxt.items():
        if isinstance(r, dict) and not name.endswith("/swapped"):
            o = nxt[name + "/swapped"]
            lines.append(f"| {name} | {r['vs_real']:.2f} | {r['vs_last']:.2f} | {o['vs_real']:.2f} | "
                         f"{o['vs_last']:.2f} |")
    return "\n".join(lines)


def _drift_mlflow(a, run_cfg, results: dict, window: int) -> str | None:
    """Per-frame curves (``drift/<set>/psnr`` at step = frame index, ``drift/<set>/fvd_local`` at the
    window's last frame) and the figure, in the DiT run's MLflow run; None when the run tracks
    nothing (``tracking.enabled=false``: its MLflow extra may not be installed)."""
    from ardscale.engine.tracking import Tracker
    from ardscale.runs import mlflow_run_id

    if not run_cfg.tracking.enabled:
        return None
    tracker = Tracker(run_cfg.tracking.tracking_uri, run_cfg.tracking.experiment)
    tracker.start(mlflow_run_id(a.dit_run), f"drift-{Path(a.dit_run).name}", {})
    for name, r in results.items():
        key = name.replace("=", "")            # MLflow metric names take no "="
        for j, v in enumerate(r["psnr"]):
            tracker.log_metrics({f"drift/{key}/psnr": v}, j)
        for j, v in enumerate(r["fvd_local"], start=window - 1):
            tracker.log_metrics({f"drift/{key}/fvd_local": v}, j)
        for j, v in enumerate(r["motion"], start=1):
            tracker.log_metrics({f"drift/{key}/motion": v}, j)
        tracker.log_metrics({f"drift/{key}/motion_vs_real": r["motion_vs_real"]}, 0)
    for j, v in enumerate(next(iter(results.values()))["real_motion"], start=1):
        tracker.log_metrics({"drift/real/motion": v}, j)
    for name in ("drift.png", "drift.mp4"):
        tracker.log_artifact(str(Path(a.out) / name), "drift")
    tracker.end()
    return tracker.run_id


def _drift_table(a, results: dict) -> str:
    first = a.context
    cols = list(range(first, len(next(iter(results.values()))["psnr"]), 4))
    fvd16 = "fvd16" in next(iter(results.values()))
    lines = ["| videos | " + " | ".join(f"PSNR f{j}" for j in cols) + " | fvd_local first → last window |"
             + " motion vs real |" + (" FVD16 of successive 16-frame windows |" if fvd16 else ""),
             "|---" * (len(cols) + 3 + fvd16) + "|"]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['psnr'][j]:.2f}" for j in cols)
                     + f" | {r['fvd_local'][0]:.2f} → {r['fvd_local'][-1]:.2f} | {r['motion_vs_real']:.2f} |"
                     + (" " + " → ".join(f"{v:.0f}" for v in r["fvd16"]) + " |" if fvd16 else ""))
    return "\n".join(lines)


def _drift_outputs(a, results: dict, videos: dict, window: int) -> None:
    """drift.png (PSNR, fvd_local and motion per frame index) and a grid video: per clip, one row per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ardscale.data.video import encode_mp4, video_grid

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4))
    for name, r in results.items():
        ax1.plot(range(len(r["psnr"])), r["psnr"], label=name)
        ax2.plot(range(window - 1, window - 1 + len(r["fvd_local"])), r["fvd_local"], label=name)
        ax3.plot(range(1, 1 + len(r["motion"])), r["motion"], label=name)
    real_motion = next(iter(results.values()))["real_motion"]
    ax3.plot(range(1, 1 + len(real_motion)), real_motion, "k--", label="real")
    titles = ("PSNR to the real frame (dB)", f"fvd_local of the {window} frames ending here",
              "motion: mean |frame j - frame j-1| (uint8)")
    for ax, title in zip((ax1, ax2, ax3), titles):
        ax.axvline(a.context - 0.5, color="grey", ls=":")
        ax.set(xlabel="frame index", title=title)
    ax3.legend()
    fig.tight_layout()
    fig.savefig(Path(a.out) / "drift.png", dpi=110)
    rows = torch.stack([v[:4] for v in videos.values()], dim=1).flatten(0, 1).numpy()
    (Path(a.out) / "drift.mp4").write_bytes(encode_mp4(video_grid(rows, cols=len(videos)), 8.0))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", choices=["table2", "table3", "drift"])
    p.add_argument("--root", default="runs/demo/data")
    p.add_argument("--vae-id", default="")
    p.add_argument("--dit-run", default="", help="table2, drift: the trained DiT run")
    p.add_argument("--checkpoint", default="", help="table2, drift: its tag or step (default: the newest)")
    p.add_argument("--clips", default="runs/drift/data", help="drift: data root of the long held-out clips")
    p.add_argument("--context", type=int, default=4, help="drift: real frames given")
    p.add_argument("--cfg-scale", type=float, default=2.0, help="drift: CFG weight")
    p.add_argument("--local", default="runs/demo/ucf101_local.pt")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="table2: sampling seed")
    p.add_argument("--steps", type=int, default=400, help="table3: training steps per run")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="table3: config overrides for every run (e.g. optim.micro_batch_size=4)")
    p.add_argument("--ddim-steps", type=int, default=50, help="sampling steps N of every evaluation")
    p.add_argument("--per-class", type=int, default=8,
                   help="videos per class (drift: clips per class, 0 = all)")
    p.add_argument("--split", default="test", help="held-out clips the samples are compared with")
    p.add_argument("--max-real", type=int, default=128, help="with --real-root: real clips (spread)")
    p.add_argument("--s", type=int, default=2, help="table3: the AD step s of every evaluation (with "
                   "--real-root, 16 frames through the 8-frame window need s ≥ N/8, e.g. 10)")
    p.add_argument("--real-root", default="", help="table2/3: a data root of 16-frame clips: report FVD16, "
                   "KVD16, FID (ardscale.metrics.fvd) beside fvd_local; empty = fvd_local only")
    p.add_argument("--s-values", type=int, nargs="*", default=[0, 1, 2, 5, 10, 25, 50])
    p.add_argument("--sample-variant", nargs="*", default=[], metavar="NAME:KEY=VALUE,…",
                   help="drift: also sample with these sample.* settings changed, at every s")
    p.add_argument("--cpus-per-trial", type=int, default=1,
                   help="table3: CPUs of each run (a Ray Tune trial); trials run side by side as CPUs allow")
    p.add_argument("--gpus-per-trial", type=float, default=0,
                   help="table3: GPUs of each trial (0: one with --set scale.use_gpu=true, else none)")
    p.add_argument("--max-concurrent", type=int, default=0,
                   help="table3: at most this many trials at once (0: as many as the CPUs allow)")
    p.add_argument("--tracking-uri", default="sqlite:///runs/ablate/mlruns.db")
    p.add_argument("--out", default="runs/ablate")
    a = p.parse_args(argv)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    report = {"table3": table3, "table2": table2, "drift": drift}[a.table](a)
    (Path(a.out) / f"{a.table}.json").write_text(json.dumps(report, indent=2) + "\n")
    (Path(a.out) / f"{a.table}.md").write_text(report["markdown"] + "\n")
    print(report["markdown"])
    return report


if __name__ == "__main__":
    main()
