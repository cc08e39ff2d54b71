"""Checkpoints as DeepSpeed tags under ``{run_dir}/ckpt/step-00001234/``.

DeepSpeed writes a tag's files first and the ``latest`` pointer last; ``ardscale.json`` in the
tag marks it complete after that. A crash mid-save therefore leaves the previous complete tag
as the one :func:`latest_tag` returns. ``client_state`` is a :class:`Resume`: the global step,
the tag, the MLflow run id and the data position
(:meth:`ardscale.data.stream.StreamLoader.state_dict`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..cache import fill_dir_once
from . import ranks
from .deepspeed import import_deepspeed
from .ranks import barrier, is_rank0, world_size


def ckpt_dir(run_dir: str, sub: str = "ckpt") -> str:
    """Where a run's engine writes its tags: ``ckpt`` (the model), ``ckpt_disc`` (a GAN discriminator)."""
    return str(Path(run_dir) / sub)


def ema_path(run_dir: str, tag_: str) -> str:
    """The EMA weights of a tag (written by rank 0 before the tag's ``latest`` commit)."""
    return str(Path(run_dir) / "ema" / f"{tag_}.pt")


TAG_PREFIX = "step-"


def tag(step: int) -> str:
    """The tag of the checkpoint after ``step`` finished global steps: ``step-NNNNNNNN``."""
    return f"{TAG_PREFIX}{step:08d}"


def step_of(tag_: str) -> int:
    """The global step of a tag (the inverse of :func:`tag`).

    Raises:
        ValueError: not a tag of this form (naming it).
    """
    digits = tag_.removeprefix(TAG_PREFIX)
    if not tag_.startswith(TAG_PREFIX) or not digits.isdigit():
        raise ValueError(f"{tag_!r} is not a checkpoint tag ({TAG_PREFIX}NNNNNNNN)")
    return int(digits)


def latest_tag(run_dir: str, sub: str = "ckpt") -> str | None:
    """The newest complete tag, or None when the run has none.

    A tag is complete once it has ``ardscale.json``, written after every rank's files (see
    :func:`save`). DeepSpeed's ``latest`` names it, unless a crash left ``latest`` empty or
    pointing at an incomplete tag; then the newest complete tag on disk is used.
    """
    d = Path(ckpt_dir(run_dir, sub))
    latest = (d / "latest").read_text().strip() if (d / "latest").is_file() else ""
    if latest and (d / latest / "ardscale.json").is_file():
        return latest
    complete = sorted(t.parent.name for t in d.glob("step-*/ardscale.json"))
    if complete:
        return complete[-1]
    return latest if latest and (d / latest).is_dir() else None   # tags from before the marker existed


