"""Exponential moving average of all parameters (paper Sec. 4.1), correct under every ZeRO stage.

The average lives in fp32 on rank 0 only. Under ZeRO-3 each rank holds a slice of every
parameter, so :meth:`EMA.update` gathers the parameters one module group at a time (a block of
the DiT, say) with ``deepspeed.zero.GatheredParameters``: every rank joins the all-gather, rank 0
updates its copy, and at most one group is whole at a time.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from .deepspeed import import_deepspeed
from .ranks import is_rank0


def _param_groups(module: nn.Module) -> list[list[tuple[str, nn.Parameter]]]:
    """Parameters grouped by top-level child, and by item for a ModuleList child (DiT blocks)."""
    groups: dict[str, list] = {}
    for name, p in module.named_parameters():
        head, *rest = name.split(".")
        child = getattr(module, head)
        key = f"{head}.{rest[0]}" if isinstance(child, nn.ModuleList) else head
        groups.setdefault(key, []).append((name, p))
    return list(groups.values())


class EMA:
    """``shadow ← decay · shadow + (1 - decay) · param`` after every optimizer step.

    Args:
        module: the engine's module (ZeRO-3 partitioned or not).
        decay: e.g. 0.9999.
        zero3: parameters are ZeRO-3 partitioned (gather before reading).
    """

    def __init__(self, module: nn.Module, decay: float, zero3: bool):
        self.decay, self.zero3 = decay, zero3
        self.rank0 = is_rank0()
        # buffers (e.g. a text DiT's null caption) are kept as they are, so the EMA file loads alone
        self.shadow: dict[str, torch.Tensor] = {
            n: b.detach().cpu().clone() for n, b in module.named_buffers()}
        self._visit(module, lambda name, p: self.shadow.__setitem__(name, p.detach().float().cpu().clone()))

    def _visit(self, module: nn.Module, fn) -> None:
        for group in _param_groups(module):
            ctx = nullcontext()
            if self.zero3:
                ctx = import_deepspeed().zero.GatheredParameters([p for _, p in group], modifier_rank=None)
            with ctx:
                if self.rank0:
                    for name, p in group:
                        fn(name, p)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold the current parameters into the average (all ranks call this)."""
        self._visit(module, lambda name, p: self.shadow[name].lerp_(p.detach().float().cpu(), 1 - self.decay))

    def save(self, path: str) -> None:
        """Rank 0 writes the fp32 ``state_dict`` atomically (temp file, then rename)."""
        if self.rank0:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{path}.tmp"
            torch.save(self.shadow, tmp)
            os.replace(tmp, path)

    def load(self, path: str) -> None:
        if self.rank0:
            self.shadow = torch.load(path, map_location="cpu", weights_only=True)
