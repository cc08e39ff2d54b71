"""Two Ray nodes without a shared disk: data and checkpoints on S3 (moto_server on loopback), a run
dir per node; a node dies mid-run, a fresh node joins, and the job finishes with the losses of an
uninterrupted run; then the world size changes (2 → 1 → 2), through a universal checkpoint that
reaches the other node via the mirror, each phase continuing from the last one's weights. The cluster
lives in a subprocess: its Ray instance is not this session's."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r'''
import json, os, secrets, socket, subprocess, sys, threading, time
from pathlib import Path


out = Path(sys.argv[1])
config = sys.argv[2]

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

moto_port = free_port()
moto = subprocess.Popen([sys.argv[3], "-H", "127.0.0.1", "-p", str(moto_port)], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
token = out / "token"
token.write_text(secrets.token_hex(32))
token.chmod(0o600)
# Inherited by every node started below, and so by their workers.
os.environ.update(AWS_ACCESS_KEY_ID="t", AWS_SECRET_ACCESS_KEY="t", AWS_DEFAULT_REGION="us-east-1",
                  FSSPEC_S3_ENDPOINT_URL=f"http://127.0.0.1:{moto_port}", DS_ACCELERATOR="cpu",
                  RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")
for _ in range(150):
    try:
        socket.create_connection(("127.0.0.1", moto_port), timeout=1).close()
        break
    except OSError:
        time.sleep(0.2)

import fsspec  # reads FSSPEC_S3_ENDPOINT_URL
sys.path.insert(0, str(Path(config).resolve().parents[1] / "tests"))
from helpers import write_latent_shards

fs = fsspec.filesystem("s3")
fs.mkdir("nodes")
write_latent_shards("s3://nodes/data", shards=3, per_shard=16, sidecars=True)

import ray
import ray._private.utils
from ray.cluster_utils import Cluster

# Cluster() would record itself as "the" Ray cluster of this machine (/tmp/ray/ray_current_cluster),
# where ray.init("auto") elsewhere (a demo's job drivers) would then find it.
ray._private.utils.write_ray_address = lambda *args, **kwargs: None

cluster = Cluster()
os.environ["ARDSCALE_NODE"] = "head"
# (ray.cluster_utils nodes advertise the machine's address; Ray listens on all interfaces either way,
# and the token guards it)
cluster.add_node(num_cpus=0, gcs_server_port=free_port(), dashboard_agent_listen_port=free_port(),
                 include_dashboard=False)
nodes = {}
for name in ("a", "b"):
    os.environ["ARDSCALE_NODE"] = name      # this node's "disk": {run}/{name}
    nodes[name] = cluster.add_node(num_cpus=1)
ray.init(address=cluster.address)

from ardscale.config import load
from ardscale.train import launch

def cfg(run):
    return load(config, [
        "data.root=s3://nodes/data", "data.vae_id=fake", f"train.run_dir={out}/{run}/$ARDSCALE_NODE",
        f"train.checkpoint_url=s3://nodes/ckpt/{run}", "train.steps=10", "train.ckpt_every=3",
        "scale.num_workers=2", "scale.max_failures=3", "train.log_every=1", "train.keep_last=10",
        f"scale.storage_path={out}/{run}/ray", f"tracking.tracking_uri=sqlite:///{out}/mlruns.db",
        f"tracking.run_name={run}"])

def losses(run):
    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlruns.db")
    [r] = mlflow.search_runs(experiment_names=["ardscale"], filter_string=f"tags.mlflow.runName = '{run}'",
                             output_format="list")
    hist = mlflow.MlflowClient().get_metric_history(r.info.run_id, "loss")
    last = {}
    for h in sorted(hist, key=lambda h: h.timestamp):
        last[h.step] = h.value
    return last

launch(cfg("ref"))
done = {}
t = threading.Thread(target=lambda: done.update(r=launch(cfg("killed"))))
t.start()
deadline = time.time() + 300
while time.time() < deadline and not any(
        len(fs.glob(f"nodes/ckpt/killed/ckpt/step-00000006/ardscale.json")) for _ in [0]):
    time.sleep(0.2)
# A node with a worker dies (not the one running Ray Train's controller: its loss fails the fit)
from ray._private.state import actors   # the GCS's actor table (the state API needs a dashboard)
controller = {a["Address"]["NodeID"] for a in actors().values()
              if "TrainController" in a["ActorClassName"] and a["State"] == "ALIVE"}
victim = next(n for n in ("a", "b") if nodes[n].node_id not in controller)
cluster.remove_node(nodes[victim])          # the node and its disk are gone
os.environ["ARDSCALE_NODE"] = "c"           # a fresh node with an empty disk
cluster.add_node(num_cpus=1)
t.join(timeout=400)
finished = not t.is_alive() and done.get("r") is not None and done["r"].error is None
# Then the world size changes (2 → 1 → 2 workers): the universal conversion happens on rank 0's
# disk and reaches the other node through the mirror.
resized, last = [], None
for workers, steps in ((1, 12), (2, 14)):
    c = cfg("killed")
    c.scale.num_workers, c.train.steps = workers, steps
    last = launch(c)
    resized.append(last.error is None)
# Each 2-step phase continued from the last one's weights: fetch the mirror's tags and measure.
from ardscale.engine.checkpoint import load_weights
for step in (3, 10, 12, 14):
    tag = f"step-{step:08d}"
    fs.get(f"nodes/ckpt/killed/ckpt/{tag}/", f"{out}/mirror/ckpt/{tag}/", recursive=True)
w = {s: load_weights(f"{out}/mirror", str(s))[0] for s in (3, 10, 12, 14)}
dist = {f"{a}-{b}": sum(float((w[a][k] - w[b][k]).pow(2).sum()) for k in w[a]) ** 0.5
        for a, b in ((3, 10), (10, 12), (12, 14))}
# Ray Train's Result: the newest checkpoint, both ranks' files (from two nodes) merged on storage_path
saved = Path(last.checkpoint.path)
reported = {"name": saved.name, "metrics_step": last.metrics["step"],
            "files": sorted(str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file())}
# A stop request reaches both ranks without a shared disk: the driver's node (the head) is not
# rank 0's, so only the key in Ray's KV store can carry it.
from ardscale.train import ray_run_name, request_stop
stop = {}
def stopped():
    c = cfg("stopped")
    c.train.steps, c.train.ckpt_every = 100000, 100000
    try:
        launch(c)
    except SystemExit as e:
        stop["code"] = e.code
t = threading.Thread(target=stopped)
t.start()
deadline = time.time() + 300
def running():
    return any(len(f.read_text().splitlines()) >= 3 for f in (out / "stopped").glob("*/metrics.jsonl"))
while time.time() < deadline and not running():
    time.sleep(0.2)
request_stop(ray_run_name(cfg("stopped")))
t.join(timeout=300)
stop["tags"] = sorted(p.rsplit("/", 1)[-1] for p in fs.glob("nodes/ckpt/stopped/ckpt/step-*"))
stop["rows"] = max(len(f.read_text().splitlines()) for f in (out / "stopped").glob("*/metrics.jsonl"))
stop["stop_files"] = [str(p) for p in out.rglob("STOP")]
logs = [out / "killed" / n / "events.jsonl" for n in ("a", "b", "c")]
events = sorted((json.loads(l) for f in logs if f.is_file() for l in f.read_text().splitlines()),
                key=lambda e: e["time"])
c_dir = out / "killed" / "c"
result = {"finished": finished, "victim": victim, "resized": resized,
          "universal_on": sorted(n for n in "abc" if (out / "killed" / n / "ckpt_universal" / "step-00000012"
                                                      / "zero").is_dir()),
          "ref": losses("ref"), "killed": losses("killed"),
          "starts": [e for e in events if e["event"] == "start"],
          "dirs": sorted(p.name for p in (out / "killed").iterdir()),
          "c_files": sorted(str(p.relative_to(c_dir)) for p in c_dir.rglob("*") if p.is_file()),
          "universal_tags": sorted({p.name for n in "abc"
                                    for p in (out / "killed" / n / "ckpt_universal").glob("step-*")}),
          "meta14": json.loads((out / "mirror" / "ckpt" / "step-00000014" / "ardscale.json").read_text()),
          "reported": reported, "stop": stop, "dist": dist}
(out / "result.json").write_text(json.dumps(result))
ray.shutdown()
cluster.shutdown()
moto.terminate()
'''


@pytest.mark.slow
@pytest.mark.timeout(960)   # above the cluster subprocess's own 900 s, which then fails with its stderr
def test_node_loss_without_shared_disk_resumes_from_the_s3_mirror(tmp_path):
    pytest.importorskip("s3fs")
    exe = shutil.which("moto_server") or pytest.skip("moto_server not installed")
    config = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
    script = tmp_path / "nodes.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([repo, *filter(None, [env.get("PYTHONPATH")])])
    try:
        proc = subprocess.run([sys.executable, str(script), str(tmp_path), config, exe], env=env,
                              capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the two-node cluster did not finish in 900 s:\n{(e.stderr or b'')[-4000:]!r}")
    assert (tmp_path / "result.json").is_file(), proc.stderr[-4000:]
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["finished"] and r["resized"] == [True, True], proc.stderr[-4000:]
    assert {"a", "b", "c"} <= set(r["dirs"]), r["dirs"]   # each node wrote its own run dir
    resumed = [s["resumed_from"] for s in r["starts"]]
    assert resumed[0] is None and resumed[1] in ("step-00000006", "step-00000009"), resumed
    assert resumed[-2:] == ["step-00000010", "step-00000012"], resumed
    assert [(s["step"], s["world_size"]) for s in r["starts"][-2:]] == [(10, 1), (12, 2)], r["starts"]
    assert any(f.startswith("ckpt/step-") and "optim_states" in f for f in r["c_files"]), r["c_files"]
    ref, killed = ({int(k): v for k, v in d.items()} for d in (r["ref"], r["killed"]))
    assert sorted(ref) == list(range(10)) and sorted(killed) == list(range(14))
    assert all(killed[s] < 1.5 * killed[s - 1] for s in (10, 12)), killed
    assert all(math.isfinite(v) for v in killed.values()), killed
    # Training continues where it stopped, not from scratch: each 2-step phase moves the weights far
    # less than the 7 steps 3 → 10 did. A phase restarted from the initial weights would land about
    # 8 steps' distance from step 10 (the tiny DiT's loss barely moves in 10 steps, so losses can't tell).
    d = r["dist"]
    assert d["10-12"] < 0.6 * d["3-10"] and d["12-14"] < 0.6 * d["3-10"], d
    # the 1-worker tag was converted on one node and reached the other through the mirror
    assert len(r["universal_on"]) == 2 and r["victim"] not in r["universal_on"], r["universal_on"]
    assert r["universal_tags"] == ["step-00000010", "step-00000012"] and r["meta14"]["world_size"] == 2, r
    for step in range(10):
        assert abs(ref[step] - killed[step]) < 1e-6, (step, ref[step], killed[step])
    # trainer.fit()'s Result: the last step's metrics and its checkpoint, both ranks' shards merged
    rep = r["reported"]
    assert rep["name"] == "step-00000014" and rep["metrics_step"] == 14
    assert sum("optim_states" in f for f in rep["files"]) == 2
    assert "ckpt/step-00000014/ardscale.json" in rep["files"]
    # the stop request: a checkpoint at the step it was seen, status 143, no STOP file anywhere
    stop = r["stop"]
    assert stop["code"] == 143 and stop["rows"] < 100000, stop
    assert stop["tags"] == [f"step-{stop['rows']:08d}"], stop
    assert stop["stop_files"] == []
