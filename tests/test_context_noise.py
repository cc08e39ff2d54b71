"""``sample.context_noise``: clean frames fed to the DiT noised to a fixed DDPM index, one draw per
video, with the KV cache still exact."""
import pytest
import torch
from helpers import random_dit, sc

from ardscale.config import SampleConfig
from ardscale.diffusion.sampler import composition_rows, plan_calls, sample
from ardscale.diffusion.schedule import GaussianDiffusion

D = GaussianDiffusion(1000)


def run(model, settings: SampleConfig, context=None) -> torch.Tensor:
    return sample(model, D, torch.tensor([1, 3]), settings, generator=torch.Generator().manual_seed(3),
                  context=context)


def vary(settings: SampleConfig, **kw) -> SampleConfig:
    return SampleConfig(**{**vars(settings), **kw})


CASES = {   # name: (settings, context frames)
    "s=2 cfg": (sc(8, 6, 2, 2.0, context_noise=150), 0),
    "window": (sc(14, 6, 3, window=5, context_noise=150), 0),
    "continuation eta=1": (sc(7, 6, 2, 1.5, eta=1.0, context_noise=300), 2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_context_noise_keeps_the_kv_cache_exact(name):
    settings, k = CASES[name]
    model = random_dit()
    ctx = torch.randn(2, k, 32, 4, generator=torch.Generator().manual_seed(9)) if k else None
    cached = run(model, settings, ctx)
    uncached = run(model, vary(settings, kv_cache=False), ctx)
    static = run(model, vary(settings, mode="static"), ctx)
    plain = run(model, vary(settings, context_noise=0), ctx)
    assert (cached - uncached).abs().max() < 1e-5 and (cached - static).abs().max() < 1e-5
    assert (cached[:, k:] - plain[:, k:]).abs().max() > 1e-4   # the option changes what the DiT reads
    if k:
        assert torch.equal(cached[:, :k], ctx)   # the context's latents stay clean


def test_clean_frames_enter_noised_to_k_and_labelled_k():
    """Spy on the DiT: every clean frame it is fed is sqrt(ᾱ_k) z + sqrt(1-ᾱ_k) ε with the same ε at
    every call (uncached, so clean frames are fed again and again), and its timestep is k."""
    model, k = random_dit(), 200
    ctx = torch.randn(2, 2, 32, 4, generator=torch.Generator().manual_seed(9))
    fed, forward = [], model.forward

    def spy(x, t, y, *rest):
        fed.append((x.clone(), t.clone()))
        return forward(x, t, y, *rest)

    model.forward = spy
    run(model, sc(5, 4, 2, context_noise=k, kv_cache=False), ctx)
    firsts = [x[:, :2] for x, t in fed]
    assert all(torch.equal(t[:, :2], torch.full((2, 2), k)) for _, t in fed)
    assert all(torch.equal(f, firsts[0]) for f in firsts)
    abar = D.alphas_cumprod[k]
    eps = (firsts[0] - abar.sqrt() * ctx) / (1 - abar).sqrt()   # the draw: standard normal
    assert 0.9 < eps.std() < 1.1 and eps.mean().abs() < 0.1
    assert (firsts[0] - ctx).abs().mean() > 0.1


def test_context_noise_zero_is_the_plain_sampler_and_bad_values_are_refused():
    model = random_dit()
    settings = sc(6, 4, 2, eta=1.0)
    assert torch.equal(run(model, settings), run(model, vary(settings, context_noise=0)))
    with pytest.raises(ValueError, match="context_noise=-1"):
        sc(6, 4, 2, context_noise=-1)
    with pytest.raises(ValueError, match="context_noise=1000"):
        run(model, vary(settings, context_noise=1000))


SINK = sc(14, 6, 3, window=6, sink=2)


def test_sink_frames_stay_at_the_front_of_the_sliding_window():
    """Once the window slides (frame 6 ends it), every call is fed the video's first two frames,
    clean, at positions 0-1, then at most window - sink = 4 frames (spied, uncached); the cached
    video equals the uncached one, and keeping the first frames changes the later ones."""
    calls = plan_calls(composition_rows(14, 6, 3), True, 6, False, 2)
    slid = [i for i, c in enumerate(calls) if c.start > 0]
    assert slid and all(calls[i].sink == 2 and calls[i].end - calls[i].start <= 4 for i in slid)
    assert all(c.sink == 0 for c in calls if c.start == 0) and calls[slid[0]].start == 3
    model, fed = random_dit(), []
    forward = model.forward

    def spy(x, t, y, *rest):
        fed.append((x.clone(), t.clone()))
        return forward(x, t, y, *rest)

    model.forward = spy
    uncached = run(model, vary(SINK, kv_cache=False))
    assert len(fed) == len(calls)
    for i in slid:
        x, t = fed[i]
        assert torch.equal(x[:, :2], uncached[:, :2]) and (t[:, :2] == 0).all()
        assert torch.equal(x[:, 2], uncached[:, calls[i].start]) or (t[:, 2] > 0).all()
    model.forward = forward
    cached = run(model, SINK)
    plain = run(model, vary(SINK, sink=0))
    assert (cached - uncached).abs().max() < 1e-5
    assert torch.equal(cached[:, :3], plain[:, :3]) and (cached[:, 8:] - plain[:, 8:]).abs().max() > 1e-4


def test_sink_is_inert_without_a_slide_and_refused_where_it_cannot_work():
    model = random_dit()
    assert torch.equal(run(model, sc(6, 4, 2, window=6, sink=2)), run(model, sc(6, 4, 2, window=6)))
    with pytest.raises(ValueError, match="sink=2 needs mode=eager"):
        run(model, vary(SINK, mode="static"))
    assert torch.equal(run(model, vary(SINK, window=0)), run(model, vary(SINK, window=0, sink=0)))
    with pytest.raises(ValueError, match="sink=6 needs a window of more than 6 frames"):
        run(model, vary(SINK, sink=6))
    with pytest.raises(ValueError, match="window=5 \\(sink 2\\)"):
        run(model, vary(SINK, s=1, window=5))
    with pytest.raises(ValueError, match="sink=-1"):
        sc(6, 4, 2, sink=-1)
