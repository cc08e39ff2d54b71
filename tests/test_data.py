"""Video decoding, shards (local and round trip), sources and split lists, shard plans."""
import itertools
import json
import os

import numpy as np
import pytest
import torch

from ardscale.data.shards import list_shards, read_shard, write_shard
from ardscale.data.sources import VideoItem, folder_items, in_test_split, ucf101_items
from ardscale.data.video import VideoReadError, decode_mp4, read_clips
from data_prep.shard_videos import run as shard_run
from data_prep.shard_videos import shard_one

CLIP = "videos/Archery/v_Archery_g01_c01.avi"   # 131 frames at 25 fps (MANIFEST.md)


def test_read_clips_real_video(ucf_root):
    clips = read_clips(str(ucf_root / CLIP), num_frames=8, fps=8, size=64)
    # 131 frames / 25 fps = 5.24 s → 42 frames at 8 fps → 5 clips of 8
    assert len(clips) == 5
    assert [s for s, _ in clips] == [0, 25, 50, 75, 100]
    frames = clips[0][1]
    assert frames.shape == (8, 64, 64, 3) and frames.dtype == np.uint8
    assert frames.std() > 10 and np.abs(frames[1:].astype(int) - frames[:-1]).mean() > 0.5


def test_shard_round_trip_and_bad_files(ucf_root, tmp_path):
    empty = tmp_path / "v_Archery_g99_c01.avi"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    truncated = tmp_path / "v_Archery_g98_c01.avi"
    truncated.write_bytes((ucf_root / CLIP).read_bytes()[:3000])
    items = [VideoItem(str(ucf_root / CLIP), 2, "Archery", "v_Archery_g01_c01"),
             VideoItem(str(empty), 2, "Archery", "empty"), VideoItem(str(text), 0, "x", "text"),
             VideoItem(str(truncated), 2, "Archery", "trunc")]
    url = str(tmp_path / "out" / "shard-000000.tar")
    stats = shard_one(items, url, num_frames=8, fps=8, size=64, max_clips=None, split="train")
    assert stats["clips"] == 5
    assert sorted(f["path"] for f in stats["failed"]) == sorted([str(empty), str(text), str(truncated)])
    samples = list(read_shard(url))
    assert [s["__key__"] for s in samples] == [f"v_Archery_g01_c01-{k:03d}" for k in range(5)]
    meta = json.loads(samples[2]["json"])
    assert meta["label"] == 2 and meta["class_name"] == "Archery" and meta["frame_start"] == 50
    assert meta["source"].endswith("v_Archery_g01_c01.avi") and meta["num_frames"] == 8
    want = read_clips(str(ucf_root / CLIP), 8, 8, 64)[2][1].astype(np.float32)
    got = decode_mp4(samples[2]["mp4"]).astype(np.float32)
    assert got.shape == want.shape
    assert np.abs(got - want).mean() < 4.0   # H.264 crf 18 on 64² frames
    with pytest.raises(VideoReadError):
        read_clips(str(empty), 8, 8, 64)


def test_write_shard_is_atomic(tmp_path):
    def broken():
        yield {"__key__": "a", "txt": "ok"}
        raise RuntimeError("crash mid-shard")
    with pytest.raises(RuntimeError):
        write_shard(str(tmp_path / "shard-000000.tar"), broken())
    assert list(tmp_path.iterdir()) == []
    assert list_shards(str(tmp_path)) == []


def test_ucf101_official_split_lists(ucf_root):
    train, test = ucf101_items(str(ucf_root), "train"), ucf101_items(str(ucf_root), "test")
    assert (len(train), len(test)) == (296, 165)     # MANIFEST.md, split 1
    assert not {i.key for i in train} & {i.key for i in test}
    assert all(i.label == 2 for i in train if i.class_name == "Archery")   # classInd 3 → 2
    assert len(ucf101_items(str(ucf_root), "train", split_id=2)) == 334


def test_ucf101_video_of_a_class_missing_from_classind_names_both(tmp_path):
    (tmp_path / "classInd.txt").write_text("1 Archery\n")
    (tmp_path / "Skiing").mkdir()
    (tmp_path / "Skiing" / "v_Skiing_g01_c01.avi").write_bytes(b"")
    with pytest.raises(ValueError, match=r"v_Skiing_g01_c01.avi: class 'Skiing' is not in .*classInd.txt"):
        ucf101_items(str(tmp_path), "all")


