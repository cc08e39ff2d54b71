"""The official code's recipes as options (issue 23, item 3) and the contracts they rest on: the
DDIM grid (``sample.grid``), the latent scale where latents meet the DiT, the stage-3 temporal
blocks' initialisation, and ``vae.trainable=temporal``."""
import json
from pathlib import Path

import pytest
import torch
from helpers import mlflow_uri, random_dit, sc, write_latent_shards

from ardscale.config import SampleConfig, load
from ardscale.data.loader import check_latent_scale, latent_sample
from ardscale.data.shards import list_shards, read_shard
from ardscale.diffusion import sampler
from ardscale.diffusion.ad import ddim_grid
from ardscale.diffusion.schedule import GaussianDiffusion
from ardscale.engine import checkpoint
from ardscale.models.arvae import ARVAE, ARVAEConfig
from ardscale.runs import RunData
from ardscale.tasks import dit as dit_task
from ardscale.train import Trainer, launch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
D = GaussianDiffusion(1000)


# ---- the DDIM grid -------------------------------------------------------------------------------

def test_trailing_and_leading_grids_exact_values():
    """Trailing (ours, the default): round(n·T/N) - 1. Leading (the official make_ddim_timesteps,
    "uniform": range(0, T, T//N) + 1). Both keep n = 0 → -1 (clean)."""
    assert ddim_grid(50, 1000).tolist() == [-1] + list(range(19, 1000, 20))
    assert ddim_grid(50, 1000, "trailing").tolist() == [-1] + list(range(19, 1000, 20))
    assert ddim_grid(50, 1000, "leading").tolist() == [-1] + list(range(1, 982, 20))
    assert ddim_grid(25, 1000, "trailing").tolist() == [-1] + list(range(39, 1000, 40))
    assert ddim_grid(25, 1000, "leading").tolist() == [-1] + list(range(1, 962, 40))
    # N not dividing T: leading keeps N steps of T//N (as diffusers), trailing ends at T-1
    lead, trail = ddim_grid(30, 1000, "leading"), ddim_grid(30, 1000, "trailing")
    assert len(lead) == len(trail) == 31 and lead[-1] == 1 + 29 * 33 and trail[-1] == 999
    assert (lead[1:] > lead[:-1]).all() and (trail[1:] > trail[:-1]).all()
    with pytest.raises(ValueError, match="spacing='middle'"):
        ddim_grid(50, 1000, "middle")
    with pytest.raises(ValueError, match="N=20 must be in 1…10"):
        ddim_grid(20, 10)


def test_sample_grid_key_is_validated():
    assert SampleConfig().grid == "trailing"
    with pytest.raises(ValueError, match="grid='middle'.*trailing.*leading"):
        SampleConfig(grid="middle")
    assert load(str(CONFIGS / "tiny.yaml"), ["eval.sample.grid=leading"]).eval.sample.grid == "leading"


def run(model, settings: SampleConfig, y: torch.Tensor | None = None) -> torch.Tensor:
    y = torch.tensor([1, 3]) if y is None else y
    return sampler.sample(model, D, y, settings, generator=torch.Generator().manual_seed(3))


def test_leading_grid_is_what_the_sampler_steps_through():
    """s = 0 with the leading grid is plain DDIM over 981 → 961 → … → 1 → clean, starting from the
    same noise; and it is another video than the trailing grid's."""
    model, N, F = random_dit(), 6, 3
    y = torch.tensor([1, 2])
    got = run(model, sc(F, N, 0, grid="leading"), y)
    x = torch.randn(2, F, 32, 4, generator=torch.Generator().manual_seed(3))
    grid = ddim_grid(N, 1000, "leading")
    assert grid.tolist() == [-1, 1, 167, 333, 499, 665, 831]
    with torch.no_grad():
        for n in range(N, 0, -1):
            t, tn = torch.full((2, F), int(grid[n])), torch.full((2, F), int(grid[n - 1]))
            x = D.ddim_step(x, model(x, t, y), t, tn)
    assert torch.equal(got, x)
    trailing = run(model, sc(F, N, 0), y)
    assert got.std() > 0.01 and (got - trailing).abs().max() > 1e-2


@pytest.mark.parametrize("s", [0, 2, 6])
def test_leading_grid_cached_uncached_and_static_agree(s):
    model = random_dit()
    settings = sc(6, 6, s, 2.0, grid="leading")
    cached = run(model, settings)
    uncached = run(model, SampleConfig(**{**vars(settings), "kv_cache": False}))
    static = run(model, SampleConfig(**{**vars(settings), "mode": "static"}))
    assert cached.std() > 0.05
    assert (cached - uncached).abs().max() < 1e-5 and (static - cached).abs().max() < 1e-5
    assert (cached - run(model, SampleConfig(**{**vars(settings), "grid": "trailing"}))).abs().max() > 1e-2


