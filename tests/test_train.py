"""Training: config loading, in-process DeepSpeed steps, exact resume, 2-worker Ray Train + ZeRO-2."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import overrides

from ardscale.config import load
from ardscale.engine import checkpoint
from ardscale.runs import load_trained
from ardscale.tasks import get_task
from ardscale.train import launch

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def losses(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert len({r["step"] for r in rows}) == len(rows), "metrics.jsonl repeats a step"
    return {r["step"]: r["loss"] for r in rows}


def test_config_load_overrides_and_errors(tmp_path):
    cfg = load(CONFIG, ["train.steps=9", "dit.depth=3", "train.run_dir=rel/run", "data.vae_id=x"])
    assert cfg.train.steps == 9 and cfg.dit.depth == 3 and Path(cfg.train.run_dir).is_absolute()
    assert cfg.tracking.tracking_uri.startswith("sqlite:////")
    with pytest.raises(Exception, match="train.stepz"):
        load(CONFIG, ["train.stepz=1"])
    with pytest.raises(Exception, match="steps"):
        load(CONFIG, ["train.steps=many", "data.vae_id=x"])
    with pytest.raises(ValueError, match="data.vae_id"):
        get_task("dit").preflight(load(CONFIG))      # what only the task knows: before any worker
    with pytest.raises(ValueError, match="run_dir"):
        load(CONFIG, ["data.vae_id=x", "train.run_dir=s3://bucket/run"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load(str(tmp_path / "nope.yaml"))


def test_save_resume_gives_identical_next_loss(latent_root, tmp_path):
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    launch(load(CONFIG, overrides(latent_root, full, **{"train.steps": 4, "train.ckpt_every": 2})))
    launch(load(CONFIG, overrides(latent_root, split, **{"train.steps": 2, "train.ckpt_every": 2})))
    assert checkpoint.latest_tag(split) == "step-00000002"
    first_run_id = (Path(split) / "mlflow_run_id").read_text()
    with open(Path(split) / "metrics.jsonl", "a") as f:   # as if it had crashed after step 2, unsaved
        f.write(json.dumps({"step": 2, "loss": 123.0}) + "\n")
    launch(load(CONFIG, overrides(latent_root, split, **{"train.steps": 4, "train.ckpt_every": 2})))
    a, b = losses(full), losses(split)
    assert sorted(b) == [0, 1, 2, 3], "resume repeated or skipped a step"
    for step in range(4):
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])
    assert len(set(a.values())) == 4
    # keep_last=2 and the resumed run continued the same MLflow run
    assert sorted(p.name for p in (Path(split) / "ckpt").glob("step-*")) == ["step-00000002", "step-00000004"]
    assert (Path(split) / "mlflow_run_id").read_text() == first_run_id


def test_dit_loss_falls_on_learnable_latents(latent_root, tmp_path):
    run = str(tmp_path / "learn")
    launch(load(CONFIG, overrides(latent_root, run, **{"train.steps": 40, "train.ckpt_every": 40,
                                                          "optim.lr": 3e-3})))
    loss = losses(run)
    # per-frame timesteps make single steps noisy: compare 10-step means
    first, last = np.mean([loss[s] for s in range(10)]), np.mean([loss[s] for s in range(30, 40)])
    assert last < 0.75 * first, (first, last)
    # the one-process group keeps no listening socket off loopback (a TCPStore would bind them all)
    import psutil
    mine = [c.laddr.ip for c in psutil.Process().net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in mine), mine


@pytest.mark.slow
def test_two_worker_ray_deepspeed_zero2_step(latent_root, tmp_path, ray_local):
    run = str(tmp_path / "ray2")
    result = launch(load(CONFIG, overrides(latent_root, run, **{"scale.num_workers": 2, "train.steps": 2,
                                                               "train.ckpt_every": 2,
                                                               "tracking.log_model": True})))
    assert result.error is None
    loss = losses(run)
    assert sorted(loss) == [0, 1] and all(np.isfinite(v) for v in loss.values())
    ckpt = Path(run) / "ckpt" / "step-00000002"
    optim_shards = sorted(p.name for p in ckpt.glob("*optim_states.pt"))
    assert len(optim_shards) == 2, optim_shards   # ZeRO-2: one optimizer partition per rank
    state, tag = checkpoint.load_weights(run)
    assert tag == "step-00000002" and "blocks.0.attn.qkv.weight" in state
    # Ray Train's Result: the last step's metrics and the newest checkpoint, every rank's files
    # merged on scale.storage_path (default {run_dir}/ray), readable like a run dir
    assert result.metrics["step"] == 2 and result.metrics["loss"] == pytest.approx(loss[1])
    saved = Path(result.checkpoint.path)
    assert saved.name == "step-00000002" and saved.is_relative_to(Path(run) / "ray")
    assert sorted(p.name for p in (saved / "ckpt" / "step-00000002").glob("*optim_states.pt")) == optim_shards
    again, again_tag = checkpoint.load_weights(str(saved))
    assert again_tag == tag and all(torch.equal(again[k], state[k]) for k in state)
    import mlflow  # rank 0 logged the final weights as an MLflow model (a plain copy, not the engine's)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns.db")
    experiment = mlflow.get_experiment_by_name("ardscale").experiment_id
    models = mlflow.search_logged_models(experiment_ids=[experiment], output_format="list")
    [model] = [m for m in models if m.source_run_id == (Path(run) / "mlflow_run_id").read_text().strip()]
    assert model.name == "model"


def test_init_from_starts_a_new_run_from_previous_stage_weights(latent_root, tmp_path, capsys):
    stage1, stage2 = str(tmp_path / "stage1"), str(tmp_path / "stage2")
    launch(load(CONFIG, overrides(latent_root, stage1, **{"train.steps": 2})))
    launch(load(CONFIG, overrides(latent_root, stage2, **{"train.steps": 1, "train.init_from": stage1,
                                                           "optim.lr": 0.0})))
    capsys.readouterr()
    (w1, _), (w2, tag2) = checkpoint.load_weights(stage1), checkpoint.load_weights(stage2)
    # DeepSpeed's consolidation prints its progress: to stderr, so a command's JSON on stdout stays JSON
    assert capsys.readouterr().out == ""
    assert tag2 == "step-00000001" and w1.keys() == w2.keys()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)     # lr 0: the stage-2 step kept stage-1 weights
    assert losses(stage2)[0] < losses(stage1)[0]           # and it started from trained, not fresh, weights


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(CONFIG).parent).glob("*.yaml")))
def test_every_shipped_config_loads(name, tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    path = str(Path(CONFIG).parent / f"{name}.yaml")
    lpips = [f"vae_loss.perceptual_vgg={weights}", f"vae_loss.perceptual_lin={weights}"]
    cfg = load(path, ["data.vae_id=x"] + (lpips if "perceptual: 1" in Path(path).read_text() else []))
    assert cfg.task in ("dit", "vae") and cfg.train.steps > 0
    if name.startswith("ucf101"):  # paper sizes (Table 6)
        sizes = (cfg.vae.hidden_size, cfg.vae.depth, cfg.dit.hidden_size, cfg.dit.depth)
        assert sizes == (1024, 24, 1152, 28)


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_lr_phases_and_step_metrics(latent_root, tmp_path):
    run = str(tmp_path / "phases")
    launch(load(CONFIG, overrides(latent_root, run, **{
        "train.steps": 6, "optim.lr": 2e-4, "optim.warmup_steps": 2, "optim.lr_steps": "[4]",
        "optim.lr_values": "[1e-5]", "train.peak_tflops": 0.5})))
    r = rows(run)
    # metrics log the LR after each step's scheduler update: warm-up 2 steps, 2e-4, then 1e-5 from step 4
    assert [round(x["lr"], 8) for x in r] == [2e-4, 2e-4, 2e-4, 1e-5, 1e-5, 1e-5]
    assert all(x["grad_norm"] > 0 and x["tflops_per_device"] > 0 and x["nonfinite_skipped"] == 0 for x in r)
    assert math.isclose(r[0]["mfu"], r[0]["tflops_per_device"] / 0.5)
    buckets = [k for k in r[0] if k.startswith("loss_t/")]
    assert buckets and all(r[0][k] > 0 for k in buckets)
    with pytest.raises(ValueError, match="lr_steps"):
        load(CONFIG, ["data.vae_id=x", "optim.lr_steps=[4,2]", "optim.lr_values=[1,2]"])


def nan_at(steps, monkeypatch):
    """Make dit_loss return NaN at the given global steps (counted by calls: 1 micro batch per step)."""
    from ardscale.tasks import dit as dit_task

    real, calls = dit_task.dit_loss, []

    def fake(*a, **k):
        loss, per_frame = real(*a, **k)
        calls.append(1)
        return (loss * float("nan") if len(calls) - 1 in steps else loss), per_frame

    monkeypatch.setattr(dit_task, "dit_loss", fake)


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_nonfinite_loss_skips_the_update_and_stops_after_k(latent_root, tmp_path, monkeypatch, zero):
    run = str(tmp_path / "nan")
    nan_at({2}, monkeypatch)
    launch(load(CONFIG, overrides(latent_root, run, **{"train.steps": 4, "train.ckpt_every": 1,
                                                        "train.keep_last": 10, "optim.deepspeed": zero})))
    r = rows(run)
    assert [x["nonfinite_skipped"] for x in r] == [0, 0, 1, 0] and math.isfinite(r[3]["loss"])
    after1, after2 = (checkpoint.load_weights(run, f"step-0000000{i}")[0] for i in (2, 3))
    assert all(torch.equal(after1[k], after2[k]) for k in after1), "the NaN step moved the weights"
    by_step = checkpoint.load_weights(run, "3")[0]          # a user names a checkpoint by its step
    assert all(torch.equal(after2[k], by_step[k]) for k in after2)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint 'step-00000009'.*'step-00000001'"):
        checkpoint.load_weights(run, "9")

    stop = str(tmp_path / "nan_stop")
    nan_at(set(range(1, 100)), monkeypatch)
    with pytest.raises(RuntimeError,
                       match="NaN/inf in 3 steps in a row .* step-00000004 holds the last good"):
        launch(load(CONFIG, overrides(latent_root, stop, **{"train.steps": 50, "train.max_nonfinite_steps": 3,
                                                             "optim.deepspeed": zero})))
    assert checkpoint.latest_tag(stop) == "step-00000004"
    good = checkpoint.load_weights(stop, "step-00000004")[0]
    last = checkpoint.load_weights(run, "step-00000001")[0]
    assert all(torch.equal(good[k], last[k]) for k in good)   # = the weights after the one finite step


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits(latent_root, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "term"
    cmd = [sys.executable, "-m", "ardscale.train", CONFIG, *overrides(latent_root, str(run), **{
        "train.steps": 100000, "train.ckpt_every": 100000})]
    proc = subprocess.Popen(cmd, cwd=Path(CONFIG).parents[1], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 143, out[-2000:]
    assert '"reason": "stop request' in (run / "events.jsonl").read_text()
    steps = len(rows(run))
    assert checkpoint.latest_tag(str(run)) == f"step-{steps:08d}" and 3 <= steps < 100000
    # and the next launch continues from there
    launch(load(CONFIG, overrides(latent_root, str(run), **{"train.steps": steps + 2})))
    assert [x["step"] for x in rows(run)] == list(range(steps + 2))


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_ema_equals_the_average_of_the_checkpointed_weights(latent_root, tmp_path, zero):
    from ardscale.models.dit import DiT

    run = str(tmp_path / f"ema_{zero}")
    cfg = load(CONFIG, overrides(latent_root, run, **{"train.steps": 3, "train.ckpt_every": 1,
                                                      "train.keep_last": 5,
                                                       "optim.deepspeed": zero, "optim.ema_decay": 0.5}))
    launch(cfg)
    torch.manual_seed(cfg.train.seed)
    expected = {k: v.float() for k, v in DiT(cfg.dit).state_dict().items()}   # the initial weights
    for step in (1, 2, 3):
        w = checkpoint.load_weights(run, checkpoint.tag(step))[0]
        expected = {k: 0.5 * expected[k] + 0.5 * w[k] for k in expected}
    ema, tag = checkpoint.load_weights(run, ema=True)
    assert tag == "step-00000003" and ema.keys() == expected.keys()
    assert max((ema[k] - expected[k]).abs().max().item() for k in ema) < 1e-6
    raw = checkpoint.load_weights(run)[0]
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)                 # the EMA is not the raw weights
    assert torch.equal(load_trained(run)[1].state_dict()["out.weight"], ema["out.weight"])
    # resumed runs continue the average from the checkpoint's EMA
    split = str(tmp_path / f"ema_split_{zero}")
    for steps in (2, 3):
        launch(load(CONFIG, overrides(latent_root, split, **{"train.steps": steps, "train.ckpt_every": 1,
                                                              "optim.deepspeed": zero,
                                                             "optim.ema_decay": 0.5})))
    resumed = checkpoint.load_weights(split, ema=True)[0]
    assert max((resumed[k] - ema[k]).abs().max().item() for k in ema) < 1e-6


def test_resume_through_a_universal_checkpoint(latent_root, tmp_path):
    """The conversion path a world-size change takes (2 → 1 workers and back on two Ray nodes: test_nodes)."""
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    launch(load(CONFIG, overrides(latent_root, full, **{"train.steps": 4})))
    launch(load(CONFIG, overrides(latent_root, split, **{"train.steps": 2})))
    meta = Path(split) / "ckpt" / "step-00000002" / "ardscale.json"
    assert json.loads(meta.read_text()) == {"step": 2, "world_size": 1}
    meta.write_text(json.dumps({"step": 2, "world_size": 2}))   # as if 2 workers had written it
    launch(load(CONFIG, overrides(latent_root, split, **{"train.steps": 4})))
    assert (Path(split) / "ckpt_universal" / "step-00000002" / "zero").is_dir()
    a, b = losses(full), losses(split)
    assert sorted(b) == [0, 1, 2, 3]
    for step in range(4):   # same weights and Adam moments after the conversion: the same losses
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])


def _train_worker_pids():
    """Ray Train workers of this test session's own Ray instance (its processes descend from us)."""
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True)
            if any("RayTrainWorker" in part for part in p.cmdline())]


