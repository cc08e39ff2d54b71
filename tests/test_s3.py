"""Shards and JSON on a real S3 endpoint (moto_server on loopback), through the same fsspec code path."""
import json
import os
import shutil
import socket
import subprocess
import time

import pytest
from helpers import mlflow_uri

from ardscale.data.shards import list_shards, read_json, read_shard, write_json
from ardscale.data.sources import VideoItem
from ardscale.data.video import decode_mp4, read_clips
from data_prep.shard_videos import _items, shard_one, source_bytes


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("s3fs")
    exe = shutil.which("moto_server") or pytest.skip("moto_server not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto_server did not start within 30 s")
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec
    import s3fs

    fsspec.config.conf["s3"] = {"client_kwargs": {"endpoint_url": url}}
    s3fs.S3FileSystem.clear_instance_cache()
    fs = fsspec.filesystem("s3")
    fs.mkdir("ardscale-test")
    yield url
    fsspec.config.conf.pop("s3", None)
    for k, v in old.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    proc.terminate()
    proc.wait(timeout=10)


def test_shard_job_writes_and_reads_s3(ucf_root, s3_endpoint, tmp_path):
    root = "s3://ardscale-test/data/videos/train"
    clip = ucf_root / "videos" / "Archery" / "v_Archery_g01_c01.avi"
    bad = tmp_path / "broken.avi"
    bad.write_bytes(b"RIFF....AVI garbage")
    items = [VideoItem(str(clip), 2, "Archery", "v_Archery_g01_c01"),
             VideoItem(str(bad), 2, "Archery", "bad")]
    stats = shard_one(items, f"{root}/shard-000000.tar", num_frames=8, fps=8, size=32, max_clips=2,
                      split="train")
    assert stats["clips"] == 2 and [f["path"] for f in stats["failed"]] == [str(bad)]
    shards = list_shards(root)
    assert shards == [f"{root}/shard-000000.tar"]
    samples = list(read_shard(shards[0]))
    assert [s["__key__"] for s in samples] == ["v_Archery_g01_c01-000", "v_Archery_g01_c01-001"]
    frames = decode_mp4(samples[1]["mp4"])
    assert frames.shape == (8, 32, 32, 3) and frames.std() > 5
    assert json.loads(samples[1]["json"])["frame_start"] > 0
    assert read_json(f"{root}/shard-000000.stats.json")["clips"] == 2
    write_json(f"{root}/_report.json", {"clips": 2, "ok": True})
    assert read_json(f"{root}/_report.json") == {"clips": 2, "ok": True}
    assert read_json(f"{root}/missing.json", default="none") == "none"


def test_checkpoints_mirror_to_s3_and_a_fresh_disk_resumes_from_there(s3_endpoint, tmp_path):
    from pathlib import Path

    import fsspec
    from helpers import write_latent_shards

    from ardscale.config import load
    from ardscale.engine import checkpoint
    from ardscale.train import launch

    root = tmp_path / "data"
    write_latent_shards(root, shards=1, per_shard=16)
    config = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")

    def run(run_dir, steps, url=""):
        launch(load(config, [f"data.root={root}", "data.vae_id=fake", f"train.run_dir={run_dir}",
                             f"train.steps={steps}",
                             "train.ckpt_every=2", "train.keep_last=2", "optim.ema_decay=0.5",
                             f"train.checkpoint_url={url}",
                             f"tracking.tracking_uri={mlflow_uri(tmp_path)}"]))
        return {r["step"]: r["loss"] for r in map(json.loads,
                                                  (Path(run_dir) / "metrics.jsonl").read_text().splitlines())}

    url = "s3://ardscale-test/runs/mirror"
    full = run(tmp_path / "full", 6)
    run(tmp_path / "node1", 4, url)
    fs = fsspec.filesystem("s3")
    assert fs.cat(f"{url}/ckpt/latest").decode() == "step-00000004"
    remote = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{url}/ckpt"))
    assert remote == ["latest", "step-00000002", "step-00000004"]
    assert {p.rsplit("/", 1)[-1] for p in fs.ls(f"{url}/ckpt/step-00000004")} >= {
        "ardscale.json", "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"}
    assert fs.exists(f"{url}/ema/step-00000004.pt")
    # Another machine: an empty run dir, the same mirror. It pulls step 4 and goes on to 6.
    second = run(tmp_path / "node2", 6, url)
    assert sorted(second) == [4, 5], "the new node repeated or skipped steps"
    for step in (4, 5):
        assert abs(second[step] - full[step]) < 1e-6, (step, second[step], full[step])
    assert fs.cat(f"{url}/ckpt/latest").decode() == "step-00000006"
    remote = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{url}/ckpt"))
    assert remote == ["latest", "step-00000004", "step-00000006"]
    ema = checkpoint.load_weights(str(tmp_path / "node2"), ema=True)[0]
    ema_full = checkpoint.load_weights(str(tmp_path / "full"), ema=True)[0]
    assert max((ema[k] - ema_full[k]).abs().max().item() for k in ema) < 1e-6


