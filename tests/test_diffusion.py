"""Timestep schedulers (FoPP Alg. 1, AD Eq. 5), the per-frame schedule and the sampler."""
import itertools
import math

import pytest
import torch
from helpers import random_dit, sc

from ardscale.diffusion.ad import ad_timesteps, ddim_grid
from ardscale.diffusion.sampler import frames_in_flight, sample
from ardscale.diffusion.schedule import GaussianDiffusion
from ardscale.diffusion.timesteps import fopp_tables, fopp_with_frame, sample_timesteps
from ardscale.models.dit import DiT, DiTConfig


def compositions(F, T):
    return [c for c in itertools.product(range(T), repeat=F) if all(a <= b for a, b in itertools.pairwise(c))]


def fopp_exact(F, T):
    """P(composition) under Alg. 1: f ~ U, t_f ~ U, then uniform over compositions through (f, t_f)."""
    comps = compositions(F, T)
    through = {(f, v): sum(1 for c in comps if c[f] == v) for f in range(F) for v in range(T)}
    return {c: sum(1 / (F * T * through[(f, c[f])]) for f in range(F)) for c in comps}


def chi2_ok(counts: dict, probs: dict, n: int) -> tuple[bool, float]:
    """Chi-square goodness of fit within 5 standard deviations of its mean (dof)."""
    chi2 = sum((counts.get(c, 0) - n * p) ** 2 / (n * p) for c, p in probs.items())
    dof = len(probs) - 1
    return chi2 < dof + 5 * math.sqrt(2 * dof), chi2


@pytest.mark.parametrize("name", ["fopp", "fopp_dp"])
@pytest.mark.parametrize("F,T", [(3, 3), (4, 6)])
def test_fopp_matches_alg1_distribution(name, F, T):
    n = 100_000
    t = sample_timesteps(name, n, F, T, generator=torch.Generator().manual_seed(0))
    assert (t.diff(dim=1) >= 0).all(), "FoPP drew a decreasing composition"
    assert t.min() >= 0 and t.max() <= T - 1
    exact = fopp_exact(F, T)
    assert len(exact) == math.comb(F + T - 1, F)
    counts = {}
    for row in map(tuple, t.tolist()):
        counts[row] = counts.get(row, 0) + 1
    assert set(counts) <= set(exact)
    ok, chi2 = chi2_ok(counts, exact, n)
    assert ok, f"chi2={chi2:.1f} for {len(exact) - 1} dof"


