"""Training data as a stream of shards, in an order that survives interruption and a change of world size.

Each training worker (rank) reads its micro batches through a torch ``DataLoader`` whose loader
workers each stream their own shards from any fsspec URL (WebDataset tar format), decode them and
hold about ``data.shuffle_shards`` shards at a time: memory does not grow with the dataset.

We use a torch ``DataLoader`` over our own ``IterableDataset`` rather than WebDataset's pipeline or
Ray Data's streaming ingest because neither can tell where it is: their shuffle buffers and shard
splitting are stateful, so a resumed job would lose or repeat samples. Here the order is a pure
function of (seed, epoch, layout), and the position is a few integers in the checkpoint.

Order of epoch ``e`` (every process computes the same):

1. the shards are permuted (seeded by ``(seed, e)``) and their samples concatenated;
2. that sequence is cut into ``S = world × loader workers`` contiguous *slots*, one per
   (rank, loader worker), so each loader worker reads its own shards;
3. each slot is shuffled within consecutive windows of ``shuffle_shards`` shards' worth of samples.

Rank ``r``'s micro batch ``j`` is the ``j // w``-th micro batch of slot ``r·w + j mod w`` (``w``
loader workers), which is the order in which the ``DataLoader`` returns its workers' items. An
epoch ends when some slot cannot fill another global step; the few samples left are dropped
(drop-last) and the next epoch begins.

Resume: the checkpoint stores ``{epoch, closed, world, workers, micro, m}`` (``m``: micro batches
each rank has consumed in the current *segment*). Resumed with the same layout, the stream goes on
at ``m``. With another (world size, loader workers or micro batch size), the segment is closed: how
many samples each old slot consumed is appended to ``closed``, the epoch's remaining samples (the
old slots' tails, in order) are cut into the new slots, and the epoch finishes with those. No sample
of an epoch is lost or seen twice either way.
"""
from __future__ import annotations

import logging
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .shards import list_shards, read_json, read_shard, sidecar_url

log = logging.getLogger("ardscale.data")


@dataclass(frozen=True)
class ShardSet:
    """The shards of one split and how many samples each holds (from their ``.stats.json``)."""

    urls: tuple[str, ...]
    sizes: tuple[int, ...]

    @classmethod
    def from_dir(cls, where: str) -> ShardSet:
        """The ``shard-*.tar`` under ``where`` (any fsspec URL). A shard without a stats sidecar
        (``clips``: its sample count) is counted by reading it once.

        Raises:
            FileNotFoundError: no shards there.
        """
        urls = list_shards(where)
        if not urls:
            raise FileNotFoundError(f"no shards under {where}")
        sizes = []
        for url in urls:
            stats = read_json(sidecar_url(url))
            if stats is None or "clips" not in stats:
                log.warning("%s has no stats sidecar: counting its samples", url)
                sizes.append(sum(1 for _ in read_shard(url)))
            else:
                sizes.append(int(stats["clips"]))
        return cls(tuple(urls), tuple(sizes))

    @property
    def offsets(self) -> np.ndarray:
        """``(num_shards + 1,)``: sample ids of shard ``i`` are ``offsets[i] .. offsets[i+1]-1``."""
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    @property
    def num_samples(self) -> int:
        return int(sum(self.sizes))

    def digest(self) -> str:
        """``crc32/count`` of the shards' file names and sample counts (so a moved root matches)."""
        listing = "\n".join(f"{u.rstrip('/').rsplit('/', 1)[-1]}:{n}" for u, n in zip(self.urls, self.sizes))
        return f"{zlib.crc32(listing.encode()):08x}/{len(self.sizes)}"


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def epoch_order(shards: ShardSet, seed: int, epoch: int) -> np.ndarray:
    """Sample ids ``(N,)`` int64 of one epoch: shards in a seeded permutation, samples in shard order."""
    off = shards.offsets
    perm = _rng(seed, epoch).permutation(len(shards.sizes))
    return np.concatenate([np.arange(off[s], off[s + 1]) for s in perm] or [np.zeros(0, np.int64)])


def split_slots(seq: np.ndarray, n: int, window: int, key: tuple[int, ...]) -> list[np.ndarray]:
    """``seq`` cut into ``n`` contiguous slots (sizes differing by at most one), each shuffled within
    consecutive windows of ``window`` samples (seeded by ``key`` and the slot index)."""
    out = []
    for k, part in enumerate(np.array_split(seq, n)):
        rng = _rng(*key, k)
        out.append(np.concatenate([rng.permutation(part[i:i + window]) for i in range(0, len(part), window)]
                                  or [part]))
    return out