def save(engine, run_dir: str, step: int, client_state: dict, keep_last: int, sub: str = "ckpt") -> None:
    """Save a tag for ``step`` (all ranks call this), then drop all but the newest ``keep_last`` tags.

    With several engines (VAE + discriminator), save the others first: the model's ``latest``
    is the commit point, and :func:`resume` loads the others at the model's tag. The tag also
    gets ``ardscale.json`` (step, world size: a resume at another world size converts the tag to
    a universal checkpoint) and the state DeepSpeed's ``ds_to_universal`` requires.
    """
    import_deepspeed()
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    world = world_size()
    universal = {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}
    state = {**client_state, "step": step, "world_size": world, UNIVERSAL_CHECKPOINT_INFO: universal}
    engine.save_checkpoint(ckpt_dir(run_dir, sub), tag=tag(step), client_state=state)  # ends with a barrier
    if is_rank0():  # the completion marker, written atomically once every rank's files exist
        meta = Path(ckpt_dir(run_dir, sub)) / tag(step) / "ardscale.json"
        meta.with_suffix(".tmp").write_text(json.dumps({"step": step, "world_size": world}))
        meta.with_suffix(".tmp").replace(meta)
    barrier()
    if is_rank0() and keep_last > 0:
        tags = sorted(p for p in Path(ckpt_dir(run_dir, sub)).glob("step-*") if p.is_dir())
        for old in tags[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(Path(run_dir) / f"{sub}_universal" / old.name, ignore_errors=True)
            if sub == "ckpt":
                Path(ema_path(run_dir, old.name)).unlink(missing_ok=True)


def saved_world_size(run_dir: str, tag_: str | None, sub: str = "ckpt") -> int | None:
    """World size that wrote ``tag_`` (from its ``ardscale.json``), or None if unknown."""
    meta = Path(ckpt_dir(run_dir, sub)) / str(tag_) / "ardscale.json"
    return json.loads(meta.read_text())["world_size"] if tag_ and meta.is_file() else None


def to_universal(run_dir: str, tag_: str, sub: str = "ckpt", mirror_url: str = "") -> None:
    """Convert a tag to DeepSpeed's universal format under ``{sub}_universal/{tag}`` (rank 0, once;
    written to a temporary folder and renamed, so a crash leaves no half conversion); all ranks wait.

    With ``mirror_url`` (nodes without a shared disk) rank 0 also uploads the conversion, and every
    node that lacks it downloads it (each rank loads it from its own disk)."""
    out = Path(run_dir) / f"{sub}_universal" / tag_
    if is_rank0() and not out.is_dir():
        import types

        import_deepspeed()
        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ds_to_universal(types.SimpleNamespace(
            input_folder=str(Path(ckpt_dir(run_dir, sub)) / tag_), output_folder=str(tmp),
            num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
            inject_missing_state=False))
        tmp.rename(out)
        # names the temp folder; tags are explicit here
        (out.parent / "latest_universal").unlink(missing_ok=True)
    if mirror_url:
        import fsspec

        fs, root = fsspec.core.url_to_fs(mirror_url)
        remote = f"{root}/{sub}_universal/{tag_}"
        if is_rank0() and not fs.exists(f"{remote}/.complete"):
            fs.put(str(out) + "/", remote + "/", recursive=True)
            fs.pipe_file(f"{remote}/.complete", b"")   # last: marks the upload whole
        barrier()
        pull_folder(fs, remote, out)
    barrier()


def pull_folder(fs, remote: str, out: Path) -> Path:
    """This disk's copy of the remote folder ``remote`` (an fsspec path of ``fs``) at ``out``,
    downloaded unless there. Ranks sharing a disk may call it at once: each downloads to its own
    temporary folder and the first atomic rename wins (:func:`ardscale.cache.fill_dir_once`)."""
    return fill_dir_once(out, lambda tmp: fs.get(remote + "/", str(tmp) + "/", recursive=True))


def resume(engine, run_dir: str, sub: str = "ckpt", which: str | None = None,
           universal: bool = False) -> dict | None:
    """Load tag ``which`` (default: the newest complete one) into ``engine`` (model, optimizer,
    LR scheduler); its client state, or None when there is nothing to resume.

    ``universal``: load the tag's universal conversion (see :func:`to_universal`); the engine
    must have been built with ``checkpoint.load_universal``.
    Raises:
        RuntimeError: the tag exists but DeepSpeed cannot load it.
    """
    t = which or latest_tag(run_dir, sub)
    if t is None:
        return None
    where = str(Path(run_dir) / f"{sub}_universal") if universal else ckpt_dir(run_dir, sub)
    path, client = engine.load_checkpoint(where, tag=t)
    if path is None:
        raise RuntimeError(f"{where}/{t}: checkpoint could not be loaded")
    return client


def which_tag(run_dir: str, which: str | int, sub: str = "ckpt") -> str:
    """The tag a user names: ``step-00002000``, or the step alone (``2000``).

    Raises:
        FileNotFoundError: the run has no such complete tag (naming the tags it has).
    """
    t = tag(int(which)) if str(which).isdigit() else str(which)
    d = Path(ckpt_dir(run_dir, sub))
    if not (d / t / "ardscale.json").is_file() and not (d / t / "mp_rank_00_model_states.pt").is_file():
        have = sorted(p.parent.name for p in d.glob("step-*/ardscale.json")) or "none"
        raise FileNotFoundError(f"{run_dir}: no checkpoint {t!r} in {d} (complete tags: {have})")
    return t


def load_weights(run_dir: str, which: str | None = None, sub: str = "ckpt",
                 ema: bool = False) -> tuple[dict, str]:
    """Consolidated fp32 model ``state_dict`` of a run's newest (or ``which``: a tag or a step, see
    :func:`which_tag`) tag, without a process group.

    ``ema=True`` returns the tag's EMA weights when the run kept an EMA (``optim.ema_decay``).
    Raises:
        FileNotFoundError: the run has no checkpoint, or none named ``which`` (naming those it has).
    """
    import_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    t = which_tag(run_dir, which, sub) if which else latest_tag(run_dir, sub)
    if t is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint (no {sub}/latest)")
    if ema and Path(ema_path(run_dir, t)).is_file():
        return torch.load(ema_path(run_dir, t), map_location="cpu", weights_only=True), t
    with contextlib.redirect_stdout(sys.stderr):   # its progress lines, off a command's JSON on stdout
        state = get_fp32_state_dict_from_zero_checkpoint(ckpt_dir(run_dir, sub), tag=t)
    return {k: v.detach().float() for k, v in state.items() if isinstance(v, torch.Tensor)}, t


def weights_digest(state: dict) -> str:
    """First 12 hex digits of a sha256 over a ``state_dict`` (names and fp32 bytes, sorted)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].numpy().tobytes())
    return h.hexdigest()[:12]


# -- remote mirror (train.checkpoint_url: s3://… or any fsspec URL) ------------------------------
# DeepSpeed writes to local (node) disk under run_dir. After a tag is complete there, every rank
# uploads its own files, then rank 0 uploads the tag's marker and `latest`: on the remote side,
# too, a tag is visible only when complete. Every job first completes its local copy of the newest
# complete remote tag (a new node, a wiped disk, another node's shards), see `pull`.

def _rank_files(tag_dir: Path, rank: int) -> list[Path]:
    """The files of a tag that ``rank`` wrote: its ZeRO shards; rank 0 also the unranked ones."""
    mine = [f for f in tag_dir.iterdir() if f.is_file() and f"zero_pp_rank_{rank}_" in f.name]
    if rank == 0:
        mine += [f for f in tag_dir.iterdir() if f.is_file() and "zero_pp_rank_" not in f.name
                 and f.name != "ardscale.json"]
    return mine


def stage_rank_files(run_dir: str, step: int, dest: Path, subs=("ckpt_disc", "ckpt")) -> Path:
    """Link (or copy, across file systems) the files of the tag of ``step`` that this rank wrote
    into ``dest``, laid out as a run dir (``ckpt/step-…/…``; rank 0 adds the markers, ``latest``
    and the EMA file). Every rank's ``dest`` merged is the whole checkpoint, which
    :func:`load_weights` reads like a run dir: what each rank hands to ``ray.train.report``."""
    t, rank = tag(step), ranks.rank()
    for sub in subs:
        tag_dir = Path(ckpt_dir(run_dir, sub)) / t
        if not tag_dir.is_dir():
            continue
        files = _rank_files(tag_dir, rank) + ([tag_dir / "ardscale.json"] if rank == 0 else [])
        for f in files:
            _link(f, dest / sub / t / f.name)
        if rank == 0:
            (dest / sub / "latest").write_text(t)
    if rank == 0 and Path(ema_path(run_dir, t)).is_file():
        _link(Path(ema_path(run_dir, t)), dest / "ema" / f"{t}.pt")
    return dest


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:   # another file system
        shutil.copy2(src, dst)


def push(run_dir: str, url: str, step: int, keep_last: int, subs=("ckpt_disc", "ckpt")) -> None:
    """Upload the complete tag of ``step`` (all ranks call this; the marker and ``latest`` last)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    rank = ranks.rank()
    t = tag(step)
    for sub in subs:
        tag_dir = Path(ckpt_dir(run_dir, sub)) / t
        if tag_dir.is_dir():
            for f in _rank_files(tag_dir, rank):
                fs.put_file(str(f), f"{root}/{sub}/{t}/{f.name}")
    if is_rank0() and Path(ema_path(run_dir, t)).is_file():
        fs.put_file(ema_path(run_dir, t), f"{root}/ema/{t}.pt")
    barrier()
    if is_rank0():
        for sub in subs:
            marker = Path(ckpt_dir(run_dir, sub)) / t / "ardscale.json"
            if marker.is_file():
                fs.put_file(str(marker), f"{root}/{sub}/{t}/ardscale.json")
                fs.pipe_file(f"{root}/{sub}/latest", t.encode())
        if keep_last > 0:
            for sub in subs:
                tags = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{root}/{sub}/step-*"))
                for old in tags[:-keep_last]:
                    fs.rm(f"{root}/{sub}/{old}", recursive=True)
                    if fs.exists(f"{root}/{sub}_universal/{old}"):
                        fs.rm(f"{root}/{sub}_universal/{old}", recursive=True)
    barrier()


def pull(run_dir: str, url: str, subs=("ckpt", "ckpt_disc"), world: int | None = None) -> str | None:
    """Complete this node's copy of the mirror's newest complete tag; returns it (None: no remote tag).

    The mirror decides which tag every rank resumes from: without a shared disk, a node's copy of
    a tag holds only the files its ranks wrote, and a node may be new. First one process per node
    (``LOCAL_RANK`` 0) downloads the tag's unranked files (model states, marker) and writes
    ``latest``; then every rank downloads its own ZeRO shard if it is not there (and whatever
    unranked file is still missing: ranks on hosts that share an address). When another ``world``
    size wrote the tag, rank 0 also downloads every rank's shards (the universal conversion reads
    them all). A file is
    downloaded when missing or of another size than the remote one (a write cut short), to a
    temporary name renamed into place. All ranks call this.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    complete = sorted(p.rsplit("/", 2)[-2] for p in fs.glob(f"{root}/ckpt/step-*/ardscale.json"))
    t = complete[-1] if complete else None
    if t is None:
        return None
    rank = ranks.rank()
    remote = {sub: _listing(fs, f"{root}/{sub}/{t}") for sub in subs}
    unranked = {sub: {n: size for n, size in files.items() if "zero_pp_rank_" not in n}
                for sub, files in remote.items()}
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        _fetch_missing(fs, root, run_dir, t, unranked)
        if fs.exists(f"{root}/ema/{t}.pt") and not Path(ema_path(run_dir, t)).is_file():
            Path(ema_path(run_dir, t)).parent.mkdir(parents=True, exist_ok=True)
            _fetch(fs, f"{root}/ema/{t}.pt", Path(ema_path(run_dir, t)))
    barrier()
    every_shard = rank == 0 and world is not None and saved_world_size(run_dir, t) not in (None, world)
    mine = {sub: {n: size for n, size in files.items() if every_shard or f"zero_pp_rank_{rank}_" in n
                  or n in unranked[sub]} for sub, files in remote.items()}
    _fetch_missing(fs, root, run_dir, t, mine)
    barrier()
    return t


def _listing(fs, remote_dir: str) -> dict[str, int]:
    """``{file name: size}`` of a remote tag folder (empty when it does not exist)."""
    if not fs.exists(remote_dir):
        return {}
    return {e["name"].rsplit("/", 1)[-1]: e["size"] for e in fs.ls(remote_dir, detail=True)}


def _fetch_missing(fs, root: str, run_dir: str, t: str, files: dict[str, dict[str, int]]) -> None:
    """Download ``files`` (``{sub: {name: size}}``) of tag ``t`` that this disk lacks or holds at
    another size; each tag's marker last, then ``latest``."""
    for sub, sizes in files.items():
        if not sizes:
            continue
        dest = Path(ckpt_dir(run_dir, sub)) / t
        dest.mkdir(parents=True, exist_ok=True)
        for name in sorted(sizes, key=lambda n: (n == "ardscale.json", n)):
            here = dest / name
            if not here.is_file() or here.stat().st_size != sizes[name]:
                _fetch(fs, f"{root}/{sub}/{t}/{name}", here)
        if "ardscale.json" in sizes:
            _replace_text(Path(ckpt_dir(run_dir, sub)) / "latest", t)


def _fetch(fs, remote: str, dest: Path) -> None:
    tmp = dest.with_name(f"{dest.name}.pull-{socket.gethostname()}-{os.getpid()}")
    fs.get_file(remote, str(tmp))
    tmp.replace(dest)


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


@dataclass
class Resume:
    """Where a run resumes: after ``step`` finished global steps, from checkpoint ``tag`` (None:
    a fresh start), in MLflow run ``mlflow_run_id``, with the data loader at ``data`` (its
    ``state_dict()``)."""

    step: int = 0
    tag: str | None = None
    mlflow_run_id: str | None = None
    data: dict | None = None


class CheckpointManager:
    """A run's checkpoints, built with what it saves: ``model`` and ``disc`` (DeepSpeed engines;
    the discriminator may be None) and ``ema`` (an :class:`~ardscale.engine.ema.EMA` or None).

    Owns the save order (EMA, discriminator, then the model, whose tag is the commit point),
    keep-last, the remote mirror (``mirror_url``: pulled before the first load, pushed after each
    save), and the universal conversion a change of world size needs. Use:
    ``tag, universal = CheckpointManager.prepare(run_dir, world, mirror_url, has_disc)`` before
    the engines are built (DeepSpeed must know it will load a universal checkpoint), then
    ``manager.restore()`` (a :class:`Resume`) and ``manager.save(step, mlflow_run_id, data)``.
    """

    def __init__(self, run_dir: str, model, disc=None, ema=None, every: int = 1000, keep_last: int = 2,
                 mirror_url: str = "", tag_: str | None = None, universal: bool = False):
        self.run_dir, self.model, self.disc, self.ema = run_dir, model, disc, ema
        self.every, self.keep_last, self.mirror_url = every, keep_last, mirror_url
        self.tag, self.universal = tag_, universal

    @staticmethod
    def prepare(run_dir: str, world: int, mirror_url: str = "",
                has_disc: bool = False) -> tuple[str | None, bool]:
        """Pull the mirror's newest complete tag when newer than the local one; when another world
        size wrote the newest tag, convert it (and the discriminator's) to a universal checkpoint.
        Returns ``(tag or None, universal)``. All ranks call this."""
        if mirror_url:   # a fresh node, a wiped disk, no shared disk: the mirror decides
            pull(run_dir, mirror_url, world=world)
        t = latest_tag(run_dir)
        saved = saved_world_size(run_dir, t)
        universal = saved is not None and saved != world
        if universal:
            logging.getLogger("ardscale.checkpoint").info(
                "resuming %s written by %d workers on %d: via a universal checkpoint", t, saved, world)
            to_universal(run_dir, t, mirror_url=mirror_url)
            if has_disc and saved_world_size(run_dir, t, "ckpt_disc"):
                to_universal(run_dir, t, "ckpt_disc", mirror_url)
        return t, universal

    def restore(self) -> Resume:
        """Load the prepared tag into the engines and the EMA; where the run resumes (a fresh
        :class:`Resume` when it starts fresh)."""
        client = resume(self.model, self.run_dir, which=self.tag,
                        universal=self.universal) if self.tag else None
        if not client:
            return Resume()
        if self.ema is not None and Path(ema_path(self.run_dir, self.tag)).is_file():
            self.ema.load(ema_path(self.run_dir, self.tag))
        if self.disc is not None and (Path(ckpt_dir(self.run_dir, "ckpt_disc")) / self.tag).is_dir():
            resume(self.disc, self.run_dir, "ckpt_disc", which=self.tag, universal=self.universal)
        return Resume(client["step"], self.tag, client.get("mlflow_run_id"), client.get("data"))

    def should_save(self, step: int, last: bool) -> bool:
        """After ``step`` finished global steps: every ``every`` steps and at the end."""
        return last or step % self.every == 0

    def save(self, step: int, mlflow_run_id: str | None, data: dict | None) -> None:
        """EMA, then the discriminator, then the model (its tag commits all), then the mirror; the
        tag's client state is a :class:`Resume` (``data``: the stream loader's ``state_dict()``)."""
        client_state = asdict(Resume(step, tag(step), mlflow_run_id, data))
        if self.ema is not None:
            self.ema.save(ema_path(self.run_dir, tag(step)))
        if self.disc is not None:
            save(self.disc, self.run_dir, step, client_state, self.keep_last, sub="ckpt_disc")
        save(self.model, self.run_dir, step, client_state, self.keep_last)
        if self.mirror_url:
            push(self.run_dir, self.mirror_url, step, self.keep_last)