@pytest.mark.slow
def test_kill9_of_a_worker_restarts_and_matches_the_uninterrupted_run(
        latent_root, tmp_path, ray_local):
    """A SIGKILLed Ray Train worker: the run restarts from its newest checkpoint and its losses equal an
    uninterrupted run's. (test_nodes loses a whole node, then changes the world size 2 → 1 → 2.)"""
    import os
    import signal
    import threading
    import time

    common = {"scale.num_workers": 2, "train.steps": 10, "train.ckpt_every": 3, "scale.max_failures": 2}
    ref, run = str(tmp_path / "ref"), str(tmp_path / "killed")
    launch(load(CONFIG, overrides(latent_root, ref, **common)))
    done = {}
    cfg = load(CONFIG, overrides(latent_root, run, **common))
    t = threading.Thread(target=lambda: done.update(r=launch(cfg)))
    t.start()
    metrics, deadline = Path(run) / "metrics.jsonl", time.time() + 180
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 5):
        time.sleep(0.05)
    pids = _train_worker_pids()
    assert pids, "no Ray Train worker process found"
    os.kill(pids[-1], signal.SIGKILL)
    t.join(timeout=300)
    assert not t.is_alive() and done["r"].error is None
    starts = [e for e in map(json.loads,
                             (Path(run) / "events.jsonl").read_text().splitlines()) if e["event"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed_from"] in ("step-00000003", "step-00000006",
                                                              "step-00000009"), starts
    a, b = losses(ref), losses(run)
    assert sorted(b) == list(range(10)), "a step was lost or repeated"
    for step in range(10):
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])


