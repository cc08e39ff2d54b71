"""DiT and AR-VAE: shapes, block-causal attention, temporally causal decoding."""
import pytest
import torch

from ardscale.models import attention as attn
from ardscale.models.arvae import ARVAE, ARVAEConfig
from ardscale.models.attention import block_causal_mask
from ardscale.models.dit import DiT, DiTConfig
from ardscale.models.kv_cache import KVCache


def randomized(model):
    torch.manual_seed(0)
    for p in model.parameters():  # adaLN-Zero starts at zero: give every branch weight
        torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def test_block_causal_mask():
    m = block_causal_mask(3, 2)
    assert m.shape == (6, 6)
    assert m[2, 1] and m[2, 3] and not m[2, 4] and m[5, 0]


def reference_attention(q, k, v, L):
    """Block-causal attention in float64 with an explicit softmax (queries = last frames)."""
    q, k, v = (x.double() for x in (q, k, v))
    mask = block_causal_mask(q.shape[2] // L, L, None, k.shape[2] // L)
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


def fake_flash(q, k, v):
    """flash_attn_func's contract ((B, N, H, Dh), no mask) on SDPA, to test the frame split."""
    out = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)))
    return out.transpose(1, 2)


@pytest.mark.parametrize("backend", ["sdpa", "flex", "flash"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fq,fk,L", [(4, 4, 3), (2, 5, 4), (1, 3, 32)])
def test_attention_backends_equal_float64_reference(backend, dtype, fq, fk, L):
    g = torch.Generator().manual_seed(fq * 10 + fk)
    q = torch.randn(2, 3, fq * L, 8, generator=g, dtype=dtype)
    k, v = (torch.randn(2, 3, fk * L, 8, generator=g, dtype=dtype) for _ in range(2))
    if backend == "flash":
        out = attn._flash_block_causal(q, k, v, fq, L, flash_fn=fake_flash)
    else:
        out = attn.attention(q, k, v, L, backend)
    assert out.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert (out.double() - reference_attention(q, k, v, L)).abs().max() < tol


def test_backend_resolution():
    assert attn.resolve_backend("auto", torch.device("cpu")) == "sdpa"
    assert attn.resolve_backend("auto", torch.device("cuda")) == "flex"
    with pytest.raises(ValueError, match="unknown attention backend"):
        attn.resolve_backend("xformers", torch.device("cpu"))
    with pytest.raises(ValueError, match="needs the flash-attn package and a CUDA device"):
        attn.resolve_backend("flash", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown attention backend"):
        DiT(DiTConfig.tiny(attn_backend="bogus"))


def test_dit_flex_backend_equals_sdpa_on_cpu():
    sd = randomized(DiT(DiTConfig.tiny(attn_backend="sdpa")))
    fx = DiT(DiTConfig.tiny(attn_backend="flex")).eval()
    fx.load_state_dict(sd.state_dict())
    fx.requires_grad_(False)   # autograd on (else flex runs as sdpa) but nothing to differentiate on CPU
    x, t, y = torch.randn(2, 3, 32, 4), torch.tensor([[5, 50, 500]] * 2), torch.tensor([1, 2])
    assert (sd(x, t, y) - fx(x, t, y)).abs().max() < 1e-5


def test_flex_without_autograd_runs_sdpa():
    # Sampling calls attention with many (Fq, Fk) shapes; compiled flex would recompile for each.
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 2 * 4, 8, generator=g)
    k, v = (torch.randn(1, 2, 5 * 4, 8, generator=g) for _ in range(2))
    with torch.no_grad():
        assert torch.equal(attn.attention(q, k, v, 4, "flex"), attn.attention(q, k, v, 4, "sdpa"))
    assert not torch.equal(attn.attention(q, k, v, 4, "flex"), attn.attention(q, k, v, 4, "sdpa"))


def test_dit_kv_cache_equals_full_forward():
    model = randomized(DiT(DiTConfig.tiny()))
    x = torch.randn(2, 6, 32, 4)
    t = torch.tensor([[0, 0, 0, 100, 400, 900]] * 2)
    y = torch.tensor([1, 7])
    with torch.no_grad():
        full = model(x, t, y)
        cache = KVCache()
        first = model(x[:, :2], t[:, :2], y, cache, cache_frames=2)     # frames 0-1 enter the cache
        assert cache.num_frames == 2 and cache.keys[0].shape == (2, 4, 64, 16)
        rest = model(x[:, 2:], t[:, 2:], y, cache, cache_frames=1)    # frame 2 joins them
        last = model(x[:, 3:], t[:, 3:], y, cache)
    assert (first - full[:, :2]).abs().max() < 1e-5
    assert (rest - full[:, 2:]).abs().max() < 1e-5
    assert (last - full[:, 3:]).abs().max() < 1e-5 and cache.num_frames == 3


@pytest.mark.parametrize("j", [0, 2, 4])
def test_dit_is_block_causal(j):
    model = randomized(DiT(DiTConfig.tiny()))
    x = torch.randn(2, 5, 32, 4)
    t = torch.tensor([[10, 20, 30, 40, 50], [0, 0, 999, 999, 999]])
    y = torch.tensor([3, 10])
    with torch.no_grad():
        a = model(x, t, y)
        x2 = x.clone()
        x2[:, j] += torch.randn_like(x2[:, j])
        b = model(x2, t, y)
    assert a.shape == (2, 5, 32, 4)
    assert torch.allclose(a[:, :j], b[:, :j], atol=1e-6), "an earlier frame saw a later one"
    assert (a[:, j:] - b[:, j:]).abs().amax(dim=(2, 3)).min() > 1e-4, "frames >= j ignore frame j"


def test_dit_timestep_and_label_condition_the_output():
    model = randomized(DiT(DiTConfig.tiny()))
    x = torch.randn(1, 2, 32, 4)
    with torch.no_grad():
        base = model(x, torch.tensor([[5, 5]]), torch.tensor([1]))
        other_t = model(x, torch.tensor([[5, 900]]), torch.tensor([1]))
        null = model(x, torch.tensor([[5, 5]]), torch.tensor([10]))
    assert torch.allclose(base[:, 0], other_t[:, 0], atol=1e-6)
    assert (base[:, 1] - other_t[:, 1]).abs().max() > 1e-3
    assert (base - null).abs().max() > 1e-3


def test_dit_rejects_bad_shapes():
    model = DiT(DiTConfig.tiny())
    with pytest.raises(ValueError, match="tokens_per_frame|expects"):
        model(torch.randn(1, 2, 16, 4), torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="timesteps"):
        model(torch.randn(1, 2, 32, 4), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("j", [1, 2])
def test_arvae_decoder_is_temporally_causal(j):
    vae = randomized(ARVAE(ARVAEConfig.tiny(image_size=16, patch_size=4, tokens_per_frame=4, temporal=True)))
    video = torch.rand(1, 4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = vae.encode(video)
        assert z.shape == (1, 4, 4, 4)
        video2 = video.clone()
        video2[:, j] = -video2[:, j]
        z2 = vae.encode(video2)   # time-agnostic encoder: only frame j's latents move
        moved = (z - z2).abs().amax(dim=(0, 2, 3))
        assert moved[j] > 1e-3 and moved[:j].max() == 0 and moved[j + 1:].max() == 0
        a, b = vae.decode(z), vae.decode(z2)
        z3 = z.clone()
        z3[:, j] += torch.randn_like(z3[:, j])
        c = vae.decode(z3)
    assert a.shape == video.shape
    assert torch.equal(a[:, :j], b[:, :j]), "a decoded frame < j changed with frame j's pixels"
    assert torch.equal(a[:, :j], c[:, :j]), "a decoded frame < j read frame j's latents"
    assert (a[:, j:] - c[:, j:]).abs().amax(dim=(2, 3,
                                                 4)).min() > 1e-4, "frames >= j ignore frame j's latents"


def test_arvae_latent_contract_tokens_on_a_sphere_and_decoding_ignores_their_scale():
    vae = randomized(ARVAE(ARVAEConfig.tiny(temporal=True)))
    with torch.no_grad():
        z = vae.encode(torch.rand(2, 3, 3, 64, 64) * 2 - 1)
        norms = z.norm(dim=-1)
        assert torch.allclose(norms, torch.full_like(norms, 2.0), atol=1e-5)      # √D, D = 4
        assert torch.allclose((z * 0.5).pow(2).mean(dim=-1).sqrt(), torch.full_like(norms, 0.5), atol=1e-5)
        scale = torch.rand(2, 3, 32, 1) * 3 + 0.1                                 # any positive rescaling
        assert torch.allclose(vae.decode(z), vae.decode(z * scale), atol=1e-5)


def test_stage2_vae_extended_to_stage3_decodes_jointly_as_frame_by_frame():
    """Stage 3 starts exactly at the stage-2 function: zero-initialised temporal blocks."""
    from ardscale.train import _load_previous_stage

    stage2 = randomized(ARVAE(ARVAEConfig.tiny()))
    torch.manual_seed(1)
    stage3 = ARVAE(ARVAEConfig.tiny(temporal=True)).eval()
    _load_previous_stage(stage3, stage2.state_dict(), "stage2")
    z = torch.randn(2, 5, 32, 4)
    with torch.no_grad():
        joint = stage3.decode(z)
        one_by_one = torch.cat([stage2.decode(z[:, i:i + 1]) for i in range(5)], dim=1)
        assert joint.abs().mean() > 0.02
        assert (joint - one_by_one).abs().max() < 1e-5
        for blk in stage3.temporal:           # and the temporal blocks can learn (not all-zero)
            torch.nn.init.normal_(blk.coarse.proj.weight, std=0.1)
        assert (stage3.decode(z)[:, 1:] - one_by_one[:, 1:]).abs().max() > 1e-3
    broken = {k: v for k, v in stage2.state_dict().items() if not k.startswith("pixel_head.")}
    with pytest.raises(RuntimeError, match="init_from=stage2.*missing.*pixel_head"):
        _load_previous_stage(ARVAE(ARVAEConfig.tiny(temporal=True)), broken, "stage2")


def test_arvae_rejects_wrong_resolution():
    with pytest.raises(ValueError, match="video must be"):
        ARVAE(ARVAEConfig.tiny()).encode(torch.zeros(1, 2, 3, 32, 32))


def test_arvae_windowed_decode():
    vae = randomized(ARVAE(ARVAEConfig.tiny(temporal=True)))
    z = torch.randn(1, 6, vae.config.tokens_per_frame, vae.config.latent_dim)
    with torch.no_grad():
        full, win = vae.decode(z), vae.decode(z, window=3)
        assert torch.allclose(win[:, :3], full[:, :3], atol=1e-6)
        assert torch.allclose(win[:, 4], vae.decode(z[:, 2:5])[:, -1], atol=1e-6)
        assert torch.equal(vae.decode(z, window=6), full)


def test_arvae_batched_window_decode_equals_one_window_per_call():
    vae = randomized(ARVAE(ARVAEConfig.tiny(temporal=True)))
    z = torch.randn(2, 11, vae.config.tokens_per_frame, vae.config.latent_dim)
    with torch.no_grad():
        tails = [vae.decode(z[:, i - 3:i + 1])[:, -1:] for i in range(4, 11)]
        ref = torch.cat([vae.decode(z[:, :4]), *tails], dim=1)
        for frames_per_call in (1, 8, 256):   # one window, two, all seven per call
            assert (vae.decode(z, 4, frames_per_call) - ref).abs().max() < 1e-6


@pytest.mark.parametrize("every,recomputed", [(1, [True, True, True, True]), (2, [True, False, True, False])])
def test_dit_activation_checkpointing_gives_the_same_gradients(every, recomputed):
    torch.manual_seed(0)
    plain = randomized(DiT(DiTConfig.tiny(depth=4))).train()
    ckpt = DiT(DiTConfig.tiny(depth=4, grad_checkpointing=True, checkpoint_every=every)).train()
    ckpt.load_state_dict(plain.state_dict())
    x, t, y = torch.randn(2, 3, 32, 4), torch.tensor([[5, 50, 500]] * 2), torch.tensor([1, 2])
    calls = []
    for m in (plain, ckpt):
        for i, blk in enumerate(m.blocks):
            blk.forward = lambda *a, _f=blk.forward, _k=(m, i), **k: calls.append(_k) or _f(*a, **k)
        m(x, t, y).pow(2).mean().backward()
    assert all(calls.count((plain, i)) == 1 for i in range(4))
    # a checkpointed block runs again in backward; the others keep their activations
    assert [calls.count((ckpt, i)) == 2 for i in range(4)] == recomputed
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def linear_flops(counter) -> int:
    """FLOPs of the linear layers: ``addmm``, or ``mm`` where DeepSpeed's ZeRO-3 (run earlier in
    this process) left ``F.linear`` as a matmul plus a bias add."""
    flops = counter.get_flop_counts()["Global"]
    return flops.get(torch.ops.aten.addmm, 0) + flops.get(torch.ops.aten.mm, 0)


def test_dit_adaln_runs_once_per_frame_and_the_flop_count_is_what_runs():
    from torch.utils.flop_counter import FlopCounterMode

    from ardscale.engine.flops import dit_forward_flops
    cfg = DiTConfig.tiny(depth=2)
    model, B, F = DiT(cfg), 2, 3
    seen = []
    model.blocks[0].adaLN_modulation.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    x = torch.randn(B, F, cfg.tokens_per_frame, cfg.latent_dim)
    with FlopCounterMode(display=False) as counter:
        model(x, torch.randint(0, 1000, (B, F)), torch.zeros(B, dtype=torch.long))
    assert seen == [(B, F, cfg.hidden_size)]                   # per frame, not per token (B, F·L, H)
    linear, attention = dit_forward_flops(cfg, F)
    assert linear_flops(counter) == B * linear
    H, N = cfg.hidden_size, F * cfg.tokens_per_frame
    assert attention == cfg.depth * 4 * N * N * H * (F + 1) / (2 * F)


def test_text_dit_flop_count_adds_the_cross_attention_that_runs():
    from torch.utils.flop_counter import FlopCounterMode

    from ardscale.engine.flops import dit_forward_flops
    from ardscale.models.dit import TextCondition
    cfg = DiTConfig.tiny(depth=2, condition="text", text_dim=24, text_tokens=5)
    model, B, F = DiT(cfg), 2, 3
    text = TextCondition(torch.randn(B, 5, 24), torch.ones(B, 5, dtype=torch.bool), torch.randn(B, 24))
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(B, F, cfg.tokens_per_frame, cfg.latent_dim), torch.randint(0, 1000, (B, F)), text)
    linear, attention = dit_forward_flops(cfg, F)
    assert linear_flops(counter) == B * linear
    H, N, S = cfg.hidden_size, F * cfg.tokens_per_frame, 5
    class_linear, class_attention = dit_forward_flops(DiTConfig.tiny(depth=2), F)
    assert linear - class_linear == 2 * (4 * N + 4 * S) * H * H + 2 * 6 * (24 * H + H * H)
    assert attention - class_attention == 2 * 4 * N * S * H


def test_bidirectional_ablation_reads_later_frames_and_samples_every_frame_each_step():
    from helpers import sc

    from ardscale.diffusion.sampler import sample
    from ardscale.diffusion.schedule import GaussianDiffusion

    model = randomized(DiT(DiTConfig.tiny(causal=False)))
    x, t, y = torch.randn(1, 3, 32, 4), torch.tensor([[10, 500, 900]]), torch.tensor([1])
    x2 = x.clone()
    x2[:, 2] += 1.0
    with torch.no_grad():
        assert (model(x, t, y)[:, 0] - model(x2, t, y)[:, 0]).abs().max() > 1e-3   # frame 0 reads frame 2
        fed = []
        forward = model.forward
        model.forward = lambda xi, *a, **k: fed.append(xi.shape[1]) or forward(xi, *a, **k)
        sample(model, GaussianDiffusion(), y, sc(3, 4, 2), generator=torch.Generator().manual_seed(0))
    assert set(fed) == {3}                     # every frame, every step, no cache
    with pytest.raises(ValueError, match="bidirectional DiT generates at most window=2"):
        sample(model, GaussianDiffusion(), y, sc(3, 4, 2, window=2))


@pytest.mark.parametrize("kind", ["conv", "linear", "both"])
def test_pixel_heads_and_the_gradient_at_their_last_conv(kind):
    """Each head maps (B, W, g, g) tokens to (B, 3, g·p, g·p) pixels; the adaptive GAN weight's
    gradient at ``conv_out`` (from its input and the output gradient) equals autograd's."""
    from ardscale.models.arvae import PixelHead

    torch.manual_seed(0)
    head = PixelHead(8, 4, 3, base=4, kind=kind)
    torch.nn.init.normal_(head.conv_out.weight, std=0.1)      # "both" starts it at zero
    x = torch.randn(2, 8, 3, 3)
    grabbed = {}
    hook = head.conv_out.register_forward_hook(lambda m, inp, out: grabbed.update(inp=inp[0]))
    out = head(x)
    hook.remove()
    assert out.shape == (2, 3, 12, 12)
    g = torch.randn_like(out)
    expected = torch.autograd.grad((out * g).sum(), head.conv_out.weight)[0]
    got = torch.nn.grad.conv2d_weight(grabbed["inp"].detach(), head.conv_out.weight.shape,
                                      head.grad_at_conv_out(g), padding=head.conv_out.padding)
    assert torch.allclose(got, expected, atol=1e-5)


def test_linear_head_is_patch_local_and_both_starts_as_the_linear_head():
    from ardscale.models.arvae import PixelHead

    torch.manual_seed(0)
    linear, both = PixelHead(8, 4, 3, 4, "linear"), PixelHead(8, 4, 3, 4, "both")
    both.linear.load_state_dict(linear.conv_out.state_dict())
    assert sorted(linear.state_dict()) == ["conv_out.bias", "conv_out.weight"]
    x = torch.randn(1, 8, 3, 3)
    x2 = x.clone()
    x2[:, :, 1, 2] += 1.0                                     # token (row 1, column 2) moves
    with torch.no_grad():
        moved = (linear(x2) - linear(x)).abs()[0].amax(0) > 0  # (12, 12) pixels that changed
        assert moved[4:8, 8:12].all() and moved.sum() == 16       # exactly its 4×4 patch
        assert torch.equal(both(x), linear(x))                    # conv path's last conv at zero
        torch.nn.init.normal_(both.conv_out.weight, std=0.1)
        spread = (both(x2) - both(x)).abs()[0].amax(0) > 0
        assert spread.sum() > 16                                  # the conv path reaches across patch edges
    with pytest.raises(ValueError, match="vae.pixel_head='mlp'"):
        ARVAEConfig.tiny(pixel_head="mlp")
