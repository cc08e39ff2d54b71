"""AR-VAE objective and metrics: LPIPS from weight files, PatchGAN + adaptive weight, PSNR/SSIM,
a GAN stage on real clips with exact resume of both engines, and the latents' VAE check."""
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import mlflow_uri

from ardscale.config import load
from ardscale.data.loader import check_vae
from ardscale.data.sources import VideoItem
from ardscale.engine import checkpoint
from ardscale.metrics import psnr, ssim
from ardscale.models.discriminator import PatchDiscriminator, adaptive_weight, hinge_d_loss
from ardscale.models.lpips import LPIPS, vgg16_features
from ardscale.models.vae_loss import VAELoss
from ardscale.tasks import get_task
from ardscale.train import launch
from data_prep.shard_videos import shard_one

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    """Random weights saved in the two public formats (torchvision vgg16, LPIPS vgg.pth)."""
    d = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    feats = vgg16_features()
    for m in feats:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    torch.save({f"features.{k}": v for k,
                v in feats.state_dict().items()} | {"classifier.0.weight": torch.zeros(1)},
               d / "vgg16.pth")
    widths = (64, 128, 256, 512, 512)
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(widths)},
               d / "vgg.pth")
    return str(d / "vgg16.pth"), str(d / "vgg.pth")


def test_lpips_loads_public_formats_and_measures_distance(lpips_files, tmp_path):
    net = LPIPS.from_files(*lpips_files)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    small, big = x + 0.05 * torch.randn_like(x), x + 0.5 * torch.randn_like(x)
    assert net(x, x).abs().max() < 1e-6
    d_small, d_big = net(x, small), net(x, big)
    assert (d_small > 0).all() and (d_big > 2 * d_small).all()
    y = big.clone().requires_grad_(True)
    net(x, y).sum().backward()
    assert y.grad.abs().sum() > 0 and not any(p.requires_grad for p in net.parameters())
    torch.save({"w": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match="features"):
        LPIPS.from_files(str(tmp_path / "bad.pth"), lpips_files[1])
    with pytest.raises(KeyError, match="lin0.model.1.weight"):
        LPIPS.from_files(lpips_files[0], str(tmp_path / "bad.pth"))


def test_perceptual_without_weight_files_is_a_clear_error_unless_opted_out(lpips_files):
    paper = str(CONFIGS / "ucf101_vae_s1.yaml")
    preflight = get_task("vae").preflight      # before any worker (train.launch)
    with pytest.raises(ValueError, match="vae_loss.perceptual_vgg.*not set.*vae_loss.perceptual=0"):
        preflight(load(paper))
    with pytest.raises(ValueError, match="vae_loss.perceptual_lin.*/nope.pth not found"):
        preflight(load(paper, [f"vae_loss.perceptual_vgg={lpips_files[0]}",
                               "vae_loss.perceptual_lin=/nope.pth"]))
    assert VAELoss.from_config(load(paper, ["vae_loss.perceptual=0"]).vae_loss).lpips is None
    on = load(paper, [f"vae_loss.perceptual_vgg={lpips_files[0]}",
                      f"vae_loss.perceptual_lin={lpips_files[1]}"])
    assert isinstance(VAELoss.from_config(on.vae_loss).lpips, LPIPS)


def test_patch_discriminator_hinge_and_adaptive_weight():
    d = PatchDiscriminator(3, 16, 3)
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)   # 64→32→16→8→7→6
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)) == 0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)) == 1
    # From activations it must equal VQGAN's gradient norms taken at the (conv) weight itself.
    torch.manual_seed(0)
    layer, h = torch.nn.Conv2d(6, 3, 3, padding=1), torch.randn(2, 6, 8, 8)
    out = layer(h)
    nll, g = (out - 1).pow(2).mean(), -(out * torch.linspace(0, 1, 8)).mean()
    gw_nll = torch.autograd.grad(nll, layer.weight, retain_graph=True)[0]
    gw_g = torch.autograd.grad(g, layer.weight, retain_graph=True)[0]
    expected = gw_nll.norm() / (gw_g.norm() + 1e-4)
    leaf = out.detach().requires_grad_(True)
    nll, g = (leaf - 1).pow(2).mean(), -(leaf * torch.linspace(0, 1, 8)).mean()
    weight_grad = lambda go: torch.nn.grad.conv2d_weight(h, layer.weight.shape, go, padding=1)
    assert math.isclose(adaptive_weight(nll, g, leaf, weight_grad).item(), expected.item(), rel_tol=1e-5)


