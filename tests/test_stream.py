"""The training stream: epoch order, exact resume (also across world sizes and loader workers),
bounded shard memory, unreadable shards and samples."""
import logging
from collections import Counter

import numpy as np
import pytest

from ardscale.data.loader import latent_sample, video_sample
from ardscale.data.shards import npy_bytes, sidecar_url, write_json, write_shard
from ardscale.data.stream import Layout, Plan, ShardSet, ShardStream, StreamLoader, _SlotReader
from ardscale.data.video import VideoReadError, encode_mp4

SIZES = (9, 5, 13, 7, 11, 6, 10)   # uneven shards: 61 samples


def make_shards(root, sizes=SIZES, sidecars=True):
    for s, n in enumerate(sizes):
        url = str(root / f"shard-{s:06d}.tar")
        write_shard(url, [{"__key__": f"s{s}_{k:02d}", "json": {"label": s},
                           "npy": npy_bytes(np.full((1, 2, 2), s * 100 + k, np.float16))} for k in range(n)])
        if sidecars:
            write_json(sidecar_url(url), {"clips": n})
    return ShardSet.from_dir(str(root))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("stream"))


def run(shards, layout, steps, state=None, loader_workers=None, shuffle=2, **kw):
    """``steps`` global steps of every rank: (keys per step per rank, the checkpoint state after).
    Loader workers are processes when the layout has more than one, else inline."""
    if loader_workers is None:
        loader_workers = layout.workers if layout.workers > 1 else 0
    plan = Plan(shards, layout, seed=3, shuffle_shards=shuffle, state=state)
    loaders = [StreamLoader(ShardStream(plan, r, latent_sample, backoff_s=0, **kw), loader_workers)
               for r in range(layout.world)]
    seen = [[[k for _ in range(layout.accum) for k in ld.next()["keys"]] for ld in loaders]
            for _ in range(steps)]
    states = [ld.state_dict() for ld in loaders]
    assert all(s == states[0] for s in states), "ranks disagree on the data position"
    for ld in loaders:
        ld.close()
    return seen, states[0], loaders[0]


def flat(seen):
    return [k for step in seen for rank in step for k in rank]


def test_an_epoch_sees_each_sample_once_and_drops_less_than_a_step(shards):
    layout = Layout(world=2, workers=1, micro=3, accum=1)
    plan = Plan(shards, layout, 3, 2)
    assert plan.steps_per_epoch == 10   # 61 samples in 2 slots of 31 and 30: 10 micro batches each
    seen, state, _ = run(shards, layout, 20)
    first, second = flat(seen[:10]), flat(seen[10:])
    assert len(set(first)) == len(first) == 60 and len(set(second)) == 60
    assert first != second, "every epoch must be shuffled anew"
    fingerprint = state.pop("fingerprint")
    assert state == {"epoch": 1, "closed": [], "m": 10, "world": 2, "workers": 1, "micro": 3}
    assert fingerprint == {"seed": 3, "shuffle_shards": 2, "shards": fingerprint["shards"]}
    assert fingerprint["shards"].endswith("/7")
    labels = [int(k[1]) for k in first[:6]]
    assert len(set(labels)) > 1, "a step drew from one shard only: the window shuffle does not mix"


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_and_resumed_equals_uninterrupted(shards, workers):
    layout = Layout(world=2, workers=max(1, workers), micro=2, accum=1)
    full, _, _ = run(shards, layout, 31, loader_workers=workers)   # into a third epoch
    head, state, _ = run(shards, layout, 5, loader_workers=workers)   # an odd m: workers take turns
    tail, _, _ = run(shards, layout, 26, state=state, loader_workers=workers)
    assert state["m"] == 5
    assert head + tail == full


@pytest.mark.parametrize("new", [Layout(3, 1, 2, 1), Layout(1, 2, 4, 1), Layout(2, 1, 3, 2)])
def test_resume_with_another_layout_neither_loses_nor_repeats(shards, new):
    old = Layout(world=2, workers=2, micro=2, accum=1)
    head, state, _ = run(shards, old, 5)
    plan = Plan(shards, new, 3, 2, state)
    assert plan.closed == [old.consumed(5)] and plan.m == 0
    rest = plan.segments().__next__()
    steps = (rest.end - rest.start) // new.accum
    tail, after, _ = run(shards, new, steps + 1, state=state)
    epoch0 = flat(head) + flat(tail[:steps])
    assert max(Counter(epoch0).values()) == 1, "a sample was seen twice in one epoch"
    lost = shards.num_samples - len(epoch0)
    assert 0 <= lost < new.world * new.workers * new.micro * new.accum + old.world * old.workers * old.micro
    assert after["epoch"] == 1 and after["closed"] == [] and after["world"] == new.world


