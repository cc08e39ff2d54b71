"""AD inference scheduler (paper Sec. 3.4, Eq. 5)."""
from __future__ import annotations

import torch

SAMPLE_GRIDS = ("trailing", "leading")
"""DDIM timestep grids of :func:`ddim_grid` (diffusers' spacing names)."""


def ad_timesteps(num_frames: int, num_steps: int, s: int) -> torch.Tensor:
    """The timestep compositions visited at inference, as DDIM step indices ``(I, F)`` long.

    Step index ``N = num_steps`` is pure noise, ``0`` is clean. Row 0 is all N, the last row all
    0. Each row follows from the previous one (Eq. 5), frame by frame:
    ``t_i ← t_i - 1`` if i = 1 or frame i-1 was clean in the previous row, else
    ``t_i ← min(t_{i-1} + s, N)`` with ``t_{i-1}`` already updated in this row.
    Eq. 5 as printed says ``t_i + 1`` in its first case; denoising is one step *down*, so we
    use ``t_i - 1``. "Was clean in the previous row" follows the official
    ``generate_timestep_matrix`` (iva-mzsun/AR-Diffusion, src/ardiff/modules/multiddim.py): for
    s < N it gives the same rows as reading the updated value, and for s ≥ N frame i starts one
    iteration after frame i-1 is clean, so every frame is denoised from clean context (the
    paper's auto-regressive setting, s = N in Table 2, "s = T" in Sec. 3.4).
    ``s = 0`` is synchronous DDIM. Rows: ``I = N + (F-1)·s + 1`` for s < N, ``F·N + 1`` for s ≥ N.

    Raises:
        ValueError: non-positive frames/steps or negative s.
    """
    if num_frames < 1 or num_steps < 1 or s < 0:
        raise ValueError(f"need num_frames ≥ 1, num_steps ≥ 1, s ≥ 0; got {num_frames}, {num_steps}, {s}")
    prev = [num_steps] * num_frames
    rows = [prev]
    while any(prev):
        row = list(prev)
        for i in range(num_frames):
            if i == 0 or prev[i - 1] == 0:
                row[i] = max(prev[i] - 1, 0)
            else:
                row[i] = min(row[i - 1] + s, num_steps)
        rows.append(row)
        prev = row
    return torch.tensor(rows, dtype=torch.long)


def ddim_grid(num_steps: int, num_timesteps: int, spacing: str = "trailing") -> torch.Tensor:
    """Map DDIM step index ``n ∈ 0…N`` to a DDPM index: ``(N+1,)`` long, 0 → -1 (clean) for both
    spacings (diffusers' ``timestep_spacing`` names, Lin et al. 2024, Table 2):

    - ``trailing`` (ours): ``n → round(n·T/N) - 1``, the last index T-1 = pure noise at n = N;
      N=50, T=1000: {19, 39, …, 999}.
    - ``leading`` (the official code): ``n → (n-1)·(T // N) + 1`` for n ≥ 1; N=50, T=1000:
      {1, 21, …, 981}. The official sampler (src/ardiff/modules/fifoddim.py, the one
      src/ardiff/base.py imports; ``make_schedule``, ``ddim_discretize="uniform"``) takes
      ``make_ddim_timesteps`` (src/ardiff/modules/utils.py, lines 46-60): ``range(0, T, T // N) + 1``,
      and treats the initial noise as level 981.
      Two departures: when N does not divide T that range has more than N entries (the official
      runs them all; we keep N, as diffusers' "leading" does), and its last step lands on
      ``alphas_cumprod[0]`` (one β₀ of noise left) where n = 0 here is clean.

    Raises:
        ValueError: an unknown ``spacing``, or N outside 1…T.
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"DDIM steps N={num_steps} must be in 1…{num_timesteps} (the DDPM steps T)")
    n = torch.arange(num_steps + 1, dtype=torch.float64)
    if spacing == "trailing":
        return (n * num_timesteps / num_steps).round().long() - 1
    if spacing == "leading":
        grid = (n.long() - 1) * (num_timesteps // num_steps) + 1
        grid[0] = -1
        return grid
    raise ValueError(f"DDIM spacing={spacing!r}: expected one of {SAMPLE_GRIDS}")
