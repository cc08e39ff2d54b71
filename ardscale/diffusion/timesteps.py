"""Training timestep schedulers (paper Sec. 3.3, Alg. 1, and the baselines it compares to).

All return DDPM indices ``0 … T-1`` of shape ``(B, F)``, long; the paper's ``t`` is ``index + 1``.

Alg. 1 (FoPP) picks a frame f ~ U(frames) and its timestep t_f ~ U(timesteps), then draws the
frames before f and after f so that, given (f, t_f), every non-decreasing composition through
t_f is equally likely. The paper does this with DP counts d^e/d^s, one frame at a time
(``fopp_dp`` below, kept as the literal reference). ``fopp`` draws the same distribution
without a loop over frames: a uniform non-decreasing sequence of k values in ``0 … m-1`` is a
uniform multiset, and a Pólya urn with one ball per value draws exactly that (each of the
C(m+k-1, k) multisets has probability k!/(m(m+1)…(m+k-1)) · ∏n_v!/∏n_v! = 1/C(m+k-1, k)).
Urn draw j copies an earlier draw or takes a fresh value, so all draws come from one random
array plus log2(F) pointer-jumping gathers, then a sort.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


def _log_binom(n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


@lru_cache(maxsize=32)
def fopp_tables(num_frames: int, num_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log cumulative DP tables of Alg. 1, float64, both ``(F, T)``, cached per (F, T).

    ``d^e[i, v]`` counts non-decreasing prefixes ``t_0..t_i`` ending at value v and
    ``d^s[i, v]`` suffixes ``t_i..t_{F-1}`` starting at v. The paper fills them with the
    recurrence ``d[i,j] = d[i,j-1] + d[i-1,j]``; its solution is the binomial
    ``C(v+i, i)`` (resp. ``C(T-1-v+F-1-i, F-1-i)``), which we evaluate in log space so that
    F ≤ 1024, T ≤ 1000 never overflow (the counts reach ~1e300+).

    Returns:
        ``log_cum_e[i, v] = log sum_{u<=v} d^e[i, u]`` and
        ``log_cum_s[i, w] = log sum_{u>=T-1-w} d^s[i, u]`` (the suffix table, value-reversed so
        both are prefix sums and one inverse-CDF lookup serves both directions).
    """
    i = torch.arange(num_frames, dtype=torch.float64)[:, None]
    v = torch.arange(num_timesteps, dtype=torch.float64)[None, :]
    log_de = _log_binom(v + i, i)
    n_after = num_frames - 1 - i
    log_ds = _log_binom((num_timesteps - 1 - v) + n_after, n_after)
    log_cum_e = torch.logcumsumexp(log_de, dim=1)
    log_cum_s = torch.logcumsumexp(log_ds.flip(1), dim=1)
    return log_cum_e, log_cum_s


def _sample_prefix(log_cum: torch.Tensor, upper: torch.Tensor, generator) -> torch.Tensor:
    """Draw ``k ∈ [0, upper]`` with ``P(k) ∝ d[k]``, given ``log_cum`` = log prefix sums of d, (T,).

    Vectorised inverse CDF: one ``searchsorted`` for the whole batch ``upper`` ``(B,)``.
    """
    u = torch.rand(upper.shape, generator=generator, dtype=torch.float64)
    target = torch.log(u) + log_cum[upper]
    k = torch.searchsorted(log_cum, target)
    return torch.minimum(k, upper)


