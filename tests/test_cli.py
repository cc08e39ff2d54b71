"""One command-line dialect: ``--help`` lists every key with its default and exits 0, ``--cfg``
prints the composed config, and a user's mistake is one line with status 2 (the traceback only
with ARDSCALE_LOG_LEVEL=DEBUG)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ardscale import evaluate, sample, train
from ardscale.metrics import fvd, local

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def run(main, argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


@pytest.mark.parametrize("main,keys,comment", [
    (train.main, ["optim.micro_batch_size=16", "eval.sample.s=2", "data.replan=false"], "AD timestep"),
    (evaluate.main, ["sample.s=2", "sample.steps=50", "fvd_frames=16"], "AD timestep difference"),
    (sample.main, ["num_samples=8", "s=2", "cfg_scale=2.0", "prompts=[]"], "a text DiT's prompts"),
    (fvd.main, ["split=train", "against=test", "max_clips=256"], "clips per side"),
    (local.main, ["root=''", "out=''", "epochs=20"], "channels of the first stage"),
])
def test_help_lists_every_key_with_its_default_and_exits_0(main, keys, comment, capsys):
    code, out, _ = run(main, ["--help"], capsys)
    assert code == 0 and "usage: python -m ardscale." in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(keys) <= set(lines), sorted(lines)[:20]
    assert comment in out                             # the keys' own comments explain them
    assert run(main, [], capsys)[0] == 2              # no argument: the usage, status 2


def test_cfg_prints_the_composed_config(capsys):
    code, out, _ = run(train.main, [CONFIG, "train.steps=7", "--cfg", "job"], capsys)
    cfg = yaml.safe_load(out)
    assert code == 0 and cfg["train"]["steps"] == 7 and cfg["dit"]["hidden_size"] == 64


@pytest.mark.parametrize("main,argv,message", [
    (train.main, [CONFIG, "train.stepz=1"], "train.stepz"),
    (train.main, [CONFIG, "train.steps=many"], "train.steps"),
    (train.main, [CONFIG, "model.depth=2"], "model is now dit"),
    (train.main, [CONFIG], "data.vae_id is empty"),
    (evaluate.main, ["/no/such/run"], "/no/such/run: not a training run"),
    (evaluate.main, ["/no/such/run", "s=2"], "s is now sample.s"),
    (sample.main, ["/no/such/run", "--s", "2", "--num-samples", "4"], "--s is now s=N, --num-samples is now"),
    (sample.main, ["/no/such/run", "bogus=1"], "Key 'bogus' not in 'SampleJob'"),
    (local.main, ["--root", "/data"], "--root is now root=…"),
    (local.main, ["epochs=2"], "root= (the dataset root) and out= (the checkpoint path) are required"),
    (fvd.main, ["/no/such/root", "split=train"], "no video shards under /no/such/root/videos/test"),
])
def test_a_users_mistake_is_one_line_with_status_2(main, argv, message, capsys, monkeypatch):
    monkeypatch.delenv("ARDSCALE_LOG_LEVEL", raising=False)
    code, _, err = run(main, argv, capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert err.startswith("error: ") and err.count("\n") == 1
    monkeypatch.setenv("ARDSCALE_LOG_LEVEL", "DEBUG")
    code, _, err = run(main, argv, capsys)
    assert code == 2 and "Traceback" in err and message in err


def test_mlflow_tracking_uri_env_wins_over_the_default_and_the_config_key_over_both(monkeypatch, tmp_path):
    from ardscale.config import load

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load(CONFIG).tracking.tracking_uri == f"sqlite:///{tmp_path}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert load(CONFIG).tracking.tracking_uri == "http://127.0.0.1:5000"
    assert load(CONFIG, ["tracking.tracking_uri=sqlite:///x.db"]).tracking.tracking_uri == \
        f"sqlite:///{tmp_path}/x.db"


def test_deepspeed_logs_to_stderr_so_a_commands_json_stays_on_stdout():
    """DeepSpeed's first import logs ("Setting accelerator to CPU" without CUDA or DS_ACCELERATOR) through a
    handler bound to stdout, which broke ``python -m ardscale.evaluate RUN > report.json``; imported
    through ``import_deepspeed`` (every ardscale path that may import it first), it logs to stderr."""
    code = ("import sys; from ardscale.engine.deepspeed import import_deepspeed; ds = import_deepspeed(); "
            "from deepspeed.utils import logger; "
            "assert logger.handlers and all(h.stream is sys.stderr for h in logger.handlers); "
            "logger.warning('marker-7f3a')")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"} | {"CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and "marker-7f3a" in r.stderr
