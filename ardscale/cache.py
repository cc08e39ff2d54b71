"""First-use caches that many processes may fill at once (encoder actors, ranks of one node, workers).

The rule, for every cache and mirror copy in the project: each process builds its own copy under
a private temporary name beside the target, checks it, and publishes it with one atomic rename.
Whoever renames first wins; a process that finds the target already there uses it and deletes its
own copy. A reader therefore sees either nothing or a whole target, never a half-written one, and
no process sleeps, polls or retries.

Users of this rule: the MiniLM text encoder folder (:func:`ardscale.models.text.minilm_dir`), the
per-node copies of a checkpoint mirror (:mod:`ardscale.engine.checkpoint`: ``_fetch`` and the
universal conversion), and the real-set features of FVD/FID (:func:`ardscale.metrics.fvd.cached_features`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/ardscale`` (default ``~/.cache/ardscale``), read at call time so that a
    test session or a job can point it elsewhere."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ardscale"


def fill_dir_once(target: Path, fill: Callable[[Path], None]) -> Path:
    """Make the folder ``target`` on first use: ``fill(tmp)`` writes it into a private temporary
    folder beside ``target`` (and raises if what it wrote is wrong), which is then renamed into
    place. If another process published ``target`` first, this copy is dropped and theirs used.

    Returns ``target``. Raises whatever ``fill`` raises; nothing is left behind then.
    """
    target = Path(target)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        fill(tmp)
        try:
            os.rename(tmp, target)   # atomic; refuses a non-empty target folder
        except OSError:
            if not target.is_dir():   # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def fill_file_once(target: Path, fill: Callable[[Path], None]) -> Path:
    """The file analogue of :func:`fill_dir_once`: ``fill(tmp)`` writes a private temporary file
    beside ``target``, published with ``os.link`` (which, unlike a rename, never replaces a file
    another process published first). Returns ``target``."""
    target = Path(target)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        fill(tmp)
        try:
            os.link(tmp, target)
        except FileExistsError:
            pass   # another process won; its file is whole
    finally:
        tmp.unlink(missing_ok=True)
    return target
