"""Raw video sources: UCF-101 (official split lists), folders of videos (Taichi-HD, FaceForensics,
any folder), folders of frame folders (Sky-Timelapse) and captioned videos (a captions file beside
the videos, or WebVid's CSV).

A folder source with a subfolder named after the split (``train``, ``test``, or ending in
``_train`` / ``_test`` as Sky-Timelapse's ``sky_train``) takes that split's videos from it, as
the datasets ship; otherwise a fixed 90/10 division by file name holds out the test split."""
from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePosixPath

from .video import IMAGE_EXTS

VIDEO_EXTS = {".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v"}
UCF_NAME = re.compile(r"^v_(?P<cls>[A-Za-z]+)_g\d+_c\d+$")


@dataclass(frozen=True)
class VideoItem:
    """One raw video: ``path`` on disk, integer ``label``, ``class_name``, ``key`` (unique, no dots);
    captioned sources add the ``caption`` and an optional ``span`` (start, end seconds)."""

    path: str
    label: int
    class_name: str
    key: str
    caption: str = ""
    span: tuple[float, float] | None = None


class Tree:
    """The files under a root folder, local or any fsspec URL (``s3://bucket/prefix``), listed once."""

    def __init__(self, root: str):
        import fsspec

        self.fs, base = fsspec.core.url_to_fs(root)
        self.remote = "://" in root
        self.files = sorted(PurePosixPath(p) for p in self.fs.find(base)) if self.fs.isdir(base) else []
        self.base = PurePosixPath(base)

    def url(self, p: PurePosixPath) -> str:
        """What the readers open: a URL for remote files, a plain path for local ones."""
        return self.fs.unstrip_protocol(str(p)) if self.remote else str(p)

    def read_text(self, p: PurePosixPath) -> str:
        return self.fs.cat_file(str(p)).decode()


def _videos_under(tree: Tree, top: PurePosixPath) -> list[PurePosixPath]:
    return [p for p in tree.files if p.suffix.lower() in VIDEO_EXTS and top in p.parents]


def _find(tree: Tree, name: str) -> PurePosixPath:
    hits = [p for p in tree.files if p.name == name]
    if not hits:
        raise FileNotFoundError(f"{tree.base}: no {name} found (UCF-101 official split lists)")
    return hits[0]


def ucf101_items(root: str | Tree, split: str = "train", split_id: int = 1) -> list[VideoItem]:
    """Videos of ``root`` (a folder or URL, or its :class:`Tree` already listed) that the official
    UCF-101 list ``{split}list0{split_id}.txt`` names.

    Works for the full dataset and for subsets: the official lists and ``classInd.txt`` are
    found anywhere under ``root``; videos listed but absent are ignored, videos present but not
    listed are left out of the split. The class comes from ``v_<Class>_gXX_cYY``; labels are
    ``classInd`` indices minus one (0…100).

    Raises:
        ValueError: split not train/test/all, or a video of a class classInd.txt lacks.
        FileNotFoundError: no split list / classInd.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be train, test or all, got {split!r}")
    tree = root if isinstance(root, Tree) else Tree(root)
    class_ind = {}
    for line in tree.read_text(_find(tree, "classInd.txt")).split("\n"):
        if line.strip():
            idx, name = line.split()
            class_ind[name] = int(idx) - 1
    wanted = None
    if split != "all":
        lines = tree.read_text(_find(tree, f"{split}list{split_id:02d}.txt")).split("\n")
        wanted = {PurePosixPath(ln.split()[0]).stem for ln in lines if ln.strip()}
    items = []
    for p in _videos_under(tree, tree.base):
        m = UCF_NAME.match(p.stem)
        if m is None or (wanted is not None and p.stem not in wanted):
            continue
        cls = m["cls"]
        if cls not in class_ind:
            listed = tree.url(_find(tree, "classInd.txt"))
            raise ValueError(f"{tree.url(p)}: class {cls!r} is not in {listed}")
        items.append(VideoItem(tree.url(p), class_ind[cls], cls, p.stem))
    return items


def in_test_split(key: str, test_fraction: float = 0.1) -> bool:
    """Stable hold-out for folders without split lists: a hash of the key, not of the run."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < test_fraction