@pytest.mark.parametrize("F,T", [(3, 3), (4, 6)])
def test_fopp_chosen_frame_is_uniform_and_completions_are_uniform(F, T):
    n = 120_000
    t, f = fopp_with_frame(n, F, T, generator=torch.Generator().manual_seed(1))
    # (a) the chosen frame's timestep is uniform over 0..T-1
    tf = t[torch.arange(n), f]
    ok, chi2 = chi2_ok(dict(enumerate(torch.bincount(tf, minlength=T).tolist())),
                       {v: 1 / T for v in range(T)}, n)
    assert ok, f"t_f marginal chi2={chi2:.1f}"
    # (b) given (f, t_f), every non-decreasing completion is equally likely
    for fr, v in [(1, T // 2), (0, 0), (F - 1, T - 1)]:
        rows = t[(f == fr) & (tf == v)]
        through = [c for c in compositions(F, T) if c[fr] == v]
        counts = {}
        for row in map(tuple, rows.tolist()):
            counts[row] = counts.get(row, 0) + 1
        assert set(counts) <= set(through)
        if len(through) > 1:
            ok, chi2 = chi2_ok(counts, {c: 1 / len(through) for c in through}, len(rows))
            assert ok, f"(f, t_f)=({fr}, {v}): chi2={chi2:.1f} over {len(through)} completions"


def test_naive_scheduler_completions_are_not_uniform():
    # Fix t_1 = 0 (F=3, T=3): naive gives (0,0,0) 1/9 but (0,2,2) 1/3; uniform would be 1/6 each.
    F, T, n = 3, 3, 60_000
    t = sample_timesteps("naive", n, F, T, generator=torch.Generator().manual_seed(2))
    rows = t[t[:, 0] == 0]
    through = [c for c in compositions(F, T) if c[0] == 0]
    counts = {}
    for row in map(tuple, rows.tolist()):
        counts[row] = counts.get(row, 0) + 1
    ok, chi2 = chi2_ok(counts, {c: 1 / len(through) for c in through}, len(rows))
    assert not ok and chi2 > 1000


def test_fopp_tables_equal_the_papers_dp_counts():
    F, T = 5, 7
    log_cum_e, log_cum_s = fopp_tables(F, T)
    # d^e by the recurrence d[i][j] = d[i][j-1] + d[i-1][j] (prefix counts), d[0][*] = 1
    de = [[1] * T]
    for i in range(1, F):
        row = []
        for j in range(T):
            row.append((row[j - 1] if j else 0) + de[i - 1][j])
        de.append(row)
    de_t = torch.tensor(de, dtype=torch.float64)
    assert torch.allclose(log_cum_e, torch.log(de_t.cumsum(1)), atol=1e-9)
    ds_t = de_t.flip(0)  # suffix counts are prefix counts of the mirrored problem
    assert torch.allclose(log_cum_s, torch.log(ds_t.cumsum(1)), atol=1e-9)


@pytest.mark.parametrize("name", ["fopp", "fopp_dp"])
def test_fopp_large_sizes_do_not_overflow(name):
    t = sample_timesteps(name, 64, 1024, 1000, generator=torch.Generator().manual_seed(1))
    assert (t.diff(dim=1) >= 0).all() and t.min() >= 0 and t.max() <= 999
    assert t.unique().numel() > 500  # spread over the range, not collapsed at one end


def test_fopp_edge_sizes_and_seeding():
    assert sample_timesteps("fopp", 5, 1, 7, torch.Generator().manual_seed(0)).shape == (5, 1)
    assert (sample_timesteps("fopp", 5, 4, 1) == 0).all()  # T=1: only the all-zero composition
    a = sample_timesteps("fopp", 8, 16, 1000, torch.Generator().manual_seed(3))
    b = sample_timesteps("fopp", 8, 16, 1000, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_naive_scheduler_is_biased_towards_the_all_T_composition():
    # The paper's argument (Sec. 3.3): t_1 = T already forces <T, ..., T>, probability ≈ 1/T.
    F, T, n = 3, 3, 60_000
    t = sample_timesteps("naive", n, F, T, generator=torch.Generator().manual_seed(0))
    assert (t.diff(dim=1) >= 0).all()
    p_all_T = (t == T - 1).all(dim=1).float().mean().item()
    assert p_all_T > 1.5 * fopp_exact(F, T)[(T - 1,) * F]


def test_equal_and_independent():
    g = torch.Generator().manual_seed(0)
    eq = sample_timesteps("equal", 100, 5, 10, generator=g)
    assert (eq == eq[:, :1]).all()
    ind = sample_timesteps("independent", 2000, 5, 10, generator=g)
    assert (ind.diff(dim=1) < 0).any()
    with pytest.raises(ValueError, match="unknown timestep scheduler"):
        sample_timesteps("bogus", 1, 1, 1)


def official_timestep_matrix(F: int, N: int, s: int) -> torch.Tensor:
    """The official generate_timestep_matrix (iva-mzsun/AR-Diffusion multiddim.py), re-stated in
    its own terms: progress p (0 = noise, N = clean), each row from the previous one."""
    pre, out = torch.zeros(F, dtype=torch.long), []
    while not bool((pre == N).all()):
        new = torch.zeros(F, dtype=torch.long)
        for i in range(F):
            new[i] = pre[i] + 1 if i == 0 or pre[i - 1] == N else new[i - 1] - s
        pre = new.clamp(0, N)
        out.append(pre)
    return N - torch.stack(out)


@pytest.mark.parametrize("F", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("N", [1, 2, 4, 10])
@pytest.mark.parametrize("s", [0, 1, 2, 3, 9, 10, 11, 100])
def test_ad_scheduler_matches_official_rows(F, N, s):
    rows = ad_timesteps(F, N, s)
    assert torch.equal(rows[1:], official_timestep_matrix(F, N, s))
    assert rows.shape == ((N + (F - 1) * s if s < N else F * N) + 1, F)
    assert (rows[0] == N).all() and (rows[-1] == 0).all()
    assert (rows.diff(dim=1) >= 0).all(), "a row is not non-decreasing along frames"
    assert (rows.diff(dim=0) <= 0).all(), "a frame's timestep increased over iterations"
    assert ((rows[:-1] - rows[1:]) <= 1).all(), "a frame skipped a DDIM step"


def test_ad_s0_is_synchronous_and_s_ge_n_is_autoregressive_from_clean_context():
    assert (ad_timesteps(4, 5, 0) == torch.arange(5, -1, -1)[:, None]).all()
    for s in (4, 5, 100):
        ar = ad_timesteps(3, 4, s)
        for r in ar:  # one frame at a time, and only once every frame before it is clean
            busy = ((r > 0) & (r < 4)).nonzero().flatten()
            assert len(busy) <= 1
            assert all((r[:i] == 0).all() for i in busy.tolist())
        # s = N-1 is not yet auto-regressive: frame 1 starts in the row where frame 0 ends.
    assert ad_timesteps(2, 4, 3)[4].tolist() == [0, 3]
    assert ad_timesteps(2, 4, 4)[4].tolist() == [0, 4]


def test_q_sample_and_ddim_step():
    d = GaussianDiffusion(1000)
    x0 = torch.randn(2, 3, 32, 4, dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([[0, 500, 999], [999, 999, 999]])
    xt = d.q_sample(x0, t, noise)
    abar = d.alphas_cumprod[999]
    assert torch.allclose(xt[1, 0], abar.sqrt() * x0[1, 0] + (1 - abar).sqrt() * noise[1, 0])
    # With the true x0, one DDIM (eta=0) step lands exactly on the q_sample of the next timestep.
    t_next = torch.tensor([[-1, 300, 999], [10, 999, 500]])
    out = d.ddim_step(xt, x0, t, t_next)
    assert torch.allclose(out[0, 0], x0[0, 0])
    assert torch.allclose(out[0, 1], d.q_sample(x0, t_next, noise)[0, 1], atol=1e-10)
    assert torch.equal(out[0, 2], xt[0, 2]) and torch.equal(out[1, 1], xt[1, 1])  # frozen frames


def test_sampler_s0_equals_plain_synchronous_ddim():
    torch.manual_seed(0)
    model = DiT(DiTConfig.tiny()).eval()
    for p in model.parameters():  # non-zero output layer so the test is not trivial
        torch.nn.init.normal_(p, std=0.05)
    d, N, F = GaussianDiffusion(1000), 8, 3
    y = torch.tensor([1, 2])
    got = sample(model, d, y, sc(F, N, 0), generator=torch.Generator().manual_seed(3))
    x = torch.randn(2, F, 32, 4, generator=torch.Generator().manual_seed(3))
    grid = ddim_grid(N, 1000)
    with torch.no_grad():
        for n in range(N, 0, -1):
            t, tn = torch.full((2, F), int(grid[n])), torch.full((2, F), int(grid[n - 1]))
            x = d.ddim_step(x, model(x, t, y), t, tn)
    assert torch.equal(got, x)
    assert got.std() > 0.01


def test_default_schedule_is_the_official_ldm_linear():
    """The official LatentDiffusion "linear": betas = linspace(sqrt(1e-4), sqrt(0.02), 1000)²."""
    from ardscale.config import DiffusionConfig
    c = DiffusionConfig()
    d = GaussianDiffusion(c.num_timesteps, c.beta_schedule, c.beta_start, c.beta_end)
    for default in (d, GaussianDiffusion(1000)):
        betas = [(math.sqrt(1e-4) + (math.sqrt(0.02) - math.sqrt(1e-4)) * i / 999) ** 2 for i in range(1000)]
        abar = torch.tensor(betas, dtype=torch.float64).neg().add(1).cumprod(0)
        assert torch.allclose(default.alphas_cumprod, abar, rtol=1e-12, atol=0)
        assert abs(default.alphas_cumprod[500].item() - 0.3313) < 1e-4   # plain linspace: 0.0778
        assert default.alphas_cumprod[-1] < 1e-3


def test_beta_schedules():
    lin = GaussianDiffusion(1000, "linear", 1e-4, 0.02)
    assert lin.alphas_cumprod[-1] < 1e-4                       # pure noise at t = T
    assert 0.3 < GaussianDiffusion(1000, "linear", 1e-4, 0.002).alphas_cumprod[-1] < 0.4  # Table 6's 0.002
    sl = GaussianDiffusion(1000, "scaled_linear", 0.00085, 0.012)
    root = sl.betas.sqrt()
    assert torch.allclose(root.diff(), root.diff()[:1].expand(999), atol=1e-12)
    assert math.isclose(sl.betas[0].item(), 0.00085) and math.isclose(sl.betas[-1].item(), 0.012)
    cos = GaussianDiffusion(1000, "cosine")
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 250, 500, 900):
        assert math.isclose(cos.alphas_cumprod[t].item(), f(t + 1) / f(0), rel_tol=1e-9)
    with pytest.raises(ValueError, match="unknown beta schedule"):
        GaussianDiffusion(10, "quadratic")
    with pytest.raises(ValueError, match="unknown prediction"):
        GaussianDiffusion(10, prediction="score")


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
def test_posterior_matches_ddpm_and_ddim_eta1(schedule):
    d = GaussianDiffusion(1000, schedule, 1e-4, 0.02)
    g = torch.Generator().manual_seed(0)
    x0, noise, z = (torch.randn(2, 3, 8, 4, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([[1, 400, 999], [10, 20, 30]])
    x_t = d.q_sample(x0, t, noise)
    mean, var = d.q_posterior(x0, x_t, t, t - 1)
    a, ap, b = d.alphas_cumprod[t], d.alphas_cumprod[t - 1], d.betas[t]
    c0, ct = b * ap.sqrt() / (1 - a), (1 - b).sqrt() * (1 - ap) / (1 - a)
    ref_mean = c0[..., None, None] * x0 + ct[..., None, None] * x_t
    assert torch.allclose(mean, ref_mean, atol=1e-12)
    assert torch.allclose(var[..., 0, 0], b * (1 - ap) / (1 - a), atol=1e-15)
    # DDIM with eta = 1 samples that posterior, also over a strided gap (t → t - 7).
    t_prev = (t - 7).clamp(min=0)
    mean, var = d.q_posterior(x0, x_t, t, t_prev)
    step = d.ddim_step(x_t, x0, t, t_prev, eta=1.0, noise=z)
    moved = t_prev != t
    assert torch.allclose(step[moved], (mean + var.sqrt() * z)[moved], atol=1e-10)


def test_x0_eps_v_conversions_round_trip():
    d = GaussianDiffusion(1000)
    g = torch.Generator().manual_seed(0)
    x0, noise = (torch.randn(2, 4, 8, 4, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([[0, 10, 500, 999], [3, 3, 700, 800]])
    x_t = d.q_sample(x0, t, noise)
    assert torch.allclose(d.eps_from_x0(x_t, t, x0), noise, atol=1e-8)
    assert torch.allclose(d.x0_from_eps(x_t, t, noise), x0, atol=1e-8)
    assert torch.allclose(d.x0_from_v(x_t, t, d.v_from(x0, noise, t)), x0, atol=1e-10)
    for pred in ("x0", "eps", "v"):
        dp = GaussianDiffusion(1000, prediction=pred)
        assert torch.allclose(dp.to_x0(dp.target(x0, noise, t), x_t, t), x0, atol=1e-8), pred
    clipped = d.to_x0(x0 * 10, x_t, t, clip=1.5)
    assert clipped.abs().max() == 1.5 and torch.equal(clipped, (x0 * 10).clamp(-1.5, 1.5))


class Recorder(torch.nn.Module):
    """Wraps a DiT and records (first frame index, t) of every call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.calls = model, model.config, []

    def forward(self, x, t, y, cache=None, cache_frames=0):
        self.calls.append((cache.num_frames if cache is not None else 0, t[0].clone()))
        return self.model(x, t, y, cache, cache_frames)


@pytest.mark.parametrize("s,cfg_scale", [(0, 1.0), (2, 1.0), (8, 1.0), (2, 2.5)])
def test_kv_cache_gives_the_uncached_video(s, cfg_scale):
    model, d, N, F = random_dit(), GaussianDiffusion(1000), 8, 6
    y = torch.tensor([1, 2])
    run = lambda cache: sample(model, d, y, sc(F, N, s, cfg_scale, kv_cache=cache),
                               generator=torch.Generator().manual_seed(5))
    a, b = run(True), run(False)
    assert a.std() > 0.05
    assert (a - b).abs().max() < 1e-5


def test_kv_cache_computes_each_clean_frame_once_and_skips_waiting_frames():
    model, d, N, F, s = Recorder(random_dit()), GaussianDiffusion(1000), 5, 4, 5
    sample(model, d, torch.tensor([0]), sc(F, N, s), generator=torch.Generator().manual_seed(0))
    fed_clean = torch.zeros(F, dtype=torch.long)
    frames_computed = 0
    rows = ad_timesteps(F, N, s)
    for i, (first, t) in enumerate(model.calls):
        frames_computed += len(t)
        fed_clean[first:first + len(t)] += (t == 0).long() & (rows[i, first:first + len(t)] == 0).long()
        last_changing = int((rows[i] != rows[i + 1]).nonzero().max())
        assert first + len(t) == last_changing + 1, "a waiting (pure-noise) frame was computed"
    assert fed_clean[:-1].tolist() == [1] * (F - 1) and fed_clean[-1] == 0
    # Auto-regressive (s >= N): each frame is computed in its N steps, plus once as clean context.
    assert frames_computed == F * N + (F - 1)
    uncached = Recorder(random_dit())
    sample(uncached, d, torch.tensor([0]), sc(F, N, s, kv_cache=False),
           generator=torch.Generator().manual_seed(0))
    ends = [int((rows[i] != rows[i + 1]).nonzero().max()) + 1 for i in range(len(rows) - 1)]
    # frames 0..last changing, every time
    assert sum(len(t) for _, t in uncached.calls) == sum(ends) == N * (1 + 2 + 3 + 4)


def test_sliding_window_beyond_training_length():
    model, d, N = random_dit(), GaussianDiffusion(1000), 6
    y, g = torch.tensor([3]), lambda: torch.Generator().manual_seed(1)
    a = sample(model, d, y, sc(14, N, 3, window=5), generator=g())
    b = sample(model, d, y, sc(14, N, 3, window=5, kv_cache=False), generator=g())
    assert (a - b).abs().max() < 1e-5 and a[:, -1].std() > 0.05
    rec = Recorder(model)
    sample(rec, d, y, sc(14, N, 3, window=5, kv_cache=False), generator=g())
    assert max(len(t) for _, t in rec.calls) == 5
    # A window that covers the video changes nothing.
    assert torch.equal(sample(model, d, y, sc(6, N, 3, window=6), generator=g()),
                       sample(model, d, y, sc(6, N, 3), generator=g()))
    with pytest.raises(ValueError, match="denoised at once"):
        sample(model, d, y, sc(10, N, 0, window=5))  # s=0: all 10 frames are in flight together


def test_frames_in_flight_is_the_smallest_window_the_sampler_accepts():
    model, d, N, F = random_dit(), GaussianDiffusion(1000), 6, 9
    y = torch.tensor([3])
    assert [frames_in_flight(F, N, s) for s in (0, 1, 2, 3, 6, 7)] == [9, 6, 3, 2, 1, 1]
    assert (frames_in_flight(16, 25, 2), frames_in_flight(16, 50, 10)) == (13, 5)   # the demo's question
    for s in (1, 2, 3, 6):
        w = frames_in_flight(F, N, s)
        assert sample(model, d, y, sc(F, N, s, window=w)).shape == (1, F, 32, 4)
        if w > 1:
            with pytest.raises(ValueError, match="denoised at once"):
                sample(model, d, y, sc(F, N, s, window=w - 1))


def test_video_continuation_keeps_the_context_and_uses_it():
    model, d, N = random_dit(), GaussianDiffusion(1000), 6
    y = torch.tensor([1, 1])
    ctx = torch.randn(2, 3, 32, 4, generator=torch.Generator().manual_seed(9))
    out = sample(model, d, y, sc(7, N, 2), context=ctx, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out[:, :3], ctx)
    other = sample(model, d, y, sc(7, N, 2), context=3 * ctx + 2, generator=torch.Generator().manual_seed(2))
    assert (out[:, 3:] - other[:, 3:]).abs().mean() > 1e-3
    ref = sample(model, d, y, sc(7, N, 2, kv_cache=False), context=ctx,
                 generator=torch.Generator().manual_seed(2))
    assert (out - ref).abs().max() < 1e-5
    with pytest.raises(ValueError, match="leaves none to generate"):
        sample(model, d, y, sc(3, N, 2), context=ctx)
