"""Block-causal attention over frames (paper Sec. 3.2: temporal causal attention).

Frame ``i`` attends to every token of frames ``<= i``. Queries may be the last ``Fq`` frames of
the ``Fk`` key frames: with a KV cache the keys of finished frames come from earlier calls and
only the remaining frames are computed.

Three kernels give the same result (tests compare each with a float64 reference):

- ``sdpa``: ``scaled_dot_product_attention`` with a boolean mask. Any device, any dtype, with
  backward; the CPU path (FlexAttention has no CPU backward).
- ``flex``: FlexAttention with a ``BlockMask`` (compiled on CUDA: fully masked blocks are
  skipped, so block-causal costs about half of full attention). The default on CUDA for
  training. Without autograd (sampling) ``flex`` runs as ``sdpa``: the KV-cached sampler calls
  attention with many (Fq, Fk) shapes, the compiled kernel recompiles for each, and past torch's
  recompile limit (8) it falls back to an unfused kernel that materialises the scores; on an
  H100 a paper-size F=128 s=5 sample did not finish in 3 minutes that way (BENCHMARKS.md).
- ``flash``: flash-attn (fp16/bf16, CUDA), when installed. It has no block mask, so each query
  frame is one ``flash_attn_func`` call over the keys of frames ``<= i``.

``dit.attention=official`` prepends K context tokens to the frames' tokens; :func:`official_mask`
is the mask the official code builds for them, and every kernel above takes it (``num_context=K``).
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "flex", "flash")


def block_causal_mask(num_frames: int, tokens_per_frame: int, device=None, num_key_frames: int | None = None
                      ) -> torch.Tensor:
    """Boolean mask ``(Fq*L, Fk*L)``, True = may attend: query frame >= key frame.

    The ``Fq = num_frames`` query frames are the last ones of the ``Fk`` key frames (default Fk = Fq).
    """
    fk = num_frames if num_key_frames is None else num_key_frames
    return frame_mask(torch.arange(fk - num_frames, fk, device=device), fk, tokens_per_frame)


def frame_mask(q_frame: torch.Tensor, num_key_frames: int, tokens_per_frame: int) -> torch.Tensor:
    """Boolean mask ``(Fq*L, Fk*L)``, True = may attend, for queries of the frames ``q_frame``
    ``(Fq,)`` long (any positions, e.g. a tensor offset) over key frames ``0 … Fk-1``."""
    L = tokens_per_frame
    k_frame = torch.arange(num_key_frames, device=q_frame.device).repeat_interleave(L)
    return q_frame.repeat_interleave(L)[:, None] >= k_frame[None, :]


def official_mask(num_frames: int, tokens_per_frame: int, num_context: int, device=None) -> torch.Tensor:
    """Boolean mask ``(K+F*L, K+F*L)``, True = may attend, over K context tokens followed by F frames
    of L tokens: the official ``video_temporal_causal`` mask (iva-mzsun/AR-Diffusion,
    src/ardiff/modules/dit_model.py:319-339, there as 0 / -inf).

    - context queries (rows ``< K``) attend to every token: the context and every frame;
    - a query of frame i attends to every context token and to the tokens of frames ``<= i``.

    Not temporally causal beyond one layer: frame j reads the context tokens, which have read every
    frame in the layer before (see :class:`~ardscale.models.dit.DiT`).
    """
    K = num_context
    video = block_causal_mask(num_frames, tokens_per_frame, device)
    mask = torch.ones(K + video.shape[0], K + video.shape[1], dtype=torch.bool, device=device)
    mask[K:, K:] = video
    return mask


def _context_mask_mod(K: int, L: int, offset=0):
    """FlexAttention ``mask_mod`` of :func:`official_mask` (``offset``: key frames before the first
    query frame; with K = 0 the plain block-causal mask)."""
    def mask_mod(b, h, q_idx, kv_idx):
        frames = (q_idx - K) // L + offset >= (kv_idx - K) // L
        return (q_idx < K) | (kv_idx < K) | frames if K else frames
    return mask_mod


@lru_cache(maxsize=64)
def _sdpa_mask(fq: int, fk: int, L: int, device: torch.device, K: int = 0) -> torch.Tensor:
    return official_mask(fq, L, K, device) if K else block_causal_mask(fq, L, device, fk)


@lru_cache(maxsize=64)
def _flex_block_mask(fq: int, fk: int, L: int, device: torch.device, K: int = 0):
    from torch.nn.attention.flex_attention import create_block_mask

    mask_mod = _context_mask_mod(K, L, fk - fq)
    return create_block_mask(mask_mod, None, None, K + fq * L, K + fk * L, device=device)


@lru_cache(maxsize=2)
def _flex_kernel(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def flash_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(name: str, device: torch.device) -> str:
    """The kernel ``name`` stands for on ``device``: ``auto`` is ``flex`` on CUDA, else ``sdpa``.

    Raises:
        ValueError: unknown name, or ``flash`` without flash-attn / CUDA.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}: expected one of {BACKENDS}")
    if name == "auto":
        return "flex" if device.type == "cuda" else "sdpa"
    if name == "flash" and not (device.type == "cuda" and flash_available()):
        raise ValueError("attention backend 'flash' needs the flash-attn package and a CUDA device; "
                         "use 'flex' or 'sdpa'")
    return name


