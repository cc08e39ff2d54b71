"""AD inference scheduler (paper Sec. 3.4, Eq. 5)."""
from __future__ import annotations

import torch


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


def ddim_grid(num_steps: int, num_timesteps: int) -> torch.Tensor:
    """Map DDIM step index ``n ∈ 0…N`` to a DDPM index ``(N+1,)`` long: 0 → -1 (clean), N → T-1."""
    n = torch.arange(num_steps + 1, dtype=torch.float64)
    return (n * num_timesteps / num_steps).round().long() - 1
