"""Model FLOPs for MFU (model FLOPs utilisation), counted as matmul FLOPs (2 per multiply-add).

DiT forward FLOPs per sample of F frames, N = F·L tokens, width H, depth d, MLP ratio r, D channels:

    per block: (6 + 2 + 4r)·N·H²            qkv, out proj, MLP (per token)
             + 12·F·H²                     adaLN modulation, 6H outputs, once per frame
             + 4·N²·H·(F+1)/(2F)           QKᵀ and AV over the block-causal half (frames <= i)
    plus 4·F·H² (final adaLN, per frame), 4·N·H·D (latent in/out projections) and
    2·F·(256·H + H²) (timestep MLP, per frame).

A text DiT (``condition=text``, S caption tokens of width C) adds per block the cross-attention,
(4·N + 4·S)·H² (queries and output over the video tokens, keys and values over the caption) and
4·N·S·H (scores and values), and once the caption projection 2·S·(C·H + H²) and the pooled
caption's MLP 2·(C·H + H²).

Only what the model computes is counted: the linear terms equal what
``torch.utils.flop_counter`` measures on a forward (tested). Training = 3 × forward (backward
is twice the forward). Embedding lookups, norms and softmax are not counted, as usual for MFU.
"""
from __future__ import annotations

import torch

# Dense bf16 peak TFLOPS per device, by name.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0}


def dit_forward_flops(cfg, num_frames: int) -> tuple[float, float]:
    """Forward FLOPs per sample of the DiT ``cfg`` (:class:`~ardscale.models.dit.DiTConfig`):
    ``(linear layers, attention scores and values)``."""
    H, L, r, F = cfg.hidden_size, cfg.tokens_per_frame, cfg.mlp_ratio, num_frames
    N = F * L
    block = (8 + 4 * r) * N * H * H + 12 * F * H * H
    linear = cfg.depth * block + 4 * F * H * H + 4 * N * H * cfg.latent_dim + 2 * F * (256 * H + H * H)
    attention = cfg.depth * 4 * N * N * H * (F + 1) / (2 * F)
    if cfg.condition == "text":
        S, C = cfg.text_tokens, cfg.text_dim
        linear += cfg.depth * (4 * N + 4 * S) * H * H + 2 * (S + 1) * (C * H + H * H)
        attention += cfg.depth * 4 * N * S * H
    return float(linear), float(attention)


def dit_train_flops(cfg, num_frames: int) -> float:
    """Training FLOPs per sample (3 × forward) of the DiT ``cfg`` at ``num_frames`` frames."""
    return 3.0 * sum(dit_forward_flops(cfg, num_frames))


def peak_tflops(configured: float) -> float | None:
    """``configured`` if set, else the table value of the visible CUDA device, else None (CPU)."""
    if configured > 0:
        return configured
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None
