"""``dit.attention=official``: the official code's context tokens and their mask beside our strict
block-causal attention (``causal``, the default): the mask's entries, the dependence structure
(official is not temporally causal from two layers on), training, the uncached sampler against a
full recompute, and the refusals (KV cache, static / compiled sampling, a text DiT)."""
import json
from pathlib import Path

import pytest
import torch
from helpers import TINY_CONFIG, overrides, random_dit, sc

from ardscale.config import SampleConfig, load
from ardscale.diffusion import sampler
from ardscale.diffusion.ad import ddim_grid
from ardscale.diffusion.sampler import composition_rows
from ardscale.diffusion.schedule import GaussianDiffusion
from ardscale.engine import checkpoint
from ardscale.engine.flops import dit_forward_flops
from ardscale.models import attention as attn
from ardscale.models.attention import official_mask
from ardscale.models.dit import DiT, DiTBlock, DiTConfig
from ardscale.models.kv_cache import KVCache
from ardscale.train import launch

D = GaussianDiffusion(1000)
SMALL = {"attention": "official", "context_tokens": 5, "context_dim": 16}   # K = 5 for speed


def official_reference_mask(F: int, L: int, K: int) -> torch.Tensor:
    """The official ``video_temporal_causal`` mask, built as dit_model.py:333-339 builds it (float,
    0 = attend, -inf = not), returned as bool True = attend."""
    video = torch.full((F, F), float("-inf")).triu(1).repeat_interleave(L, 0).repeat_interleave(L, 1)
    mask = torch.zeros(K + F * L, K + F * L)
    mask[-F * L:, -F * L:] = video
    return mask == 0


# ---- config and mask -----------------------------------------------------------------------------

def test_causal_is_the_default_and_official_is_validated():
    assert DiTConfig().attention == "causal" and DiTConfig().num_context == 0
    assert DiTConfig.tiny(attention="official").num_context == 77 and DiTConfig().context_dim == 768
    assert DiT(DiTConfig.tiny()).context is None
    assert not any(k.startswith("context.") for k in DiT(DiTConfig.tiny()).state_dict())
    assert DiTConfig.tiny().temporally_causal and not DiTConfig.tiny(attention="official").temporally_causal
    assert load(TINY_CONFIG, ["dit.attention=official"]).dit.attention == "official"
    bidirectional = DiT(DiTConfig.tiny(**SMALL, causal=False))   # the official causal_attn_mode: null
    out = bidirectional(torch.randn(1, 2, 32, 4), torch.tensor([[5, 9]]), torch.tensor([1]))
    assert out.shape == (1, 2, 32, 4)
    with pytest.raises(ValueError, match="dit.attention='full'"):
        DiTConfig.tiny(attention="full")
    with pytest.raises(ValueError, match="dit.attention=official .*dit.condition=text"):
        DiTConfig.tiny(attention="official", condition="text")


def test_official_mask_entries():
    """K=2 context tokens, F=3 frames of L=2 tokens: context rows attend to all; frame i's rows to
    the context and frames <= i. Equal to the mask the official code builds."""
    m = official_mask(3, 2, 2)
    assert m.shape == (8, 8) and m.dtype == torch.bool
    expected = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1],
                             [1, 1, 1, 1, 1, 1, 1, 1],
                             [1, 1, 1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 1, 1, 1, 1],
                             [1, 1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, expected)
    for F, L, K in [(3, 2, 2), (4, 32, 77), (1, 3, 1)]:
        assert torch.equal(official_mask(F, L, K), official_reference_mask(F, L, K))


def test_dit_prepends_77_context_tokens_under_the_official_mask(monkeypatch):
    """The blocks see K=77 context tokens before the F·L frame tokens, under the official mask; the
    output has the frames only."""
    model, B, F, L = DiT(DiTConfig.tiny(attention="official")).eval(), 2, 3, 32
    assert model.context.tokens.shape == (11, 77, 768)          # 10 classes + null, K, C
    shapes, masks = [], []
    model.blocks[0].attn.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    sdpa_mask = attn._sdpa_mask
    monkeypatch.setattr(attn, "_sdpa_mask", lambda *a: masks.append(sdpa_mask(*a)) or masks[-1])
    with torch.no_grad():
        out = model(torch.randn(B, F, L, 4), torch.randint(0, 1000, (B, F)), torch.tensor([1, 2]))
    assert out.shape == (B, F, L, 4)
    assert shapes == [(B, 77 + F * L, 64)]
    assert len(masks) == 2 and all(torch.equal(m, official_reference_mask(F, L, 77)) for m in masks)


