"""DeepSpeed engine construction: ZeRO stage, precision, micro batch / accumulation, clipping, AdamW."""
from __future__ import annotations

import os

import torch

from ..config import Config, deepspeed_fragment


def ds_config(cfg: Config, world_size: int, use_bf16: bool, load_universal: bool = False) -> dict:
    """The DeepSpeed JSON config: the ZeRO settings of ``optim.deepspeed`` (configs/deepspeed/)
    plus batch sizes (train_batch_size = micro · accum · world), clipping and precision from ``optim``."""
    o = cfg.optim
    return {
        **deepspeed_fragment(o.deepspeed),
        "train_micro_batch_size_per_gpu": o.micro_batch_size,
        "gradient_accumulation_steps": o.grad_accum,
        "train_batch_size": o.micro_batch_size * o.grad_accum * world_size,
        "gradient_clipping": o.grad_clip,
        "bf16": {"enabled": use_bf16},
        "checkpoint": {"load_universal": load_universal},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def lr_factor(step: int, base_lr: float, warmup_steps: int, lr_steps: list[int], lr_values: list[float]) -> float:
    """LR multiplier at optimizer ``step``: linear warm-up over ``warmup_steps``, then ``base_lr``
    until ``lr_steps[0]``, then ``lr_values[i]`` from ``lr_steps[i]`` on (the paper: 2e-4, and
    1e-5 for the fine-tune phase after 100k steps)."""
    value = base_lr
    for at, v in zip(lr_steps, lr_values):
        if step >= at:
            value = v
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warm * value / base_lr if base_lr else warm


def build_engine(model: torch.nn.Module, cfg: Config, world_size: int, lr: float | None = None,
                 betas: tuple[float, float] | None = None, load_universal: bool = False):
    """Wrap ``model`` in a DeepSpeed engine with torch AdamW and linear warm-up to a constant LR.

    bf16 on CUDA, fp32 on CPU (``DS_ACCELERATOR=cpu``, gloo). ``lr``/``betas`` override
    ``cfg.optim`` (a GAN discriminator's own optimizer, which keeps its LR after warm-up).
    ``load_universal``: the engine will load a universal checkpoint (another world size wrote it).
    Returns the engine.
    """
    use_cuda = torch.cuda.is_available() and cfg.scale.use_gpu
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if use_cuda else "cpu")
    import deepspeed

    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr or o.lr, betas=tuple(betas or o.betas), weight_decay=o.weight_decay)
    base = lr or o.lr
    steps, values = ([], []) if lr else (o.lr_steps, o.lr_values)   # the LR phases are the model's
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, base, o.warmup_steps, steps, values))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=sched,
                                           config=ds_config(cfg, world_size, use_cuda, load_universal))
    return engine