CRASH_IN_SAVE = """
import os, signal, sys
from deepspeed.runtime.engine import DeepSpeedEngine
from ardscale.config import load
from ardscale.train import launch

saves = []
real = DeepSpeedEngine._save_zero_checkpoint
def crash_on_second(self, *a, **k):
    saves.append(1)
    if len(saves) == 2:          # the model file of this tag is written, its optimizer shard is not
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *a, **k)
DeepSpeedEngine._save_zero_checkpoint = crash_on_second
launch(load(sys.argv[1], sys.argv[2:]))
"""


@pytest.mark.slow
def test_kill_during_checkpoint_save_keeps_the_previous_checkpoint(latent_root, tmp_path):
    import subprocess
    import sys

    full, run = str(tmp_path / "full"), tmp_path / "crash"
    launch(load(CONFIG, overrides(latent_root, full, **{"train.steps": 4, "train.ckpt_every": 2})))
    args = overrides(latent_root, str(run), **{"train.steps": 4, "train.ckpt_every": 2})
    proc = subprocess.run([sys.executable, "-c", CRASH_IN_SAVE, CONFIG, *args], cwd=Path(CONFIG).parents[1],
                          capture_output=True, timeout=300, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    half = run / "ckpt" / "step-00000004"
    assert half.is_dir() and not (half / "ardscale.json").exists()
    assert checkpoint.latest_tag(str(run)) == "step-00000002"
    (run / "ckpt" / "latest").write_text("")                   # even a torn `latest` file is survived
    assert checkpoint.latest_tag(str(run)) == "step-00000002"
    assert checkpoint.load_weights(str(run))[1] == "step-00000002"
    launch(load(CONFIG, args))                                  # resume: redo steps 2-3, save step 4
    a, b = losses(full), losses(str(run))
    assert sorted(b) == [0, 1, 2, 3] and checkpoint.latest_tag(str(run)) == "step-00000004"
    for step in range(4):
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])


