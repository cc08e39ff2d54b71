"""DeepSpeed engine construction: ZeRO stage, precision, micro batch / accumulation, clipping, AdamW."""
from __future__ import annotations

import os

import torch

from ..config import Config


def ds_config(cfg: Config, world_size: int, use_bf16: bool) -> dict:
    """The DeepSpeed JSON config derived from :class:`Config` (train_batch_size = micro · accum · world)."""
    o = cfg.optim
    return {
        "train_micro_batch_size_per_gpu": o.micro_batch_size,
        "gradient_accumulation_steps": o.grad_accum,
        "train_batch_size": o.micro_batch_size * o.grad_accum * world_size,
        "gradient_clipping": o.grad_clip,
        "zero_optimization": {"stage": o.zero_stage},
        "bf16": {"enabled": use_bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def build_engine(model: torch.nn.Module, cfg: Config, world_size: int, lr: float | None = None,
                 betas: tuple[float, float] | None = None):
    """Wrap ``model`` in a DeepSpeed engine with torch AdamW and linear warm-up to a constant LR.

    bf16 on CUDA, fp32 on CPU (``DS_ACCELERATOR=cpu``, gloo). ``lr``/``betas`` override
    ``cfg.optim`` (a GAN discriminator's own optimizer). Returns the engine.
    """
    use_cuda = torch.cuda.is_available() and cfg.scale.use_gpu
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if use_cuda else "cpu")
    import deepspeed

    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr or o.lr, betas=tuple(betas or o.betas), weight_decay=o.weight_decay)
    warm = max(o.warmup_steps, 0)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=sched,
                                           config=ds_config(cfg, world_size, use_cuda))
    return engine