def test_shard_job_reads_its_source_videos_from_s3(ucf_root, s3_endpoint, tmp_path):
    """Raw videos on S3 (UCF-101 layout with the official lists): listed and decoded through fsspec,
    giving the same items and clips as the local copy."""
    import fsspec

    from ardscale.data.sources import folder_items, ucf101_items

    fs = fsspec.filesystem("s3")
    lists = ucf_root / "splits" / "official_ucfTrainTestlist"
    for name in ("classInd.txt", "trainlist01.txt"):
        fs.put_file(str(lists / name), f"ardscale-test/raw/splits/{name}")
    names = ["v_Archery_g08_c01", "v_Archery_g09_c02"]
    for n in names:
        fs.put_file(str(ucf_root / "videos" / "Archery" / f"{n}.avi"),
                    f"ardscale-test/raw/videos/Archery/{n}.avi")
    items = ucf101_items("s3://ardscale-test/raw", "train")
    assert [(it.key, it.label, it.path) for it in items] == [
        (n, 2, f"s3://ardscale-test/raw/videos/Archery/{n}.avi") for n in names]
    # the shard job's --source auto finds the official lists on S3 too (not a folder of class folders)
    assert _items("s3://ardscale-test/raw", "train", "auto", 1, "") == ("ucf101", items, {})
    assert [source_bytes(it.path) for it in items] == [
        (ucf_root / "videos" / "Archery" / f"{n}.avi").stat().st_size for n in names]
    params = {"num_frames": 4, "fps": 8, "size": 32, "max_clips": 2, "split": "train"}
    stats = shard_one(items, str(tmp_path / "s3src.tar"), **params)
    local = [VideoItem(str(ucf_root / "videos" / "Archery" / f"{n}.avi"), 2, "Archery", n) for n in names]
    ref = shard_one(local, str(tmp_path / "local.tar"), **params)
    assert stats["failed"] == [] and stats["clips"] == ref["clips"] == 4
    assert [s["__key__"] for s in read_shard(str(tmp_path / "s3src.tar"))] == [
        s["__key__"] for s in read_shard(str(tmp_path / "local.tar"))]
    for remote, here in zip(items, local, strict=True):   # the decoded frames, before H.264 re-encoding
        got, want = (read_clips(p, 4, 8, 32, 2) for p in (remote.path, here.path))
        assert [s for s, _ in got] == [s for s, _ in want]
        assert all((a == b).all() for (_, a), (_, b) in zip(got, want))
    assert [it.key for it in folder_items("s3://ardscale-test/raw/videos", "all")] == [
        f"Archery_{n}" for n in names]


def test_frame_folder_videos_on_s3_read_like_the_local_copy(ucf_root, s3_endpoint, tmp_path):
    """A Sky-Timelapse frame folder (JPEG files) on S3: listed, split and decoded through fsspec,
    giving the local copy's items and clips; an S3 folder without frames is a VideoReadError."""
    import fsspec
    from test_data import _as_jpeg_frames

    from ardscale.data.sources import folder_items
    from ardscale.data.video import VideoReadError, read_frame_clips

    video = ucf_root / "videos" / "Archery" / "v_Archery_g01_c01.avi"
    local = tmp_path / "sky"
    _as_jpeg_frames(video, local / "sky_train" / "v01" / "c01")
    _as_jpeg_frames(video, local / "sky_test" / "v02" / "c01")
    fs = fsspec.filesystem("s3")
    fs.put(str(local), "ardscale-test/sky", recursive=True)
    remote = folder_items("s3://ardscale-test/sky", "train", frames=True)
    assert [(it.key, it.path) for it in remote] == [
        ("sky_train_v01_c01", "s3://ardscale-test/sky/sky_train/v01/c01")]
    assert [it.key for it in remote] == [it.key for it in folder_items(str(local), "train", frames=True)]
    got = read_frame_clips(remote[0].path, 8, 8, 32, src_fps=25, max_clips=2)
    want = read_frame_clips(str(local / "sky_train" / "v01" / "c01"), 8, 8, 32, src_fps=25, max_clips=2)
    assert len(got) == 2 and [s for s, _ in got] == [s for s, _ in want]
    assert all((a == b).all() for (_, a), (_, b) in zip(got, want))
    with pytest.raises(VideoReadError, match="s3://ardscale-test/sky/none"):
        read_frame_clips("s3://ardscale-test/sky/none", 8, 8, 32, src_fps=25)


