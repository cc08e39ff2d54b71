"""DeepSpeed engine construction: ZeRO stage, precision, micro batch / accumulation, clipping, AdamW."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

DEEPSPEED_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "deepspeed"   # package data


def import_deepspeed():
    """The ``deepspeed`` module, imported first with its logger on stderr.

    DeepSpeed's log handler binds ``sys.stdout`` when its first import makes it, and that import
    already logs (the "Setting accelerator to CPU" warning on a machine without CUDA and without
    ``DS_ACCELERATOR``). On stdout its lines break a command's JSON (``python -m ardscale.evaluate RUN
    > report.json``), so every path of ardscale that may import DeepSpeed first comes through here.
    """
    if "deepspeed" not in sys.modules:
        with contextlib.redirect_stdout(sys.stderr):
            import deepspeed
    import deepspeed

    return deepspeed


def deepspeed_fragment(name: str) -> dict:
    """The DeepSpeed settings of ``optim.deepspeed``: a name in ``ardscale/configs/deepspeed/`` or a
    YAML path.

    Raises:
        FileNotFoundError: no such file. ValueError: no ``zero_optimization.stage`` 0-3 in it.
    """
    path = Path(name) if name.endswith((".yaml", ".yml", ".json")) else DEEPSPEED_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in DEEPSPEED_CONFIGS.glob("*.yaml"))
        raise FileNotFoundError(f"optim.deepspeed={name!r}: {path} not found "
                                f"(expected one of {known} or a path)")
    frag = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if frag.get("zero_optimization", {}).get("stage") not in (0, 1, 2, 3):
        raise ValueError(f"{path}: needs zero_optimization.stage 0-3")
    return frag


def ds_config(o, world_size: int, use_bf16: bool, load_universal: bool = False) -> dict:
    """The DeepSpeed JSON config from an ``optim`` config section ``o``: the ZeRO settings of
    ``o.deepspeed`` (ardscale/configs/deepspeed/) plus batch sizes (train_batch_size = micro · accum ·
    world), clipping and precision."""
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


def lr_factor(step: int, base_lr: float, warmup_steps: int, lr_steps: list[int],
              lr_values: list[float]) -> float:
    """LR multiplier at optimizer ``step``: linear warm-up over ``warmup_steps``, then ``base_lr``
    until ``lr_steps[0]``, then ``lr_values[i]`` from ``lr_steps[i]`` on (the paper: 2e-4, and
    1e-5 for the fine-tune phase after 100k steps)."""
    value = base_lr
    for at, v in zip(lr_steps, lr_values):
        if step >= at:
            value = v
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warm * value / base_lr if base_lr else warm


FUSED = {"auto": None, "true": True, "false": False}


def fused_adamw(value: str, on_cuda: bool) -> bool:
    """Whether AdamW runs torch's fused kernel (one launch for all of a ZeRO partition's parameters)
    under ``optim.fused`` = ``value``: ``auto`` on CUDA only, so CPU runs keep the plain
    implementation and their numbers; ``true``/``false`` (any case) force it (CPU has a fused
    kernel too).

    Raises:
        ValueError: another value, naming ``optim.fused``.
    """
    choice = FUSED.get(str(value).lower(), "?")
    if choice == "?":
        raise ValueError(f"optim.fused={value!r}: expected one of {sorted(FUSED)}")
    return on_cuda if choice is None else choice


def adamw(params: list, lr: float, betas: tuple[float, float], weight_decay: float, fused: bool):
    """torch AdamW, ``fused`` or not. Not fused is torch's default (``fused=None``: the foreach
    kernels on CUDA, the plain loop on CPU); an explicit ``False`` would turn foreach off on CUDA.

    DeepSpeed ZeRO 1/2/3 take it as a client optimizer (``torch.optim.AdamW`` is in
    ``ZERO_SUPPORTED_OPTIMIZERS``; the flag does not change its type) and call its ``step()`` on
    their flat fp32 partitions, one tensor per group, on the engine's device. A checkpoint restores
    its param groups with the saver's flags, so a hook puts the asked ``fused`` back after every
    ``load_state_dict``: a run resumed on other hardware uses its own setting.
    """
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)

    def keep_setting(optimizer):
        for group in optimizer.param_groups:
            group.update(fused=fused or None, foreach=None)

    opt.register_load_state_dict_post_hook(keep_setting)
    return opt


def build_engine(model: torch.nn.Module, o, world_size: int, use_gpu: bool, lr: float | None = None,
                 betas: tuple[float, float] | None = None, load_universal: bool = False):
    """Wrap ``model`` in a DeepSpeed engine with torch AdamW (fused per ``optim.fused``:
    :func:`fused_adamw`) and linear warm-up to a constant LR, per the ``optim`` config section ``o``.

    bf16 on CUDA (``use_gpu`` and one is present), fp32 on CPU (``DS_ACCELERATOR=cpu``, gloo).
    ``lr``/``betas`` override ``o`` (a GAN discriminator's own optimizer, which keeps its LR after
    warm-up). ``load_universal``: the engine will load a universal checkpoint (another world size
    wrote it). Returns the engine.
    """
    use_cuda = torch.cuda.is_available() and use_gpu
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if use_cuda else "cpu")
    deepspeed = import_deepspeed()

    params = [p for p in model.parameters() if p.requires_grad]
    fused = fused_adamw(o.fused, use_cuda)
    optimizer = adamw(params, lr or o.lr, tuple(betas or o.betas), o.weight_decay, fused)
    base = lr or o.lr
    steps, values = ([], []) if lr else (o.lr_steps, o.lr_values)   # the LR phases are the model's
    factor = lambda s: lr_factor(s, base, o.warmup_steps, steps, values)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=sched,
                                           config=ds_config(o, world_size, use_cuda, load_universal))
    return engine


def frozen(module: torch.nn.Module):
    """``module`` as a callable whose parameters are out of autograd during each call (restored
    after): a GAN generator's loss goes through the discriminator without its gradients reaching
    the discriminator's parameters, or its engine's gradient reduction."""
    def call(*args):
        flags = [p.requires_grad for p in module.parameters()]
        module.requires_grad_(False)
        try:
            return module(*args)
        finally:
            for p, flag in zip(module.parameters(), flags):
                p.requires_grad_(flag)
    return call
