"""AD inference scheduler (paper Sec. 3.4, Eq. 5)."""
from __future__ import annotations

import torch


def ad_timesteps(num_frames: int, num_steps: int, s: int) -> torch.Tensor:
    """The timestep compositions visited at inference, as DDIM step indices ``(I, F)`` long.

    Step index ``N = num_steps`` is pure noise, ``0`` is clean. Row 0 is all N, the last row all
    0. Within an iteration frames are updated in order i = 1…F (Eq. 5):
    ``t_i ← t_i - 1`` if i = 1 or ``t_{i-1} = 0``, else ``t_i ← min(t_{i-1} + s, N)``.
    Eq. 5 as printed says ``t_i + 1`` in its first case; denoising is one step *down*, so we
    use ``t_i - 1``. ``s = 0`` is synchronous DDIM; ``s ≥ N-1`` frame-by-frame auto-regression.
    Rows: ``I = N + (F-1)·min(s, N-1) + 1``.

    Raises:
        ValueError: non-positive frames/steps or negative s.
    """
    if num_frames < 1 or num_steps < 1 or s < 0:
        raise ValueError(f"need num_frames ≥ 1, num_steps ≥ 1, s ≥ 0; got {num_frames}, {num_steps}, {s}")
    row = [num_steps] * num_frames
    rows = [list(row)]
    while any(row):
        for i in range(num_frames):
            if i == 0 or row[i - 1] == 0:
                row[i] = max(row[i] - 1, 0)
            else:
                row[i] = min(row[i - 1] + s, num_steps)
        rows.append(list(row))
    return torch.tensor(rows, dtype=torch.long)


def ddim_grid(num_steps: int, num_timesteps: int) -> torch.Tensor:
    """Map DDIM step index ``n ∈ 0…N`` to a DDPM index ``(N+1,)`` long: 0 → -1 (clean), N → T-1."""
    n = torch.arange(num_steps + 1, dtype=torch.float64)
    return (n * num_timesteps / num_steps).round().long() - 1
