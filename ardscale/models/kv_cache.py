"""Key/value caches of the causal DiT's self-attention, for sampling (paper Sec. 3.2: a frame reads
only frames <= itself, so a finished frame's keys/values never change).

Both caches answer the same calls from :meth:`~ardscale.models.dit.DiT.forward`: ``positions``
(the frame positions of the call's frames), ``begin`` / ``end`` around the blocks, and ``attend``
in each block on what ``begin`` returned (write this call's keys/values, attend block-causally
over the cached and the new frames).

- :class:`KVCache` grows: each call concatenates, and the caller says how many of the call's first
  frames are final (``cache_frames``); the next call passes only the frames after them. Shapes
  change from call to call, which suits eager PyTorch.
- :class:`StaticKVCache` is preallocated, ``(B, H, F_max·L, Dh)`` per layer, with a frame
  ``offset`` held in a tensor: every call has the same shapes, so one compiled graph (and one CUDA
  graph) serves a whole video. Each call writes its frames at ``offset …`` and its queries read the
  buffer's frames <= their own; frames before ``offset`` must hold final keys/values written by
  earlier calls, which the sampler guarantees (it only moves ``offset`` past clean frames).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import attention, frame_mask


def activation_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype ``model``'s keys/values come in: autocast's when it is on for the model's device,
    else its parameters'."""
    p = next(model.parameters())
    return torch.get_autocast_dtype(p.device.type) if torch.is_autocast_enabled(p.device.type) else p.dtype


class KVCache:
    """Per-layer keys/values ``(B, H, Fc*L, Dh)`` of the first ``num_frames`` frames of a video, and
    (text DiT) each layer's text keys/values, computed by the first call and reused after it.

    Only frames whose input is final may enter (during sampling: clean frames, whose earlier
    frames are clean too). The next :meth:`DiT.forward` then takes the frames after them.
    """

    keeps_text = True

    def __init__(self):
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.num_frames = 0
        self.text: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
        self._commit, self._L = 0, 0

    def positions(self, num_frames: int, device) -> torch.Tensor:
        """Frame positions ``(F,)`` long of a call's frames: they follow the cached ones."""
        return torch.arange(self.num_frames, self.num_frames + num_frames, device=device)

    def begin(self, num_frames: int, commit: int, tokens_per_frame: int) -> KVCache:
        """A call of ``num_frames`` frames whose first ``commit`` are final and join the cache;
        returns what the blocks call :meth:`attend` on (the cache itself)."""
        if commit > num_frames:
            raise ValueError(f"cache_frames={commit} exceeds the call's {num_frames} frames")
        self._commit, self._L = commit, tokens_per_frame
        return self

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               backend: str) -> torch.Tensor:
        """Attention of this call's queries ``(B, H, Fq*L, Dh)`` over the cached frames and this
        call's keys/values ``(B, H, Fq*L, Dh)``; keeps the first ``commit`` frames' keys/values."""
        keys, values = k, v
        if self.num_frames:
            keys, values = torch.cat([self.keys[layer], k], dim=2), torch.cat([self.values[layer], v], dim=2)
        if self._commit:   # the call's first frames are final: they join the cache
            n = self._commit * self._L
            if layer == len(self.keys):
                self.keys.append(k[:, :, :n])
                self.values.append(v[:, :, :n])
            else:
                self.keys[layer] = torch.cat([self.keys[layer], k[:, :, :n]], dim=2)
                self.values[layer] = torch.cat([self.values[layer], v[:, :, :n]], dim=2)
        return attention(q, keys, values, self._L, backend)

    def end(self) -> None:
        self.num_frames += self._commit
        self._commit = 0


