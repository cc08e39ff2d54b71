"""Captioned sources: a captions file beside the videos (JSON lines or CSV, optional segments) and
WebVid's CSV; missing videos and empty captions are left out and counted."""
import json
import shutil

import pytest

from ardscale.data.shards import read_shard
from ardscale.data.sources import captioned_items
from data_prep.shard_videos import shard_one

CLIPS = ["Archery/v_Archery_g01_c01.avi", "BasketballDunk/v_BasketballDunk_g01_c01.avi"]


@pytest.fixture
def corpus(ucf_root, tmp_path):
    for rel in CLIPS:
        shutil.copy(ucf_root / "videos" / rel, tmp_path / rel.split("/")[1])
    return tmp_path


def test_captions_jsonl_with_segments_missing_videos_and_empty_captions(corpus, tmp_path):
    rows = [{"path": "v_BasketballDunk_g01_c01.avi", "caption": "a player dunks the ball", "label": 8,
             "class_name": "BasketballDunk"},
            {"path": "v_Archery_g01_c01.avi", "caption": "an archer draws the bow", "start": 1.0, "end": 3.5},
            {"path": "v_Archery_g01_c01.avi", "caption": "an archer lowers the bow", "start": 3.5},
            {"path": "v_Missing_g01_c01.avi", "caption": "nobody"},
            {"path": "v_Archery_g01_c01.avi", "caption": "  "}]
    (corpus / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items, left = captioned_items(str(corpus))
    assert [(it.key, it.caption, it.span) for it in items] == [
        ("v_BasketballDunk_g01_c01", "a player dunks the ball", None),
        ("v_Archery_g01_c01-1000ms", "an archer draws the bow", (1.0, 3.5)),
        ("v_Archery_g01_c01-3500ms", "an archer lowers the bow", (3.5, float("inf")))]
    assert left == {"missing": ["v_Missing_g01_c01.avi"], "empty_captions": 1, "duplicates": 0}
    assert [(it.label, it.class_name) for it in items] == [(8, "BasketballDunk"), (-1, ""), (-1, "")]
    train, test = captioned_items(str(corpus), "train")[0], captioned_items(str(corpus), "test")[0]
    assert sorted(it.key for it in train + test) == sorted(it.key for it in items)

    stats = shard_one(items, str(tmp_path / "shard-000000.tar"), num_frames=8, fps=8, size=32, max_clips=2,
                      split="train")
    assert stats["failed"] == []
    metas = {s["__key__"]: json.loads(s["json"]) for s in read_shard(str(tmp_path / "shard-000000.tar"))}
    dunk = [m for k, m in metas.items() if k.startswith("v_BasketballDunk")]
    assert dunk and all((m["label"], m["class_name"]) == (8, "BasketballDunk") for m in dunk)
    segment = [m for k, m in metas.items() if k.startswith("v_Archery_g01_c01-1000ms")]
    assert segment and all(m["caption"] == "an archer draws the bow" for m in segment)
    # 8 frames at 8 fps need 1 s: the 2.5 s segment [1, 3.5) gives 2 clips starting at ≥ 1 s (25 fps)
    assert len(segment) == 2 and min(m["frame_start"] for m in segment) >= 25
    assert max(m["frame_start"] for m in segment) + 25 <= round(3.5 * 25)


def test_webvid_csv_finds_videos_by_id_or_local_url(corpus):
    (corpus / "page1").mkdir()
    shutil.move(corpus / "v_Archery_g01_c01.avi", corpus / "page1" / "1001.mp4")
    elsewhere = corpus.parent / "elsewhere.mp4"
    shutil.copy(corpus / "v_BasketballDunk_g01_c01.avi", elsewhere)
    (corpus / "results_val.csv").write_text(
        "videoid,contentUrl,duration,page_dir,name\n"
        "1001,https://example.com/1001.mp4,PT00H00M05S,page1,Archery practice outdoors\n"
        f"1002,{elsewhere},PT00H00M07S,page1,Basketball game in a gym\n"
        "1003,https://example.com/1003.mp4,PT00H00M09S,page1,never downloaded\n")
    items, left = captioned_items(str(corpus), captions="results_val.csv")
    assert [(it.key, it.caption) for it in items] == [("1001", "Archery practice outdoors"),
                                                      ("elsewhere", "Basketball game in a gym")]
    assert items[1].path == str(elsewhere)
    assert left == {"missing": ["1003"], "empty_captions": 0, "duplicates": 0}


def test_videos_with_the_same_name_in_two_folders_keep_both(corpus):
    for folder in ("cam_a", "cam_b"):
        (corpus / folder).mkdir()
        shutil.copy(corpus / "v_Archery_g01_c01.avi", corpus / folder / "clip.avi")
    rows = [{"path": "cam_a/clip.avi", "caption": "an archer, camera A"},
            {"path": "cam_b/clip.avi", "caption": "an archer, camera B"},
            {"path": "cam_b/clip.avi", "caption": "the same video again"},
            {"path": "v_Archery_g01_c01.avi", "caption": "an archer"}]
    (corpus / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items, left = captioned_items(str(corpus))
    assert [(it.key, it.caption) for it in items] == [("cam_a_clip", "an archer, camera A"),
                                                      ("cam_b_clip", "an archer, camera B"),
                                                      ("v_Archery_g01_c01", "an archer")]
    assert left == {"missing": [], "empty_captions": 0, "duplicates": 1}


def test_no_captions_file_is_an_error(corpus):
    with pytest.raises(FileNotFoundError, match="captions.jsonl or captions.csv"):
        captioned_items(str(corpus))


def test_the_projects_ucf101_captions_cover_the_shared_clips(ucf_root):
    """data_prep/captions/ucf101-subset.jsonl is what data_prep/ucf101_captions.py writes, and the
    captioned source reads every clip of it with the official split."""
    from pathlib import Path

    from data_prep.ucf101_captions import rows

    file = Path(__file__).resolve().parents[1] / "data_prep" / "captions" / "ucf101-subset.jsonl"
    assert [json.loads(line) for line in file.read_text().splitlines()] == rows(str(ucf_root))
    test, left = captioned_items(str(ucf_root), "test", captions=str(file))
    assert len(test) == 165 and left == {"missing": [], "empty_captions": 0, "duplicates": 0}
    from ardscale.data.sources import ucf101_items
    assert sorted((it.key, it.label) for it in test) == sorted((it.key, it.label) for it in ucf101_items(
        str(ucf_root), "test"))                           # the class travels with the caption
    assert len({it.caption for it in test}) > 17          # several templates per class