# ---- the latent scale contract -------------------------------------------------------------------

def test_latent_scale_check_tolerance():
    """Tokens of norm √D stored as float16: scale 1/√D passes within 1e-3, a factor off by 2e-3 fails."""
    z = torch.randn(4, 8, 32, 4)
    z = (2 * z / z.norm(dim=-1, keepdim=True)).half().float()
    check_latent_scale(z, 0.5, "x")
    check_latent_scale(z, 0.5 * (1 + 5e-4), "x")
    with pytest.raises(ValueError, match=r"diffusion.scale_factor=0.501 .* mean L2 norm 1.002 .* expected 1"):
        check_latent_scale(z, 0.501, "x")
    with pytest.raises(ValueError, match=r"mean L2 norm 2 .*set diffusion.scale_factor=0.5 "):
        check_latent_scale(z, 1.0, "latents/v1/train")


def dit_cfg(root, run_dir, **kw):
    over = {"data.root": root, "data.vae_id": "fake", "train.run_dir": run_dir, **kw}
    return load(str(CONFIGS / "tiny.yaml"), [f"{k}={v}" for k, v in over.items()])


def test_scale_checked_at_preflight_in_make_batch_and_for_context(tmp_path):
    """Every config in configs/ satisfies scale_factor · √D = 1; another factor is refused where
    latents enter the DiT's training (preflight on one clip, each batch) and sampling (context)."""
    for f in CONFIGS.glob("*.yaml"):
        c = load(str(f))
        if c.task == "dit":
            assert c.diffusion.scale_factor * c.dit.latent_dim ** 0.5 == pytest.approx(1.0, rel=1e-7), f.name
    where = write_latent_shards(tmp_path / "data", shards=1, per_shard=4)
    good, bad = dit_cfg(tmp_path / "data", tmp_path / "run"), dit_cfg(tmp_path / "data", tmp_path / "run",
                                                                      **{"diffusion.scale_factor": 0.25})
    dit_task.preflight(good)
    with pytest.raises(ValueError, match=r"diffusion.scale_factor=0.25 .* mean L2 norm 0.5 .* expected 1"):
        dit_task.preflight(bad)

    samples = [latent_sample(s, 0) for s in read_shard(list_shards(where)[0])]
    raw = {"x0": torch.stack([torch.from_numpy(s["x0"]) for s in samples]),
           "y": torch.tensor([s["y"] for s in samples])}
    batch = dit_task.make_batch(raw, torch.Generator().manual_seed(0), cfg=good, where=where)
    assert abs(batch["x0"].norm(dim=-1).mean().item() - 1) < 1e-3
    with pytest.raises(ValueError, match="diffusion.scale_factor=0.25"):
        dit_task.make_batch(raw, torch.Generator().manual_seed(0), cfg=bad, where=where)
    for y, msg in ((-1, r"label -1 in .*latents/fake/train.*dit.condition=text"),
                   (good.dit.num_classes, rf"label {good.dit.num_classes} in .* ≥ dit.num_classes")):
        with pytest.raises(ValueError, match=msg):   # captioned latents (-1), a class the DiT lacks
            dit_task.make_batch({**raw, "y": torch.full_like(raw["y"], y)}, torch.Generator(), cfg=good,
                                where=where)

    ctx, labels = RunData(good).context_latents("train", 2, 3, seed=0)
    assert ctx.shape == (3, 2, 32, 4) and labels.shape == (3,)
    assert (ctx.norm(dim=-1) - 1).abs().max() < 2e-3
    with pytest.raises(ValueError, match=r"diffusion.scale_factor=0.25 .*latents/fake/train"):
        RunData(bad).context_latents("train", 2, 3, seed=0)


# ---- stage 3: initialisation and vae.trainable=temporal ------------------------------------------

