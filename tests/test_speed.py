"""A training run's speed instruments: MFU on every run (the AR-VAE's FLOPs counted on meta tensors,
a CPU peak measured in-process), torch.profiler over chosen steps, and fused AdamW."""
import gzip
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import mlflow_uri, overrides
from torch.utils.flop_counter import FlopCounterMode

from ardscale.config import Config, load, to_dict
from ardscale.engine import checkpoint
from ardscale.engine.deepspeed import fused_adamw
from ardscale.engine.flops import cpu_matmul_tflops, peak_tflops
from ardscale.models.arvae import ARVAEConfig
from ardscale.tasks import vae as vae_task
from ardscale.train import Trainer, launch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONFIG = str(CONFIGS / "tiny.yaml")


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def arvae_frame_flops(c: ARVAEConfig) -> int:
    """The AR-VAE's forward FLOPs per frame by hand (2 per multiply-add): patch embedding, 2·depth
    transformer blocks over the N patches + L latents, latent projections, the pixel head's convs."""
    W, p, L, S = c.hidden_size, c.patch_size, c.tokens_per_frame, c.image_size
    g, r = S // p, int(c.mlp_ratio)
    N = g * g
    T = N + L
    blocks = 2 * c.depth * (2 * T * (4 + 2 * r) * W * W + 4 * T * T * W)   # linears; QKᵀ and AV
    levels = int(math.log2(p))
    ch = [c.pixel_channels * min(2 ** (levels - k), 4) for k in range(levels + 1)]
    head = 2 * W * ch[0] * 9 * g * g + 2 * c.pixel_channels * c.in_channels * 9 * S * S
    for k in range(levels):
        res = g * 2 ** k
        head += 2 * 2 * ch[k] * ch[k] * 9 * res * res + 2 * ch[k] * ch[k + 1] * 9 * (2 * res) ** 2
    return 2 * N * c.in_channels * p * p * W + blocks + 2 * 2 * L * W * c.latent_dim + head


def patchgan_frame_flops(size: int, channels: int, layers: int, in_channels: int = 3) -> int:
    """The PatchGAN's forward FLOPs per frame by hand: 4×4 convs, stride 2 but in the last two."""
    size //= 2
    flops, c = 2 * in_channels * channels * 16 * size * size, channels
    for n in range(1, layers + 1):
        out = channels * min(2 ** n, 8)
        size = size // 2 if n < layers else size - 1
        flops, c = flops + 2 * c * out * 16 * size * size, out
    return flops + 2 * c * 16 * (size - 1) ** 2


def test_vae_train_flops_equal_a_hand_count():
    cfg = Config()
    cfg.vae = ARVAEConfig.tiny()
    frames = 3
    c = cfg.vae
    # forward + input gradients + weight gradients (3 × forward), less the patch embedding's input
    # gradient: the clip needs none, and the count is of the backward autograd really runs
    embed_input_grad = frames * 2 * c.num_patches * c.in_channels * c.patch_size**2 * c.hidden_size
    per_clip = 3 * frames * arvae_frame_flops(c) - embed_input_grad
    assert vae_task.train_flops(cfg, frames)(0) == per_clip                       # exact, no GAN
    cfg.vae_loss.adversarial, cfg.vae_loss.disc_start = 0.5, 2
    cfg.vae_loss.disc_channels, cfg.vae_loss.disc_layers = 16, 3
    flops = vae_task.train_flops(cfg, frames)
    disc = vae_task.DISC_PASSES * frames * patchgan_frame_flops(64, 16, 3)
    assert flops(1) == per_clip and flops(2) == per_clip + disc                    # from disc_start on
    # the meta count equals torch's own count of a real CPU forward plus attention's two matmuls,
    # which the counter does not see inside SDPA's CPU kernel
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vae_task.build_model(cfg)(torch.zeros(1, frames, 3, 64, 64))
    T = cfg.vae.num_patches + cfg.vae.tokens_per_frame
    attention = 2 * cfg.vae.depth * 4 * T * T * cfg.vae.hidden_size * frames
    assert 3 * (counter.get_total_flops() + attention) - embed_input_grad == per_clip


