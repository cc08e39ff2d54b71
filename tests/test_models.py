"""DiT and AR-VAE: shapes, block-causal attention, temporally causal decoding."""
import pytest
import torch

from ardscale.models.arvae import ARVAE, ARVAEConfig, decoder_mask
from ardscale.models.attention import block_causal_mask
from ardscale.models.dit import DiT, DiTConfig


def randomized(model):
    torch.manual_seed(0)
    for p in model.parameters():  # adaLN-Zero starts at zero: give every branch weight
        torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def test_block_causal_mask():
    m = block_causal_mask(3, 2)
    assert m.shape == (6, 6)
    assert m[2, 1] and m[2, 3] and not m[2, 4] and m[5, 0]


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


def test_decoder_mask_layout():
    m = decoder_mask(2, latent_tokens=1, num_patches=2)   # [l0 p0 p0 | l1 p1 p1]
    assert m[4, 0] and not m[4, 1] and not m[1, 3] and m[3, 5]


@pytest.mark.parametrize("j", [1, 2])
def test_arvae_decoder_is_temporally_causal(j):
    vae = randomized(ARVAE(ARVAEConfig.tiny(image_size=16, patch_size=4, latent_tokens=4)))
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
    assert (a[:, j:] - c[:, j:]).abs().amax(dim=(2, 3, 4)).min() > 1e-4, "frames >= j ignore frame j's latents"


def test_arvae_rejects_wrong_resolution():
    with pytest.raises(ValueError, match="video must be"):
        ARVAE(ARVAEConfig.tiny()).encode(torch.zeros(1, 2, 3, 32, 32))