def test_stage3_zeroes_only_output_projections_and_every_temporal_parameter_learns():
    """Our init (arvae.py's docstring): only fine.proj / coarse.proj start at zero (with PyTorch's
    zero LayerNorm biases); the projections get gradient at once, the attention inputs after the
    projections' first update. The official zero_module alone would leave only the output bias."""
    torch.manual_seed(0)
    vae = ARVAE(ARVAEConfig.tiny(temporal=True))
    zero = {n for n, p in vae.named_parameters() if n.startswith("temporal.") and not p.any()}
    assert zero == {f"temporal.{i}.{m}.{w}" for i in range(2) for m in ("fine.proj", "coarse.proj")
                    for w in ("weight", "bias")} | {f"temporal.{i}.{m}.bias" for i in range(2)
                                                    for m in ("fine_norm", "coarse_norm", "context_norm")}
    video = torch.rand(1, 3, 3, 64, 64) * 2 - 1

    def grads():
        vae.zero_grad()
        (vae(video) - video).square().mean().backward()
        return {n: p.grad.abs().max().item() for n, p in vae.named_parameters()
                if n.startswith("temporal.0.")}

    g = grads()
    assert g["temporal.0.fine.proj.weight"] > 0 and g["temporal.0.coarse.proj.weight"] > 0
    assert g["temporal.0.fine.qkv.weight"] == 0 and g["temporal.0.coarse.kv.weight"] == 0
    with torch.no_grad():
        for blk in vae.temporal:
            blk.fine.proj.weight -= 0.1 * blk.fine.proj.weight.grad.sign()
            blk.coarse.proj.weight -= 0.1 * blk.coarse.proj.weight.grad.sign()
    g = grads()
    assert all(g[f"temporal.0.{k}"] > 0 for k in ("fine.qkv.weight", "coarse.q.weight", "coarse.kv.weight",
                                                  "fine_norm.weight", "context_norm.weight"))


def test_trainable_temporal_needs_temporal_blocks_and_freezes_the_rest():
    with pytest.raises(ValueError, match="vae.trainable=temporal .* vae.temporal=false"):
        ARVAEConfig.tiny(trainable="temporal")
    with pytest.raises(ValueError, match="vae.trainable='encoder'"):
        ARVAEConfig.tiny(temporal=True, trainable="encoder")
    with pytest.raises(ValueError, match="vae.trainable=temporal"):
        load(str(CONFIGS / "demo_vae_frames.yaml"), ["vae.trainable=temporal"])
    with pytest.raises(ValueError, match="vae.trainable='temporal'"):
        ARVAE(ARVAEConfig.tiny()).set_trainable("temporal")
    from ardscale.tasks.vae import build_model
    model = build_model(load(str(CONFIGS / "demo_vae.yaml"), ["vae.trainable=temporal"]))
    train = {n for n, p in model.named_parameters() if p.requires_grad}
    assert train and train == {n for n, _ in model.named_parameters() if n.startswith("temporal.")}
    assert all(p.requires_grad for p in build_model(load(str(CONFIGS / "demo_vae.yaml"))).parameters())


@pytest.mark.slow
def test_trainable_temporal_stage3_changes_only_temporal_parameters(clip_root, tmp_path, monkeypatch):
    """Two in-process DeepSpeed steps of a stage-3 AR-VAE with vae.trainable=temporal: the
    checkpoint's temporal parameters moved, every other parameter is bit-identical to the initial
    weights, and the loss is finite."""
    start = {}
    train = Trainer.train

    def spy(self):   # the engine's weights just before the first step
        start.update({k: v.detach().clone() for k, v in self.engine.module.state_dict().items()})
        start["optimized"] = sum(p.numel() for g in self.engine.optimizer.param_groups for p in g["params"])
        return train(self)

    monkeypatch.setattr(Trainer, "train", spy)
    run_dir = tmp_path / "s3"
    over = {"data.root": clip_root, "train.run_dir": run_dir, "train.init_from": "", "scale.num_workers": 0,
            "vae.image_size": 32, "vae.hidden_size": 32, "vae.depth": 1, "vae.pixel_channels": 8,
            "vae.trainable": "temporal", "vae_loss.adversarial": 0, "data.clip_frames": 0,
            "optim.micro_batch_size": 2, "optim.lr": 1e-3, "optim.warmup_steps": 0, "train.steps": 2,
            "train.log_every": 1, "train.ckpt_every": 2, "tracking.log_model": False,
            "tracking.system_metrics": False, "tracking.tracking_uri": mlflow_uri(tmp_path)}
    launch(load(str(CONFIGS / "demo_vae.yaml"), [f"{k}={v}" for k, v in over.items()]))
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    after, _ = checkpoint.load_weights(str(run_dir))
    temporal = {k for k in after if k.startswith("temporal.")}
    assert temporal and set(after) == set(start) - {"optimized"}
    changed = {k for k in after if not torch.equal(after[k], start[k].float())}
    assert changed and changed <= temporal
    assert {k for k in temporal if k.endswith("proj.weight")} <= changed   # zero-initialised, now trained
    assert 0 < start["optimized"] <= sum(after[k].numel() for k in temporal)
