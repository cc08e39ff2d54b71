"""Training timestep schedulers (paper Sec. 3.3, Alg. 1, and the baselines it compares to).

All return DDPM indices ``0 … T-1`` of shape ``(B, F)``, long; the paper's ``t`` is ``index + 1``.
"""
from __future__ import annotations

from functools import lru_cache

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


def _fopp(batch_size: int, num_frames: int, num_timesteps: int, generator) -> torch.Tensor:
    """Alg. 1: f ~ U(frames), t_f ~ U(timesteps), then propagate backwards and forwards."""
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
        name: ``fopp`` (Alg. 1, non-decreasing), ``equal`` (synchronous), ``independent``
            (Diffusion Forcing, unconstrained) or ``naive`` (non-decreasing, biased).
        generator: CPU ``torch.Generator`` for reproducible draws.
    Raises:
        ValueError: unknown name or non-positive sizes.
    """
    if batch_size < 1 or num_frames < 1 or num_timesteps < 1:
        raise ValueError(f"sizes must be positive, got B={batch_size} F={num_frames} T={num_timesteps}")
    if name == "fopp":
        return _fopp(batch_size, num_frames, num_timesteps, generator)
    if name == "equal":
        return torch.randint(num_timesteps, (batch_size, 1), generator=generator).expand(-1, num_frames).clone()
    if name == "independent":
        return torch.randint(num_timesteps, (batch_size, num_frames), generator=generator)
    if name == "naive":
        return _naive(batch_size, num_frames, num_timesteps, generator)
    raise ValueError(f"unknown timestep scheduler {name!r}: expected fopp, equal, independent or naive")
