"""AR-VAE: a TiTok-style 1-D video tokenizer with a temporally causal decoder (paper Sec. 3.1).

Encoder (time-agnostic): per frame, ViT over ``[patches; L learnable latent tokens]``; the latent
tokens' output, normalised by the decoder's first LayerNorm and projected to D channels, is the
continuous latent (no quantizer). Decoder: L latent tokens plus N shared learnable patch (mask)
tokens per frame; full attention within a frame, and patch/latent tokens of frame i may also read
the latent tokens of earlier frames (never later ones, never earlier patch tokens).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from .attention import Mlp, SelfAttention
from .dit import sinusoidal


@dataclass
class ARVAEConfig:
    """AR-VAE hyper-parameters. Defaults: paper size (Table 6: width 1024, 24 layers, 16 heads, L=32, D=4)."""

    image_size: int = 256
    patch_size: int = 16
    in_channels: int = 3
    width: int = 1024
    depth: int = 24              # layers in the encoder and again in the decoder
    num_heads: int = 16
    mlp_ratio: float = 4.0
    latent_tokens: int = 32      # L
    latent_dim: int = 4          # D

    @classmethod
    def tiny(cls, **overrides) -> ARVAEConfig:
        """A CPU test size: 64² frames, 8² patches, width 64, 2 layers."""
        return cls(**{"image_size": 64, "patch_size": 8, "width": 64, "depth": 2, "num_heads": 4, **overrides})

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class Block(nn.Module):
    """Pre-norm transformer block on ``(B, N, C)`` with an optional boolean mask."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position table ``(grid*grid, dim)`` (as MAE): half the channels per axis."""
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([sinusoidal(ys.flatten(), dim // 2), sinusoidal(xs.flatten(), dim - dim // 2)], dim=-1)


def decoder_mask(num_frames: int, latent_tokens: int, num_patches: int, device=None) -> torch.Tensor:
    """Boolean ``(F*(L+N), F*(L+N))`` mask, True = may attend. Per frame the layout is [latents; patches].

    Same frame: full attention. Earlier frame: only its latent tokens. Later frame: nothing.
    """
    per = latent_tokens + num_patches
    frame = torch.arange(num_frames, device=device).repeat_interleave(per)
    is_latent = (torch.arange(per, device=device) < latent_tokens).repeat(num_frames)
    q, k = frame[:, None], frame[None, :]
    return (q == k) | ((k < q) & is_latent[None, :])


class ARVAE(nn.Module):
    """Video autoencoder ``(B, F, C, H, W)`` in [-1, 1] ↔ latents ``(B, F, L, D)``.

    Raises:
        ValueError: if frames are not ``image_size`` square with ``in_channels`` channels.
    """

    def __init__(self, config: ARVAEConfig):
        super().__init__()
        self.config = c = config
        W, N, p = c.width, c.num_patches, c.patch_size
        self.patch_embed = nn.Linear(c.in_channels * p * p, W)
        # Patch positions start from a 2-D sin-cos table: with a tiny random init the latent
        # queries cannot tell patches apart and training stalls at per-clip mean colours.
        self.patch_pos = nn.Parameter(sincos_2d(c.image_size // p, W))
        self.latent_queries = nn.Parameter(torch.randn(c.latent_tokens, W) * W**-0.5)
        self.latent_pos = nn.Parameter(torch.randn(c.latent_tokens, W) * W**-0.5)
        self.encoder = nn.ModuleList(Block(W, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.latent_norm = nn.LayerNorm(W)           # "the decoder's first normalisation" (Sec. 3.1)
        self.to_latent = nn.Linear(W, c.latent_dim)
        self.from_latent = nn.Linear(c.latent_dim, W)
        self.mask_tokens = nn.Parameter(torch.randn(N, W) * W**-0.5)  # shared across frames
        self.decoder = nn.ModuleList(Block(W, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.out_norm = nn.LayerNorm(W)
        self.to_pixels = nn.Linear(W, c.in_channels * p * p)

    def _check(self, video: torch.Tensor):
        c = self.config
        if video.ndim != 5 or video.shape[2:] != (c.in_channels, c.image_size, c.image_size):
            raise ValueError(f"video must be (B, F, {c.in_channels}, {c.image_size}, {c.image_size}), "
                             f"got {tuple(video.shape)}")

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, F, C, H, W)`` float in [-1, 1] → latents ``(B, F, L, D)``; frames encoded independently."""
        self._check(video)
        B, F = video.shape[:2]
        p = self.config.patch_size
        patches = rearrange(video, "b f c (h p) (w q) -> (b f) (h w) (c p q)", p=p, q=p)
        x = self.patch_embed(patches) + self.patch_pos
        lat = (self.latent_queries + self.latent_pos).expand(B * F, -1, -1)
        x = torch.cat([x, lat], dim=1)
        for blk in self.encoder:
            x = blk(x)
        z = self.to_latent(self.latent_norm(x[:, -self.config.latent_tokens:]))
        return z.view(B, F, self.config.latent_tokens, self.config.latent_dim)

    def decode(self, latents: torch.Tensor, window: int | None = None) -> torch.Tensor:
        """Latents ``(B, F, L, D)`` → video ``(B, F, C, H, W)`` (≈[-1, 1]); frame i uses latents of frames <= i.

        ``window``: for videos longer than the decoder was trained on, frame ``i >= window`` is
        decoded from the latents of frames ``i-window+1 … i`` only (positions restart), as the
        sampler's sliding window does.
        """
        F = latents.shape[1]
        if window is None or F <= window:
            return self._decode(latents)
        tail = [self._decode(latents[:, i - window + 1:i + 1])[:, -1:] for i in range(window, F)]
        return torch.cat([self._decode(latents[:, :window]), *tail], dim=1)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        B, F, L, _ = latents.shape
        c = self.config
        N, W = c.num_patches, c.width
        frame_pos = sinusoidal(torch.arange(F, device=latents.device), W).to(latents.dtype)[:, None]
        lat = self.from_latent(latents) + self.latent_pos + frame_pos                  # (B, F, L, W)
        patches = (self.mask_tokens + self.patch_pos + frame_pos).expand(B, F, N, W)   # (B, F, N, W)
        x = torch.cat([lat, patches], dim=2).reshape(B, F * (L + N), W)
        mask = decoder_mask(F, L, N, latents.device)
        for blk in self.decoder:
            x = blk(x, mask)
        x = self.to_pixels(self.out_norm(x.view(B, F, L + N, W)[:, :, L:]))
        g = c.image_size // c.patch_size
        return rearrange(x, "b f (h w) (c p q) -> b f c (h p) (w q)", h=g, w=g, p=c.patch_size, q=c.patch_size)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(B, F, C, H, W)``."""
        return self.decode(self.encode(video))