def test_vae_train_flops_count_only_the_trained_blocks_backward():
    """vae.trainable=temporal (official stage 3): no weight gradients of frozen blocks and no input
    gradients below the first temporal block, so ~2 × forward, not 3 × (MFU was overstated 1.5×)."""
    cfg = Config()
    cfg.vae = ARVAEConfig.tiny(temporal=True)
    every = vae_task.train_flops(cfg, 3)(0)
    cfg.vae.trainable = "temporal"
    temporal = vae_task.train_flops(cfg, 3)(0)
    assert 1.9 < temporal / (every / 3) < 2.1


def test_cpu_peak_is_measured_once_and_train_peak_tflops_overrides_it():
    peak = peak_tflops(0.0, "cpu")
    assert math.isfinite(peak) and 0 < peak < 100            # a CPU's fp32 matmul rate, in TFLOPS
    assert peak_tflops(0.0, "cpu") == cpu_matmul_tflops() == peak                  # cached per process
    assert peak_tflops(2.5, "cpu") == 2.5                                          # train.peak_tflops wins
    if not torch.cuda.is_available():
        assert peak_tflops(0.0) is None          # "auto" (benchmarks) keeps no CPU peak
    print(f"CPU matmul peak {peak:.4f} TFLOPS")


def test_fused_and_profile_keys_are_checked_before_any_worker(latent_root, tmp_path):
    assert fused_adamw("auto", True) and not fused_adamw("auto", False)
    assert fused_adamw("True", False) and not fused_adamw("false", True)          # YAML true → "True"
    with pytest.raises(ValueError, match="optim.fused='maybe'"):
        launch(load(CONFIG, overrides(latent_root, str(tmp_path / "r"), **{"optim.fused": "maybe"})))
    with pytest.raises(ValueError, match="train.profile_steps=0"):
        launch(load(CONFIG, overrides(latent_root, str(tmp_path / "r"), **{"train.profile_at": 2,
                                                                           "train.profile_steps": 0})))
    assert not (tmp_path / "r").exists()


def run_trainer(cfg) -> Trainer:
    """An in-process run whose engine the test can look at (``launch`` has made the gloo group)."""
    trainer = Trainer(cfg, to_dict(cfg))
    trainer.train()
    return trainer


@pytest.mark.slow
def test_fused_adamw_gives_the_same_losses_and_is_kept_across_a_resume(latent_root, tmp_path):
    plain, fused, resumed = (str(tmp_path / n) for n in ("plain", "fused", "resumed"))
    launch(load(CONFIG, overrides(latent_root, plain, **{"train.steps": 4, "optim.fused": "false"})))
    cfg = load(CONFIG, overrides(latent_root, fused, **{"train.steps": 4, "optim.fused": "true"}))
    opt = run_trainer(cfg).engine.basic_optimizer               # the torch AdamW inside ZeRO-2
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
    a, b = [r["loss"] for r in rows(plain)], [r["loss"] for r in rows(fused)]
    assert len(a) == len(b) == 4 and all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a, b)), (a, b)
    w2, w4, w4_fused = (checkpoint.load_weights(d, t)[0]
                        for d, t in ((plain, "2"), (plain, "4"), (fused, "4")))
    assert max((w4[k] - w2[k]).abs().max().item() for k in w4) > 1e-4      # the steps moved the weights
    assert max((w4[k] - w4_fused[k]).abs().max().item() for k in w4) < 1e-5   # … the same way, fused
    # 2 plain steps, then resumed with fused=true: the checkpoint's param groups say fused=None, and
    # the run keeps its own setting
    launch(load(CONFIG, overrides(latent_root, resumed, **{"train.steps": 2, "optim.fused": "false"})))
    cfg = load(CONFIG, overrides(latent_root, resumed, **{"train.steps": 4, "optim.fused": "true"}))
    trainer = Trainer(cfg, to_dict(cfg))
    assert trainer.start == 2
    assert all(g["fused"] is True for g in trainer.engine.basic_optimizer.param_groups)
    trainer.train()
    c = [r["loss"] for r in rows(resumed)]
    assert len(c) == 4 and all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a, c)), (a, c)
    print("plain", a, "fused", b, "resumed fused", c)


