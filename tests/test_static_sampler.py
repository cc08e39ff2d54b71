"""The static KV cache and the compiled sampler step (``sample.mode=static|compiled``) against the
eager sampler, and the compile count of a whole video."""
import pytest
import torch
from helpers import random_dit, sc
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

from ardscale.config import SampleConfig
from ardscale.diffusion import sampler
from ardscale.diffusion.schedule import GaussianDiffusion
from ardscale.models.dit import TextCondition
from ardscale.models.kv_cache import StaticKVCache

D = GaussianDiffusion(1000)


def run(model, y, settings: SampleConfig, context=None) -> torch.Tensor:
    return sampler.sample(model, D, y, settings, generator=torch.Generator().manual_seed(3 + settings.seed),
                          context=context)


@pytest.fixture
def compile_with(monkeypatch):
    """Point the compiled step at ``backend`` (a fresh dynamo state, restored after)."""
    def use(backend):
        torch._dynamo.reset()
        monkeypatch.setattr(sampler, "COMPILE_BACKEND", backend)
        monkeypatch.setattr(sampler, "_COMPILED", {})
        return backend
    yield use
    torch._dynamo.reset()


CASES = {   # name: (settings, context frames)
    "synchronous": (sc(8, 6, 0, 2.0), 0),
    "s=2 cfg": (sc(8, 6, 2, 2.0), 0),
    "auto-regressive": (sc(5, 6, 6), 0),
    "window": (sc(14, 6, 3, window=5), 0),
    "continuation eta=1": (sc(7, 6, 2, 1.5, eta=1.0), 2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_static_cache_gives_the_eager_video_cached_and_uncached(name):
    settings, k = CASES[name]
    model, y = random_dit(), torch.tensor([1, 3])
    ctx = torch.randn(2, k, 32, 4, generator=torch.Generator().manual_seed(9)) if k else None
    cached = run(model, y, settings, ctx)
    uncached = run(model, y, SampleConfig(**{**vars(settings), "kv_cache": False}), ctx)
    static = run(model, y, SampleConfig(**{**vars(settings), "mode": "static"}), ctx)
    assert cached[:, k:].std() > 0.05
    assert (static - cached).abs().max() < 1e-5 and (static - uncached).abs().max() < 1e-5
    if k:
        assert torch.equal(static[:, :k], ctx)


def test_static_cache_with_a_text_dit_and_cfg():
    S, C = 6, 16
    model = random_dit(condition="text", text_dim=C, text_tokens=S, caption_dropout=0.0)
    g = torch.Generator().manual_seed(4)
    text = TextCondition(torch.randn(2, S, C, generator=g), torch.ones(2, S, dtype=torch.bool),
                         torch.randn(2, C, generator=g))
    for s in (0, 2, 4):
        eager = run(model, text, sc(5, 4, s, 3.0))
        static = run(model, text, sc(5, 4, s, 3.0, mode="static"))
        assert (static - eager).abs().max() < 1e-5


def test_dit_with_a_static_cache_equals_its_full_forward():
    """Calls of a fixed width at moving offsets, as the sampler makes them: each call's outputs
    equal the full forward's, the frames before the offset coming from the buffer only."""
    model = random_dit()
    x, y = torch.randn(2, 6, 32, 4), torch.tensor([1, 7])
    t = torch.tensor([[0, 0, 0, 100, 400, 900]] * 2)
    cache = StaticKVCache.for_model(model, batch=2, max_frames=6)
    assert cache.keys[0].shape == (2, 4, 6 * 32, 16)
    with torch.no_grad():
        full = model(x, t, y)
        for offset in (0, 1, 3):   # frames offset … offset+2; earlier ones were written by earlier calls
            cache.set_offset(offset)
            part = model(x[:, offset:offset + 3], t[:, offset:offset + 3], y, cache)
            assert (part - full[:, offset:offset + 3]).abs().max() < 1e-5
        cache.keys[0][:, :, 6 * 32 - 32:] = 1e4   # a later frame's keys: no earlier query reads them
        cache.set_offset(2)
        assert (model(x[:, 2:5], t[:, 2:5], y, cache) - full[:, 2:5]).abs().max() < 1e-5


def test_compiled_step_compiles_once_for_a_whole_video(compile_with):
    counter = compile_with(CompileCounter())
    model, y = random_dit(), torch.tensor([1, 3])
    for name in ("s=2 cfg", "window"):
        settings, _ = CASES[name]
        eager = run(model, y, settings)
        compiled = run(model, y, SampleConfig(**{**vars(settings), "mode": "compiled"}))
        assert (compiled - eager).abs().max() < 1e-5
    # 8 frames (40 calls) and 14 frames in a window of 5 (64 calls): one graph each, no recompile
    assert counter.frame_count == 2
    run(model, y, SampleConfig(**{**vars(CASES["s=2 cfg"][0]), "mode": "compiled", "seed": 7}))
    assert counter.frame_count == 2, "a second video of the same length recompiled"


def test_compiled_flex_attention_reads_its_block_mask_from_the_offset(compile_with):
    """The CUDA path (FlexAttention with a BlockMask built from the offset tensor, inside the
    compiled step), traced on the CPU with aot_eager: inductor's CPU lowering of FlexAttention
    cannot compile it, and a CUDA run is in benchmarks/gpu_check.py."""
    graphs, aot_eager = [], torch._dynamo.lookup_backend("aot_eager")

    def backend(gm, example_inputs):   # aot_eager, keeping each graph dynamo captured
        graphs.append(str(gm.graph))
        return aot_eager(gm, example_inputs)

    compile_with(backend)
    model, y = random_dit(attn_backend="flex"), torch.tensor([1, 3])
    for name in ("s=2 cfg", "window"):
        settings, _ = CASES[name]
        eager = run(model, y, settings)
        compiled = run(model, y, SampleConfig(**{**vars(settings), "mode": "compiled"}))
        assert (compiled - eager).abs().max() < 1e-5
    # one graph a video, and in it FlexAttention, not the SDPA the eager static path takes
    assert [("flex_attention" in g, "scaled_dot_product" in g) for g in graphs] == [(True, False)] * 2


@pytest.mark.slow
def test_inductor_compiles_the_step_once_and_matches_eager(compile_with):
    counter = compile_with(CompileCounterWithBackend("inductor"))
    model, y = random_dit(), torch.tensor([1, 3])
    settings = sc(8, 6, 2, 2.0)
    eager = run(model, y, settings)
    compiled = run(model, y, sc(8, 6, 2, 2.0, mode="compiled"))
    assert (compiled - eager).abs().max() < 1e-5 and counter.frame_count == 1


def test_one_static_cache_serves_every_video_of_a_shape(monkeypatch):
    """CUDA graphs replay on fixed addresses: videos of the same shape reuse the buffers, and what
    an earlier video left there does not reach the next one."""
    monkeypatch.setattr(sampler, "_STATIC_CACHES", {})
    model, y = random_dit(), torch.tensor([1, 3])
    first = run(model, y, sc(8, 6, 2, 2.0, mode="static", seed=1))
    buffers = [k.data_ptr() for k in next(iter(sampler._STATIC_CACHES.values())).keys]
    other = run(model, y, sc(8, 6, 2, 2.0, mode="static", seed=2))    # fills the buffers with another video
    assert (other - first).abs().max() > 1e-2
    assert (other - run(model, y, sc(8, 6, 2, 2.0, seed=2))).abs().max() < 1e-5
    cache = next(iter(sampler._STATIC_CACHES.values()))
    for buf in (*cache.keys, *cache.values):
        buf.fill_(1e4)     # what any earlier video may have left: must not reach the next one
    assert torch.equal(run(model, y, sc(8, 6, 2, 2.0, mode="static", seed=1)), first)
    assert len(sampler._STATIC_CACHES) == 1
    assert [k.data_ptr() for k in next(iter(sampler._STATIC_CACHES.values())).keys] == buffers
    run(model, y, sc(5, 6, 2, 2.0, mode="static"))   # another length: its own buffers
    assert len(sampler._STATIC_CACHES) == 2


def test_static_cache_refuses_activations_of_another_dtype():
    model = random_dit()
    cache = StaticKVCache.for_model(model.to(torch.bfloat16), batch=1, max_frames=2)
    fp32 = random_dit()
    with torch.no_grad(), pytest.raises(ValueError, match="holds torch.bfloat16, the DiT computes in"):
        fp32(torch.randn(1, 2, 32, 4), torch.tensor([[5, 9]]), torch.tensor([1]), cache)


def test_static_modes_refuse_a_bidirectional_dit_and_flex_on_cpu_inductor():
    y = torch.tensor([0])
    with pytest.raises(ValueError, match="needs a causal DiT"):
        run(random_dit(causal=False), y, sc(4, 3, 0, mode="static"))
    with pytest.raises(ValueError, match="attn_backend"):
        run(random_dit(attn_backend="flex"), y, sc(4, 3, 0, mode="compiled"))
    with pytest.raises(ValueError, match="mode='fast'"):
        SampleConfig(mode="fast")
