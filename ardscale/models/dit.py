"""Causal DiT backbone of AR-Diffusion (paper Sec. 3.2, Fig. 2b; sizes from Table 6).

A DiT (Peebles & Xie) over latent tokens ``(B, F, L, D)``: every frame carries its own timestep,
injected through adaLN-Zero computed per frame and broadcast over the frame's L tokens, and
attention is block-causal over frames. The model predicts x0 (the paper's parameterisation;
``diffusion.prediction=eps|v`` makes the same network predict epsilon or v, an ablation).

``dit.attention`` chooses between two token sets and masks:

- ``causal`` (default): the paper's temporal causal attention (Sec. 3.2), strict: the class enters
  through adaLN only and no token sees a later frame (tested). The KV cache rests on it.
- ``official``: the official code's (iva-mzsun/AR-Diffusion, ``causal_attn_mode:
  video_temporal_causal`` in configs/ucf101/ardiff/diff_ardiff_vtattn_x0pred_nvae_midt_class.yaml:23).
  K = 77 learned context tokens per class (src/ardiff/base.py:63, picked by label at base.py:93-100),
  projected to the width (src/ardiff/modules/dit_model.py:346, 413), are prepended to the frames'
  tokens (dit_model.py:414) and dropped after the last block (dit_model.py:420). They attend to every
  frame and every frame attends to them (:func:`~ardscale.models.attention.official_mask`,
  dit_model.py:319-339); they get no timestep: no adaLN modulation, no gate (dit_model.py:183-201).
  **Not temporally causal**: in layer 1 the context tokens read every frame, and from layer 2 on
  frame j reads them, so frame j's output depends on frames after j (tested; with one layer it
  does not). Hence no KV cache: the sampler recomputes the whole window each call, as the official
  sampler does (src/ardiff/modules/fifoddim.py:162-176). With ``causal: false`` nothing is masked
  (the official ``causal_attn_mode: null``, dit_model.py:293-294).

  Departures, so that ``official`` differs from ``causal`` in the tokens and the mask only: the
  class also stays in adaLN (the official adaLN sees the timestep only, dit_model.py:416-418) and
  the final layer keeps its adaLN (the official one is LayerNorm + Linear, dit_model.py:363-366);
  the blocks stay pre-norm (no ``share_norm``, see :class:`DiTBlock`); the null class is row
  ``num_classes`` with ``class_dropout`` (the official drops to class 0, a real UCF-101 class, with
  probability P(N(0,1) < 0.2) ≈ 0.58, base.py:97-98); the mask is built for any frame count (the
  official builds it once for ``num_frames``, dit_model.py:333-338).

With ``condition: text`` (not in the paper, which is class-conditional): each block also
cross-attends from the video tokens to the caption tokens, as PixArt-α and Open-Sora do, and the
pooled caption joins the timestep in the per-frame adaLN conditioning; the captions carry no frame
order, so causality is unchanged.

Because frame i only reads frames <= i (``attention=causal``), a frame whose input no longer
changes (a finished, clean frame during sampling) has fixed keys/values in every layer:
:class:`KVCache` keeps them so that later calls compute only the frames after it;
:class:`StaticKVCache` (models/kv_cache.py) is the same with preallocated buffers, for a compiled
sampler step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import BlockCausalSelfAttention, CrossAttention, Mlp


@dataclass
class DiTConfig:
    """DiT hyper-parameters. Defaults are the paper-size model (Table 6: 1152 wide, 28 deep, 16 heads)."""

    latent_dim: int = 4          # D
    tokens_per_frame: int = 32   # L
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 101       # label `num_classes` is the null class used for CFG
    class_dropout: float = 0.1   # label dropout for classifier-free guidance (training only)
    attn_backend: str = "auto"   # auto (flex on CUDA, sdpa elsewhere) | sdpa | flex | flash
    grad_checkpointing: bool = False  # recompute each block in backward: activations O(depth) → O(1) blocks
    checkpoint_every: int = 1    # with grad_checkpointing: only every k-th block (torchtitan's selective
                                 # AC by layer): k× the activations kept, 1/k of the recompute
    causal: bool = True          # temporal causal attention (paper); False = bidirectional (Table 3 ablation)
    condition: str = "class"     # class: labels in adaLN | text: captions, cross-attention + pooled in adaLN
    text_dim: int = 384          # text: C of the text encoder's tokens (all-MiniLM-L6-v2: 384)
    text_tokens: int = 32        # text: S, captions padded/truncated to this many tokens
    caption_dropout: float = 0.1  # text: captions replaced by the null (empty) caption, for CFG
    attention: str = "causal"    # causal: strict block-causal (paper) | official: + K context tokens that
                                 # read and are read by every frame (official code; not causal, no KV cache)
    context_tokens: int = 77     # official: K learned context tokens per class (official base.py:63)
    context_dim: int = 768       # official: their width, projected to hidden_size (official dit_model.py:346)

    def __post_init__(self):
        if self.condition not in ("class", "text"):
            raise ValueError(f"dit.condition={self.condition!r}: expected 'class' or 'text'")
        if self.checkpoint_every < 1:
            raise ValueError(f"dit.checkpoint_every={self.checkpoint_every}: checkpoint every k ≥ 1 blocks")
        if self.attention not in ("causal", "official"):
            raise ValueError(f"dit.attention={self.attention!r}: expected 'causal' or 'official'")
        if self.attention == "official" and self.condition != "class":
            raise ValueError("dit.attention=official builds its context tokens from class labels; "
                             "a text DiT (dit.condition=text) takes dit.attention=causal")
        if self.attention == "official" and self.context_tokens < 1:
            raise ValueError(f"dit.context_tokens={self.context_tokens}: dit.attention=official needs ≥ 1")

    @property
    def temporally_causal(self) -> bool:
        """Frame i's output depends on frames <= i only (what a KV cache needs): causal attention
        without the official context tokens."""
        return self.causal and self.attention == "causal"

    @property
    def num_context(self) -> int:
        """K, the context tokens before the frames' tokens (0 unless ``attention=official``)."""
        return self.context_tokens if self.attention == "official" else 0

    @classmethod
    def tiny(cls, **overrides) -> DiTConfig:
        """A CPU test size (~0.1M params)."""
        return cls(**{"hidden_size": 64, "depth": 2, "num_heads": 4, "num_classes": 10, **overrides})