def test_folder_source(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for k in range(20):
            (tmp_path / cls / f"clip.{k}.mp4").write_bytes(b"")
    everything = folder_items(str(tmp_path))
    train, test = folder_items(str(tmp_path), "train"), folder_items(str(tmp_path), "test")
    assert len(everything) == 40 == len(train) + len(test) and len(test) > 0
    assert {i.label for i in everything} == {0, 1} and all("." not in i.key for i in everything)


@pytest.mark.slow
def test_shard_job_with_ray_skips_complete_shards(ucf_root, tmp_path, ray_local, monkeypatch):
    out = str(tmp_path / "data")
    r1 = shard_run(str(ucf_root), out, "test", limit=6, videos_per_shard=3, max_clips=1)
    assert (r1["videos"], r1["shards"], r1["shards_reused"], r1["videos_failed"]) == (6, 2, 0, 0)
    assert r1["clips"] == 6
    shards = list_shards(f"{out}/videos/test")
    assert len(shards) == 2
    mtimes = [os.path.getmtime(p) for p in shards]
    r2 = shard_run(str(ucf_root), out, "test", limit=6, videos_per_shard=3, max_clips=1)
    assert r2["shards_reused"] == 2 and r2["clips"] == 6
    assert [os.path.getmtime(p) for p in list_shards(f"{out}/videos/test")] == mtimes, "a shard was rewritten"
    report = json.loads((tmp_path / "data" / "videos" / "test" / "_report.json").read_text())
    assert report["clips"] == 6
    # relative paths from another directory: the Ray workers keep the one their cluster started in,
    # so the job resolves them before handing them over
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    r3 = shard_run(os.path.relpath(ucf_root, work), "rel", "test", limit=3, videos_per_shard=3, max_clips=1)
    assert r3["clips"] == 3 and r3["src"] == str(ucf_root)
    assert len(list_shards(str(work / "rel" / "videos" / "test"))) == 1


def test_empty_split_is_an_error_unless_allowed(tmp_path):
    (tmp_path / "cls").mkdir()
    name = next(f"clip{k}" for k in range(100) if not in_test_split(f"cls_clip{k}"))
    (tmp_path / "cls" / f"{name}.mp4").write_bytes(b"")
    assert [i.key for i in folder_items(str(tmp_path), "train")] == [f"cls_{name}"]
    with pytest.raises(FileNotFoundError, match="split=test"):
        shard_run(str(tmp_path), str(tmp_path / "out"), "test", source="folder")
    assert shard_run(str(tmp_path), str(tmp_path / "out"), "test", source="folder", allow_empty=True) is None


def test_latents_off_the_sphere_are_refused_with_the_fix():
    from ardscale.data.loader import check_token_norms
    z = torch.randn(3, 4, 32, 4)
    check_token_norms((2 * z / z.norm(dim=-1, keepdim=True)).half().float(), "x")   # float16-rounded √D: fine
    with pytest.raises(ValueError, match="under latents/v1/train.*re-encode"):
        check_token_norms(z, "latents/v1/train")


def _as_jpeg_frames(video, folder) -> int:
    """Every frame of a real clip saved as JPEG files (a Sky-Timelapse style frame folder)."""
    import av
    from PIL import Image

    folder.mkdir(parents=True)
    with av.open(str(video)) as c:
        for i, frame in enumerate(c.decode(c.streams.video[0])):
            Image.fromarray(frame.to_ndarray(format="rgb24")).save(folder / f"{i:05d}.jpg", quality=95)
    return i + 1


def test_frame_folder_source_matches_the_video_it_came_from(ucf_root, tmp_path):
    """Sky-Timelapse layout (sky_train/ and sky_test/, videos as folders of JPEG frames), made from
    two real clips: the split comes from the folders, and the clips equal the video's own."""
    from ardscale.data.video import read_frame_clips

    src = ucf_root / "videos" / "Archery"
    n = _as_jpeg_frames(src / "v_Archery_g01_c01.avi", tmp_path / "sky" / "sky_train" / "v01" / "c01")
    _as_jpeg_frames(src / "v_Archery_g02_c01.avi", tmp_path / "sky" / "sky_test" / "v02" / "c01")
    train = folder_items(str(tmp_path / "sky"), "train", frames=True)
    assert [(it.key, it.label, it.class_name) for it in train] == [("sky_train_v01_c01", 0, "video")]
    assert [it.key for it in folder_items(str(tmp_path / "sky"), "test", frames=True)] == ["sky_test_v02_c01"]
    ref = read_clips(str(src / "v_Archery_g01_c01.avi"), 8, 8, 32, max_clips=2)
    got = read_frame_clips(train[0].path, 8, 8, 32, src_fps=25, max_clips=2)
    assert [s for s, _ in got] == [s for s, _ in ref] and n > 16
    mse = np.mean([(a.astype(float) - b.astype(float)) ** 2 for (_, a), (_, b) in zip(got, ref)])
    assert 10 * np.log10(255**2 / mse) > 30          # the same frames, up to JPEG
    stats = shard_one(train, str(tmp_path / "out" / "shard-000000.tar"), 8, 8, 32, 2, "train", frames_fps=25)
    assert (stats["clips"], stats["failed"]) == (2, [])
    no_fps = shard_one(train, str(tmp_path / "out" / "shard-000001.tar"), 8, 8, 32, 2, "train")
    assert no_fps["clips"] == 0 and "--frames-fps" in no_fps["failed"][0]["error"]
    with pytest.raises(ValueError, match="--frames-fps"):
        shard_run(str(tmp_path / "sky"), str(tmp_path / "out2"), "train", source="frames")


def test_split_folders_of_videos(ucf_root, tmp_path):
    """Taichi-HD / FaceForensics layout: train/ and test/ folders of short videos."""
    import shutil

    src = ucf_root / "videos" / "Archery"
    layout = (("train", "v_Archery_g01_c01"), ("train", "v_Archery_g03_c01"), ("test", "v_Archery_g02_c01"))
    for split, name in layout:
        (tmp_path / "taichi" / split).mkdir(parents=True, exist_ok=True)
        shutil.copy(src / f"{name}.avi", tmp_path / "taichi" / split / f"{name}.avi")
    train = folder_items(str(tmp_path / "taichi"), "train")
    assert [(it.key, it.class_name) for it in train] == [("train_v_Archery_g01_c01", "video"),
                                                         ("train_v_Archery_g03_c01", "video")]
    assert [it.key for it in folder_items(str(tmp_path / "taichi"), "test")] == ["test_v_Archery_g02_c01"]
    stats = shard_one(train, str(tmp_path / "out" / "shard-000000.tar"), 8, 8, 32, 1, "train")
    assert (stats["clips"], stats["failed"]) == (2, [])
    shutil.rmtree(tmp_path / "taichi" / "train")   # a lone "test" folder is a class, not a split
    both = folder_items(str(tmp_path / "taichi"), "train") + folder_items(str(tmp_path / "taichi"), "test")
    assert [(it.key, it.class_name) for it in both] == [("test_v_Archery_g02_c01", "test")]


def test_plan_shards_by_count_and_by_source_megabytes(ucf_root):
    from data_prep.shard_videos import mixed_order, plan_shards, source_bytes

    items = ucf101_items(str(ucf_root), "train")[:12]
    sizes = {it.key: source_bytes(it.path) for it in items}
    by_count = plan_shards(items, 5)
    assert [len(s) for s in by_count] == [5, 5, 2]
    mb = 2 * max(sizes.values()) / 2**20                        # room for two of the largest
    by_size = plan_shards(items, 100, shard_mb=mb)
    order = [it.key for s in by_size for it in s]
    assert order == sorted(sizes, key=mixed_order) and order != sorted(sizes)   # every video once, mixed
    first = plan_shards(ucf101_items(str(ucf_root), "train"), 16)[0]
    assert len({it.label for it in first}) > 4, "shards by class: the stream's shuffle window would not mix"
    assert all(sum(sizes[it.key] for it in s) <= mb * 2**20 for s in by_size)
    full = [sum(sizes[it.key] for it in a + b[:1]) > mb * 2**20 for a, b in itertools.pairwise(by_size)]
    assert all(full)            # a shard closes only when the next video would not fit
    assert [len(s) for s in plan_shards(items, 100, shard_mb=1e-6)] == [1] * 12   # each alone, none dropped