def _flash_block_causal(q, k, v, fq: int, L: int, flash_fn=None, K: int = 0):
    """Block-causal attention from per-query-frame flash-attn calls; ``(B, H, N, Dh)`` layout.
    ``K`` context tokens first (:func:`official_mask`): one more call, their queries over every key."""
    if flash_fn is None:
        from flash_attn import flash_attn_func as flash_fn
    offset = (k.shape[2] - K) // L - fq
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # flash-attn wants (B, N, H, Dh)
    outs = [flash_fn(q[:, :K], k, v)] if K else []
    outs += [flash_fn(q[:, K + i * L:K + (i + 1) * L], k[:, :K + (offset + i + 1) * L],
                      v[:, :K + (offset + i + 1) * L]) for i in range(fq)]
    return torch.cat(outs, dim=1).transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tokens_per_frame: int,
              backend: str = "sdpa", num_context: int = 0) -> torch.Tensor:
    """Block-causal multi-head attention.

    Args:
        q: ``(B, H, Fq*L, Dh)`` queries of the last Fq frames. k, v: ``(B, H, Fk*L, Dh)``, Fk >= Fq.
        tokens_per_frame: L.
        backend: a resolved name (``sdpa``, ``flex`` or ``flash``; see :func:`resolve_backend`).
        num_context: K > 0: q, k, v are ``(B, H, K+F*L, Dh)``, K context tokens then all F frames
            (Fq = Fk), under :func:`official_mask`.
    Returns:
        ``(B, H, Nq, Dh)`` in q's dtype.
    """
    L, K = tokens_per_frame, num_context
    fq, fk = (q.shape[2] - K) // L, (k.shape[2] - K) // L
    if backend == "sdpa" or (backend == "flex" and not torch.is_grad_enabled()):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_sdpa_mask(fq, fk, L, q.device, K))
    if backend == "flex":
        kernel = _flex_kernel(q.device.type == "cuda")
        return kernel(q, k, v, block_mask=_flex_block_mask(fq, fk, L, q.device, K))
    if backend == "flash":
        return _flash_block_causal(q, k, v, fq, L, K=K)
    raise ValueError(f"unresolved attention backend {backend!r}")


class SelfAttention(torch.nn.Module):
    """QKV projection + SDPA with an optional boolean ``(N, N)`` mask + output projection on
    ``(B, N, C)`` tokens (the AR-VAE's attention; the DiT uses :class:`BlockCausalSelfAttention`)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        return self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)

    def _out(self, o: torch.Tensor) -> torch.Tensor:
        B, H, N, Dh = o.shape
        return self.proj(o.transpose(1, 2).reshape(B, N, H * Dh))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._qkv(x)
        return self._out(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


class CrossAttention(torch.nn.Module):
    """Queries ``(B, Nq, C)`` attend to a context ``(B, Nk, C)`` under an optional boolean mask that
    broadcasts to ``(B, heads, Nq, Nk)`` (True = may attend: ``(Nq, Nk)`` for a structure, ``(B, 1,
    1, Nk)`` for key padding); output ``(B, Nq, C)``. ``kv``: the context's keys/values from
    :meth:`context_kv`, when the same context serves several calls (the DiT's text in sampling)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q, self.kv, self.proj = (torch.nn.Linear(dim, n * dim) for n in (1, 2, 1))

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``(B, heads, Nk, C/heads)`` of ``context`` ``(B, Nk, C)``."""
        B, Nk, C = context.shape
        k, v = self.kv(context).view(B, Nk, 2, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, Nq, C = x.shape
        k, v = kv if kv is not None else self.context_kv(context)
        q = self.q(x).view(B, Nq, self.num_heads, C // self.num_heads).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(o.transpose(1, 2).reshape(B, Nq, C))


class BlockCausalSelfAttention(SelfAttention):
    """Self-attention where frame i reads frames <= i, with a KV cache and a choice of kernel.

    Args:
        backend: ``auto``, ``sdpa``, ``flex`` or ``flash`` (see :func:`resolve_backend`).
        causal: False = every frame reads every frame (the bidirectional ablation of Table 3;
            plain SDPA, no cache).
    """

    def __init__(self, dim: int, num_heads: int, backend: str = "auto", causal: bool = True):
        super().__init__(dim, num_heads)
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}: expected one of {BACKENDS}")
        self.backend, self.causal = backend, causal

    def forward(self, x: torch.Tensor, tokens_per_frame: int, cache=None, layer: int = 0,
                num_context: int = 0) -> torch.Tensor:
        """``x`` ``(B, Fq*L, C)`` → ``(B, Fq*L, C)``. ``cache``: what ``begin`` of a
        :class:`~ardscale.models.kv_cache.KVCache` or :class:`~ardscale.models.kv_cache.StaticKVCache`
        returned for this call (the frames before x); ``layer`` indexes its buffers.
        ``num_context``: K > 0: x is ``(B, K+F*L, C)``, K context tokens then every frame, under
        :func:`official_mask` (``dit.attention=official``; bidirectional: no mask at all).

        Raises:
            ValueError: a cache on a bidirectional (``causal=False``) attention or with context tokens.
        """
        q, k, v = self._qkv(x)
        backend = resolve_backend(self.backend, x.device)
        if cache is not None:
            if not self.causal or num_context:
                raise ValueError("a bidirectional DiT (causal=False) or one with context tokens "
                                 "(dit.attention=official) has no KV cache: its frames read later "
                                 "frames, so no frame's keys/values are final")
            return self._out(cache.attend(layer, q, k, v, backend))
        if self.causal:
            return self._out(attention(q, k, v, tokens_per_frame, backend, num_context))
        return self._out(F.scaled_dot_product_attention(q, k, v))


class Mlp(torch.nn.Sequential):
    """Transformer feed-forward ``dim → ratio·dim → dim`` with tanh-GELU (as DiT)."""

    def __init__(self, dim: int, ratio: float):
        hidden = int(dim * ratio)
        super().__init__(torch.nn.Linear(dim, hidden), torch.nn.GELU(approximate="tanh"),
                         torch.nn.Linear(hidden, dim))