def test_psnr_and_ssim_real_numbers():
    a = torch.full((1, 3, 16, 16), 0.4, dtype=torch.float64)
    assert math.isclose(psnr(a, a + 0.1).item(), 20.0, rel_tol=1e-9)             # 20·log10(1/0.1)
    # constant images: luminance term only
    mu_x, mu_y, c1 = 0.4, 0.5, 0.01**2
    assert math.isclose(ssim(a, a + 0.1).item(), (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1),
                        rel_tol=1e-9)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert (ssim(x, noisy) < 0.9).all() and (psnr(x, noisy) < 20).all()
    with pytest.raises(ValueError, match="smaller than the 11"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


@pytest.fixture(scope="module")
def video_root(ucf_root, tmp_path_factory):
    """Real clips at 32²: 3 train clips, 2 held-out clips."""
    root = tmp_path_factory.mktemp("vdata")
    for split, name in (("train", "v_Archery_g01_c01"), ("test", "v_Archery_g02_c01")):
        clip = ucf_root / "videos" / "Archery" / f"{name}.avi"
        shard_one([VideoItem(str(clip), 2, "Archery", name)],
                  str(root / "videos" / split / "shard-000000.tar"),
                  num_frames=4, fps=8, size=32, max_clips=3 if split == "train" else 2, split=split)
    return root


def gan_cfg(root, run, lpips_files, **kw):
    over = {"data.root": root, "train.run_dir": run, "scale.num_workers": 0, "vae.image_size": 32,
            "vae.hidden_size": 32, "vae.depth": 1, "vae.pixel_channels": 8, "optim.micro_batch_size": 2,
            "data.clip_frames": 2,
            "vae_loss.adversarial": 0.5, "vae_loss.disc_start": 1, "vae_loss.disc_channels": 8,
            "vae_loss.perceptual": 0.5, "vae_loss.perceptual_vgg": lpips_files[0],
            "vae_loss.perceptual_lin": lpips_files[1], "train.ckpt_every": 2, "train.keep_last": 2,
            "tracking.tracking_uri": mlflow_uri(Path(run).parent), **kw}
    return load(str(CONFIGS / "demo_vae_frames.yaml"), [f"{k}={v}" for k, v in over.items()])


def rows(run):
    return [json.loads(r) for r in (Path(run) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_gan_stage_trains_evaluates_and_resumes_exactly(video_root, lpips_files, tmp_path):
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    launch(gan_cfg(video_root, full, lpips_files, **{"train.steps": 4}))
    r = rows(full)
    assert "d_loss" not in r[0] and all("d_loss" in x and x["adaptive_weight"] > 0 for x in r[1:])
    assert all(x["perceptual"] > 0 for x in r)
    assert (Path(full) / "ckpt_disc" / "step-00000004").is_dir()
    ev = json.loads((Path(full) / "eval" / "step-00000004" / "metrics.json").read_text())
    assert 5 < ev["val/psnr"] < 40 and -1 < ev["val/ssim"] < 1
    assert (Path(full) / "eval" / "step-00000004" / "recon.mp4").stat().st_size > 0
    # 2 steps, stop, 2 more: the same losses, so the discriminator and its optimizer were restored too.
    launch(gan_cfg(video_root, split, lpips_files, **{"train.steps": 2}))
    launch(gan_cfg(video_root, split, lpips_files, **{"train.steps": 4}))
    a, b = rows(full), rows(split)
    assert [x["step"] for x in b] == [0, 1, 2, 3]
    for x, y in zip(a, b):
        for k in ("loss", "d_loss", "g_adv"):
            assert k not in x or abs(x[k] - y[k]) < 1e-6, (x["step"], k, x[k], y[k])
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns.db")
    run_id = (Path(full) / "mlflow_run_id").read_text()
    hist = mlflow.MlflowClient().get_metric_history(run_id, "val/psnr")
    assert [m.step for m in hist] == [4] and abs(hist[0].value - ev["val/psnr"]) < 1e-9

    # The latent check: a manifest from another VAE, or a vae_run whose weights differ, is refused.
    digest = checkpoint.weights_digest(checkpoint.load_weights(full)[0])
    cfg = load(str(CONFIGS / "tiny.yaml"), [f"data.vae_id={digest}", f"data.vae_run={full}"])
    check_vae(cfg.data.vae_id, cfg.data.vae_run, {"vae_id": digest})
    with pytest.raises(ValueError, match="were made by VAE 'other'"):
        check_vae(cfg.data.vae_id, cfg.data.vae_run, {"vae_id": "other"})
    # latents of the step-2 weights, checked against a vae_run whose newest weights are step 4's
    older = checkpoint.weights_digest(checkpoint.load_weights(full, "step-00000002")[0])
    assert older != digest
    with pytest.raises(ValueError, match="re-encode"):
        check_vae(older, full, {"vae_id": older})
