"""One GPU check: attention kernels, paper-size DiT training, sampling latency, encoder throughput.

    python benchmarks/gpu_check.py --out DIR            # on one H100/H200, < 8 min
    python benchmarks/gpu_check.py --out DIR --tiny     # CPU, tiny shapes (a test runs it)

Writes ``DIR/gpu_check.json`` (one section per part; a part that fails records its error and
the others still run) and prints it. It imports only torch, einops, PyYAML and the model /
diffusion code, so it runs on a bare GPU machine; DeepSpeed is used when importable, else the
training part says so and uses torch's AdamW.

1. ``attention``: sdpa, flex and flash (when installed) forward + backward in bf16 against a
   written-out fp64 reference on the same inputs (max abs error of the output and of dq/dk/dv), and
   the KV-cache shape (queries = the last frames of the keys), forward only.
2. ``train``: the paper-size DiT (1152×28, 16 heads, F=16, L=32; Table 6) with FoPP timesteps and
   the x0 loss, DeepSpeed ZeRO-2 (ardscale/configs/deepspeed/zero2.yaml), bf16, FlexAttention,
   torch.compile, fused AdamW, micro batch 64 (``--micro``): tokens/s, TFLOPS and MFU from
   :func:`ardscale.engine.flops.dit_train_flops`; then a profile of 3 steps in ``DIR/profile``
   (trace, operator table, forward / backward / optimizer shares).
3. ``sampling``: paper-size DiT and AR-VAE (random weights), bf16, DDIM-50, CFG 3: F=16 s=0 and
   F=128 s=5 (sliding window of 16), generation and decode time per video and frames/s end to
   end, for the eager sampler and the compiled static-cache step (``sample.mode=compiled``: one
   CUDA graph per video length), with the largest difference between their videos.
4. ``encode``: AR-VAE encoder clips/s (16 frames of 256²) in bf16.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch
from torch.profiler import record_function

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ardscale.config import SampleConfig
from ardscale.diffusion.sampler import sample
from ardscale.diffusion.schedule import GaussianDiffusion
from ardscale.diffusion.timesteps import sample_timesteps
from ardscale.engine.deepspeed import DEEPSPEED_CONFIGS
from ardscale.engine.flops import dit_train_flops, peak_tflops
from ardscale.engine.profile import StepProfiler
from ardscale.models import attention as attn
from ardscale.models.arvae import ARVAE, ARVAEConfig
from ardscale.models.dit import DiT, DiTConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _reference_attention(q, k, v, L: int) -> torch.Tensor:
    """fp64 ``softmax(q kᵀ / √Dh, block-causal) v`` written out: a yardstick no backend shares.
    q ``(B, H, Fq*L, Dh)`` are the last Fq of the Fk frames of k, v ``(B, H, Fk*L, Dh)``."""
    q, k, v = (t.double() for t in (q, k, v))
    fq, fk = q.shape[2] // L, k.shape[2] // L
    q_frame = torch.arange(fk - fq, fk, device=q.device).repeat_interleave(L)
    k_frame = torch.arange(fk, device=q.device).repeat_interleave(L)
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    return scores.masked_fill(q_frame[:, None] < k_frame[None, :], float("-inf")).softmax(-1) @ v


def check_attention(device: torch.device, tiny: bool) -> dict:
    """Max abs error of each backend (bf16 on CUDA, fp32 on the CPU) against the fp64 reference,
    forward + backward, and on the KV-cached shape (the last F/2 frames' queries over all keys)."""
    B, H, F, L, Dh = (1, 2, 3, 4, 8) if tiny else (2, 16, 16, 32, 72)
    backends = ["sdpa", "flex"] + (["flash"] if attn.flash_available() else [])
    low = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(B, H, F * L, Dh, generator=g).to(device) for _ in range(4))
    ref_in = [t.double().requires_grad_(True) for t in (q, k, v)]
    ref = _reference_attention(*ref_in, L)
    ref.backward(dout.double())
    fq = F // 2
    ref_cached = _reference_attention(q[:, :, -fq * L:], k, v, L)
    out = {"shape": [B, H, F, L, Dh], "dtype": str(low), "reference": "fp64 math"}
    for name in backends:
        try:
            grad = device.type == "cuda" or name == "sdpa"   # FlexAttention has no CPU backward
            xs = [t.to(low).requires_grad_(grad) for t in (q, k, v)]
            o = attn.attention(*xs, L, name)
            row = {"out": (o.double() - ref).abs().max().item()}
            if grad:
                o.backward(dout.to(low))
                row.update({f"d{n}": (x.grad.double() - r.grad).abs().max().item()
                            for n, x, r in zip("qkv", xs, ref_in)})
            # Grad mode stays on (inputs detached): under no_grad, attention() routes flex to sdpa.
            cached = attn.attention(*(x.detach() for x in (xs[0][:, :, -fq * L:], xs[1], xs[2])), L, name)
            row["kv_cache_out"] = (cached.double() - ref_cached).abs().max().item()
            out[name] = row
        except Exception as e:  # noqa: BLE001 - one kernel's failure is a result, not a crash
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    return out


