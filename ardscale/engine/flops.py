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

``attention=official`` (K context tokens of width C₀ before the N video tokens) adds per block
(8 + 4r)·K·H² (qkv, out proj and MLP of the context tokens: they are tokens like any other), and
4·K·(K + 2N)·H of attention (context queries over all K + N keys, video queries over the K context
keys), and once the context projection 2·K·C₀·H.

Only what the model computes is counted: the linear terms equal what
``torch.utils.flop_counter`` measures on a forward (tested). Training = 3 × forward (backward
is twice the forward). Embedding lookups, norms and softmax are not counted, as usual for MFU.

Models without a formula (the AR-VAE and its discriminator) are counted by
:func:`forward_flops`: ``torch.utils.flop_counter`` on one forward of meta tensors (no memory, no
compute; SDPA decomposes into the two matmuls the DiT formula counts as attention); the AR-VAE's
training FLOPs by :func:`measured_train_flops`, its backward counted too, so that frozen blocks
(``vae.trainable=temporal``) cost no weight gradients.

The peak an MFU is measured against (:func:`peak_tflops`): ``train.peak_tflops`` when set; on a
GPU the datasheet's dense bf16 peak (:data:`PEAK_TFLOPS`); on a CPU the dense fp32 matmul rate this
process achieves (:func:`cpu_matmul_tflops`). A CPU MFU is against the achievable matmul rate, not
a datasheet peak: it says how much of what the cores can do the step uses.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

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
    K = cfg.num_context
    if K:
        linear += cfg.depth * (8 + 4 * r) * K * H * H + 2 * K * cfg.context_dim * H
        attention += cfg.depth * 4 * K * (K + 2 * N) * H
    return float(linear), float(attention)


def dit_train_flops(cfg, num_frames: int) -> float:
    """Training FLOPs per sample (3 × forward) of the DiT ``cfg`` at ``num_frames`` frames."""
    return 3.0 * sum(dit_forward_flops(cfg, num_frames))


def forward_flops(fn: Callable[[], object]) -> float:
    """FLOPs that ``torch.utils.flop_counter`` counts while ``fn()`` runs (matmuls, convolutions,
    attention: 2 per multiply-add). ``fn`` should run one forward on meta tensors (a model built
    under ``torch.device("meta")``): nothing is allocated or computed, any size counts in ms."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return float(counter.get_total_flops())


def measured_train_flops(fn: Callable[[], torch.Tensor]) -> float:
    """Training FLOPs of one forward and backward: ``fn()`` runs the forward on meta tensors (see
    :func:`forward_flops`) and returns its output, whose sum is back-propagated under the counter.
    The backward computes only what autograd needs, so a model trained whole counts about 3 ×
    forward (:func:`dit_train_flops`' rule) and one with frozen parameters less (e.g. the AR-VAE's
    ``vae.trainable=temporal``: ~2 ×, no weight gradients and no input gradients below the first
    trained block)."""
    with FlopCounterMode(display=False) as counter:
        fn().float().sum().backward()
    return float(counter.get_total_flops())


@functools.cache
def cpu_matmul_tflops(size: int = 1024, reps: int = 10) -> float:
    """The dense fp32 matmul rate this process achieves on its CPU threads, in TFLOPS: the best of
    ``reps`` ``size × size`` matmuls after one warm-up (about 0.2 s on 2 cores; the best, so that a
    moment of contention does not lower it). Measured once per process (cached) with the thread
    setting of that moment: the achievable rate, not a datasheet peak."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen) for _ in range(2))
    best = float("inf")
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best / 1e12


def peak_tflops(configured: float, device: str = "auto") -> float | None:
    """The per-device peak TFLOPS an MFU is measured against: ``configured`` if > 0; else on
    ``device="cuda"`` (or ``"auto"`` with a GPU visible) the table value of the GPU's name (None
    when not in :data:`PEAK_TFLOPS`); on ``device="cpu"`` :func:`cpu_matmul_tflops`; with
    ``"auto"`` and no GPU, None (benchmarks that report no CPU MFU)."""
    if configured > 0:
        return configured
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        name = torch.cuda.get_device_name()
        return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return cpu_matmul_tflops() if device == "cpu" else None
