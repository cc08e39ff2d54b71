"""The text-conditioned DiT: cross-attention to caption tokens, pooled caption in adaLN, caption
dropout to the null caption, CFG, causality and the KV cache with text."""
import pytest
import torch

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
    run = lambda cache: sample(model, diffusion, text, num_frames=5, num_steps=4, s=s, cfg_scale=3.0,
                               generator=torch.Generator().manual_seed(0), kv_cache=cache)
    cached, plain = run(True), run(False)
    torch.testing.assert_close(cached, plain, rtol=1e-4, atol=1e-4)
    other = sample(model, diffusion, captions(2, 5), num_frames=5, num_steps=4, s=s, cfg_scale=3.0,
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
