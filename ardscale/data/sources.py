"""Raw video sources: UCF-101 (official split lists), folders of videos (Taichi-HD, FaceForensics,
any folder) and folders of frame folders (Sky-Timelapse).

A folder source with a subfolder named after the split (``train``, ``test``, or ending in
``_train`` / ``_test`` as Sky-Timelapse's ``sky_train``) takes that split's videos from it, as
the datasets ship; otherwise a fixed 90/10 division by file name holds out the test split."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTS = {".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png"}
UCF_NAME = re.compile(r"^v_(?P<cls>[A-Za-z]+)_g\d+_c\d+$")


@dataclass(frozen=True)
class VideoItem:
    """One raw video: ``path`` on disk, integer ``label``, ``class_name``, ``key`` (unique, no dots)."""

    path: str
    label: int
    class_name: str
    key: str


def _videos_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file())


def _find(root: Path, name: str) -> Path:
    hits = sorted(root.rglob(name))
    if not hits:
        raise FileNotFoundError(f"{root}: no {name} found (UCF-101 official split lists)")
    return hits[0]


def ucf101_items(root: str, split: str = "train", split_id: int = 1) -> list[VideoItem]:
    """Videos of ``root`` that the official UCF-101 list ``{split}list0{split_id}.txt`` names.

    Works for the full dataset and for subsets: the official lists and ``classInd.txt`` are
    found anywhere under ``root``; videos listed but absent are ignored, videos present but not
    listed are left out of the split. The class comes from ``v_<Class>_gXX_cYY``; labels are
    ``classInd`` indices minus one (0…100).

    Raises:
        ValueError: split not train/test/all. FileNotFoundError: no split list / classInd.
    """
    base = Path(root)
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be train, test or all, got {split!r}")
    class_ind = {}
    for line in _find(base, "classInd.txt").read_text().split("\n"):
        if line.strip():
            idx, name = line.split()
            class_ind[name] = int(idx) - 1
    wanted = None
    if split != "all":
        lines = _find(base, f"{split}list{split_id:02d}.txt").read_text().split("\n")
        wanted = {Path(ln.split()[0]).stem for ln in lines if ln.strip()}
    items = []
    for p in _videos_under(base):
        m = UCF_NAME.match(p.stem)
        if m is None or (wanted is not None and p.stem not in wanted):
            continue
        cls = m["cls"]
        items.append(VideoItem(str(p), class_ind[cls], cls, p.stem))
    return items


def in_test_split(key: str, test_fraction: float = 0.1) -> bool:
    """Stable hold-out for folders without split lists: a hash of the key, not of the run."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < test_fraction


def split_dir(root: Path, split: str) -> Path | None:
    """The subfolder of ``root`` that holds ``split`` as the dataset ships it (``train``,
    ``sky_train``, …), or None."""
    hits = sorted(d for d in root.iterdir()
                  if d.is_dir() and (d.name == split or d.name.endswith(f"_{split}")))
    return hits[0] if hits else None


def _frame_folders_under(root: Path) -> list[Path]:
    """Folders that directly hold image frames: one video each."""
    return sorted({p.parent for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()})


def folder_items(root: str, split: str = "all", frames: bool = False) -> list[VideoItem]:
    """Videos under ``root`` (``frames``: folders of image frames, each one video).

    The split comes from a split subfolder when there is one (:func:`split_dir`), else from a
    fixed 90/10 division by file name (:func:`in_test_split`). The class is the parent folder's
    name relative to that base (``video`` for files directly in it); frame folders are one class,
    ``video`` (the frame datasets are unconditional). Labels are sorted class names' indices.

    Raises:
        ValueError: split not train/test/all.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be train, test or all, got {split!r}")
    base = Path(root)
    own = split_dir(base, split) if split != "all" else None
    top = own or base
    paths = _frame_folders_under(top) if frames else _videos_under(top)
    names = ["video" if frames or p.parent == top else str(p.parent.relative_to(top)) for p in paths]
    classes = {c: i for i, c in enumerate(sorted(set(names)))}
    items = []
    for p, c in zip(paths, names):
        rel = p.relative_to(base) if frames else p.relative_to(base).with_suffix("")
        key = re.sub(r"[^A-Za-z0-9_-]", "_", str(rel))
        if own is None and split != "all" and in_test_split(key) != (split == "test"):
            continue
        items.append(VideoItem(str(p), classes[c], c, key))
    return items


def class_names(items: list[VideoItem]) -> dict[int, str]:
    """``{label: class_name}`` of the items."""
    return {it.label: it.class_name for it in items}