def split_dir(tree: Tree, split: str) -> PurePosixPath | None:
    """The top-level folder of ``tree`` that holds ``split`` as the dataset ships it (``train``,
    ``sky_train``, …), or None. Only a tree with both a train and a test folder is split this way
    (a lone class folder called ``speed_test`` stays a class)."""
    tops = {p.relative_to(tree.base).parts[0] for p in tree.files if len(p.relative_to(tree.base).parts) > 1}
    match = {s: sorted(d for d in tops if d == s or d.endswith(f"_{s}")) for s in ("train", "test")}
    return tree.base / match[split][0] if match["train"] and match["test"] else None


def _frame_folders_under(tree: Tree, top: PurePosixPath) -> list[PurePosixPath]:
    """Folders that directly hold image frames: one video each."""
    return sorted({p.parent for p in tree.files if p.suffix.lower() in IMAGE_EXTS and top in p.parents})


def folder_items(root: str | Tree, split: str = "all", frames: bool = False) -> list[VideoItem]:
    """Videos under ``root`` (a folder or URL, or its :class:`Tree`; ``frames``: folders of image
    frames, each one video).

    The split comes from a split subfolder when there is one (:func:`split_dir`), else from a
    fixed 90/10 division by file name (:func:`in_test_split`). The class is the parent folder's
    name relative to that base (``video`` for files directly in it); frame folders are one class,
    ``video`` (the frame datasets are unconditional). Labels are sorted class names' indices.

    Raises:
        ValueError: split not train/test/all.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be train, test or all, got {split!r}")
    tree = root if isinstance(root, Tree) else Tree(root)
    base = tree.base
    own = split_dir(tree, split) if split != "all" else None
    top = own or base
    paths = _frame_folders_under(tree, top) if frames else _videos_under(tree, top)
    names = ["video" if frames or p.parent == top else str(p.parent.relative_to(top)) for p in paths]
    classes = {c: i for i, c in enumerate(sorted(set(names)))}
    items = []
    for p, c in zip(paths, names):
        rel = p.relative_to(base) if frames else p.relative_to(base).with_suffix("")
        key = re.sub(r"[^A-Za-z0-9_-]", "_", str(rel))
        if own is None and split != "all" and in_test_split(key) != (split == "test"):
            continue
        items.append(VideoItem(tree.url(p), classes[c], c, key))
    return items


def class_names(items: list[VideoItem]) -> dict[int, str]:
    """``{label: class_name}`` of the items."""
    return {it.label: it.class_name for it in items}


def _caption_rows(tree: Tree, captions: str) -> list[dict]:
    """Rows of the captions file: JSON lines, or a CSV with a header (see :func:`captioned_items`).
    ``captions``: a path or URL, else a file name under the tree (default ``captions.jsonl`` /
    ``captions.csv``)."""
    import csv
    import io
    import json

    import fsspec

    if captions and ("://" in captions or PurePosixPath(captions).is_absolute()) and _exists(captions):
        with fsspec.open(captions, "r") as f:
            name, text = captions, f.read()
    else:
        names = [captions] if captions else ["captions.jsonl", "captions.csv"]
        found = [p for p in tree.files if p.name in names or str(p).endswith("/" + captions.lstrip("/"))]
        if not found:
            raise FileNotFoundError(f"{tree.base}: no captions file ({' or '.join(names)})")
        name, text = str(found[0]), tree.read_text(found[0])
    if name.lower().endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return list(csv.DictReader(io.StringIO(text)))


def _caption_item(tree: Tree, row: dict, files: dict[str, PurePosixPath]) -> tuple[str, str, tuple | None]:
    """``(video path, or "" when it is missing; caption; span)`` of one row, our layout or WebVid's.
    ``files``: the videos under the root by relative path and by file name."""
    if "videoid" in row:   # WebVid: videoid, contentUrl, name (the caption), duration[, page_dir]
        local, url = files.get(f"{row['videoid']}.mp4"), row.get("contentUrl") or ""
        if local is None and url and not url.startswith(("http://", "https://")) and _exists(url):
            return url, (row.get("name") or "").strip(), None
        return (tree.url(local) if local else ""), (row.get("name") or "").strip(), None
    local = files.get(row.get("path") or row.get("video") or "")
    start, end = row.get("start") or "", row.get("end") or ""
    span = (float(start or 0), float(end or "inf")) if start or end else None
    return (tree.url(local) if local else ""), (row.get("caption") or "").strip(), span


def _exists(url: str) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def captioned_items(root: str, split: str = "all", captions: str = "") -> tuple[list[VideoItem], dict]:
    """Captioned videos under ``root`` and what was left out.

    ``captions`` (a path or URL, or a file name under ``root``; default ``captions.jsonl`` or
    ``captions.csv`` under ``root``) is one of:

    - JSON lines or CSV with ``path`` (relative to ``root``), ``caption``, and optional ``start`` /
      ``end`` seconds (one video may appear in several rows, one per captioned segment) and
      ``split`` (``train`` / ``test``), and optional ``label`` (an integer class) and
      ``class_name``, kept in each sample's json (evaluation then checks that a video generated
      from the caption shows that class);
    - WebVid's CSV: ``videoid``, ``contentUrl`` (a local path or fsspec URL; http is never
      fetched), ``name`` (the caption), ``duration``: the video is ``{videoid}.mp4`` anywhere
      under ``root``, else ``contentUrl``.

    A row whose video is missing, or whose caption is empty, is left out and counted, not fatal; a
    row repeating a video (same video, same start) is left out, counted and warned about. A
    sample's key is the video's file name, or its path under the root when several videos share
    that name.
    The split is the row's ``split``, else a fixed 90/10 division by key (:func:`in_test_split`);
    the label is the row's ``label``, else -1 (no class).
    Returns:
        ``(items, {"missing": [rows' videos], "empty_captions": n, "duplicates": n})``.
    Raises:
        FileNotFoundError: no captions file. ValueError: split not train/test/all.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be train, test or all, got {split!r}")
    tree = Tree(root)
    videos = [p for p in tree.files if p.suffix.lower() in VIDEO_EXTS]
    files = {p.name: p for p in videos} | {str(p.relative_to(tree.base)): p for p in videos}
    shared = {name for name, n in Counter(p.name for p in videos).items() if n > 1}
    items, missing, empty, duplicates, seen = [], [], 0, 0, set()
    for row in _caption_rows(tree, captions):
        path, caption, span = _caption_item(tree, row, files)
        if not path:
            missing.append(row.get("path") or row.get("video") or row.get("videoid") or str(row))
            continue
        if not caption:
            empty += 1
            continue
        stem = _caption_key(tree, path, shared)
        key = stem if span is None else f"{stem}-{round(span[0] * 1000)}ms"
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        held_out = row["split"] == "test" if row.get("split") else in_test_split(key)
        if split == "all" or held_out == (split == "test"):
            label = int(row.get("label") if row.get("label") not in (None, "") else -1)
            items.append(VideoItem(path, label, row.get("class_name") or "", key, caption, span))
    if duplicates:   # a second caption of the same video (or segment start): the first one is kept
        logging.getLogger("ardscale.data").warning("%s: %d rows repeat a video (same video and start) "
                                                   "and were left out", root, duplicates)
    return items, {"missing": missing, "empty_captions": empty, "duplicates": duplicates}


def _caption_key(tree: Tree, path: str, shared: set[str]) -> str:
    """A captioned video's sample key: its file name without the extension, or, when several
    videos under the root share that name (``shared``), its path relative to the root."""
    import fsspec

    p = PurePosixPath(fsspec.core.url_to_fs(path)[1])
    named = p.relative_to(tree.base) if p.name in shared and tree.base in p.parents else PurePosixPath(p.name)
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(named.with_suffix("")))
