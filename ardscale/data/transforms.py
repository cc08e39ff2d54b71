"""Clip tensors between storage and the models: uint8 ``(B, F, H, W, 3)`` ↔ float ``(B, F, 3, H, W)``
in [-1, 1]."""
from __future__ import annotations

import torch


def to_model_range(videos: torch.Tensor) -> torch.Tensor:
    """uint8 clips ``(B, F, H, W, 3)`` → float32 ``(B, F, 3, H, W)`` in [-1, 1]."""
    return videos.permute(0, 1, 4, 2, 3).float() / 127.5 - 1


def to_unit(videos: torch.Tensor) -> torch.Tensor:
    """uint8 clips ``(B, F, H, W, 3)`` → float32 ``(B, F, 3, H, W)`` in [0, 1] (for PSNR / SSIM)."""
    return videos.permute(0, 1, 4, 2, 3).float() / 255


def to_uint8(videos: torch.Tensor) -> torch.Tensor:
    """Float clips ``(B, F, 3, H, W)`` in [-1, 1] (clamped) → uint8 ``(B, F, H, W, 3)`` on the CPU."""
    return ((videos.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 1, 3, 4, 2).cpu()
