"""Shards and JSON on a real S3 endpoint (moto_server on loopback), through the same fsspec code path."""
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from ardscale.data.shards import list_shards, read_json, read_shard, write_json
from ardscale.data.sources import VideoItem
from ardscale.data.video import decode_mp4
from data_prep.shard_videos import shard_one


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
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
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
    items = [VideoItem(str(clip), 2, "Archery", "v_Archery_g01_c01"), VideoItem(str(bad), 2, "Archery", "bad")]
    stats = shard_one(items, f"{root}/shard-000000.tar", num_frames=8, fps=8, size=32, max_clips=2, split="train")
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
