"""The text-conditioned DiT: cross-attention to caption tokens, pooled caption in adaLN, caption
dropout to the null caption, CFG, causality and the KV cache with text."""
import json

import pytest
import torch
from helpers import mlflow_uri, sc

from ardscale.config import DiffusionConfig
from ardscale.diffusion.sampler import sample
from ardscale.diffusion.schedule import make_diffusion
from ardscale.models.dit import DiT, DiTConfig, TextCondition

S, C = 6, 12


def captions(B: int, seed: int) -> TextCondition:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[:, 4:] = torch.rand(B, 2, generator=g) < 0.5           # some padding
    return TextCondition(torch.randn(B, S, C, generator=g), mask, torch.randn(B, C, generator=g))


def text_dit(seed: int = 0) -> DiT:
    """A tiny text DiT with every zero-initialised output made non-zero (as after training)."""
    torch.manual_seed(seed)
    model = DiT(DiTConfig.tiny(condition="text", text_dim=C, text_tokens=S, caption_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.abs().sum() == 0 and "null" not in name:
                p.normal_(0, 0.05)
    model.y_embedder.set_null(captions(1, 99))
    return model.eval()


def test_a_text_dit_trains_on_cpu():
    torch.manual_seed(0)
    model = DiT(DiTConfig.tiny(condition="text", text_dim=C, text_tokens=S))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x0, text = torch.randn(4, 3, 32, 4), captions(4, 1)
    losses = []
    for _ in range(30):
        t = torch.randint(0, 1000, (4, 3)).sort(dim=1).values
        loss = (model(x0 + 0.1 * torch.randn_like(x0), t, text) - x0).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(blk.cross.proj.weight.abs().sum() > 0 for blk in model.blocks)   # the text path learned


def test_a_text_dit_learns_what_only_the_caption_says():
    """Two captions, each with its own x0, from pure noise at t = 999: without the caption the best
    prediction is the targets' mean (loss = mean(((A - B) / 2)²) ≈ 0.5); the text path must beat it."""
    torch.manual_seed(0)
    model = DiT(DiTConfig.tiny(condition="text", text_dim=C, text_tokens=S, caption_dropout=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    two = captions(2, 1)
    text = TextCondition(two.tokens.repeat(2, 1, 1), two.mask.repeat(2, 1), two.pooled.repeat(2, 1))
    x0 = torch.randn(2, 3, 32, 4).repeat(2, 1, 1, 1)          # caption i → target i
    blind = ((x0[0] - x0[1]) / 2).square().mean().item()
    t = torch.full((4, 3), 999)
    for _ in range(80):
        loss = (model(torch.randn_like(x0), t, text) - x0).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * blind, (loss.item(), blind)


def test_null_caption_is_the_unconditional_prediction_and_prompts_matter():
    model = text_dit()
    x, t = torch.randn(2, 3, 32, 4), torch.tensor([[5, 300, 700], [0, 10, 999]])
    text, other = captions(2, 1), captions(2, 2)
    with torch.no_grad():
        a, b = model(x, t, text), model(x, t, other)
        dropped = model(x, t, text, drop=torch.tensor([True, True]))
        null = model(x, t, model.y_embedder.null(2))
        mixed = model(x, t, text, drop=torch.tensor([True, False]))
    assert (a - b).abs().max() > 1e-3, "the prompt does not change the prediction"
    torch.testing.assert_close(dropped, null, rtol=0, atol=0)
    torch.testing.assert_close(mixed[0], null[0])
    torch.testing.assert_close(mixed[1], a[1])
    doubled = model.with_null(text)
    assert len(doubled) == 4 and torch.equal(doubled.tokens[2:], model.y_embedder.null(2).tokens)


def test_text_dit_stays_causal_over_frames():
    model = text_dit()
    x, t, text = torch.randn(1, 4, 32, 4), torch.tensor([[1, 2, 3, 4]]), captions(1, 3)
    y = x.clone()
    y[:, 2:] = torch.randn(1, 2, 32, 4)
    with torch.no_grad():
        a, b = model(x, t, text), model(y, t, text)
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert (a[:, 2:] - b[:, 2:]).abs().max() > 1e-3


@pytest.mark.parametrize("s", [0, 2, 50])
def test_cached_and_uncached_sampling_agree_with_text_and_cfg(s):
    model = text_dit()
    diffusion = make_diffusion(DiffusionConfig())
    text = captions(2, 4)
    run = lambda cache: sample(model, diffusion, text, sc(5, 4, s, 3.0, kv_cache=cache),
                               generator=torch.Generator().manual_seed(0))
    cached, plain = run(True), run(False)
    torch.testing.assert_close(cached, plain, rtol=1e-4, atol=1e-4)
    other = sample(model, diffusion, captions(2, 5), sc(5, 4, s, 3.0),
                   generator=torch.Generator().manual_seed(0))
    assert (other - cached).abs().max() > 1e-3, "changing the prompt does not change the sample"


def test_wrong_text_shape_and_class_labels_are_refused():
    model = text_dit()
    x, t = torch.randn(1, 2, 32, 4), torch.zeros(1, 2, dtype=torch.long)
    bad = TextCondition(torch.randn(1, S + 1, C), torch.ones(1, S + 1, dtype=torch.bool), torch.randn(1, C))
    with pytest.raises(ValueError, match="dit.text_tokens"):
        model(x, t, bad)
    with pytest.raises(TypeError, match="TextCondition"):
        model(x, t, torch.tensor([3]))
    with pytest.raises(ValueError, match="dit.condition"):
        DiTConfig(condition="audio")


def text_latents(root, with_text: bool = True):
    """Two latent shards of 8 clips (F=4, L=32, D=4) with encoded captions (S=6, C=12): the latent
    mean follows the caption's pooled vector's sign, so the captions carry information."""
    import numpy as np

    from ardscale.data.shards import npy_bytes, npz_bytes, sidecar_url, write_json, write_shard

    where = root / "latents" / "fake" / "train"
    rng = np.random.default_rng(0)
    for s in range(2):
        rows = []
        for k in range(8):
            pooled = rng.normal(size=C).astype(np.float16)
            z = rng.normal(float(np.sign(pooled[0])), 1.0, size=(4, 32, 4))
            z = (2 * z / np.linalg.norm(z, axis=-1, keepdims=True)).astype(np.float16)
            row = {"__key__": f"c{s}_{k}", "npy": npy_bytes(z), "json": {"label": 0, "caption": f"clip {k}"}}
            if with_text:
                row["txt.npz"] = npz_bytes(tokens=rng.normal(size=(S, C)).astype(np.float16),
                                           mask=np.arange(S) < 4, pooled=pooled)
            rows.append(row)
        write_shard(str(where / f"shard-{s:06d}.tar"), rows)
        write_json(sidecar_url(str(where / f"shard-{s:06d}.tar")), {"clips": 8})
    null = {"tokens": np.full((S, C), 0.5, np.float16), "mask": np.arange(S) < 2,
            "pooled": np.ones(C, np.float16)}
    (where / "_null_caption.npz").write_bytes(npz_bytes(**null))
    manifest = {"vae_id": "fake", "num_frames": 4}
    if with_text:
        manifest["text"] = {"encoder": "minilm", "path": "", "tokens": S, "dim": C}
    write_json(str(where / "_manifest.json"), manifest)
    return null


def test_text_dit_trains_resumes_and_loads_from_latent_shards(tmp_path):
    """The dit task with dit.condition=text: captions from the latent shards, the null caption from
    beside the manifest (and, after training, from the run's own EMA weights), exact resume."""
    from pathlib import Path

    from ardscale.config import load
    from ardscale.runs import load_trained
    from ardscale.train import launch

    null = text_latents(tmp_path / "data")
    config = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")

    def run(run_dir, steps):
        launch(load(config, [f"data.root={tmp_path / 'data'}", "data.vae_id=fake", f"train.run_dir={run_dir}",
                             f"train.steps={steps}", "train.ckpt_every=2", "optim.ema_decay=0.9",
                             "dit.condition=text", f"dit.text_dim={C}", f"dit.text_tokens={S}",
                             f"tracking.tracking_uri={mlflow_uri(tmp_path)}"]))
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r["loss"] for r in map(json.loads, lines)}

    full = run(tmp_path / "full", 6)
    run(tmp_path / "split", 2)
    resumed = run(tmp_path / "split", 6)
    assert sorted(full) == list(range(6)) and all(abs(full[s] - resumed[s]) < 1e-6 for s in range(6))
    _, model, _, _ = load_trained(str(tmp_path / "full"))
    assert model.config.condition == "text"
    torch.testing.assert_close(model.y_embedder.null_tokens, torch.from_numpy(null["tokens"]).float())
    assert model.y_embedder.null_mask.tolist() == null["mask"].tolist()


def test_text_dit_on_latents_without_captions_says_how_to_make_them(tmp_path):
    from pathlib import Path

    from ardscale.config import load
    from ardscale.train import launch

    text_latents(tmp_path / "data", with_text=False)
    config = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
    with pytest.raises(ValueError, match="--text-encoder"):
        launch(load(config, [f"data.root={tmp_path / 'data'}", "data.vae_id=fake", "dit.condition=text",
                             f"train.run_dir={tmp_path / 'run'}", f"dit.text_dim={C}", f"dit.text_tokens={S}",
                             f"tracking.tracking_uri={mlflow_uri(tmp_path)}"]))


def test_text_latents_without_a_null_caption_are_refused(tmp_path):
    from pathlib import Path

    from ardscale.config import load
    from ardscale.train import launch

    text_latents(tmp_path / "data")
    (tmp_path / "data" / "latents" / "fake" / "train" / "_null_caption.npz").unlink()
    config = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
    with pytest.raises(ValueError, match="_null_caption.npz"):
        launch(load(config, [f"data.root={tmp_path / 'data'}", "data.vae_id=fake", "dit.condition=text",
                             f"train.run_dir={tmp_path / 'run'}", f"dit.text_dim={C}", f"dit.text_tokens={S}",
                             f"tracking.tracking_uri={mlflow_uri(tmp_path)}"]))
