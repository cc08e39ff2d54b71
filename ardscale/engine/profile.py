"""``torch.profiler`` over a window of optimizer steps of a training run (``train.profile_at``,
``train.profile_steps``).

Each rank writes, under ``{run_dir}/profile/``:

- ``rank{r}.trace.json.gz``: the Chrome trace (``chrome://tracing``, https://ui.perfetto.dev), with
  shapes (``record_shapes``) and the phase ranges below;
- ``rank{r}.summary.txt``: the top 30 operators by self CUDA time on a GPU, self CPU time otherwise;
- ``rank{r}.json``: the mean step time and each phase's time and share of it.

The phases are the ``record_function`` ranges the training step opens (:data:`PHASES`): ``data``
(the micro batch to the device), ``forward`` (the task's losses), ``backward`` and ``optimizer``
(``engine.backward`` / ``engine.step``, in :mod:`~ardscale.engine.guard`) and ``ema``. Their times
are the host's wall time inside each range. On a GPU the host runs ahead of the kernels and waits
at synchronisations (the non-finite check's ``.item()``, DeepSpeed's gradient norm), so a wait may
land in a later phase than the kernels it waits for; the JSON adds each phase's device time, and
the trace has the kernels.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist
import torch.profiler
from torch.autograd import DeviceType

log = logging.getLogger("ardscale.profile")

PHASES = ("data", "forward", "backward", "optimizer", "ema")
TOP_OPS = 30


def check(at: int, steps: int) -> None:
    """Raises ValueError, naming the key, for a negative ``train.profile_at`` or, with profiling
    on, ``train.profile_steps`` < 1."""
    if at < 0:
        raise ValueError(f"train.profile_at={at}: a global step >= 1, or 0 for no profile")
    if at and steps < 1:
        raise ValueError(f"train.profile_steps={steps}: profile at least 1 step")


def phase_times(averages, steps: int, cuda: bool) -> dict:
    """Per phase of :data:`PHASES` found in ``averages`` (``prof.key_averages()``): mean milliseconds
    per step on the host (``ms``) and, on a GPU, of the kernels launched inside the range
    (``device_ms``). The ranges' device-side copies (CUDA user annotations) are left out."""
    out = {}
    for evt in averages:
        if evt.key in PHASES and evt.device_type == DeviceType.CPU:
            out[evt.key] = {"ms": evt.cpu_time_total / 1e3 / steps}
            if cuda:
                out[evt.key]["device_ms"] = evt.device_time_total / 1e3 / steps
    return out


class StepProfiler:
    """Profiles global steps ``[at, at + steps)`` (optimizer steps; ``at`` = 0: off).

    ``with profiler.step(step): ...`` wraps each global step's work; the step before the window is
    the profiler's warm-up (not when a run resumes inside the window: then it profiles the rest).
    After the window, or at :meth:`close` when the run ends inside it, the rank writes its three
    files to ``out_dir`` (see the module doc) and, after a barrier, calls ``on_done(out_dir)``
    (rank 0 logs the folder to MLflow). All ranks step in lockstep, so the barrier is safe.
    """

    def __init__(self, at: int, steps: int, out_dir: Path, rank: int, cuda: bool,
                 on_done: Callable[[Path], None] | None = None):
        check(at, steps)
        self.at, self.end = at, at + steps if at else 0
        self.out_dir, self.rank, self.cuda, self.on_done = Path(out_dir), rank, cuda, on_done
        self.prof, self.walls, self.first = None, [], None

    def _start(self, step: int) -> None:
        warmup = max(0, self.at - step)
        self.first = max(step, self.at)
        kinds = torch.profiler.ProfilerActivity
        when = torch.profiler.schedule(wait=0, warmup=warmup, active=self.end - self.first, repeat=1)
        self.prof = torch.profiler.profile(activities=[kinds.CPU] + ([kinds.CUDA] if self.cuda else []),
                                           record_shapes=True, with_stack=False, schedule=when,
                                           on_trace_ready=self._write)
        self.prof.start()

    @contextmanager
    def step(self, step: int) -> Iterator[None]:
        """Around global step ``step``: starts the profiler at the window (or the step before it),
        steps it after the step's work, and ends it after the window's last step."""
        if self.prof is None and self.at - 1 <= step < self.end:
            self._start(step)
        t0 = time.perf_counter()
        yield
        if self.prof is None:
            return
        if step >= self.at:
            self.walls.append(time.perf_counter() - t0)
        self.prof.step()
        if step + 1 >= self.end:
            self.close()

    def close(self) -> None:
        """End a running profile (the run stops inside the window); recorded steps are written."""
        prof, self.prof = self.prof, None
        if prof is not None:
            prof.stop()
        self.end = 0   # once per run

    def _write(self, prof) -> None:
        """The trace, the operator table and the phase shares of the recorded steps (``on_trace_ready``)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        base = self.out_dir / f"rank{self.rank}"
        prof.export_chrome_trace(f"{base}.trace.json.gz")
        averages = prof.key_averages()
        sort = "self_device_time_total" if self.cuda else "self_cpu_time_total"
        Path(f"{base}.summary.txt").write_text(averages.table(sort_by=sort, row_limit=TOP_OPS) + "\n")
        n = len(self.walls)
        step_ms = 1e3 * sum(self.walls) / max(n, 1)
        phases = phase_times(averages, max(n, 1), self.cuda)
        for p in phases.values():
            p["share"] = p["ms"] / step_ms if step_ms else 0.0
        summary = {"rank": self.rank, "first_step": self.first, "num_steps": n,
                   "device": "cuda" if self.cuda else "cpu", "step_ms": step_ms, "phases": phases,
                   "other_share": 1.0 - sum(p["share"] for p in phases.values())}
        Path(f"{base}.json").write_text(json.dumps(summary, indent=2) + "\n")
        shares = [100 * phases.get(k, {}).get("share", 0.0) for k in ("forward", "backward", "optimizer")]
        log.info("profile of steps %d-%d: %s.trace.json.gz (ui.perfetto.dev), .summary.txt, .json; forward "
                 "%.0f %%, backward %.0f %%, optimizer %.0f %% of %.1f ms a step", self.first,
                 self.first + n - 1, base, *shares, step_ms)
        if dist.is_initialized():
            dist.barrier()   # every rank's files are in place before rank 0 logs the folder
        if self.on_done is not None:
            self.on_done(self.out_dir)
