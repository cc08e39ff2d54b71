"""Model FLOPs for MFU (model FLOPs utilisation), counted as matmul FLOPs (2 per multiply-add).

DiT forward FLOPs per sample of N = F·L tokens, width H, depth d, MLP ratio r:

    per block: (6 + 2 + 4r + 12)·N·H²      qkv, out proj, MLP, per-token adaLN (6H outputs)
             + 4·N²·H·(F+1)/(2F)           QKᵀ and AV over the block-causal half (frames <= i)
    plus 4·N·H² (final adaLN) and 4·N·H·D (latent in/out projections).

Training = 3 × forward (backward is twice the forward). Embedding lookups, norms and softmax
are not counted, as usual for MFU.
"""
from __future__ import annotations

import torch

# Dense bf16 peak TFLOPS per device, by name.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0}


def dit_train_flops(cfg, num_frames: int) -> float:
    """Training FLOPs per sample of the DiT ``cfg`` (:class:`~ardscale.models.dit.DiTConfig`)."""
    H, L, r = cfg.hidden_size, cfg.tokens_per_frame, cfg.mlp_ratio
    N = num_frames * L
    causal = (num_frames + 1) / (2 * num_frames)
    block = (20 + 4 * r) * N * H * H + 4 * N * N * H * causal
    fwd = cfg.depth * block + 4 * N * H * H + 4 * N * H * cfg.latent_dim
    return 3.0 * fwd


def peak_tflops(configured: float) -> float | None:
    """``configured`` if set, else the table value of the visible CUDA device, else None (CPU)."""
    if configured > 0:
        return configured
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None
