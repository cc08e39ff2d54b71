"""``vae.init_from_titok`` (paper Sec. 4.1): TiTok-L-32's state dict onto the AR-VAE. The key map
against the official key list (tests/data/titok_l32_keys.json, from bytedance/1d-tokenizer), a real
load at a small width checked against TiTok's own block (``nn.MultiheadAttention``, blocks.py:35-73),
the errors, and training steps from the weights."""
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import mlflow_uri
from torch import nn

from ardscale.config import Config, TrainConfig, load
from ardscale.engine import checkpoint
from ardscale.models.arvae import ARVAE, ARVAEConfig
from ardscale.models.titok import load_titok, read_titok, titok_to_arvae
from ardscale.tasks import vae as vae_task
from ardscale.train import Trainer, launch

OFFICIAL = json.loads((Path(__file__).parent / "data" / "titok_l32_keys.json").read_text())["tensors"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL = {"image_size": 64, "patch_size": 16, "hidden_size": 128, "depth": 2, "num_heads": 2,
         "tokens_per_frame": 8, "pixel_channels": 8}   # TiTok's 64-wide heads


def titok_state(width=1024, depth=24, tokens=32, grid=16, patch=16, meta=False, seed=0) -> dict:
    """A state dict with the official keys at other sizes: in the encoder and decoder, TiTok-L-32's
    dimensions become ``width`` (and 3×, 4× it), ``grid²+1`` positions, ``tokens`` latent tokens and
    ``patch``; blocks from ``depth`` on are dropped; ``decoder.ffn`` and the VQ / VQGAN parts keep the
    official shapes. Values N(0, 0.1²) (LayerNorm weights around 1), or meta tensors."""
    sizes = {1024: width, 3072: 3 * width, 4096: 4 * width, 257: grid * grid + 1, 32: tokens, 16: patch}
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, (shape, dtype) in OFFICIAL.items():
        block = re.match(r"(en|de)coder\.transformer\.(\d+)\.", key)
        if block and int(block[2]) >= depth:
            continue
        if key.startswith(("encoder.", "decoder.", "latent_tokens")) and not key.startswith("decoder.ffn."):
            shape = [sizes.get(d, d) for d in shape]
        if meta:
            out[key] = torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
        else:
            norm = re.search(r"ln_\w+\.weight", key) is not None
            out[key] = torch.randn(shape, generator=gen) * 0.1 + norm
    return out


def meta_model(**kw) -> ARVAE:
    with torch.device("meta"):
        return ARVAE(ARVAEConfig(**kw))


# ---- the key map against the official list -------------------------------------------------------

def test_every_official_key_is_mapped_or_skipped_and_mapped_shapes_are_the_paper_models():
    """At paper size (ARVAEConfig(): TiTok-L-32's width, depth, heads, L, patch, 256²), on meta tensors."""
    state = titok_state(meta=True)
    assert {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()} == OFFICIAL
    model = meta_model()
    out, report = titok_to_arvae(state, model)
    theirs = set(report.loaded.values())
    assert theirs | set(report.skipped) == set(OFFICIAL) and not theirs & set(report.skipped)
    ours = model.state_dict()
    assert {k: v.shape for k, v in out.items()} == {k: ours[k].shape for k in out}
    assert (len(OFFICIAL), len(report.loaded), len(report.skipped)) == (692, 588, 104)
    assert set(report.untouched) == {k for k in ours if k.startswith(("to_latent.", "pixel_head."))}
    assert (report.loaded_params, report.total_params, report.skipped_params) == (606_005_248, 632_272_903,
                                                                                  35_301_391)
    why = report.skipped
    assert why["encoder.conv_out.weight"].startswith("VQ head")
    assert why["quantize.embedding.weight"].startswith("VQ codebook")
    assert all(why[k].startswith("MaskGIT-VQGAN") for k in OFFICIAL if k.startswith("pixel_"))
    structural = {k for k, r in why.items() if r.startswith(("class token", "LayerNorm", "decoder pos"))}
    assert structural == {f"{s}.{k}" for s in ("encoder", "decoder")
                          for k in ("class_embedding", "ln_pre.weight", "ln_pre.bias")} | {
        "decoder.positional_embedding", "decoder.latent_token_positional_embedding"}


# ---- a real load at a small width -------------------------------------------------------------------

def titok_block(state: dict, prefix: str, x: torch.Tensor, heads: int, gelu: str) -> torch.Tensor:
    """TiTok's ResidualAttentionBlock (blocks.py:35-73) on ``(B, N, W)`` from its own tensors, with
    PyTorch's ``nn.MultiheadAttention`` in its (N, B, W) layout."""
    w = state[prefix + "ln_1.weight"].shape[0]
    attn = nn.MultiheadAttention(w, heads)
    attn.load_state_dict({k.removeprefix(prefix + "attn."): v for k, v in state.items()
                          if k.startswith(prefix + "attn.")})
    ln = lambda t, n: F.layer_norm(t, (w,), state[f"{prefix}{n}.weight"], state[f"{prefix}{n}.bias"])
    h = ln(x, "ln_1").transpose(0, 1)
    x = x + attn(h, h, h, need_weights=False)[0].transpose(0, 1)
    fc = F.linear(ln(x, "ln_2"), state[prefix + "mlp.c_fc.weight"], state[prefix + "mlp.c_fc.bias"])
    fc = F.gelu(fc, approximate=gelu)
    return x + F.linear(fc, state[prefix + "mlp.c_proj.weight"], state[prefix + "mlp.c_proj.bias"])


def test_small_load_copies_the_tensors_and_blocks_compute_titoks_function(tmp_path):
    state = titok_state(width=128, depth=2, tokens=8, grid=4, patch=16)
    path = tmp_path / "tokenizer_titok_small.bin"
    torch.save(state, path)
    torch.manual_seed(0)
    model = ARVAE(ARVAEConfig(**SMALL)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_titok(model, str(path))
    sd = model.state_dict()
    expect = {"latent_queries": state["latent_tokens"],
              "patch_embed.weight": state["encoder.patch_embed.weight"].flatten(1),
              "patch_pos": state["encoder.positional_embedding"][1:],
              "latent_pos": state["encoder.latent_token_positional_embedding"],
              "mask_tokens": state["decoder.mask_token"][0].expand(16, 128),
              "from_latent.weight": state["decoder.decoder_embed.weight"][:, :4]}
    for side in ("encoder", "decoder"):
        for i in range(2):
            t = f"{side}.transformer.{i}."
            q, k, v = sd[f"{side}.{i}.attn.qkv.weight"].chunk(3)
            assert torch.equal(torch.cat([q, k, v]), state[t + "attn.in_proj_weight"])
            expect |= {f"{side}.{i}.{ours}": state[t + theirs] for ours, theirs in (
                ("attn.qkv.bias", "attn.in_proj_bias"), ("attn.proj.weight", "attn.out_proj.weight"),
                ("mlp.0.weight", "mlp.c_fc.weight"), ("mlp.2.bias", "mlp.c_proj.bias"),
                ("norm2.weight", "ln_2.weight"))}
    assert all(torch.equal(sd[k], v) for k, v in expect.items()) and set(expect) <= set(report.loaded)
    assert all(torch.equal(sd[k], before[k]) for k in report.untouched)

    seen = {}
    for name in ("encoder", "decoder"):
        getattr(model, name)[0].register_forward_hook(lambda m, a, out, k=name: seen.update({k: (a[0], out)}))
    video = torch.rand(2, 1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert model(video).isfinite().all()
        # TiTok's encoder tokens (blocks.py:265-275) without its class token and ln_pre: a stride-16 conv
        conv = F.conv2d(video[:, 0], state["encoder.patch_embed.weight"], state["encoder.patch_embed.bias"],
                        stride=16)
        patches = conv.flatten(2).transpose(1, 2)
        latents = state["latent_tokens"] + state["encoder.latent_token_positional_embedding"]
        tokens = torch.cat([patches + expect["patch_pos"], latents.expand(2, -1, -1)], dim=1)
        torch.testing.assert_close(seen["encoder"][0], tokens)
        for name in ("encoder", "decoder"):
            x, ours = seen[name]
            ref = titok_block(state, f"{name}.transformer.0.", x, heads=2, gelu="tanh")
            torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
            exact = titok_block(state, f"{name}.transformer.0.", x, heads=2, gelu="none")   # TiTok's GELU
            assert not torch.equal(ours, exact)
            torch.testing.assert_close(ours, exact, atol=1e-2, rtol=0)


# ---- errors -------------------------------------------------------------------------------------------

def test_missing_unreadable_and_foreign_files_are_clear_errors(tmp_path):
    model = meta_model(**SMALL)
    with pytest.raises(FileNotFoundError, match=r"vae.init_from_titok=.*nope\.bin: no such file"):
        load_titok(model, str(tmp_path / "nope.bin"))
    (tmp_path / "text.bin").write_text("not weights")
    with pytest.raises(ValueError, match=r"text\.bin: not a torch.save weight file"):
        read_titok(str(tmp_path / "text.bin"))
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match=r"tensor\.pt: not a state dict of tensors"):
        read_titok(str(tmp_path / "tensor.pt"))
    torch.save(ARVAE(ARVAEConfig.tiny()).state_dict(), tmp_path / "ours.pt")
    with pytest.raises(ValueError, match=r"ours\.pt: not a TiTok state dict \(no latent_tokens"):
        load_titok(model, str(tmp_path / "ours.pt"))
    text_proj = {"decoder.text_guidance_proj.weight": torch.empty(1024, 768, device="meta")}   # TA-TiTok's
    foreign = titok_state(meta=True) | text_proj
    with pytest.raises(ValueError, match=r"f\.bin: decoder.text_guidance_proj.weight \(1024, 768\) is not"):
        titok_to_arvae(foreign, meta_model(), "f.bin")


@pytest.mark.parametrize("sizes, match", [
    ({"hidden_size": 512, "num_heads": 8}, r"latent_tokens \(32, 1024\) does not fit latent_queries \(32, 5"),
    ({"image_size": 128}, r"positional_embedding \(257, 1024\) does not fit patch_pos \(64, 1024\)"),
    ({"tokens_per_frame": 16}, r"latent_tokens \(32, 1024\) does not fit latent_queries \(16, 1024\)"),
    ({"latent_dim": 16}, r"decoder_embed.weight \(1024, 12\) does not fit from_latent.weight \(1024, 16\)"),
    ({"depth": 12}, r"the file's encoder has 24 blocks, vae.depth=12"),
    ({"num_heads": 8}, r"vae.num_heads must be vae.hidden_size/64 = 16, not 8"),
])
def test_a_vae_size_other_than_the_files_names_key_and_shapes(sizes, match):
    with pytest.raises(ValueError, match=match):
        titok_to_arvae(titok_state(meta=True), meta_model(**sizes), "t.bin")


def test_config_key_preflight_and_refusal_beside_train_init_from(tmp_path):
    """The brief's command line composes; a relative path becomes absolute (Ray workers run elsewhere);
    the preflight checks the file against the vae sizes and refuses train.init_from beside it."""
    cfg = load(str(CONFIGS / "ucf101_vae_s1.yaml"), ["vae.init_from_titok=weights/tokenizer_titok_l32.bin"])
    assert cfg.vae.init_from_titok == str(Path("weights/tokenizer_titok_l32.bin").resolve())
    assert load(str(CONFIGS / "ucf101_vae_s1.yaml")).vae.init_from_titok == ""
    path = tmp_path / "titok.bin"
    torch.save(titok_state(width=128, depth=2, tokens=8, grid=4, patch=16), path)
    vae = lambda file, **kw: ARVAEConfig(**SMALL | kw, init_from_titok=str(file))
    vae_task.check_titok(Config(task="vae", vae=vae(path)))
    with pytest.raises(ValueError, match="the file's encoder has 2 blocks, vae.depth=3"):
        vae_task.check_titok(Config(task="vae", vae=vae(path, depth=3)))
    with pytest.raises(FileNotFoundError, match="vae.init_from_titok=.*gone.bin"):
        vae_task.check_titok(Config(task="vae", vae=vae(tmp_path / "gone.bin")))
    with pytest.raises(ValueError, match="vae.init_from_titok=.* and train.init_from=runs/s1: a run starts"):
        vae_task.check_titok(Config(task="vae", vae=vae(path), train=TrainConfig(init_from="runs/s1")))


# ---- training from the weights -------------------------------------------------------------------------

@pytest.mark.slow
def test_two_steps_start_from_titok_weights_and_a_resume_does_not_reload(clip_root, tmp_path, monkeypatch,
                                                                          capsys):
    """In-process DeepSpeed steps of a stage-1 AR-VAE with vae.init_from_titok: the engine starts from
    the file's tensors, the load is logged, the loss is finite; resuming the run does not load it again."""
    state = titok_state(width=128, depth=1, tokens=32, grid=2, patch=16)
    path = tmp_path / "tokenizer_titok_l32.bin"
    torch.save(state, path)
    start, train = {}, Trainer.train

    def spy(self):   # the engine's weights just before the first step
        start.update({k: v.detach().clone() for k, v in self.engine.module.state_dict().items()})
        return train(self)

    monkeypatch.setattr(Trainer, "train", spy)
    run_dir = tmp_path / "s1"
    over = {"data.root": clip_root, "train.run_dir": run_dir, "train.init_from": "", "scale.num_workers": 0,
            "vae.image_size": 32, "vae.patch_size": 16, "vae.hidden_size": 128, "vae.num_heads": 2,
            "vae.depth": 1, "vae.pixel_channels": 8, "vae.temporal": False, "vae.init_from_titok": path,
            "vae.latent_dim": 8,   # from_latent takes columns [:D] of TiTok's 12
            "vae_loss.adversarial": 0, "data.clip_frames": 1, "optim.micro_batch_size": 2,
            "optim.warmup_steps": 0,
            "train.steps": 2, "train.log_every": 1, "train.ckpt_every": 2, "tracking.log_model": False,
            "tracking.system_metrics": False, "tracking.tracking_uri": mlflow_uri(tmp_path)}
    launch(load(str(CONFIGS / "demo_vae.yaml"), [f"{k}={v}" for k, v in over.items()]))
    qkv = state["encoder.transformer.0.attn.in_proj_weight"]
    assert torch.equal(start["encoder.0.attn.qkv.weight"].float(), qkv)
    assert torch.equal(start["mask_tokens"].float(), state["decoder.mask_token"][0].expand(4, 128))
    assert re.search(rf"vae.init_from_titok={path}: loaded 36 of \d+ AR-VAE tensors", capsys.readouterr().out)
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)

    def refuse(*a):
        raise AssertionError("a resumed run loaded the TiTok weights")

    monkeypatch.setattr(vae_task, "load_titok", refuse)
    launch(load(str(CONFIGS / "demo_vae.yaml"), [f"{k}={v}" for k, v in (over | {"train.steps": 3}).items()]))
    assert checkpoint.latest_tag(str(run_dir)) == checkpoint.tag(3)