@pytest.mark.slow
def test_every_run_logs_mfu_and_profile_writes_trace_summary_and_phase_shares(latent_root, tmp_path, capsys):
    run = tmp_path / "prof"
    launch(load(CONFIG, overrides(latent_root, str(run), **{"train.steps": 4, "train.profile_at": 2,
                                                             "train.profile_steps": 2})))
    r = rows(run)
    # MFU against this process's matmul rate: a width-64 DiT's small matmuls run at a few % of a
    # 1024² matmul's rate, so < 1 holds with a wide margin even when other processes slowed the probe
    assert all(0 < x["mfu"] < 1 and x["tflops_per_device"] > 0 for x in r)
    out = capsys.readouterr().out
    assert "MFU" in out and "profile of steps 2-3" in out
    files = sorted(p.name for p in (run / "profile").iterdir())
    assert files == ["rank0.json", "rank0.summary.txt", "rank0.trace.json.gz"]
    trace = json.loads(gzip.decompress((run / "profile" / "rank0.trace.json.gz").read_bytes()))
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any(n.startswith("aten::") for n in names) and {"forward", "backward", "optimizer"} <= names
    assert "Self CPU" in (run / "profile" / "rank0.summary.txt").read_text()
    summary = json.loads((run / "profile" / "rank0.json").read_text())
    assert summary["first_step"] == 2 and summary["num_steps"] == 2 and summary["step_ms"] > 0
    shares = {k: v["share"] for k, v in summary["phases"].items()}
    assert {"data", "forward", "backward", "optimizer"} <= set(shares)
    assert all(0 < s < 1 for s in shares.values())
    assert 0.5 < sum(shares.values()) <= 1.0 + 1e-6            # the labelled phases are most of a step
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns.db")
    run_id = (run / "mlflow_run_id").read_text()
    logged = sorted(a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "profile"))
    assert logged == [f"profile/{f}" for f in files]
    hist = mlflow.MlflowClient().get_metric_history(run_id, "mfu")
    assert [m.step for m in hist] == [0, 1, 2, 3]               # tiny.yaml: log_every 1
    print("mfu", [round(x["mfu"], 4) for x in r], "shares", {k: round(v, 3) for k, v in shares.items()})


@pytest.mark.slow
def test_a_vae_gan_run_logs_mfu_with_the_discriminator_from_disc_start(ucf_root, tmp_path):
    from ardscale.data.sources import VideoItem
    from data_prep.shard_videos import shard_one

    root = tmp_path / "vdata"
    clip = ucf_root / "videos" / "Archery" / "v_Archery_g01_c01.avi"
    shard_one([VideoItem(str(clip), 2, "Archery", "v_Archery_g01_c01")],
              str(root / "videos" / "train" / "shard-000000.tar"), num_frames=4, fps=8, size=32, max_clips=3,
              split="train")
    run = tmp_path / "vae"
    over = {"data.root": root, "train.run_dir": run, "scale.num_workers": 0, "vae.image_size": 32,
            "vae.hidden_size": 32, "vae.depth": 1, "vae.pixel_channels": 8, "optim.micro_batch_size": 2,
            "data.clip_frames": 2, "vae_loss.adversarial": 0.5, "vae_loss.disc_start": 1,
            "vae_loss.disc_channels": 8, "vae_loss.perceptual": 0, "train.steps": 2, "train.ckpt_every": 2,
            "tracking.tracking_uri": mlflow_uri(tmp_path), "tracking.log_model": False,
            "tracking.system_metrics": False}
    cfg = load(str(CONFIGS / "demo_vae_frames.yaml"), [f"{k}={v}" for k, v in over.items()])
    launch(cfg)
    flops = vae_task.train_flops(cfg, 2)
    for x in rows(run):   # 2 clips a step: micro batch 2 × 1 accumulation × 1 worker
        assert x["samples_per_s"] == pytest.approx(2 / x["step_time_s"], rel=1e-9)
        per_s = flops(x["step"]) * 2 / x["step_time_s"]
        assert x["tflops_per_device"] * 1e12 == pytest.approx(per_s, rel=1e-9)
        assert 0 < x["mfu"] < 1
    # from disc_start on: DISC_PASSES forwards of the PatchGAN (8 channels, 3 layers) on both 32² frames
    assert flops(1) - flops(0) == vae_task.DISC_PASSES * 2 * patchgan_frame_flops(32, 8, 3)
