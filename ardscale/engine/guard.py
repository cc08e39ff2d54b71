"""Non-finite loss handling: skip the update, count it, stop after too many in a row."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.profiler import record_function


class NonFiniteGuard:
    """``backward_step(engine, loss)`` replaces ``engine.backward(loss); engine.step()``.

    When the loss is NaN/inf on any rank (one all-reduce decides for all), every rank
    backpropagates zeros instead, so that micro batch adds nothing to the accumulated gradient
    and DeepSpeed's micro-step count stays aligned. If no micro batch of a global step was
    finite, the optimizer step runs at LR 0: parameters do not move (AdamW's moments still
    decay once). ``skipped`` counts the replaced micro batches.
    """

    def __init__(self):
        self.skipped = 0
        self._finite_in_step = False

    def backward_step(self, engine, loss: torch.Tensor) -> bool:
        """Returns True when this micro batch was skipped."""
        bad = torch.tensor([0.0 if bool(torch.isfinite(loss).all()) else 1.0], device=loss.device)
        if dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        skip = bool(bad.item())
        if skip:
            self.skipped += 1
            loss = sum((p * 0).sum() for p in engine.module.parameters() if p.requires_grad)
        else:
            self._finite_in_step = True
        with record_function("backward"):   # the phases of engine/profile.py's trace
            engine.backward(loss)
        boundary = engine.is_gradient_accumulation_boundary()
        if boundary and not self._finite_in_step:
            for group in engine.optimizer.param_groups:   # the LR scheduler resets it after the step
                group["lr"] = 0.0
        with record_function("optimizer"):
            engine.step()
        if boundary:
            self._finite_in_step = False
        return skip