@pytest.mark.slow
def test_diverging_two_worker_run_stops_with_a_clear_error_and_a_checkpoint(latent_root, tmp_path, ray_local):
    run = str(tmp_path / "diverge")
    # lr 1e30: weights overflow after step 0
    with pytest.raises(Exception, match=r"NaN/inf in 2 steps in a row"):
        launch(load(CONFIG, overrides(latent_root, run, **{
            "scale.num_workers": 2, "train.steps": 50, "optim.lr": 1e30, "optim.grad_clip": 0.0,
            "train.max_nonfinite_steps": 2})))
    r = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    assert [x["nonfinite_skipped"] for x in r][-2:] == [1, 1] and math.isfinite(r[0]["loss"])
    tag = checkpoint.latest_tag(run)
    assert tag == checkpoint.tag(len(r))
    assert '"reason": "nonfinite loss"' in (Path(run) / "events.jsonl").read_text()


@pytest.mark.slow
def test_elastic_worker_range_runs(latent_root, tmp_path, ray_local):
    """The test cluster has 2 CPUs and each worker asks for 2: a fixed 2-worker job could never be
    placed; the elastic one (1 to 2 workers) starts with the one that fits."""
    run = str(tmp_path / "elastic")
    result = launch(load(CONFIG, overrides(latent_root, run, **{
        "scale.num_workers": 2, "scale.min_workers": 1, "scale.cpus_per_worker": 2, "train.steps": 2,
        "scale.max_failures": 1})))
    assert result.error is None
    starts = [json.loads(x) for x in (Path(run) / "events.jsonl").read_text().splitlines()]
    assert [e["world_size"] for e in starts if e["event"] == "start"] == [1] and sorted(losses(run)) == [0, 1]