class StaticKVCache:
    """Preallocated per-layer keys/values ``(B, H, F_max*L, Dh)`` and a frame ``offset`` (0-dim long
    tensor on the device): the call's frames sit at positions ``offset … offset+F-1`` of the buffer.

    Every call writes all its frames' keys/values there (``index_copy_``), and query frame
    ``offset+j`` attends to the buffer's frames ``<= offset+j``. Set the offset with
    :meth:`set_offset` between calls (outside a compiled region: the graph reads the tensor). The
    buffers are marked static addresses, so CUDA graphs (``torch.compile(mode="reduce-overhead")``)
    replay with them in place.

    Args:
        depth, heads, head_dim: the DiT's layers, attention heads and head width.
        batch: rows per call (2·B with classifier-free guidance).
        max_frames: F_max, the most frames the calls address (the sampler's window).
        tokens_per_frame: L.
        dtype, device: of the model's activations.
    Attention kernel: FlexAttention with a ``BlockMask`` built from the offset when the model's
    backend is ``flex`` and the call is being compiled (CUDA); else SDPA with a boolean mask.
    """

    keeps_text = False   # a text DiT recomputes its caption keys/values (S tokens): same graph every call

    def __init__(self, depth: int, batch: int, heads: int, head_dim: int, max_frames: int,
                 tokens_per_frame: int, dtype: torch.dtype, device):
        shape = (batch, heads, max_frames * tokens_per_frame, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(depth)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(depth)]
        self.offset = torch.zeros((), dtype=torch.long, device=device)
        for buf in (*self.keys, *self.values, self.offset):
            torch._dynamo.mark_static_address(buf)
        self.max_frames, self.text, self._L = max_frames, None, tokens_per_frame

    @classmethod
    def for_model(cls, model, batch: int, max_frames: int) -> StaticKVCache:
        """A cache sized for the DiT ``model`` (its config and device; the autocast dtype when
        autocast is on, else its parameters' dtype)."""
        c = model.config
        return cls(c.depth, batch, c.num_heads, c.hidden_size // c.num_heads, max_frames,
                   c.tokens_per_frame, activation_dtype(model), next(model.parameters()).device)

    def set_offset(self, frame: int) -> None:
        self.offset.fill_(frame)

    def positions(self, num_frames: int, device) -> torch.Tensor:
        return self.offset + torch.arange(num_frames, device=device)

    def begin(self, num_frames: int, commit: int, tokens_per_frame: int) -> _StaticCall:
        """One call of ``num_frames`` frames at the offset; ``commit`` is ignored: every frame is
        written, and the caller's offset says which are final. Returns what the blocks call
        ``attend`` on; its index and masks are the call's own (locals of a compiled graph, not
        state on the cache that the graph would have to return)."""
        if tokens_per_frame != self._L:
            raise ValueError(f"the cache holds L={self._L} tokens per frame, the call has {tokens_per_frame}")
        return _StaticCall(self, self.positions(num_frames, self.offset.device))

    def end(self) -> None:
        pass


class _StaticCall:
    """One DiT call on a :class:`StaticKVCache`: its query frames ``q_frame (Fq,)`` long, the buffer
    slots they write, and the block-causal mask over the buffer, built for the kernel in use."""

    def __init__(self, cache: StaticKVCache, q_frame: torch.Tensor):
        L = cache._L
        self.cache, self.q_frame = cache, q_frame
        self.index = (q_frame[:, None] * L + torch.arange(L, device=q_frame.device)).flatten()   # (Fq*L,)
        self._mask = self._block_mask = None

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               backend: str) -> torch.Tensor:
        """Write k, v ``(B, H, Fq*L, Dh)`` at the call's slots; attend q over the buffer's frames
        ``<=`` each query's. Raises ValueError when q's dtype is not the buffers' (a cache made
        outside the autocast it is used under)."""
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        if q.dtype != keys.dtype:
            raise ValueError(f"the static KV cache holds {keys.dtype}, the DiT computes in {q.dtype}: "
                             "make the cache under the same autocast (StaticKVCache.for_model)")
        keys.index_copy_(2, self.index, k)
        values.index_copy_(2, self.index, v)
        if backend == "flex" and torch.compiler.is_compiling():
            from torch.nn.attention.flex_attention import flex_attention

            return flex_attention(q, keys, values, block_mask=self._flex_mask(q.shape[2]))
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=self._sdpa_mask())

    def _sdpa_mask(self) -> torch.Tensor:
        """``(Fq*L, F_max*L)`` bool, True = may attend."""
        if self._mask is None:
            self._mask = frame_mask(self.q_frame, self.cache.max_frames, self.cache._L)
        return self._mask

    def _flex_mask(self, num_queries: int):
        if self._block_mask is None:
            from torch.nn.attention.flex_attention import create_block_mask

            L, offset = self.cache._L, self.cache.offset
            mask_mod = lambda b, h, q_idx, kv_idx: q_idx // L + offset >= kv_idx // L
            self._block_mask = create_block_mask(mask_mod, None, None, num_queries,
                                                 self.cache.max_frames * L, device=offset.device)
        return self._block_mask
