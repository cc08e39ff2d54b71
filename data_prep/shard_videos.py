"""Ray job: raw videos → WebDataset video shards ``{out}/videos/{split}/shard-000123.tar``.

Each sample is ``KEY.mp4`` (F frames, ``size``², ``fps``, H.264) + ``KEY.json`` (label, class name,
source file, frame range). One Ray task per output shard; a shard whose ``.stats.json`` exists is
complete and skipped on re-run. Unreadable files are skipped and listed in ``_report.json``.

    python data_prep/shard_videos.py --src ../shared/data/ucf101-subset --out runs/demo/data --split train
    python data_prep/shard_videos.py --src sky_timelapse --source frames --frames-fps 25 \
        --out runs/sky/data --split train --num-frames 16 --size 256          # sky_train/…/*.jpg
    python data_prep/shard_videos.py --src taichi --out runs/taichi/data --split test \
        --num-frames 16 --size 256                                            # taichi/test/*.mp4
    python data_prep/shard_videos.py --src webvid --source captions --captions results_2M_val.csv \
        --out runs/text/data --split train                                    # captioned videos
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import fsspec
from tqdm import tqdm

from ardscale.data.shards import join, read_json, shard_name, sidecar_url, write_json, write_shard
from ardscale.data.sources import Tree, VideoItem, captioned_items, class_names, folder_items, ucf101_items
from ardscale.data.video import VideoReadError, encode_mp4, read_clips, read_frame_clips


def shard_one(items: list[VideoItem], url: str, num_frames: int, fps: float, size: int,
              max_clips: int | None, split: str, frames_fps: float | None = None) -> dict:
    """Cut, encode and write the clips of ``items`` into the shard at ``url``; return its stats.
    An item whose path is a folder is a video stored as image frames shown at ``frames_fps``.

    Never raises for a bad video: it is counted in ``failed`` with the reason.
    """
    stats = {"shard": url, "videos": len(items), "clips": 0, "failed": []}

    def samples():
        for it in items:
            try:
                if Path(it.path).is_dir():
                    if not frames_fps:
                        raise VideoReadError(f"{it.path}: a folder of frames needs --frames-fps")
                    clips = read_frame_clips(it.path, num_frames, fps, size, frames_fps, max_clips)
                else:
                    clips = read_clips(it.path, num_frames, fps, size, max_clips, it.span)
            except VideoReadError as e:
                stats["failed"].append({"path": it.path, "error": str(e)})
                continue
            for k, (start, frames) in enumerate(clips):
                meta = {"label": it.label, "class_name": it.class_name, "source": it.path,
                        "frame_start": start, "num_frames": num_frames, "fps": fps, "size": size,
                        "split": split, **({"caption": it.caption} if it.caption else {})}
                stats["clips"] += 1
                yield {"__key__": f"{it.key}-{k:03d}", "mp4": encode_mp4(frames, fps), "json": meta}

    write_shard(url, samples())
    write_json(sidecar_url(url), stats)
    return stats


def source_bytes(path: str) -> int:
    """Size in bytes of a raw video, local or any fsspec URL: the file, or the frames of a frame folder."""
    fs, p = fsspec.core.url_to_fs(path)
    return fs.du(p)


def mixed_order(key: str) -> bytes:
    """Sort key that scatters videos over shards independently of their names (a hash of the key):
    sorted by name, a UCF-101 shard would hold one class, and the training stream only shuffles
    within a few shards at a time (WebDataset's advice: shuffle before sharding)."""
    return hashlib.blake2b(key.encode(), digest_size=8).digest()


def plan_shards(items: list[VideoItem], videos_per_shard: int, shard_mb: float = 0) -> list[list[VideoItem]]:
    """Deterministic split of items (in :func:`mixed_order`) into shards, so re-runs map videos to the
    same shard: at most ``videos_per_shard`` videos, and with ``shard_mb > 0`` at most that many MB of
    source video per shard (a single larger video gets a shard of its own)."""
    limit = shard_mb * 2**20
    plan, current, size = [], [], 0
    for it in sorted(items, key=lambda it: mixed_order(it.key)):
        n = source_bytes(it.path) if limit else 0
        if current and (len(current) == videos_per_shard or (limit and size + n > limit)):
            plan.append(current)
            current, size = [], 0
        current.append(it)
        size += n
    return plan + ([current] if current else [])


def run(src: str, out: str, split: str = "train", source: str = "auto", split_id: int = 1,
        num_frames: int = 8, fps: float = 8.0, size: int = 64, max_clips: int | None = 4,
        videos_per_shard: int = 16, limit: int | None = None, allow_empty: bool = False,
        frames_fps: float | None = None, shard_mb: float = 0, captions: str = "") -> dict | None:
    """Shard one split with Ray; returns the report (also written to ``{split dir}/_report.json``).

    ``source``: ``ucf101`` (official lists), ``folder`` (videos; a split subfolder or a 90/10
    division), ``frames`` (folders of image frames at ``frames_fps``, e.g. Sky-Timelapse), or
    ``auto`` (ucf101 when a classInd.txt is under ``src``, else folder), or ``captions`` (videos
    with a captions file, ``captions`` or ``captions.jsonl``/``.csv`` under ``src``, or WebVid's
    CSV: see :func:`~ardscale.data.sources.captioned_items`; rows without a video or with an
    empty caption, or repeating a video, are counted in the report's ``captions_missing`` /
    ``captions_empty`` / ``captions_duplicate``).
    Raises:
        FileNotFoundError: no video for this split (unless ``allow_empty``: then None is returned).
        ValueError: ``frames`` without ``frames_fps``.
    """
    # Ray workers keep the directory their cluster started in, not this process's: local paths absolute
    src, out = (p if "://" in p else os.path.abspath(p) for p in (src, out))
    from ardscale.engine.launch import init_ray

    if source == "frames" and not frames_fps:
        raise ValueError("--source frames needs --frames-fps, the frame rate the frames were taken at")
    source, items, left_out = _items(src, split, source, split_id, captions)
    if not items:
        if allow_empty:
            print(f"{src}: no videos for split={split}; nothing to shard")
            return None
        raise FileNotFoundError(f"{src}: no videos found for source={source} split={split}")
    items = items[:limit] if limit else items
    out_dir = join(out, "videos", split)
    plan = plan_shards(items, videos_per_shard, shard_mb)
    ray = init_ray()
    task = ray.remote(num_cpus=1)(shard_one)
    t0, pending, done = time.time(), {}, []
    for i, shard_items in enumerate(plan):
        url = join(out_dir, shard_name(i))
        prev = read_json(sidecar_url(url))
        if prev is not None:
            done.append({**prev, "reused": True})
            continue
        pending[task.remote(shard_items, url, num_frames, fps, size, max_clips, split, frames_fps)] = url
    with tqdm(total=len(plan), initial=len(done), desc=f"shards {split}", unit="shard") as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            done.append(ray.get(ready[0]))
            pending.pop(ready[0])
            bar.update(1)
    failed = [f for s in done for f in s["failed"]]
    report = {"split": split, "source": source, "src": src,
              "videos": len(items), "videos_failed": len(failed), "failed": failed,
              "clips": sum(s["clips"] for s in done), "shards": len(plan),
              "shards_reused": sum(1 for s in done if s.get("reused")),
              "classes": {str(k): v for k, v in sorted(class_names(items).items())},
              "params": {"num_frames": num_frames, "fps": fps, "size": size, "max_clips": max_clips,
                         "frames_fps": frames_fps, "videos_per_shard": videos_per_shard,
                         "shard_mb": shard_mb},
              "seconds": round(time.time() - t0, 2), **left_out}
    write_json(join(out_dir, "_report.json"), report)
    return report


def _items(src: str, split: str, source: str, split_id: int, captions: str) -> tuple[str, list, dict]:
    """(source with ``auto`` resolved, the split's items, the report's caption counts)."""
    tree = Tree(src) if source != "captions" else None   # listed once (an S3 listing is slow)
    if source == "auto":
        source = "ucf101" if any(p.name == "classInd.txt" for p in tree.files) else "folder"
    if source == "captions":
        items, n = captioned_items(src, split, captions)
        return source, items, {"captions_missing": n["missing"], "captions_empty": n["empty_captions"],
                               "captions_duplicate": n["duplicates"]}
    items = (ucf101_items(tree, split, split_id) if source == "ucf101"
             else folder_items(tree, split, frames=source == "frames"))
    return source, items, {}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="folder of raw videos (UCF-101 layout or any folder)")
    p.add_argument("--out", required=True, help="output root: local folder or fsspec URL (s3://...)")
    p.add_argument("--source", choices=["auto", "ucf101", "folder", "frames", "captions"], default="auto",
                   help="auto: ucf101 when a classInd.txt is under --src, else a plain folder; frames: "
                   "folders of image frames (Sky-Timelapse), with --frames-fps; captions: videos with a "
                   "captions file (--captions) or WebVid's CSV")
    p.add_argument("--captions", default="", help="captions file under --src (default captions.jsonl / .csv)")
    p.add_argument("--frames-fps", type=float, default=None, help="frame rate of --source frames")
    p.add_argument("--split", default="train", help="train | test | all (official lists for ucf101; "
                   "a fixed 90/10 split by file name for folders)")
    p.add_argument("--split-id", type=int, default=1)
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--max-clips", type=int, default=4, help="clips per video (0 = all)")
    p.add_argument("--videos-per-shard", type=int, default=16)
    p.add_argument("--shard-size", type=float, default=0,
                   help="MB of source video per shard at most (0 = by --videos-per-shard only)")
    p.add_argument("--limit", type=int, default=None, help="only the first N videos (debugging)")
    p.add_argument("--allow-empty", action="store_true", help="an empty split is not an error")
    a = p.parse_args(argv)
    report = run(a.src, a.out, a.split, a.source, a.split_id, a.num_frames, a.fps, a.size,
                 a.max_clips or None, a.videos_per_shard, a.limit, a.allow_empty, a.frames_fps, a.shard_size,
                 a.captions)
    if report is not None:
        print(json.dumps({k: v for k, v in report.items() if k not in ("failed", "classes")}))


if __name__ == "__main__":
    main()
