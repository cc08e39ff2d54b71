"""Block-causal attention over frames (paper Sec. 3.2: temporal causal attention).

Frame ``i`` attends to every token of frames ``<= i``. This module holds the mask and the
kernel call; the spine uses SDPA with a boolean mask on every device (FlexAttention / flash-attn
backends are a later deepening and must stay equal to this one).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def block_causal_mask(num_frames: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """Boolean mask ``(F*L, F*L)``, True = may attend: query frame >= key frame."""
    frame = torch.arange(num_frames, device=device).repeat_interleave(tokens_per_frame)
    return frame[:, None] >= frame[None, :]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Multi-head attention ``(B, H, N, Dh)`` → ``(B, H, N, Dh)`` with a boolean ``(N, N)`` mask."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class SelfAttention(torch.nn.Module):
    """QKV projection + masked SDPA + output projection on ``(B, N, C)`` tokens."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, mask)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Mlp(torch.nn.Sequential):
    """Transformer feed-forward ``dim → ratio·dim → dim`` with tanh-GELU (as DiT)."""

    def __init__(self, dim: int, ratio: float):
        hidden = int(dim * ratio)
        super().__init__(torch.nn.Linear(dim, hidden), torch.nn.GELU(approximate="tanh"),
                         torch.nn.Linear(hidden, dim))