def _fopp_dp(batch_size: int, num_frames: int, num_timesteps: int, generator) -> torch.Tensor:
    """Alg. 1 as printed: f ~ U(frames), t_f ~ U(timesteps), then propagate backwards and
    forwards with the DP tables, one frame per step (F steps, each vectorised over the batch)."""
    log_cum_e, log_cum_s = fopp_tables(num_frames, num_timesteps)
    T = num_timesteps
    t = torch.zeros(batch_size, num_frames, dtype=torch.long)  # zeros keep inactive lookups in range
    f = torch.randint(num_frames, (batch_size,), generator=generator)
    rows = torch.arange(batch_size)
    t[rows, f] = torch.randint(T, (batch_size,), generator=generator)
    # Frames before f, walking down from f-1: t_i <= t_{i+1}, P ∝ d^e[i, ·].
    for i in range(num_frames - 2, -1, -1):
        active = i < f
        draw = _sample_prefix(log_cum_e[i], t[:, i + 1], generator)
        t[:, i] = torch.where(active, draw, t[:, i])
    # Frames after f: t_i >= t_{i-1}, P ∝ d^s[i, ·]; in reversed values w = T-1-t it is a prefix.
    for i in range(1, num_frames):
        active = i > f
        draw = T - 1 - _sample_prefix(log_cum_s[i], T - 1 - t[:, i - 1], generator)
        t[:, i] = torch.where(active, draw, t[:, i])
    return t


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A NumPy generator seeded from ``generator`` (or torch's global RNG), so torch seeding rules."""
    seed = torch.randint(0, 2**62, (1,), generator=generator).item()
    return np.random.default_rng(seed)


def polya_urn(num_values: np.ndarray, segment_start: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exchangeable draws of Pólya urns that start with one ball per value, ``(R, K)`` int32.

    Each row holds independent urns in consecutive segments: position j belongs to the urn that
    starts at ``segment_start[r, j]`` and has values ``0 … num_values[r, j]-1`` (both ``(R, K)``
    int32). Its i-th draw (i = j - start) picks one of the ``m + i`` balls uniformly: one of the m
    original balls (a fresh value) or the ball added after the urn's draw i' < i (a copy of it).
    Sorted, an urn's k draws are a uniform non-decreasing sequence of length k.
    """
    R, K = num_values.shape
    j = np.arange(K, dtype=np.int32)
    u = rng.random((R, K))
    u *= num_values + (j - segment_start)
    ball = u.astype(np.int32) - num_values          # < 0: fresh value ball+m; else copy of draw start+ball
    ptr = np.where(ball < 0, j, segment_start + ball)
    ptr += (np.arange(R, dtype=np.int32) * K)[:, None]
    ptr = ptr.ravel()
    for _ in range(max(K - 1, 1).bit_length()):     # pointer jumping: every chain reaches its fresh root
        ptr = ptr[ptr]
    ball += num_values                              # (int32 halves the memory touched: it is the cost)
    return ball.ravel()[ptr].reshape(R, K)


def fopp_with_frame(batch_size: int, num_frames: int, num_timesteps: int,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Alg. 1's distribution, drawn without a loop over frames (see the module docstring).

    The frames before f are a uniform non-decreasing sequence in ``0 … t_f``; the frames after f,
    read backwards in mirrored values ``w = T-1-t``, one in ``0 … T-1-t_f``. One row of F-1 urn
    draws per sample holds both: positions ``< f`` the first urn, the rest the second.

    Returns:
        ``t`` ``(B, F)`` long DDPM indices and the chosen frame ``f`` ``(B,)`` long (for tests of
        Alg. 1's two properties: t_f uniform, and uniform compositions given (f, t_f)).
    """
    B, F, T = batch_size, num_frames, num_timesteps
    rng = _numpy_rng(generator)
    f = rng.integers(F, size=B)
    v = rng.integers(T, size=B)
    K = max(F - 1, 1)
    after = np.arange(K) >= f[:, None]                                        # (B, K)
    start = np.where(after, f[:, None], 0).astype(np.int32)
    values = np.where(after, (T - v)[:, None], (v + 1)[:, None]).astype(np.int32)
    key = polya_urn(values, start, rng) + after * T                           # the second urn sorts last
    key.sort(axis=1)
    i = np.arange(F)
    before_f = np.take_along_axis(key, np.minimum(i, K - 1)[None].repeat(B, 0), 1)
    after_f = 2 * T - 1 - np.take_along_axis(key, np.clip(f[:, None] + F - 1 - i, 0, K - 1), 1)
    t = np.where(i < f[:, None], before_f, np.where(i == f[:, None], v[:, None], after_f))
    return torch.from_numpy(t.astype(np.int64)), torch.from_numpy(f)


def _naive(batch_size: int, num_frames: int, num_timesteps: int, generator) -> torch.Tensor:
    """The paper's "intuitive" scheduler: t_1 ~ U(1, T), t_{i+1} ~ U(t_i, T). Biased (Sec. 3.3)."""
    t = torch.empty(batch_size, num_frames, dtype=torch.long)
    low = torch.zeros(batch_size, dtype=torch.long)
    for i in range(num_frames):
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        low = low + (u * (num_timesteps - low)).long()
        t[:, i] = low
    return t


def sample_timesteps(name: str, batch_size: int, num_frames: int, num_timesteps: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-frame training timesteps ``(B, F)`` long, DDPM indices ``0 … T-1``.

    Args:
        name: ``fopp`` (Alg. 1, non-decreasing; no loop over frames), ``fopp_dp`` (Alg. 1
            literally, frame by frame with the DP tables: same distribution, slower; the
            reference), ``equal`` (synchronous), ``independent`` (Diffusion Forcing,
            unconstrained) or ``naive`` (non-decreasing, biased).
        generator: CPU ``torch.Generator`` for reproducible draws (``None``: torch's global RNG).
    Raises:
        ValueError: unknown name or non-positive sizes.
    """
    if batch_size < 1 or num_frames < 1 or num_timesteps < 1:
        raise ValueError(f"sizes must be positive, got B={batch_size} F={num_frames} T={num_timesteps}")
    if name == "fopp":
        return fopp_with_frame(batch_size, num_frames, num_timesteps, generator)[0]
    if name == "fopp_dp":
        return _fopp_dp(batch_size, num_frames, num_timesteps, generator)
    if name == "equal":
        first = torch.randint(num_timesteps, (batch_size, 1), generator=generator)
        return first.expand(-1, num_frames).clone()
    if name == "independent":
        return torch.randint(num_timesteps, (batch_size, num_frames), generator=generator)
    if name == "naive":
        return _naive(batch_size, num_frames, num_timesteps, generator)
    raise ValueError(f"unknown timestep scheduler {name!r}: "
                     "expected fopp, fopp_dp, equal, independent or naive")