def sinusoidal(pos: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of positions/timesteps ``(...)`` → ``(..., dim)`` float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=pos.device,
                                                           dtype=torch.float32) / half)
    args = pos.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN (DiT, Peebles & Xie): ``x · (1 + scale) + shift``, per frame: x ``(B, F, L, C)`` against
    shift / scale ``(B, F, 1, C)`` (this frame's timestep and class), broadcast over its L tokens."""
    return x * (1 + scale) + shift


@dataclass
class TextCondition:
    """Encoded captions (:mod:`ardscale.models.text`): ``tokens`` ``(B, S, C)`` float, ``mask``
    ``(B, S)`` bool (True = a real token), ``pooled`` ``(B, C)`` float."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, rows) -> TextCondition:
        """The captions at ``rows`` (an index, slice or index tensor over B), as a TextCondition."""
        rows = [rows] if isinstance(rows, int) else rows
        return TextCondition(self.tokens[rows], self.mask[rows], self.pooled[rows])

    def to(self, device) -> TextCondition:
        return TextCondition(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))

    def cat(self, other: TextCondition) -> TextCondition:
        return TextCondition(*(torch.cat([a, b]) for a, b in zip(
            (self.tokens, self.mask, self.pooled), (other.tokens, other.mask, other.pooled), strict=True)))


class LabelEmbedder(nn.Embedding):
    """Class labels ``(B,)`` long → embeddings ``(B, H)``, with label dropout for classifier-free
    guidance (DiT's ``LabelEmbedder.token_drop``): row ``num_classes`` is the null class.

    ``forward(labels, drop)``: ``drop (B,)`` bool replaces those labels with the null class (the
    training step draws it from its own generator, so a resumed run redraws the same mask); with
    ``drop=None`` a module in training mode drops each label with probability ``dropout``.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout: float):
        super().__init__(num_classes + 1, hidden_size)
        self.num_classes, self.dropout = num_classes, dropout

    def forward(self, labels: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        return self.embed(self.dropped(labels, drop))

    def dropped(self, labels: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """``labels`` ``(B,)`` with the null class where dropped (``drop``, or drawn; see above)."""
        if drop is None and self.training and self.dropout > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout
        if drop is not None:
            labels = torch.where(drop.to(labels.device), self.num_classes, labels)
        return labels

    def embed(self, labels: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, H)`` of ``labels`` as given (no dropout)."""
        return super().forward(labels)


class ContextEmbedder(nn.Module):
    """``dit.attention=official``: class labels ``(B,)`` long → K context tokens ``(B, K, H)``.

    Each class (and the null class, row ``num_classes``) owns K learned tokens of width C (the
    official ``class_emb``, ``(num_class+1, 77, 768)`` drawn from N(0, 0.1²), src/ardiff/base.py:63,
    picked by label at base.py:93-100), projected to the DiT's width by a linear layer (the official
    ``c_embedder``, src/ardiff/modules/dit_model.py:346, 413). No position embedding: the official
    adds its position embedding to the video tokens only (dit_model.py:412).
    """

    def __init__(self, num_classes: int, tokens: int, dim: int, hidden_size: int):
        super().__init__()
        self.tokens = nn.Parameter(torch.zeros(num_classes + 1, tokens, dim))   # (classes + null, K, C)
        self.proj = nn.Linear(dim, hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.proj(self.tokens[labels])


class TextEmbedder(nn.Module):
    """Captions → (tokens ``(B, S, H)``, key mask ``(B, 1, 1, S)``, pooled ``(B, H)``), with caption
    dropout for classifier-free guidance: a dropped caption becomes the null caption (the text
    encoder's encoding of ``""``, set with :meth:`set_null`; kept in the state dict).

    The tokens pass PixArt-α's caption projection (Linear-GELU-Linear); the pooled vector an MLP
    like the timestep's, and joins the per-frame adaLN conditioning.
    ``forward(text, drop)``: as :class:`LabelEmbedder` (``drop (B,)`` bool, or drawn with
    probability ``dropout`` in training mode when None).
    """

    def __init__(self, text_dim: int, text_tokens: int, hidden_size: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        H = hidden_size
        self.tokens = nn.Sequential(nn.Linear(text_dim, H), nn.GELU(approximate="tanh"), nn.Linear(H, H))
        self.pooled = nn.Sequential(nn.Linear(text_dim, H), nn.SiLU(), nn.Linear(H, H))
        self.register_buffer("null_tokens", torch.zeros(text_tokens, text_dim))
        self.register_buffer("null_mask", torch.ones(text_tokens, dtype=torch.bool))
        self.register_buffer("null_pooled", torch.zeros(text_dim))

    def set_null(self, null: TextCondition) -> None:
        """The null caption: one encoded caption (``tokens (1, S, C)``), normally of ``""``."""
        self.null_tokens.copy_(null.tokens[0])
        self.null_mask.copy_(null.mask[0])
        self.null_pooled.copy_(null.pooled[0])

    def null(self, batch: int) -> TextCondition:
        return TextCondition(self.null_tokens.expand(batch, -1, -1), self.null_mask.expand(batch, -1),
                             self.null_pooled.expand(batch, -1))

    def forward(self, text: TextCondition, drop: torch.Tensor | None = None, tokens: bool = True):
        """``tokens=False``: the pooled vector only (the caption's keys/values are cached)."""
        B = len(text)
        if text.tokens.shape[1:] != self.null_tokens.shape:
            raise ValueError(f"text tokens have shape (S, C)={tuple(text.tokens.shape[1:])}; the DiT "
                             f"expects {tuple(self.null_tokens.shape)} (dit.text_tokens, dit.text_dim)")
        if drop is None and self.training and self.dropout > 0:
            drop = torch.rand(B, device=text.tokens.device) < self.dropout
        toks, mask, pooled = text.tokens, text.mask.bool(), text.pooled
        if drop is not None:
            d = drop.to(toks.device)
            null = self.null(B)
            toks = torch.where(d[:, None, None], null.tokens.to(toks.dtype), toks)
            mask = torch.where(d[:, None], null.mask, mask)
            pooled = torch.where(d[:, None], null.pooled.to(pooled.dtype), pooled)
        dtype = self.pooled[0].weight.dtype
        pooled = self.pooled(pooled.to(dtype))
        if not tokens:
            return None, None, pooled
        return self.tokens(toks.to(dtype)), mask[:, None, None, :], pooled


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block on tokens ``(B, K+F*L, C)`` with per-frame conditioning ``(B, F, C)``.

    The conditioning (timestep + class) is the same for the L tokens of a frame, so the six
    modulation vectors are computed once per frame and broadcast over its tokens, as the official
    model does: at paper size the adaLN matmul per token would be 12·C² of ~37·C² FLOPs per block.

    K context tokens (``dit.attention=official``; else K = 0) come first. They are normalised but
    neither modulated nor gated: they carry no timestep (official src/ardiff/modules/dit_model.py:
    183-201). Departure: the block stays pre-norm. The official ``share_norm`` block (the UCF-101
    config's ``merge_mode``) also replaces the residual stream by its LayerNorm before each branch
    (``x = norm1(x)``, dit_model.py:183, 194), for frame tokens too; that is a change of the block,
    not of the context tokens (its ``separate_norm`` mode, dit_model.py:156-177, has the same
    context tokens without it), and is left out of this option.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, attn_backend: str = "auto",
                 causal: bool = True, cross: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = BlockCausalSelfAttention(dim, num_heads, attn_backend, causal)
        self.cross = CrossAttention(dim, num_heads) if cross else None   # text DiT (PixArt-α)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, tokens_per_frame: int, cache=None, layer: int = 0,
                text=None, num_context: int = 0) -> torch.Tensor:
        """The block output ``(B, K+F*L, C)``. ``cache``/``layer``: the KV cache and this block's index
        in it. ``text``: ``(keys, values, mask)`` of the captions for the cross-attention (text DiT).
        ``num_context``: K, the context tokens at the front of ``x``."""
        K, L = num_context, tokens_per_frame
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_modulation(c)[:, :, None].chunk(6, dim=-1)  # (B, F, 1, C)
        a = self.attn(self._modulated(self.norm1(x), sh1, sc1, K, L), L, cache, layer, K)
        x = self._gated_sum(x, a, g1, K, L)
        if self.cross is not None:   # every token reads the captions: no frame reads another here
            x = x + self.cross(x, mask=text[2], kv=text[:2])
        return self._gated_sum(x, self.mlp(self._modulated(self.norm2(x), sh2, sc2, K, L)), g2, K, L)

    @staticmethod
    def _modulated(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, K: int, L: int) -> torch.Tensor:
        """adaLN on the frame tokens of ``h`` ``(B, K+F*L, C)``, per frame (shift, scale ``(B, F, 1, C)``);
        the K context tokens pass as they are."""
        B, N, C = h.shape
        F = (N - K) // L
        frames = modulate(h[:, K:].view(B, F, L, C), shift, scale).view(B, F * L, C)
        return torch.cat([h[:, :K], frames], dim=1) if K else frames

    @staticmethod
    def _gated_sum(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor, K: int, L: int) -> torch.Tensor:
        """``x + gate·branch`` over the frame tokens (``(B, K+F*L, C)``, gate ``(B, F, 1, C)`` per frame);
        the K context tokens add their branch ungated."""
        B, N, C = x.shape
        F = (N - K) // L
        frames = (x[:, K:].view(B, F, L, C) + gate * branch[:, K:].view(B, F, L, C)).view(B, F * L, C)
        return torch.cat([x[:, :K] + branch[:, :K], frames], dim=1) if K else frames


class DiT(nn.Module):
    """Causal DiT: ``forward(x, t, y)`` → x0 prediction (epsilon / v with ``diffusion.prediction``).

    Args (forward):
        x: ``(B, F, L, D)`` noisy latents (float).
        t: ``(B, F)`` long DDPM indices ``0 … T-1``, one per frame.
        y: ``(B,)`` long class labels (``config.num_classes`` is the null label), or a
            :class:`TextCondition` with ``config.condition="text"``.
        drop: ``(B,)`` bool, labels (captions) replaced by the null class (caption): CFG training,
            see :class:`LabelEmbedder` / :class:`TextEmbedder`.
        cache: a :class:`~ardscale.models.kv_cache.KVCache` holding the frames before x (x's frames
            are then at positions ``cache.num_frames …``), or a
            :class:`~ardscale.models.kv_cache.StaticKVCache` (x's frames at ``cache.offset …``);
            None = x is the whole video.
        cache_frames: (KVCache) append the keys/values of x's first ``cache_frames`` frames to ``cache``;
            the caller promises those frames are final.
    Returns:
        ``(B, F, L, D)`` predicted clean latents (or epsilon / v, as trained). Output of frame i
        depends only on frames <= i (``attention=causal``; with ``official`` on every frame once
        depth ≥ 2, see the module doc).
    Raises:
        ValueError: if ``L``/``D`` differ from the config or t's shape is not ``(B, F)``, or a
            cache is given to a bidirectional DiT or to ``attention=official``.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = c = config
        H = c.hidden_size
        self.x_embedder = nn.Linear(c.latent_dim, H)
        self.token_pos = nn.Parameter(torch.zeros(c.tokens_per_frame, H))
        self.t_embedder = nn.Sequential(nn.Linear(256, H), nn.SiLU(), nn.Linear(H, H))
        text = c.condition == "text"
        self.y_embedder = (TextEmbedder(c.text_dim, c.text_tokens, H, c.caption_dropout) if text
                           else LabelEmbedder(c.num_classes, H, c.class_dropout))
        self.context = (ContextEmbedder(c.num_classes, c.context_tokens, c.context_dim, H)
                        if c.attention == "official" else None)
        self.blocks = nn.ModuleList(DiTBlock(H, c.num_heads, c.mlp_ratio, c.attn_backend, c.causal, text)
                                    for _ in range(c.depth))
        self.norm_final = nn.LayerNorm(H, elementwise_affine=False, eps=1e-6)
        self.adaLN_final = nn.Sequential(nn.SiLU(), nn.Linear(H, 2 * H))
        self.out = nn.Linear(H, c.latent_dim)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.token_pos, std=0.02)
        if isinstance(self.y_embedder, LabelEmbedder):
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        if self.context is not None:   # as the official class_emb (base.py:63); its proj: xavier above
            nn.init.normal_(self.context.tokens, std=0.1)
        for lin in (self.t_embedder[0], self.t_embedder[2]):
            nn.init.normal_(lin.weight, std=0.02)
        # adaLN-Zero: every residual branch and the output start at zero.
        for blk in self.blocks:
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
            if blk.cross is not None:   # PixArt-α: the cross-attention starts as a no-op
                nn.init.zeros_(blk.cross.proj.weight)
                nn.init.zeros_(blk.cross.proj.bias)
        for lin in (self.adaLN_final[-1], self.out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cache=None,
                cache_frames: int = 0, drop: torch.Tensor | None = None) -> torch.Tensor:
        B, F, L, D = x.shape
        c = self.config
        if (L, D) != (c.tokens_per_frame, c.latent_dim):
            raise ValueError(f"latents have (L, D)=({L}, {D}); the model expects "
                             f"({c.tokens_per_frame}, {c.latent_dim})")
        if t.shape != (B, F):
            raise ValueError(f"timesteps must have shape (B, F)=({B}, {F}), got {tuple(t.shape)}")
        H = c.hidden_size
        x = x.to(self.x_embedder.weight.dtype)   # fp32 latents into a bf16 engine
        pos = cache.positions(F, x.device) if cache is not None else torch.arange(F, device=x.device)
        h = self.x_embedder(x) + self.token_pos + sinusoidal(pos, H)[:, None].to(x.dtype)  # any length
        cond, text, context = self._condition(y, drop, cache)
        cond = self.t_embedder(sinusoidal(t, 256).to(x.dtype)) + cond[:, None]     # (B, F, H)
        h = h.reshape(B, F * L, H)
        K = c.num_context
        if K:   # official: K context tokens first (B, K+F*L, H)
            h = torch.cat([context.to(h.dtype), h], dim=1)
        ckpt = c.grad_checkpointing and self.training and torch.is_grad_enabled()
        call = cache.begin(F, cache_frames, L) if cache is not None else None   # what the blocks attend with
        for i, blk in enumerate(self.blocks):
            txt = None if text is None else text[i]
            if ckpt and i % c.checkpoint_every == 0:
                h = checkpoint(blk, h, cond, L, None, i, txt, K, use_reentrant=False)
            else:
                h = blk(h, cond, L, call, i, txt, K)
        if cache is not None:
            cache.end()
        h = h[:, K:]   # official: the context tokens are dropped (dit_model.py:420)
        shift, scale = self.adaLN_final(cond)[:, :, None].chunk(2, dim=-1)      # (B, F, 1, H) each
        return self.out(modulate(self.norm_final(h).view(B, F, L, H), shift, scale))

    def _condition(self, y, drop, cache):
        """The per-video conditioning vector ``(B, H)`` (class, or pooled caption); for a text DiT,
        each block's caption ``(keys, values, mask)`` (from ``cache`` once computed), else None; for
        ``attention=official``, the context tokens ``(B, K, H)`` of the (dropped) labels, else None."""
        if self.config.condition == "class":
            labels = self.y_embedder.dropped(y, drop)   # CFG: the null class where dropped
            context = None if self.context is None else self.context(labels)
            return self.y_embedder.embed(labels), None, context
        if not isinstance(y, TextCondition):
            raise TypeError("a text DiT (dit.condition=text) takes a TextCondition, not class labels")
        cached = cache is not None and cache.text is not None
        tokens, mask, pooled = self.y_embedder(y, drop, tokens=not cached)
        if cached:
            return pooled, cache.text, None
        text = [(*blk.cross.context_kv(tokens), mask) for blk in self.blocks]
        if cache is not None and cache.keeps_text:
            cache.text = text
        return pooled, text, None

    def with_null(self, y):
        """``y`` followed by as many null conditions (class ``num_classes``, or the null caption):
        the batch of a classifier-free-guided call."""
        if isinstance(y, TextCondition):
            return y.cat(self.y_embedder.null(len(y)).to(y.tokens.device))
        return torch.cat([y, torch.full_like(y, self.config.num_classes)])