def test_context_tokens_are_neither_modulated_nor_gated():
    """In a block the K context tokens skip adaLN (shift/scale) and the gates (no timestep)."""
    B, K, F, L, C = 2, 3, 2, 4, 8
    h, branch = torch.randn(B, K + F * L, C), torch.randn(B, K + F * L, C)
    shift, scale = torch.randn(B, F, 1, C), torch.randn(B, F, 1, C)
    mod = DiTBlock._modulated(h, shift, scale, K, L)
    assert torch.equal(mod[:, :K], h[:, :K])
    assert torch.allclose(mod[:, K:].view(B, F, L, C), h[:, K:].view(B, F, L, C) * (1 + scale) + shift)
    out = DiTBlock._gated_sum(h, branch, torch.zeros(B, F, 1, C), K, L)
    assert torch.equal(out[:, :K], h[:, :K] + branch[:, :K]) and torch.equal(out[:, K:], h[:, K:])


def test_null_class_context_is_the_cfg_drop():
    model = random_dit(**SMALL)
    x, t, y = torch.randn(2, 2, 32, 4), torch.tensor([[5, 50]] * 2), torch.tensor([1, 2])
    with torch.no_grad():
        dropped = model(x, t, y, drop=torch.tensor([True, False]))
        assert torch.equal(dropped, model(x, t, torch.tensor([10, 2])))
        assert (dropped - model(x, t, y)).abs().max() > 1e-3


# ---- kernels -------------------------------------------------------------------------------------

def fake_flash(q, k, v):
    """flash_attn_func's contract ((B, N, H, Dh), no mask) on SDPA."""
    out = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)))
    return out.transpose(1, 2)


@pytest.mark.parametrize("backend", ["sdpa", "flex", "flash"])
@pytest.mark.parametrize("F,L,K", [(3, 4, 5), (2, 32, 77)])
def test_kernels_with_context_equal_float64_reference(backend, F, L, K):
    """Flex runs eagerly on the CPU with autograd on (as test_models does): its mask_mod is checked."""
    g = torch.Generator().manual_seed(F + K)
    q, k, v = (torch.randn(2, 3, K + F * L, 8, generator=g) for _ in range(3))
    if backend == "flash":
        out = attn._flash_block_causal(q, k, v, F, L, flash_fn=fake_flash, K=K)
    else:
        out = attn.attention(q, k, v, L, backend, num_context=K)
    qd, kd, vd = (x.double() for x in (q, k, v))
    scores = (qd @ kd.transpose(-1, -2)) / 8 ** 0.5
    ref = scores.masked_fill(~official_reference_mask(F, L, K), float("-inf")).softmax(-1) @ vd
    assert (out.double() - ref).abs().max() < 2e-6


def test_official_dit_flex_equals_sdpa_on_cpu():
    sd = random_dit(**SMALL)
    fx = DiT(DiTConfig.tiny(**SMALL, attn_backend="flex")).eval()
    fx.load_state_dict(sd.state_dict())
    fx.requires_grad_(False)   # autograd on (else flex runs as sdpa), nothing to differentiate on CPU
    x, t, y = torch.randn(2, 3, 32, 4), torch.tensor([[5, 50, 500]] * 2), torch.tensor([1, 2])
    assert (sd(x, t, y) - fx(x, t, y)).abs().max() < 1e-5


# ---- the dependence structure --------------------------------------------------------------------