def test_mlflow_params_never_carry_secrets():
    from ardscale.engine.tracking import flatten

    flat = flatten({"train": {"checkpoint_url": "s3://AKIA:abc%2Fdef@bucket/run", "run_dir": "/r"},
                    "s3": {"secret_access_key": "x", "aws_session_token": "y", "region": "eu", "apiKey": "z"},
                    "dit": {"tokens_per_frame": 32, "text_tokens": 77}})   # not secrets: kept
    assert flat == {"train.checkpoint_url": "s3://***@bucket/run", "train.run_dir": "/r", "s3.region": "eu",
                    "dit.tokens_per_frame": 32, "dit.text_tokens": 77}


def test_fail_fast_on_missing_latents_and_missing_gpus(latent_root, tmp_path):
    """Before any Ray worker is asked for: a vae_id that does not exist, and a cluster without the
    GPUs (or CPUs) the workers need, are clear errors instead of an endless wait."""
    from ardscale.config import ScaleConfig
    from ardscale.train import check_resources

    with pytest.raises(FileNotFoundError, match=r"data.vae_id='abc'.*latents under .*: \['fake'\]"):
        launch(load(CONFIG, overrides(latent_root, str(tmp_path / "r"), **{"data.vae_id": "abc",
                                                                            "scale.num_workers": 2})))
    assert not (tmp_path / "r").exists()
    with pytest.raises(RuntimeError, match="8 workers needs 8 GPUs; the Ray cluster has 0"):
        check_resources({"CPU": 2.0}, ScaleConfig(num_workers=8, use_gpu=True))
    with pytest.raises(RuntimeError, match="2 workers × scale.cpus_per_worker=2 need 4 CPUs; .* has 2"):
        check_resources({"CPU": 2.0}, ScaleConfig(num_workers=2, cpus_per_worker=2))
    check_resources({"CPU": 2.0}, ScaleConfig(num_workers=4, min_workers=2))          # elastic: 2 fit
    check_resources({"CPU": 16.0, "GPU": 8.0}, ScaleConfig(num_workers=8, use_gpu=True))


