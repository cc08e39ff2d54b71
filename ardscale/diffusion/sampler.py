"""AR-Diffusion sampling loop (paper Sec. 3.2 inference, Sec. 3.4 AD scheduler).

Each iteration: predict x0 with the DiT at the current composition, then re-corrupt it to the
next composition with a DDIM step (Eq. 4 when eta = 1). Frames whose timestep does not change
keep their latents (the paper's mask) and are not computed:

- frames after the last changing frame are skipped (block-causal: nothing before reads them);
- clean frames enter a :class:`~ardscale.models.kv_cache.KVCache` once, with their final latents, and
  are never recomputed;
- ``context`` gives clean first frames (video continuation);
- ``window`` caps the frames the DiT sees at once, so videos longer than the training length
  slide a window over frames (first in, first out; positions restart at the window's start);
  ``sink`` keeps the video's first frames at the window's front (a departure, see :func:`plan_calls`);
- ``context_noise`` k > 0 feeds clean frames noised to DDPM index k (a departure, see
  :func:`denoise`).

A DiT that is not temporally causal (``dit.causal=false``, or ``dit.attention=official``, whose
context tokens carry later frames to earlier ones) is fed its whole window every call, uncached:
the official sampler's way (iva-mzsun/AR-Diffusion src/ardiff/modules/fifoddim.py:162-176: every
iteration calls the model on the window's frames, then keeps those whose step did not change,
fifoddim.py:217).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..models.attention import resolve_backend
from ..models.kv_cache import KVCache, StaticKVCache, activation_dtype
from .ad import SAMPLE_GRIDS, ad_timesteps, ddim_grid
from .schedule import GaussianDiffusion


@dataclass
class SampleConfig:
    """How videos are sampled (paper Sec. 3.4, Eq. 5): the AD scheduler's ``s`` over ``steps`` DDIM
    steps with classifier-free guidance. One set of defaults for ``python -m ardscale.sample``,
    ``python -m ardscale.evaluate`` (the ``eval.sample`` section), the training run's sample grid and
    evaluation, and :func:`sample`. Held here, below ``config`` (which embeds it as ``eval.sample``),
    so that the sampler imports no layer above it."""

    s: int = 2                       # AD timestep difference (0 = synchronous, ≥ steps = auto-regressive)
    steps: int = 50                  # DDIM steps N
    cfg_scale: float = 2.0           # classifier-free guidance weight w (1 = off: one DiT call per step)
    eta: float = 0.0                 # 0 = DDIM, 1 = DDPM posterior noise
    frames: int = 0                  # frames to generate (0 = the training length; more = sliding window)
    window: int = 0                  # most frames per DiT / decoder call (0 = the training length)
    kv_cache: bool = True            # reuse keys/values of finished frames (same samples, fewer FLOPs)
    clip_x0: float = 0.0             # clamp x0 estimates to ±clip_x0 (0 = off)
    seed: int = 0                    # initial noise (and eta noise)
    mode: str = "eager"              # eager | static: preallocated KV cache, same shapes every DiT call |
                                     # compiled: static + torch.compile (CUDA graphs on CUDA)
    grid: str = "trailing"           # DDIM timesteps: trailing {19,…,999} | leading (official) {1,…,981}
                                     # for N=50, T=1000 (diffusers' names; diffusion/ad.py ddim_grid)
    context_noise: int = 0           # DDPM index k: clean frames (context, finished) are fed to the DiT
                                     # noised to k, one fixed draw per video (0 = fed clean, the paper)
    sink: int = 0                    # frames of the video's start kept at the sliding window's front
                                     # (attention sink; 0 = plain first-in first-out window, the paper)

    def __post_init__(self):
        if self.mode not in SAMPLE_MODES:
            raise ValueError(f"sample mode={self.mode!r}: expected one of {SAMPLE_MODES}")
        if self.grid not in SAMPLE_GRIDS:
            raise ValueError(f"sample grid={self.grid!r}: expected one of {SAMPLE_GRIDS}")
        if self.sink < 0:
            raise ValueError(f"sample sink={self.sink}: frames ≥ 0 (0 = off)")
        if self.context_noise < 0:
            raise ValueError(f"sample context_noise={self.context_noise}: a DDPM index ≥ 0 (0 = off)")


SAMPLE_MODES = ("eager", "static", "compiled")


def composition_rows(num_frames: int, num_steps: int, s: int, num_context: int = 0) -> torch.Tensor:
    """AD compositions ``(I, F)`` as DDIM step indices, with ``num_context`` clean (0) first frames."""
    rows = ad_timesteps(num_frames - num_context, num_steps, s)
    return torch.cat([rows.new_zeros(rows.shape[0], num_context), rows], dim=1)


def frames_in_flight(num_frames: int, num_steps: int, s: int, num_context: int = 0) -> int:
    """The most frames that one AD iteration moves at once (first to last changing frame): a
    sliding window must hold at least this many (about N/s for 0 < s < N)."""
    rows = composition_rows(num_frames, num_steps, s, num_context)
    moving = rows[:-1] != rows[1:]                                           # (I-1, F)
    idx = torch.arange(num_frames).expand_as(moving)
    first = torch.where(moving, idx, num_frames).min(1).values
    last = torch.where(moving, idx, -1).max(1).values
    return int((last - first + 1).max())


def _window_start(start: int, first_changing: int, end: int, window: int | None, sink: int = 0) -> int:
    """Move the window start forward just enough that frames ``start … end-1`` fit ``window``
    (``window - sink`` once it has slid: the sink frames stay at its front)."""
    room = window - sink if window and start > 0 else window
    if window is None or end - start <= room:
        return start
    if end - first_changing > window - sink:
        raise ValueError(f"{end - first_changing} frames are denoised at once but window={window} "
                         f"(sink {sink}): raise s (AD keeps about N/s frames in flight) or the window")
    return end - (window - sink)


@dataclass(frozen=True)
class Call:
    """One DiT call of the AD loop, from composition ``row`` to ``row + 1`` (frame indices)."""

    row: int
    start: int   # first frame of the window (frame positions count from it)
    lo: int      # first frame fed to the DiT (frames start … lo-1 are in the KV cache)
    end: int     # one past the last frame fed (the last frame that changes, for a causal DiT)
    clean: int   # leading clean frames among lo … end-1: final, they join the KV cache
    sink: int = 0   # the video's first frames fed before lo (clean, at positions 0 …)

    def frames(self) -> slice | torch.Tensor:
        """The frames fed, in order: a slice, or an index ``(n,)`` long with sink frames."""
        if not self.sink:
            return slice(self.lo, self.end)
        return torch.cat([torch.arange(self.sink), torch.arange(self.lo, self.end)])


def plan_calls(rows: torch.Tensor, causal: bool, window: int | None, kv_cache: bool,
               sink: int = 0) -> list[Call]:
    """The DiT calls that take the compositions ``rows`` ``(R, F)`` to the last (all clean).

    ``causal``: the DiT is temporally causal, so frames after the last changing one are left out;
    else each call is fed the window up to its end (or the video's).

    ``sink`` > 0: once the window slides, the video's first ``sink`` frames stay at its front
    (positions 0 … sink-1) and the sliding part holds ``window - sink`` frames. This is the
    attention sink of streaming LLMs (StreamingLLM) and of LongLive / Rolling Forcing for video,
    not in the paper or the official code; the drift study measures whether it pays. With the
    KV cache the sink frames enter the fresh cache in the first call after each slide.

    Raises:
        ValueError: a window too small for the frames in flight (see :func:`frames_in_flight`).
    """
    num_frames = rows.shape[1]
    calls, start, cached, sunk = [], 0, 0, False
    for i in range(len(rows) - 1):
        cur, nxt = rows[i], rows[i + 1]
        changing = (cur != nxt).nonzero().flatten()                  # frames this iteration moves
        last = int(changing[-1]) + 1
        new_start = _window_start(start, int(changing[0]), last, window, sink)
        if new_start != start:
            start, cached, sunk = new_start, 0, False   # positions shift with the window: the cache is stale
        end = last if causal else min(num_frames, start + (window or num_frames))
        sinks = sink if start > 0 and not sunk else 0   # finished: they precede the first changing frame
        lo = start + (cached if kv_cache else 0)
        clean = int((cur[lo:end] == 0).cumprod(0).sum())  # clean frames lead the input (rows non-decreasing)
        calls.append(Call(i, start, lo, end, clean, sinks))
        cached += clean if kv_cache else 0
        sunk = sunk or (kv_cache and sinks > 0)
    return calls


def denoise(model, diffusion: GaussianDiffusion, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
            y, cfg_scale: float, eta: float, clip_x0: float, noise: torch.Tensor | None = None,
            cache=None, commit: int = 0, context_noise: int = 0,
            context_eps: torch.Tensor | None = None) -> torch.Tensor:
    """One AD iteration on frames ``x`` ``(B, n, L, D)``: predict x0 at ``t`` ``(B, n)`` (with CFG
    when ``cfg_scale`` ≠ 1: ``y`` then holds B conditions and B null ones), then a DDIM step to
    ``t_next``; frames with ``t_next == t`` come back unchanged. ``cache``/``commit``: see
    :meth:`~ardscale.models.dit.DiT.forward`. Returns ``(B, n, L, D)``.

    Clean frames (``t == -1``) enter at index 0 as they are, or, with ``context_noise`` k > 0,
    noised to index k with ``context_eps`` ``(B, n, L, D)`` (Eq. 1) and labelled k; their latents
    stay clean. This is the conditioning noise of Diffusion Forcing, not in the paper or the
    official code: it hides a generated frame's small errors from the frames that read it. A
    frame still being denoised below k then follows a noisier one, an order FoPP (Alg. 1) never
    trains; the drift study measures whether it pays (RESULTS.md)."""
    x_in, t_in = x, t.clamp(min=0)   # clean frames enter at the least-noisy index
    if context_noise:
        clean, k = t < 0, torch.full_like(t, context_noise)
        x_in = torch.where(clean[:, :, None, None], diffusion.q_sample(x, k, context_eps), x)
        t_in = torch.where(clean, k, t_in)
    guided = cfg_scale != 1.0
    if guided:
        x_in, t_in = torch.cat([x_in, x_in]), torch.cat([t_in, t_in])
    out = model(x_in, t_in, y, cache, commit)                               # (B or 2B, n, L, D)
    if guided:
        cond, uncond = out.chunk(2)
        out = uncond + cfg_scale * (cond - uncond)
    x0 = diffusion.to_x0(out, x, t, clip_x0)
    return diffusion.ddim_step(x, x0, t, t_next, eta, noise)


COMPILE_BACKEND = "inductor"   # tests swap in a counting or aot_eager backend
_COMPILED: dict[tuple, object] = {}


def compiled_denoise(device: torch.device):
    """:func:`denoise` under ``torch.compile`` (one per device type, kept for the process):
    ``mode="reduce-overhead"`` (CUDA graphs) on CUDA, inductor's default on the CPU; full graph,
    static shapes. With a :class:`~ardscale.models.kv_cache.StaticKVCache` every call of a video has
    the same shapes, so it compiles once per (model, video length, batch) and replays after."""
    key = (device.type, str(COMPILE_BACKEND))
    if key not in _COMPILED:   # no fullgraph: past dynamo's recompile limit (many video lengths or
        # batch sizes in one process) it falls back to eager instead of failing; the tests count
        # the compiled frames, so a graph break would show there
        mode = "reduce-overhead" if device.type == "cuda" and COMPILE_BACKEND == "inductor" else None
        _COMPILED[key] = torch.compile(denoise, backend=COMPILE_BACKEND, mode=mode, dynamic=False)
    return _COMPILED[key]


_STATIC_CACHES: dict[tuple, StaticKVCache] = {}


def static_cache(model, batch: int, max_frames: int) -> StaticKVCache:
    """The process's :class:`StaticKVCache` for this shape (model size, batch, frames, dtype,
    device), made once: CUDA graphs replay on fixed buffer addresses, so a new cache per video
    would re-record the graph. Old contents are harmless: every slot a query reads is written
    earlier in the same window. Memory: ``2 · depth · batch · F_max · L · C`` elements, held for
    the process (paper size, F_max = 16, CFG batch 2: 0.13 GB in bf16)."""
    c, device = model.config, next(model.parameters()).device
    key = (c.depth, c.num_heads, c.hidden_size, c.tokens_per_frame, batch, max_frames,
           activation_dtype(model), device)
    if key not in _STATIC_CACHES:
        _STATIC_CACHES[key] = StaticKVCache.for_model(model, batch, max_frames)
    return _STATIC_CACHES[key]


@torch.no_grad()
def sample(model, diffusion: GaussianDiffusion, labels, sc: SampleConfig,
           generator: torch.Generator | None = None, progress: bool = False,
           context: torch.Tensor | None = None) -> torch.Tensor:
    """Generate latents ``(B, F, L, D)`` (in the DiT's scaled latent space) with the settings ``sc``.

    Args:
        model: a DiT; ``model.config`` gives L, D and the null class for CFG.
        labels: ``(B,)`` long class labels, or a :class:`~ardscale.models.dit.TextCondition`
            (text DiT: encoded prompts; CFG then guides against the null caption).
        sc: ``frames`` F (> 0: total frames including ``context``; a run's
            :meth:`~ardscale.runs.RunData.resolve` fills 0 with the training length), ``steps``
            N, ``s`` (0 = synchronous, ≥ N = auto-regressive), ``cfg_scale`` w (1 = one model call
            per step), ``eta`` (0 = DDIM, 1 = DDPM posterior noise), ``window`` (most frames per DiT
            call, e.g. the training length; 0 = no limit), ``kv_cache`` (reuse keys/values of
            finished frames: same result within float tolerance; off for a DiT that is not
            temporally causal, ``config.causal=False`` or ``config.attention="official"``, which is
            fed its whole window every step), ``clip_x0`` (clamp x0
            estimates to ``[-clip_x0, clip_x0]``; 0 = off), ``mode`` (``eager``: a growing KV
            cache, each call only the frames that need it; ``static``: a preallocated KV cache and
            every call the same number of frames, the most any call needs (``kv_cache`` ignored);
            ``compiled``: ``static`` under :func:`compiled_denoise`. All three give the same
            video within float tolerance).
        generator: CPU generator for the initial noise and the eta > 0 noise (drawn for the full
            video every iteration, so cached and uncached runs see the same noise); default: one
            seeded with ``sc.seed``.
        context: ``(B, k, L, D)`` clean latents of the first k frames (video continuation).
    Raises:
        ValueError: ``sc.frames`` ≤ 0, context longer than the video, a window too small for s
            (see above), a bidirectional DiT asked for more frames than its window or for the
            static / compiled mode, or ``config.attention="official"`` asked for the static /
            compiled mode.
    """
    c, window = model.config, sc.window or None
    k = 0 if context is None else context.shape[1]
    _check(sc, c, window, k, diffusion.num_timesteps)
    generator = generator or torch.Generator().manual_seed(sc.seed)
    device = next(model.parameters()).device
    # (B, F, L, D)
    x = torch.randn(len(labels), sc.frames, c.tokens_per_frame, c.latent_dim, generator=generator).to(device)
    if k:
        x[:, :k] = context.to(device, x.dtype)
    rows = composition_rows(sc.frames, sc.steps, sc.s, k)   # (R, F) DDIM indices per frame; 0 = clean
    cached = (sc.kv_cache and c.temporally_causal) or sc.mode != "eager"
    calls = plan_calls(rows, c.temporally_causal, window, cached, sc.sink)
    run = _run_eager if sc.mode == "eager" else _run_static
    y = (model.with_null(labels) if sc.cfg_scale != 1.0 else labels).to(device)   # B or 2B conditions
    times = ddim_grid(sc.steps, diffusion.num_timesteps, sc.grid)[rows]   # (R, F) DDPM indices; -1 = clean
    # one draw per video: a clean frame is fed the same noisy input at every call, so the KV cache
    # (which computes it once) stays exact; drawn only when used, so k = 0 keeps the old stream
    eps = torch.randn(x.shape, generator=generator).to(device) if sc.context_noise else None
    return run(model, diffusion.to(device), x, y, times, calls, sc, generator, progress, eps)


def _check(sc: SampleConfig, c, window: int | None, k: int, num_timesteps: int) -> None:
    """Raise the ValueErrors :func:`sample` documents, before any noise is drawn."""
    if sc.frames <= 0:
        raise ValueError(f"frames={sc.frames}: resolve the SampleConfig against its run first "
                         "(RunData.resolve)")
    if not c.causal:   # bidirectional (ablation): every frame reads every frame, at every step
        if window is not None and sc.frames > window:
            raise ValueError(f"a bidirectional DiT generates at most window={window} frames, not {sc.frames}")
        if sc.mode != "eager":
            raise ValueError(f"sample mode={sc.mode!r} needs a causal DiT (a KV cache); use mode=eager")
    if c.attention == "official" and sc.mode != "eager":
        raise ValueError(f"sample mode={sc.mode!r} needs a KV cache, and a DiT with dit.attention=official "
                         "has none (its context tokens carry later frames to earlier ones): use mode=eager")
    if k >= sc.frames:
        raise ValueError(f"context has {k} frames; num_frames={sc.frames} leaves none to generate")
    if sc.sink and window is not None:   # without a window nothing slides: the sink is inert
        if sc.mode != "eager" or not c.temporally_causal:
            raise ValueError(f"sample.sink={sc.sink} needs mode=eager (not {sc.mode!r}) and a temporally "
                             f"causal DiT (dit.attention={c.attention!r}, dit.causal={c.causal})")
        if sc.sink >= window:
            raise ValueError(f"sample.sink={sc.sink} needs a window of more than {sc.sink} frames "
                             f"(window={window})")
    if sc.context_noise >= num_timesteps:
        raise ValueError(f"sample.context_noise={sc.context_noise}: a DDPM index below "
                         f"num_timesteps={num_timesteps}")


def _times(times: torch.Tensor, call: Call, frames: slice | torch.Tensor, batch: int,
           device) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPM indices ``(B, n)`` of ``frames`` at the call's row of ``times`` ``(R, F)`` and the next."""
    return (times[call.row, frames].to(device).expand(batch, -1),
            times[call.row + 1, frames].to(device).expand(batch, -1))


def _noise(x: torch.Tensor, sc: SampleConfig, generator: torch.Generator) -> torch.Tensor | None:
    """The full video's eta noise for one iteration (drawn whatever the call computes)."""
    return torch.randn(x.shape, generator=generator).to(x.device) if sc.eta > 0 else None


def _context(sc: SampleConfig, eps: torch.Tensor | None, frames: slice | torch.Tensor,
             copy: bool = False) -> dict:
    """:func:`denoise`'s context-noise arguments for ``frames`` (``copy``: a fresh tensor, as the
    compiled step's inputs are)."""
    if eps is None:
        return {}
    part = eps[:, frames]
    return {"context_noise": sc.context_noise, "context_eps": part.clone() if copy else part}


def _run_eager(model, diffusion, x, y, times, calls, sc, generator, progress, eps):
    """Each call feeds frames ``lo … end-1``; clean leading frames join a growing :class:`KVCache`."""
    cache, start = KVCache(), 0
    for call in tqdm(calls, desc="sampling", disable=not progress):
        noise = _noise(x, sc, generator)
        if call.start != start:
            cache, start = KVCache(), call.start
        use = sc.kv_cache and model.config.temporally_causal
        frames = call.frames()
        t, t_next = _times(times, call, frames, x.shape[0], x.device)
        x[:, frames] = denoise(model, diffusion, x[:, frames], t, t_next, y, sc.cfg_scale, sc.eta, sc.clip_x0,
                               None if noise is None else noise[:, frames], cache if use else None,
                               call.sink + call.clean if use else 0, **_context(sc, eps, frames))
    return x


def _run_static(model, diffusion, x, y, times, calls, sc, generator, progress, eps):
    """Every call feeds the same number of frames, ``width`` (the most any call needs), into a
    :class:`StaticKVCache` of the window's frames: frames ``lo … lo+width-1``, ``lo`` moved back
    over cached (final) frames where the window ends sooner. Frames past ``end`` ride along
    unchanged (``t_next == t``); their keys/values land past every query that reads them and are
    overwritten before any later query does."""
    width = max(call.end - call.lo for call in calls)
    span = min(sc.window or sc.frames, sc.frames)
    cache = static_cache(model, len(y), span)
    step = compiled_denoise(x.device) if sc.mode == "compiled" else denoise
    if sc.mode == "compiled" and x.device.type == "cpu" and COMPILE_BACKEND == "inductor" \
            and resolve_backend(model.config.attn_backend, x.device) == "flex":
        raise ValueError("inductor cannot compile FlexAttention on the CPU (torch 2.13): sample with "
                         "dit.attn_backend=auto (SDPA on the CPU) or mode=static")
    for call in tqdm(calls, desc="sampling", disable=not progress):
        noise = _noise(x, sc, generator)
        lo = min(call.lo, call.start + span - width)
        cache.set_offset(lo - call.start)
        frames = slice(lo, lo + width)
        t, t_next = _times(times, call, frames, x.shape[0], x.device)
        x[:, frames] = step(model, diffusion, x[:, frames].clone(), t, t_next, y, sc.cfg_scale, sc.eta,
                            sc.clip_x0, None if noise is None else noise[:, frames].clone(), cache,
                            **_context(sc, eps, frames, copy=True))
    return x