def test_a_position_of_another_order_is_refused_or_replanned_on_purpose(shards, tmp_path, caplog):
    """The saved position holds the seed, the shuffle window and the shard list it was planned
    with; resumed with one of them changed, it is refused naming the key, or with replan the next
    epoch starts in the new order. The loader takes it as torchdata's Stateful protocol."""
    layout = Layout(world=1, workers=1, micro=2, accum=1)
    full, _, _ = run(shards, layout, 9)
    head, state, _ = run(shards, layout, 4)
    assert head == full[:4]
    loader = StreamLoader(ShardStream(Plan(shards, layout, 3, 2), 0, latent_sample, backoff_s=0), 0)
    loader.load_state_dict(state)
    assert [loader.next()["keys"] for _ in range(5)] == [step[0] for step in full[4:]]
    with pytest.raises(RuntimeError, match="after the first batch"):
        loader.load_state_dict(state)
    loader.close()
    other = make_shards(tmp_path, sizes=SIZES[:-1])
    for plan, key in ((Plan(shards, layout, 4, 2), "train.seed"),
                      (Plan(shards, layout, 3, 5), "data.shuffle_shards"),
                      (Plan(other, layout, 3, 2), "shard list under data.root")):
        with pytest.raises(ValueError, match=f"planned with another {key} .*data.replan=true"):
            plan.load_state_dict(state)
    plan = Plan(other, layout, 3, 2)
    logging.getLogger("ardscale").addHandler(caplog.handler)     # "ardscale" does not propagate
    try:
        plan.load_state_dict(state, replan=True)
    finally:
        logging.getLogger("ardscale").removeHandler(caplog.handler)
    assert (plan.epoch, plan.m, plan.closed) == (state["epoch"] + 1, 0, []) and "data.replan" in caplog.text
    old = {k: v for k, v in state.items() if k != "fingerprint"}    # saved before fingerprints: taken as is
    assert Plan(shards, layout, 4, 2, old).m == state["m"]


def test_a_slot_holds_about_shuffle_shards_shards(tmp_path):
    many = make_shards(tmp_path, sizes=(8,) * 40)
    plan = Plan(many, Layout(1, 1, 4, 1), 0, shuffle_shards=3)
    seg = next(plan.segments())
    stream = ShardStream(plan, 0, latent_sample)
    reader, most = _SlotReader(stream, seg.slots[0], 0), 0
    for lo in range(0, len(seg.slots[0]), 4):
        assert all(s is not None for s in reader.take(lo, lo + 4))
        most = max(most, len(reader.cache))
    assert 3 <= most <= 4 and not reader.cache   # a window spans 3 shards, 4 where it straddles one


def test_missing_sidecar_is_counted_by_reading(tmp_path):
    assert make_shards(tmp_path, sizes=(4, 3), sidecars=False).sizes == (4, 3)


def test_unreadable_shard_and_sample_are_skipped_counted_and_replaced(tmp_path):
    root = tmp_path / "data"
    good = make_shards(root)
    (root / "shard-000002.tar").write_bytes(b"not a tar file")   # 13 samples lost
    shards = ShardSet.from_dir(str(root))
    sleeps = []
    seen, _, loader = run(shards, Layout(1, 1, 4, 1), 15, sleep=sleeps.append, tries=3)
    keys = flat(seen)
    assert sleeps == [0, 0], "the bad shard was not retried tries - 1 times"
    assert loader.faults["shards"] == [shards.urls[2]] and loader.faults["samples"] == 13
    assert not any(k.startswith("s2_") for k in keys) and all(len(rank) == 4 for s in seen for rank in s)
    assert set(keys) == {k for k in flat(run(good, Layout(1, 1, 4, 1), 15)[0]) if not k.startswith("s2_")}


def test_too_small_a_dataset_says_so(shards):
    with pytest.raises(ValueError, match="61 samples in 7 shards cannot fill one step"):
        Plan(shards, Layout(world=8, workers=2, micro=4, accum=1), 0, 2)


def test_video_sample_crops_consecutive_frames(tmp_path):
    frames = np.broadcast_to(np.arange(8, dtype=np.uint8)[:, None, None, None] * 30, (8, 16, 16, 3)).copy()
    sample = {"__key__": "v", "mp4": encode_mp4(frames, 8), "json": b"{}"}
    whole = video_sample(sample, 0)["clips"]
    assert whole.shape == (8, 16, 16, 3)
    starts = set()
    for seed in range(12):
        clip = video_sample(sample, seed, frames=3)["clips"]
        level = np.round(clip.reshape(3, -1).mean(1) / 30).astype(int)
        assert clip.shape == (3, 16, 16, 3) and (np.diff(level) == 1).all()
        starts.add(level[0])
    assert len(starts) > 2 and min(starts) >= 0 and max(starts) <= 5
    assert (video_sample(sample, 5, frames=3)["clips"] == video_sample(sample, 5, frames=3)["clips"]).all()
    told = {**sample, "json": b'{"num_frames": 8}'}    # decoding stops at the run's end: same frames
    for seed in range(6):
        assert (video_sample(told, seed, 3)["clips"] == video_sample(sample, seed, 3)["clips"]).all()
    with pytest.raises(VideoReadError, match="fewer frames"):
        video_sample({**sample, "json": b'{"num_frames": 20}'}, 1, 3)