@dataclass(frozen=True)
class Layout:
    """How ranks read: ``world`` ranks × ``workers`` loader workers (slots), ``micro`` samples per
    micro batch, ``accum`` micro batches per rank per step."""

    world: int
    workers: int
    micro: int
    accum: int

    @property
    def slots(self) -> int:
        return self.world * self.workers

    def consumed(self, m: int) -> list[int]:
        """Samples each slot has given after every rank consumed ``m`` micro batches of a segment."""
        return [self.micro * max(0, -(-(m - w) // self.workers))
                for _ in range(self.world) for w in range(self.workers)]

    def end(self, slot_sizes: list[int], start: int) -> int:
        """The segment's last micro batch index + 1 per rank, from ``start``: as many whole steps as
        every slot can fill (rank ``r``'s ``j``-th micro batch comes from slot ``r·w + j mod w``)."""
        w = self.workers
        most = min(k % w + w * (size // self.micro) for k, size in enumerate(slot_sizes))
        return start + max(0, (most - start) // self.accum) * self.accum


@dataclass(frozen=True)
class Segment:
    """A stretch of an epoch read with one layout: its slots' sample ids and micro batches
    ``start .. end-1`` of every rank."""

    epoch: int
    slots: list[np.ndarray]
    start: int
    end: int


_FINGERPRINT_KEYS = {"seed": "train.seed", "shuffle_shards": "data.shuffle_shards",
                     "shards": "shard list under data.root"}


class Plan:
    """The order in which ranks consume samples, resumed from a checkpoint's ``state``.

    Raises:
        ValueError: the dataset cannot fill one global step (the sizes are named).
    """

    def __init__(self, shards: ShardSet, layout: Layout, seed: int, shuffle_shards: int,
                 state: dict | None = None):
        self.shards, self.layout, self.seed, self.shuffle_shards = shards, layout, seed, shuffle_shards
        mean = max(1, round(shards.num_samples / len(shards.sizes)))
        self.window = max(1, shuffle_shards) * mean
        self.epoch, self.closed, self.m = 0, [], 0
        n, k = divmod(shards.num_samples, layout.slots)   # np.array_split's slot sizes
        self.steps_per_epoch = layout.end([n + (i < k) for i in range(layout.slots)], 0) // layout.accum
        if self.steps_per_epoch == 0:
            raise ValueError(f"{shards.num_samples} samples in {len(shards.sizes)} shards cannot fill one "
                             f"step of {layout.world} ranks × {layout.workers} loader workers × micro batch "
                             f"{layout.micro} × grad_accum {layout.accum}: use fewer workers or a smaller "
                             "micro batch")
        if state:
            self.load_state_dict(state)

    def fingerprint(self) -> dict:
        """What fixes the order of every epoch: the seed, the shuffle window and the shard list
        (a digest of the shards' file names and sample counts, so a moved root still matches)."""
        return {"seed": self.seed, "shuffle_shards": self.shuffle_shards, "shards": self.shards.digest()}

    def load_state_dict(self, state: dict, replan: bool = False) -> None:
        """Resume at a checkpoint's position (:meth:`state`). A position saved under another
        world size, loader worker count or micro batch closes its segment (module docstring).

        A position saved with another seed, shuffle window or shard list (its ``fingerprint``)
        belongs to another order: refused, or with ``replan`` the next epoch starts in the new
        order (logged). Positions saved before fingerprints existed are taken as they are.
        Raises:
            ValueError: a changed fingerprint without ``replan`` (naming the config key).
        """
        saved, mine = state.get("fingerprint"), self.fingerprint()
        changed = [k for k in mine if saved is not None and saved.get(k) != mine[k]]
        if changed:
            what = ", ".join(f"{_FINGERPRINT_KEYS[k]} ({saved.get(k)} → {mine[k]})" for k in changed)
            if not replan:
                raise ValueError(f"the checkpoint's data position was planned with another {what}: set it "
                                 "back, or data.replan=true to start the next epoch in the new order")
            log.warning("data.replan: %s changed; starting epoch %d in the new order", what,
                        state["epoch"] + 1)
            self.epoch, self.closed, self.m = state["epoch"] + 1, [], 0
            return
        self.epoch, self.closed, self.m = state["epoch"], [list(c) for c in state["closed"]], state["m"]
        old = Layout(state["world"], state["workers"], state["micro"], self.layout.accum)
        if (old.world, old.workers, old.micro) != (self.layout.world, self.layout.workers, self.layout.micro):
            self.closed.append(old.consumed(self.m))
            self.m = 0

    def segments(self) -> Iterator[Segment]:
        """Segments from the resume point on, endlessly (epoch after epoch)."""
        epoch, closed, m = self.epoch, self.closed, self.m
        while True:
            seq = epoch_order(self.shards, self.seed, epoch)
            for i, counts in enumerate(closed):
                parts = split_slots(seq, len(counts), self.window, (self.seed, epoch, i))
                seq = np.concatenate([p[c:] for p, c in zip(parts, counts, strict=True)])
            slots = split_slots(seq, self.layout.slots, self.window, (self.seed, epoch, len(closed)))
            end = self.layout.end([len(s) for s in slots], m)
            if end > m:
                yield Segment(epoch, slots, m, end)
            epoch, closed, m = epoch + 1, [], 0

    def state(self, epoch: int, m: int) -> dict:
        """The checkpoint state after every rank consumed micro batches up to ``m`` of ``epoch``."""
        closed = self.closed if epoch == self.epoch else []
        return {"epoch": epoch, "closed": closed, "m": m, "world": self.layout.world,
                "workers": self.layout.workers, "micro": self.layout.micro, "fingerprint": self.fingerprint()}


def load_shard(url: str, tries: int, backoff_s: float, sleep: Callable = time.sleep) -> list[dict]:
    """The samples of the tar shard at ``url``, read whole; a failed read (network, S3 error, a
    truncated tar) is retried ``tries - 1`` times after ``backoff_s · 2^k`` seconds.

    Raises:
        the last error, when every try failed.
    """
    for attempt in range(tries):
        try:
            return list(read_shard(url))
        except Exception as e:  # s3fs, botocore and tarfile raise unrelated types
            if attempt + 1 == tries:
                raise
            log.warning("reading %s failed (%s: %s); try %d of %d", url, type(e).__name__, e,
                        attempt + 2, tries)
            sleep(backoff_s * 2 ** attempt)
    raise ValueError("tries must be ≥ 1")


class _SlotReader:
    """One loader worker's shards for one slot: loaded when first needed, dropped after their last
    sample in the slot was read (so about ``shuffle_shards`` shards are held at once)."""

    def __init__(self, stream: ShardStream, seq: np.ndarray, start: int):
        self.stream, self.seq = stream, seq
        self.shard_of = np.searchsorted(stream.offsets, seq, side="right") - 1
        ahead = self.shard_of[start:][::-1]
        shards, first_from_end = np.unique(ahead, return_index=True)
        self.last = dict(zip(shards.tolist(), (len(seq) - 1 - first_from_end).tolist()))
        self.cache: dict[int, list[dict] | None] = {}

    def take(self, lo: int, hi: int) -> list[dict | None]:
        """Raw samples at slot positions ``lo .. hi-1`` (None where its shard is unreadable)."""
        out = []
        for pos in range(lo, hi):
            s = int(self.shard_of[pos])
            if s not in self.cache:
                self.cache[s] = self.stream.read(s)
            samples, i = self.cache[s], int(self.seq[pos] - self.stream.offsets[s])
            out.append(samples[i] if samples is not None and i < len(samples) else None)
        for s in [s for s in self.cache if self.last.get(s, -1) < hi]:
            del self.cache[s]
        return out


class ShardStream(torch.utils.data.IterableDataset):
    """One rank's micro batches, endlessly, from :class:`Plan`: dicts of stacked tensors made by
    ``decode(sample, seed) -> dict[str, np.ndarray | int]`` plus ``keys`` (sample keys), ``pos``
    (``(epoch, m)`` after this micro batch) and ``faults`` (``{"shards": [url, ...], "samples": n}``
    newly unreadable here).

    A shard that stays unreadable after the retries, or a sample that does not decode, is skipped
    and reported in ``faults``; its place in the micro batch is taken by a readable sample of the
    same micro batch (or the previous good micro batch when none is), so shapes stay fixed.
    """

    def __init__(self, plan: Plan, rank: int, decode: Callable, tries: int = 5, backoff_s: float = 1.0,
                 sleep: Callable = time.sleep):
        self.plan, self.rank, self.decode = plan, rank, decode
        self.tries, self.backoff_s, self.sleep = tries, backoff_s, sleep
        self.offsets = plan.shards.offsets
        self._faults: dict = {"shards": [], "samples": 0}

    def read(self, shard: int) -> list[dict] | None:
        url = self.plan.shards.urls[shard]
        try:
            return load_shard(url, self.tries, self.backoff_s, self.sleep)
        except Exception as e:  # noqa: BLE001 — skipped whatever the cause
            print(f"ardscale: skipping shard {url}: unreadable after {self.tries} tries ({e})",
                  file=sys.stderr, flush=True)
            self._faults["shards"].append(url)
            return None

    def _decoded(self, raw: list[dict | None], epoch: int) -> list[tuple[str, dict]]:
        good = []
        for s in raw:
            if s is None:
                self._faults["samples"] += 1
                continue
            key = s["__key__"]
            try:
                seed = zlib.crc32(f"{self.plan.seed}/{epoch}/{key}".encode())   # per (seed, epoch, key)
                good.append((key, self.decode(s, seed)))
            except Exception as e:  # noqa: BLE001 — a corrupt sample must not stop training
                print(f"ardscale: skipping sample {key}: {e}", file=sys.stderr, flush=True)
                self._faults["samples"] += 1
        return good

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        w, nw = (info.id, info.num_workers) if info else (0, 1)
        layout = self.plan.layout
        if nw != layout.workers:
            raise RuntimeError(f"ShardStream planned for {layout.workers} loader workers runs in {nw}")
        count, reserve = 0, None
        for seg in self.plan.segments():
            reader = None
            for j in range(seg.start, seg.end):
                mine, count = count % nw == w, count + 1
                if not mine:
                    continue
                mb = j // nw
                if reader is None:
                    reader = _SlotReader(self, seg.slots[self.rank * nw + j % nw], mb * layout.micro)
                good = self._decoded(reader.take(mb * layout.micro, (mb + 1) * layout.micro), seg.epoch)
                if not good and reserve is None:
                    raise RuntimeError(f"no readable sample in micro batch {j} of epoch {seg.epoch} "
                                       f"(rank {self.rank}); failed shards: {self._faults['shards']}")
                good = good or reserve
                reserve = good
                batch = [good[i % len(good)] for i in range(layout.micro)]
                yield self._collate(batch, (seg.epoch, j + 1))

    def _collate(self, batch: list[tuple[str, dict]], pos: tuple[int, int]) -> dict:
        out = {k: torch.as_tensor(np.stack([np.asarray(d[k]) for _, d in batch])) for k in batch[0][1]}
        faults, self._faults = self._faults, {"shards": [], "samples": 0}
        return {**out, "keys": [k for k, _ in batch], "pos": pos, "faults": faults}


class StreamLoader:
    """A rank's training batches: ``next()`` gives the next micro batch; ``state_dict()`` the
    position for the checkpoint and ``load_state_dict()`` resumes there before the first batch
    (torchdata's Stateful protocol); ``faults`` what was skipped so far (``shards``: urls,
    ``samples``: count)."""

    def __init__(self, stream: ShardStream, loader_workers: int):
        self.plan, self._stream, self._workers = stream.plan, stream, loader_workers
        self._it = None
        self._pos = (self.plan.epoch, self.plan.m)
        self.faults = {"shards": [], "samples": 0}

    def next(self) -> dict:
        if self._it is None:   # the loader workers start here, with the plan as loaded
            loader = torch.utils.data.DataLoader(self._stream, batch_size=None, num_workers=self._workers,
                                                 prefetch_factor=4 if self._workers else None)
            self._it = iter(loader)
        b = next(self._it)
        self._pos = tuple(b.pop("pos"))
        f = b.pop("faults")
        self.faults["shards"] += f["shards"]
        self.faults["samples"] += f["samples"]
        return b

    def state_dict(self) -> dict:
        """The position after the last micro batch returned (:meth:`Plan.state`)."""
        return self.plan.state(*self._pos)

    def load_state_dict(self, state: dict, replan: bool = False) -> None:
        """Resume at ``state`` (:meth:`Plan.load_state_dict`).

        Raises:
            RuntimeError: batches were already drawn. ValueError: see :meth:`Plan.load_state_dict`.
        """
        if self._it is not None:
            raise RuntimeError("load_state_dict after the first batch: the loader workers hold the old plan")
        self.plan.load_state_dict(state, replan)
        self._pos = (self.plan.epoch, self.plan.m)

    @property
    def epoch(self) -> int:
        return self._pos[0]

    def close(self) -> None:
        """Stop the loader workers."""
        self._it = None
