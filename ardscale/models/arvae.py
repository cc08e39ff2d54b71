"""AR-VAE: a TiTok-style 1-D video tokenizer with a temporally causal decoder (paper Sec. 3.1).

Encoder (time-agnostic): per frame, ViT over ``[patches; L learnable latent tokens]``; the latent
tokens' output is normalised (LayerNorm), projected to D channels and put on a sphere: the
continuous latent (no quantizer).

The latent contract (as the official code, ``use_l2_norm`` in src/vae/titok_kl.py and
``norm_preprocess`` in src/ardiff/base.py): every D-dim token the encoder returns has L2 norm
``√D`` (per-component RMS 1), and the decoder L2-normalises its input again, so a token and any
positive rescaling of it decode to the same video. The DiT sees ``scale_factor · z``: with the
paper's 0.5 and D=4 that is the official unit-norm token (per-component RMS 0.5); any other
product is refused where latents meet the DiT (``check_latent_scale``, data/loader.py). The paper's
"features output by the first normalization layer of the video decoder" are these tokens.

Decoder: per frame, L latent tokens plus N shared learnable patch (mask) tokens go through
spatial ViT blocks (full attention within the frame); a pixel head turns the patch tokens into
pixels (``pixel_head``: convolutional upsampling, as the official decoder ends in a MaskGIT VQGAN
decoder; a per-patch linear map, as TiTok's ViT; or both summed, the demo's: it trains fastest
at demo budgets, RESULTS.md "A sharper AR-VAE").
For stage 3 (``temporal=True``) each spatial block is preceded by a temporal block, as the
official ``TiTok_KL_wT`` (src/vae/blocks_kl_wt.py):

- fine: each patch position attends over the same position in frames <= t;
- coarse: the latent and patch tokens of frame t cross-attend to the latent tokens of frames <= t.

Initialisation. The official ``TiTokDecoder.__init__`` (src/vae/blocks_kl_wt.py, lines 278-282)
wraps each fine block (``ResidualAttentionBlock`` without MLP: LayerNorm + ``nn.MultiheadAttention``)
and coarse block (``CrossAttentionBlock``: three LayerNorms + ``nn.MultiheadAttention``) in
``zero_module`` (lines 32-38, every parameter zeroed). But ``TiTok_KL_wT.__init__``
(src/vae/titok_kl_wt.py, line 61) then calls ``self.apply(self._init_weights)`` over the whole
model, and ``_init_weights`` (lines 74-92) re-initialises those same modules: LayerNorm weight 1,
bias 0; ``nn.MultiheadAttention`` ``in_proj_weight`` and ``out_proj.weight`` truncated normal with
std 0.01, biases 0 (``apply`` visits children first, so ``out_proj``, an ``nn.Linear``, first gets
the Linear branch's std 0.02 and then its parent's 0.01). So the zeroing is undone: the official
temporal blocks start small and random, and since stage 3 loads the stage-2 checkpoint with
``strict=False`` (py_scripts/vae_train_kl.py, lines 445-449) they keep that init, and stage 3 does
not start at the stage-2 function. We zero only the output projections (``fine.proj``,
``coarse.proj``) and leave the rest at PyTorch's defaults: a stage-2 model extended to stage 3
computes exactly the stage-2 function (frames decoded jointly = frames decoded one at a time), and
still every parameter learns (the projections get gradient at once, the rest after their first
update); zeroing everything, as ``zero_module`` alone would, leaves gradient only to the output bias.

Training. Stage 3 trains every parameter in the paper (Sec. 4.1, lr 1e-4); the official stage-3
script (shell_scripts/stage1_vae_scripts/sky_vae_train_ftwt.sh, lines 33 and 40) trains only
parameters whose name contains ``temporal`` (``--trainable_module_key=temporal``, filtered in
py_scripts/vae_train_kl.py, lines 312-326) at lr 1e-6: ``vae.trainable=temporal``.
Departure: the official decoder has a class token and no frame position; we have neither.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as nnf
from einops import rearrange
from torch import nn

from .attention import CrossAttention, Mlp, SelfAttention
from .dit import sinusoidal


@dataclass
class ARVAEConfig:
    """AR-VAE hyper-parameters. Defaults: paper size (Table 6: width 1024, 24 layers, 16 heads, L=32, D=4)."""

    image_size: int = 256
    patch_size: int = 16         # a power of two: the pixel head upsamples by 2 log2(p) times
    in_channels: int = 3
    hidden_size: int = 1024      # width of every transformer layer
    depth: int = 24              # layers in the encoder and again in the decoder
    num_heads: int = 16
    mlp_ratio: float = 4.0
    tokens_per_frame: int = 32   # L: latent tokens per frame
    latent_dim: int = 4          # D
    temporal: bool = False       # stage 3: temporal blocks in the decoder (zero-initialised outputs)
    pixel_channels: int = 128    # channels of the pixel head's last (full-resolution) level
    pixel_head: str = "conv"     # conv | linear | both (models/arvae.py PixelHead)
    trainable: str = "all"       # parameters trained: all (paper) | temporal: only the temporal blocks
                                 # (the official stage-3 script, at lr 1e-6); needs vae.temporal=true
    init_from_titok: str = ""    # local TiTok-L-32 file (tokenizer_titok_l32.bin) a fresh run starts from
                                 # (paper Sec. 4.1; models/titok.py); nothing is downloaded

    def __post_init__(self):
        if self.pixel_head not in PIXEL_HEADS:
            raise ValueError(f"vae.pixel_head={self.pixel_head!r}: expected one of {PIXEL_HEADS}")
        if self.trainable not in VAE_TRAINABLE:
            raise ValueError(f"vae.trainable={self.trainable!r}: expected one of {VAE_TRAINABLE}")
        if self.trainable == "temporal" and not self.temporal:
            raise ValueError("vae.trainable=temporal trains only the temporal blocks, but vae.temporal=false "
                             "builds none: set vae.temporal=true (stage 3) or vae.trainable=all")

    @classmethod
    def tiny(cls, **overrides) -> ARVAEConfig:
        """A CPU test size: 64² frames, 8² patches, width 64, 2 layers."""
        return cls(**{"image_size": 64, "patch_size": 8, "hidden_size": 64, "depth": 2, "num_heads": 4,
                      "pixel_channels": 16, **overrides})

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


VAE_TRAINABLE = ("all", "temporal")


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


class TemporalBlock(nn.Module):
    """Stage-3 mixing over frames on decoder tokens ``(B, F, L+N, W)`` (layout [latents; patches]).

    Fine: patch tokens attend over frames <= t at their own position. Coarse: all tokens of frame
    t cross-attend to the latent tokens of frames <= t. Both residual, output projections zero.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.fine_norm, self.fine = nn.LayerNorm(dim), SelfAttention(dim, num_heads)
        self.coarse_norm, self.context_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.coarse = CrossAttention(dim, num_heads)
        for proj in (self.fine.proj, self.coarse.proj):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, x: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
        B, F, T, W = x.shape
        L = tokens_per_frame
        frames = torch.arange(F, device=x.device)
        patches = rearrange(x[:, :, L:], "b f n w -> (b n) f w")
        patches = patches + self.fine(self.fine_norm(patches), frames[:, None] >= frames[None, :])
        x = torch.cat([x[:, :, :L], rearrange(patches, "(b n) f w -> b f n w", b=B)], dim=2)
        mask = frames.repeat_interleave(T)[:, None] >= frames.repeat_interleave(L)[None, :]   # (F·T, F·L)
        q, context = x.reshape(B, F * T, W), x[:, :, :L].reshape(B, F * L, W)
        return (q + self.coarse(self.coarse_norm(q), self.context_norm(context), mask)).view(B, F, T, W)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ResBlock(nn.Module):
    """``x + conv(SiLU(GN(conv(SiLU(GN(x))))))`` on ``(B, C, H, W)``."""

    def __init__(self, channels: int):
        super().__init__()
        conv = lambda: nn.Conv2d(channels, channels, 3, padding=1)
        self.body = nn.Sequential(_group_norm(channels), nn.SiLU(), conv(),
                                  _group_norm(channels), nn.SiLU(), conv())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class PixelHead(nn.Module):
    """Patch tokens as a grid ``(B, W, g, g)`` → pixels ``(B, C, g·p, g·p)``, by ``kind``:

    - ``conv``: a 3×3 conv, then log2(p) levels of [ResBlock, nearest 2× upsample, 3×3 conv],
      channels narrowing to ``base`` (at most 4·base), then GN, SiLU and a 3×3 conv to C.
      Neighbouring patches share pixels' receptive fields, so the p×p patch grid of a linear head
      disappears.
    - ``linear``: each token → its p×p×C patch (a 1×1 conv to C·p² channels and a pixel shuffle;
      MAE's and TiTok's ViT head). Fast to train, but patch edges show.
    - ``both``: their sum, the conv path's last conv starting at zero, so training starts from
      the linear head's quick fit and the conv path learns the residual across patch edges.

    ``conv_out`` is the last layer (VQGAN's adaptive GAN weight is taken there): the conv path's
    last conv, or the 1×1 conv of ``linear`` (``both`` keeps its per-patch conv as ``linear``).

    Raises:
        ValueError: ``patch_size`` not a power of two (conv paths), an unknown ``kind``.
    """

    def __init__(self, width: int, patch_size: int, out_channels: int, base: int, kind: str = "conv"):
        super().__init__()
        if kind not in PIXEL_HEADS:
            raise ValueError(f"vae.pixel_head={kind!r}: expected one of {PIXEL_HEADS}")
        self.kind, self.patch_size = kind, patch_size
        per_patch = lambda: nn.Conv2d(width, out_channels * patch_size**2, 1)
        if kind == "linear":
            self.conv_out = per_patch()
            return
        self.linear = per_patch() if kind == "both" else None
        levels = int(math.log2(patch_size))
        if 2 ** levels != patch_size:
            raise ValueError(f"vae.patch_size={patch_size} must be a power of two for the pixel head")
        chans = [base * min(2 ** (levels - k), 4) for k in range(levels + 1)]   # coarse → fine
        self.conv_in = nn.Conv2d(width, chans[0], 3, padding=1)
        self.up = nn.Sequential(*(nn.Sequential(ResBlock(a), nn.Upsample(scale_factor=2, mode="nearest"),
                                                nn.Conv2d(a, b, 3, padding=1)) for a, b in pairwise(chans)))
        self.out = nn.Sequential(_group_norm(base), nn.SiLU())
        self.conv_out = nn.Conv2d(base, out_channels, 3, padding=1)
        if self.linear is not None:
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)

    def grad_at_conv_out(self, grad: torch.Tensor) -> torch.Tensor:
        """A gradient at the head's output ``(N, C, H, W)`` → at ``conv_out``'s output (the linear
        head's pixel shuffle undone; the other heads add ``conv_out``'s output as it is)."""
        return nnf.pixel_unshuffle(grad, self.patch_size) if self.kind == "linear" else grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return nnf.pixel_shuffle(self.conv_out(x), self.patch_size)
        fine = self.conv_out(self.out(self.up(self.conv_in(x))))
        return fine if self.linear is None else nnf.pixel_shuffle(self.linear(x), self.patch_size) + fine