def _dist_init() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _engine(model: torch.nn.Module, micro: int, bf16: bool):
    """DeepSpeed ZeRO-2 (the project's zero2.yaml) when importable, else torch AdamW under autocast:
    (module, step fn, name, input dtype). DeepSpeed's bf16 casts the module, so it takes bf16 inputs."""
    cuda = device_of(model).type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True if cuda else None)   # fused on CUDA
    try:
        import deepspeed
        import yaml
    except ImportError as e:
        def step(loss):
            with record_function("backward"):
                loss.backward()
            with record_function("optimizer"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
        return model, step, f"torch AdamW, autocast ({e.name} not installed)", torch.float32
    _dist_init()
    zero = yaml.safe_load((DEEPSPEED_CONFIGS / "zero2.yaml").read_text())
    config = {**zero, "train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1,
              "train_batch_size": micro, "gradient_clipping": 1.0, "bf16": {"enabled": bf16},
              "steps_per_print": 10**9}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)

    def step(loss):
        with record_function("backward"):
            engine.backward(loss)
        with record_function("optimizer"):
            engine.step()
    dtype = torch.bfloat16 if bf16 else torch.float32
    return engine, step, f"deepspeed {deepspeed.__version__} ZeRO-2", dtype


def check_train(device: torch.device, tiny: bool, micro: int = 64, out_dir: str = ".") -> dict:
    """Paper-size DiT training steps: tokens/s, TFLOPS and MFU (3 warm-up steps, then timed), fused
    AdamW on CUDA; then a profile of 3 steps (:class:`ardscale.engine.profile.StepProfiler`: trace,
    operator table, forward / backward / optimizer shares) under ``out_dir/profile``."""
    cfg = DiTConfig.tiny(attn_backend="sdpa") if tiny else DiTConfig(attn_backend="flex")
    F, micro, reps = (4, 2, 2) if tiny else (16, micro, 8)
    bf16 = device.type == "cuda"
    model = DiT(cfg).to(device)
    module, step, engine_name, dtype = _engine(model, micro, bf16)
    fwd = torch.compile(module) if device.type == "cuda" else module
    diffusion, gen = GaussianDiffusion(), torch.Generator().manual_seed(0)

    def one_step():
        x0 = torch.nn.functional.normalize(torch.randn(micro, F, cfg.tokens_per_frame, cfg.latent_dim),
                                           dim=-1)
        t = sample_timesteps("fopp", micro, F, diffusion.num_timesteps, generator=gen)
        x_t = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=gen))
        y = torch.randint(0, cfg.num_classes + 1, (micro,), generator=gen)
        with record_function("forward"), \
                torch.autocast(device.type, torch.bfloat16, enabled=bf16 and dtype == torch.float32):
            pred = fwd(x_t.to(device, dtype), t.to(device), y.to(device))
            loss = (pred.float() - x0.to(device)).pow(2).mean()
        step(loss)

    _timed(one_step, device, 3)
    times = _timed(one_step, device, reps)
    profiler = StepProfiler(1, 3, Path(out_dir) / "profile", 0, device.type == "cuda")
    for i in range(4):   # step 0: the profiler's warm-up
        with profiler.step(i):
            one_step()
            _sync(device)
    prof = json.loads((Path(out_dir) / "profile" / "rank0.json").read_text())
    per_step = sorted(times)[len(times) // 2]
    tflops = dit_train_flops(cfg, F) * micro / per_step / 1e12
    peak = peak_tflops(0.0)
    return {"engine": engine_name, "config": asdict(cfg), "frames": F, "micro_batch": micro,
            "dtype": "torch.bfloat16" if bf16 else "torch.float32",
            "compiled": device.type == "cuda", "step_s_median": per_step,
            "tokens_per_s": micro * F * 32 / per_step,
            "tflops": tflops, "peak_tflops": peak, "mfu": tflops / peak if peak else None,
            "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
            "fused_adamw": device.type == "cuda",
            "profile": {"step_ms": prof["step_ms"],
                        **{k: {m: round(x, 4) for m, x in v.items()} for k, v in prof["phases"].items()},
                        "files": str(Path(out_dir) / "profile")}}


def check_sampling(device: torch.device, tiny: bool) -> dict:
    """Generation and decode time per video with the AD scheduler (DDIM-50, CFG 3, batch 1), for
    the eager sampler and the compiled static-cache step (``sample.mode=compiled``), and how far
    the compiled video is from the eager one."""
    dit_cfg = DiTConfig.tiny(attn_backend="sdpa") if tiny else DiTConfig()
    vae_cfg = ARVAEConfig.tiny(temporal=True) if tiny else ARVAEConfig(temporal=True)
    # autocast: the sampler keeps fp32 latents
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dit, vae = DiT(dit_cfg).to(device).eval(), ARVAE(vae_cfg).to(device).eval()
    with torch.no_grad():   # adaLN-Zero starts at a zero output: make every frame matter
        for p in dit.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    window, steps = (4, 6) if tiny else (16, 50)
    cases = [(4, 0), (12, 3)] if tiny else [(16, 0), (128, 5)]
    out = {"steps": steps, "cfg_scale": 3.0, "dtype": str(dtype), "window": window}
    for frames, s in cases:
        case = f"F{frames}_s{s}"
        for mode in ("eager", "compiled"):
            out[f"{case}_{mode}"] = _sample_and_decode(dit, vae, frames, s, steps, window, mode, device)
        eager, compiled = (out[f"{case}_{m}"].pop("latents") for m in ("eager", "compiled"))
        out[f"{case}_compiled"]["max_abs_diff_vs_eager"] = (compiled - eager).abs().max().item()
    return out


def _sample_and_decode(dit, vae, frames: int, s: int, steps: int, window: int, mode: str,
                       device: torch.device) -> dict:
    """Seconds to generate one video (the last of two runs, three when compiled: the first compiles)
    and to decode it."""
    z = {}
    sc = SampleConfig(s=s, steps=steps, cfg_scale=3.0, frames=frames, window=window, mode=mode)

    def generate():
        z["latents"] = sample(dit, GaussianDiffusion(), torch.tensor([1]), sc)

    bf16 = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")
    with bf16:
        times = _timed(generate, device, 3 if mode == "compiled" else 2)
    with torch.no_grad(), bf16:
        dec_s = _timed(lambda: vae.decode(z["latents"] / 0.5, window), device, 2)[-1]
    gen_s = times[-1]
    return {"generate_s": gen_s, "first_call_s": times[0], "decode_s": dec_s, "total_s": gen_s + dec_s,
            "frames_per_s": frames / (gen_s + dec_s), "latents": z["latents"].float().cpu()}


def check_encode(device: torch.device, tiny: bool) -> dict:
    """AR-VAE encoder clips/s (clips of 16 frames; batch of 4 clips)."""
    cfg = ARVAEConfig.tiny() if tiny else ARVAEConfig()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vae = ARVAE(cfg).to(device, dtype).eval()
    frames, batch = (4, 2) if tiny else (16, 4)
    clips = torch.rand(batch, frames, 3, cfg.image_size, cfg.image_size, device=device, dtype=dtype) * 2 - 1
    with torch.no_grad():
        times = _timed(lambda: vae.encode(clips), device, 4)[1:]
    return {"frames": frames, "batch": batch, "image_size": cfg.image_size, "dtype": str(dtype),
            "clips_per_s": batch / (sum(times) / len(times))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu_check.json")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, for the CPU")
    ap.add_argument("--micro", type=int, default=64, help="training micro batch (clips)")
    ap.add_argument("--parts", default="attention,train,sampling,encode", help="comma-separated parts to run")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    report = {"device": name,
              "torch": torch.__version__, "tiny": args.tiny}
    checks = {"attention": check_attention, "train": check_train, "sampling": check_sampling,
              "encode": check_encode}
    for name in args.parts.split(","):
        check = checks[name]
        start = time.perf_counter()
        try:
            extra = (args.micro, args.out) if name == "train" else ()
            report[name] = check(device, args.tiny, *extra)
        except Exception:  # noqa: BLE001 - record it; the remaining parts still run
            report[name] = {"error": traceback.format_exc(limit=4)}
        report[name]["wall_s"] = round(time.perf_counter() - start, 2)
        print(f"{name}: {json.dumps(report[name])}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