NO_RAY_NO_MLFLOW = """
import sys
from importlib.abc import MetaPathFinder

class Absent(MetaPathFinder):   # as on a machine where neither extra is installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "mlflow"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Absent())
from ardscale.train import main
main(sys.argv[1:])
assert not {m.split(".")[0] for m in sys.modules} & {"ray", "mlflow"}
"""


@pytest.mark.slow
def test_one_process_training_needs_neither_ray_nor_mlflow(latent_root, tmp_path):
    """``scale.num_workers=0 tracking.enabled=false`` trains, checkpoints and resumes on a machine
    without the [ray] and [mlflow] extras (the GPU boxes the benchmarks run on): both imports fail."""
    import subprocess
    import sys

    run = tmp_path / "bare"
    args = overrides(latent_root, str(run), **{"tracking.enabled": "false", "train.ckpt_every": 2})
    for steps in (2, 4):   # the second call resumes from step-00000002
        proc = subprocess.run([sys.executable, "-c", NO_RAY_NO_MLFLOW, CONFIG, *args, f"train.steps={steps}"],
                              cwd=Path(CONFIG).parents[1], capture_output=True, text=True, timeout=300,
                              check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(losses(run)) == [0, 1, 2, 3]
    assert checkpoint.latest_tag(str(run)) == "step-00000004"
    assert not (run / "mlflow_run_id").exists() and not (tmp_path / "mlruns.db").exists()
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "start"] == [0, 2]