@pytest.fixture
def restartable_s3(monkeypatch):
    """An S3 endpoint in this process (moto's threaded server on loopback) that a test can stop and
    start again with its buckets intact, as a real endpoint's outage would leave them."""
    pytest.importorskip("s3fs")
    import fsspec
    import s3fs
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(k, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # one botocore attempt per read: the stream's own retries are what is tested
    monkeypatch.setitem(fsspec.config.conf, "s3", {
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2, "read_timeout": 10}})
    s3fs.S3FileSystem.clear_instance_cache()
    fsspec.filesystem("s3").mkdir("stream-test")
    yield server
    server.stop()
    s3fs.S3FileSystem.clear_instance_cache()


def test_stream_rides_out_an_s3_outage_and_skips_a_lost_shard(restartable_s3, tmp_path):
    """Shards on S3; the endpoint goes down mid-epoch and comes back while the stream backs off: the
    samples are those of a run without the outage. A shard deleted for good is skipped and counted."""
    import fsspec

    from ardscale.data.loader import latent_sample
    from ardscale.data.stream import Layout, Plan, ShardSet, ShardStream, StreamLoader
    from tests.test_stream import make_shards

    make_shards(tmp_path)
    fs = fsspec.filesystem("s3")
    fs.put(str(tmp_path) + "/", "stream-test/lat/", recursive=True)
    shards = ShardSet.from_dir("s3://stream-test/lat")
    assert shards.sizes == (9, 5, 13, 7, 11, 6, 10)
    layout = Layout(1, 1, 4, 1)

    def keys(steps, sleep, after_first=None):
        loader = StreamLoader(ShardStream(Plan(shards, layout, 1, 2), 0, latent_sample, tries=4, backoff_s=0,
                                          sleep=sleep), 0)
        out = [loader.next()["keys"]]
        if after_first:
            after_first()
        out += [loader.next()["keys"] for _ in range(steps - 1)]
        loader.close()
        return out, loader.faults

    ref, faults = keys(15, sleep=lambda s: pytest.fail("retried without a fault"))
    assert faults == {"shards": [], "samples": 0}
    down = {"stopped": False, "retries": 0}

    def stop():
        restartable_s3.stop()
        down["stopped"] = True

    def back_up(seconds):   # the stream's backoff: the endpoint returns while it waits
        down["retries"] += 1
        if down["stopped"]:
            restartable_s3.start()
            down["stopped"] = False

    got, faults = keys(15, back_up, after_first=stop)
    assert down["retries"] >= 1 and not down["stopped"], "the outage was never hit"
    assert got == ref and faults == {"shards": [], "samples": 0}
    fs.rm("stream-test/lat/shard-000003.tar")
    got, faults = keys(15, lambda s: None)
    lost = [k for b in ref for k in b if k.startswith("s3_")]
    assert faults["shards"] == ["s3://stream-test/lat/shard-000003.tar"]
    assert faults["samples"] == len(lost) > 0
    assert {k for b in got for k in b} == {k for b in ref for k in b if not k.startswith("s3_")}


def test_real_features_cached_beside_shards_on_s3(s3_endpoint):
    import fsspec
    import torch

    from ardscale.metrics.fvd import cached_features

    clips = torch.arange(2 * 9 * 4 * 4 * 3).remainder(256).to(torch.uint8).view(2, 9, 4, 4, 3)
    calls = []

    def extract(c):
        calls.append(len(c))
        return c.double().flatten(1)[:, :5]

    url = "s3://ardscale-test/data16/videos/test/_features"
    first = cached_features(extract, clips, url, "i3d")
    again = cached_features(extract, clips, url, "i3d")   # read back from the bucket
    assert calls == [2] and torch.equal(first, again) and first.shape == (2, 5)
    names = [p.rsplit("/", 1)[-1] for p in fsspec.filesystem("s3").ls(url.removeprefix("s3://"))]
    assert len(names) == 1 and names[0].startswith("i3d-f9-4px-n2-")