def perturb_frame_3(model) -> torch.Tensor:
    """Per frame, the largest change of the output when frame 3 of 5 changes: ``(F,)``. The weights
    are tripled (std 0.15): with random_dit's 0.05 every cross-frame effect is ~1e-4 of the output."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 5, 32, 4, generator=g), torch.tensor([[10, 20, 30, 40, 50]] * 2)
    y = torch.tensor([3, 7])
    x2 = x.clone()
    x2[:, 3] += torch.randn(x2[:, 3].shape, generator=g)
    with torch.no_grad():
        return (model(x, t, y) - model(x2, t, y)).abs().amax(dim=(0, 2, 3))


def test_causal_frames_before_3_ignore_frame_3_official_ones_do_not():
    causal = perturb_frame_3(random_dit())
    assert torch.equal(causal[:3], torch.zeros(3)) and causal[3:].min() > 1e-2
    official = perturb_frame_3(random_dit(**SMALL))            # depth 2
    assert official[:3].min() > 1e-2 and official[3:].min() > 1e-2, "frames 0-2 read frame 3 via the context"
    one_layer = perturb_frame_3(random_dit(**SMALL, depth=1))    # the context is read before it reads frame 3
    assert torch.equal(one_layer[:3], torch.zeros(3)) and one_layer[3:].min() > 1e-2


def test_official_dit_refuses_a_kv_cache():
    model = random_dit(**SMALL)
    with torch.no_grad(), pytest.raises(ValueError, match=r"dit.attention=official\) has no KV cache"):
        model(torch.randn(1, 2, 32, 4), torch.tensor([[0, 5]]), torch.tensor([1]), KVCache(), cache_frames=1)


def test_flop_formula_counts_the_context_tokens():
    from torch.utils.flop_counter import FlopCounterMode

    cfg, B, F = DiTConfig.tiny(**SMALL), 2, 3
    with FlopCounterMode(display=False) as counter:
        DiT(cfg)(torch.randn(B, F, 32, 4), torch.randint(0, 1000, (B, F)), torch.zeros(B, dtype=torch.long))
    flops = counter.get_flop_counts()["Global"]
    linear, attention = dit_forward_flops(cfg, F)
    assert flops.get(torch.ops.aten.addmm, 0) + flops.get(torch.ops.aten.mm, 0) == B * linear
    base_linear, base_attention = dit_forward_flops(DiTConfig.tiny(), F)
    H, N, K = 64, F * 32, 5
    assert linear - base_linear == 2 * 24 * K * H * H + 2 * K * 16 * H
    assert attention - base_attention == 2 * 4 * K * (K + 2 * N) * H


# ---- training and sampling -----------------------------------------------------------------------

def test_training_steps_with_official_attention(latent_root, tmp_path):
    """Six in-process DeepSpeed steps of configs/tiny.yaml with dit.attention=official (K = 5 context
    tokens of width 16, for time): finite, changing losses; the context tokens are in the checkpoint."""
    run = tmp_path / "official"
    launch(load(TINY_CONFIG, overrides(latent_root, run, **{
        "dit.attention": "official", "dit.context_tokens": 5, "dit.context_dim": 16, "train.steps": 6,
        "train.ckpt_every": 6, "optim.lr": 3e-3})))
    loss = [json.loads(r)["loss"] for r in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    assert len(loss) == 6 and all(torch.isfinite(torch.tensor(loss))) and len(set(loss)) == 6
    weights, _ = checkpoint.load_weights(str(run))
    assert weights["context.tokens"].shape == (102, 5, 16)
    assert weights["context.proj.weight"].shape == (64, 16)


def reference_sample(model, settings: SampleConfig, y: torch.Tensor) -> torch.Tensor:
    """The official sampler's loop (fifoddim.py:138-176), no cache: each iteration the DiT sees the
    window's frames (the official ``valid_interval``: ``window`` frames ending at the last frame
    that has started, fifoddim.py:80-86), guided, and frames whose step does not change keep theirs."""
    F, window = settings.frames, settings.window or settings.frames
    rows = composition_rows(F, settings.steps, settings.s)
    times = ddim_grid(settings.steps, 1000)[rows]
    x = torch.randn(len(y), F, 32, 4, generator=torch.Generator().manual_seed(3))
    end = min(window, F)
    y2 = model.with_null(y)
    for i in range(len(rows) - 1):
        if end < F and rows[i, end] != rows[i + 1, end]:
            end += 1
        w = slice(end - window, end)
        t, tn = times[i, w].expand(len(y), -1), times[i + 1, w].expand(len(y), -1)
        with torch.no_grad():
            cond, uncond = model(torch.cat([x[:, w]] * 2), torch.cat([t, t]).clamp(min=0), y2).chunk(2)
        x0 = uncond + settings.cfg_scale * (cond - uncond)
        x[:, w] = D.ddim_step(x[:, w], x0, t, tn)
    return x


@pytest.mark.parametrize("settings", [sc(5, 4, 2, 2.0), sc(7, 4, 2, 2.0, window=5)], ids=["s=2", "window"])
def test_sampler_recomputes_the_window_and_equals_a_full_recompute(settings):
    """With kv_cache=True (the default, ignored here) every call is fed the whole window: no frame
    is cached, and the video equals the official loop's."""
    model, y = random_dit(**SMALL), torch.tensor([1, 3])
    assert settings.kv_cache
    fed, forward = [], model.forward

    def spy(x, t, c, cache=None, *rest):   # frames fed and the cache of each call
        fed.append((x.shape[1], cache))
        return forward(x, t, c, cache, *rest)

    model.forward = spy
    got = sampler.sample(model, D, y, settings, generator=torch.Generator().manual_seed(3))
    assert set(fed) == {(min(settings.frames, settings.window or settings.frames), None)}   # window, no cache
    assert got.std() > 0.05
    assert (got - reference_sample(model, settings, y)).abs().max() < 1e-5


@pytest.mark.parametrize("mode", ["static", "compiled"])
def test_static_and_compiled_sampling_refuse_official_attention(mode):
    with pytest.raises(ValueError, match=f"mode='{mode}' needs a KV cache.*dit.attention=official"):
        sampler.sample(random_dit(**SMALL), D, torch.tensor([1]), sc(4, 3, 2, mode=mode))