PIXEL_HEADS = ("conv", "linear", "both")


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position table ``(grid*grid, dim)`` (as MAE): half the channels per axis."""
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([sinusoidal(ys.flatten(), dim // 2), sinusoidal(xs.flatten(), dim - dim // 2)], dim=-1)


class ARVAE(nn.Module):
    """Video autoencoder ``(B, F, C, H, W)`` in [-1, 1] ↔ latents ``(B, F, L, D)`` of norm √D per token.

    ``stage_added``: parameter prefixes a previous stage's checkpoint may lack (``train.init_from``
    keeps them at their initialisation): the temporal blocks of stage 3.

    Raises:
        ValueError: if frames are not ``image_size`` square with ``in_channels`` channels.
    """

    stage_added = ("temporal.",)

    def __init__(self, config: ARVAEConfig):
        super().__init__()
        self.config = c = config
        W, N, p = c.hidden_size, c.num_patches, c.patch_size
        self.patch_embed = nn.Linear(c.in_channels * p * p, W)
        # Patch positions start from a 2-D sin-cos table: with a tiny random init the latent
        # queries cannot tell patches apart and training stalls at per-clip mean colours.
        self.patch_pos = nn.Parameter(sincos_2d(c.image_size // p, W))
        self.latent_queries = nn.Parameter(torch.randn(c.tokens_per_frame, W) * W**-0.5)
        self.latent_pos = nn.Parameter(torch.randn(c.tokens_per_frame, W) * W**-0.5)
        self.encoder = nn.ModuleList(Block(W, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.latent_norm = nn.LayerNorm(W)
        self.to_latent = nn.Linear(W, c.latent_dim)
        self.from_latent = nn.Linear(c.latent_dim, W)
        self.mask_tokens = nn.Parameter(torch.randn(N, W) * W**-0.5)  # shared across frames
        self.decoder = nn.ModuleList(Block(W, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.temporal = (nn.ModuleList(TemporalBlock(W, c.num_heads) for _ in range(c.depth))
                         if c.temporal else None)
        self.out_norm = nn.LayerNorm(W)
        self.pixel_head = PixelHead(W, p, c.in_channels, c.pixel_channels, c.pixel_head)

    def _check(self, video: torch.Tensor):
        c = self.config
        if video.ndim != 5 or video.shape[2:] != (c.in_channels, c.image_size, c.image_size):
            raise ValueError(f"video must be (B, F, {c.in_channels}, {c.image_size}, {c.image_size}), "
                             f"got {tuple(video.shape)}")

    def set_trainable(self, which: str) -> ARVAE:
        """``requires_grad`` per ``vae.trainable``: every parameter (``all``), or only those under
        ``temporal.`` (``temporal``; the optimizer is built from trainable parameters alone, and
        the frozen encoder gets no backward). Returns self.

        Raises:
            ValueError: an unknown ``which``, or ``temporal`` on a model without temporal blocks.
        """
        if which not in VAE_TRAINABLE or (which == "temporal" and self.temporal is None):
            raise ValueError(f"vae.trainable={which!r} with vae.temporal={self.temporal is not None}: "
                             f"expected one of {VAE_TRAINABLE}, temporal only with temporal blocks")
        for name, p in self.named_parameters():
            p.requires_grad_(which == "all" or name.startswith("temporal."))
        return self

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, F, C, H, W)`` float in [-1, 1] → latents ``(B, F, L, D)``, each token of norm √D;
        frames are encoded independently."""
        self._check(video)
        B, F = video.shape[:2]
        c = self.config
        patches = rearrange(video, "b f c (h p) (w q) -> (b f) (h w) (c p q)", p=c.patch_size, q=c.patch_size)
        x = self.patch_embed(patches) + self.patch_pos
        lat = (self.latent_queries + self.latent_pos).expand(B * F, -1, -1)
        x = torch.cat([x, lat], dim=1)
        for blk in self.encoder:
            x = blk(x)
        z = self.to_latent(self.latent_norm(x[:, -c.tokens_per_frame:]))
        z = nnf.normalize(z, dim=-1) * c.latent_dim ** 0.5
        return z.view(B, F, c.tokens_per_frame, c.latent_dim)

    def decode(self, latents: torch.Tensor, window: int | None = None, frames_per_call: int | None = None
               ) -> torch.Tensor:
        """Latents ``(B, F, L, D)`` (any norm) → video ``(B, F, C, H, W)`` (≈[-1, 1]); frame i uses
        latents of frames <= i only.

        ``window``: for videos longer than the decoder was trained on, frame ``i >= window`` is
        decoded from the latents of frames ``i-window+1 … i`` only, as the sampler's sliding
        window does. Those windows are stacked along the batch and decoded about
        ``frames_per_call`` frames at a time (each keeps its last frame): the same result as one
        window per call, in fewer, larger calls. Default: 256 on CUDA, where small calls are
        launch-bound; one window per call on the CPU, where batching measured 0.74-0.8× as fast
        (BENCHMARKS.md). The windows cannot share a cache: a frame's tokens after the first
        temporal block depend on every frame of its window, so the same frame differs from window
        to window.
        """
        B, F = latents.shape[:2]
        if window is None or F <= window:
            return self._decode(latents)
        # (B·(F-window), window, L, D): the window ending at each frame i = window … F-1
        windows = latents.unfold(1, window, 1)[:, 1:].permute(0, 1, 4, 2, 3).flatten(0, 1)
        frames_per_call = frames_per_call or (256 if latents.is_cuda else window)
        per_call = max(1, frames_per_call // window)
        tails = [self._decode(chunk)[:, -1] for chunk in windows.split(per_call)]
        tail = torch.cat(tails).view(B, F - window, *tails[0].shape[1:])
        return torch.cat([self._decode(latents[:, :window]), tail], dim=1)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        B, F, L, _ = latents.shape
        c = self.config
        N, W, g = c.num_patches, c.hidden_size, c.image_size // c.patch_size
        lat = self.from_latent(nnf.normalize(latents, dim=-1)) + self.latent_pos      # (B, F, L, W)
        patches = (self.mask_tokens + self.patch_pos).expand(B, F, N, W)               # (B, F, N, W)
        x = torch.cat([lat, patches], dim=2)                                            # (B, F, L+N, W)
        for i, blk in enumerate(self.decoder):
            if self.temporal is not None:
                x = self.temporal[i](x, L)                                              # across frames <= t
            x = blk(x.flatten(0, 1)).view(B, F, L + N, W)                               # within each frame
        grid = rearrange(self.out_norm(x[:, :, L:]), "b f (h w) c -> (b f) c h w", h=g, w=g)
        return self.pixel_head(grid).view(B, F, c.in_channels, c.image_size, c.image_size)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(B, F, C, H, W)`` in the model's dtype (the input is cast to it)."""
        return self.decode(self.encode(video.to(self.patch_embed.weight.dtype)))
