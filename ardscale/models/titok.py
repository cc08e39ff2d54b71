"""TiTok-L-32 tokenizer weights → the AR-VAE (``vae.init_from_titok``; paper Sec. 4.1, implementation
details: the AR-VAE starts from TiTok-L-32).

The file is ``tokenizer_titok_l32.bin`` of bytedance/1d-tokenizer: ``TiTok(config).state_dict()`` with
``configs/infer/TiTok/titok_l32.yaml`` (demo_util.py:41-46 loads it strictly), 692 tensors,
641,054,735 parameters; ``tests/data/titok_l32_keys.json`` lists every key, shape and dtype. The
official AR-Diffusion's README (line 32) has users put a copy (huggingface TrizZZZ/ar_diffusion) in the
working folder; its stage-1 script reads it by fixed name (py_scripts/vae_train_kl_disc.py:330-367).

TiTok-L-32 (1d-tokenizer modeling/modules/blocks.py): width 1024, 24 blocks per side, 16 heads of 64,
MLP ratio 4, patch 16, 256², 32 latent tokens, a VQ head of 12 channels (codebook 4096). Its blocks
(lines 35-73) are ours (``arvae.Block``) under other names: pre-LayerNorm ``ln_1``/``ln_2``, an
``nn.MultiheadAttention`` whose fused ``in_proj_weight`` ``(3W, W)`` stacks q, k, v with the heads
contiguous inside each (the layout of our ``attn.qkv``, so it is copied as is), and an MLP
``c_fc``/``c_proj``. What maps (588 tensors; our key ← TiTok key):

- ``encoder.{i}.*``, ``decoder.{i}.*`` ← ``{en,de}coder.transformer.{i}.*`` (12 tensors per block);
- ``patch_embed.weight`` ``(W, 3·p·p)`` ← ``encoder.patch_embed.weight`` ``(W, 3, p, p)`` flattened: a
  stride-p conv is our linear map of ``(c p q)``-ordered patches (``ARVAE.encode``);
- ``patch_pos`` ← ``encoder.positional_embedding[1:]`` (row 0 is the class token's);
- ``latent_queries`` ← ``latent_tokens``; ``latent_pos`` ← ``encoder.latent_token_positional_embedding``;
- ``latent_norm`` ← ``encoder.ln_post``; ``out_norm`` ← ``decoder.ln_post``;
- ``mask_tokens`` ``(N, W)`` ← ``decoder.mask_token`` ``(1, 1, W)``, the one token at every position;
- ``from_latent`` ← ``decoder.decoder_embed``, weight columns ``[:D]`` of 12: the official stage-1 script
  keeps the same columns (vae_train_kl_disc.py:364).

What is skipped (104 tensors), each with its reason in :data:`SKIP`. The official AR-VAE
(src/vae/titok_kl.py, src/vae/blocks_kl.py) keeps TiTok's layout, so it loads these where we cannot:

- the class tokens and ``ln_pre`` (blocks.py:248, 253, 326, 333): our ViTs have neither, so the loaded
  blocks see one token fewer and un-normalised inputs; the official keeps both.
- ``encoder.conv_out`` (blocks.py:260): the 12-channel VQ head. TiTok-L-32 is a legacy model
  (``is_legacy`` defaults to True, line 225) and applies it to ``(B, L, W)`` tokens reshaped, not
  permuted, to ``(B, W, L, 1)`` (lines 286-287): each output token mixes channels of all tokens, so the
  weights are no per-token projection. The official keeps the reshape (blocks_kl.py:163) and, for D=4,
  keeps output channels 0-3 as the KL mean and 6-9 as the log-variance (vae_train_kl_disc.py:358-363;
  the mean is the first half, distributions.py:28); our ``to_latent`` keeps its init.
- the decoder's position tables (``positional_embedding``, ``latent_token_positional_embedding``): ours
  shares ``patch_pos`` and ``latent_pos`` with the encoder, which get the encoder's tables.
- ``decoder.ffn`` (blocks.py:341-347, logits over 1024 MaskGIT-VQGAN codes), ``pixel_quantize`` and
  ``pixel_decoder`` (the frozen VQGAN, titok.py:124-136): our pixel head is a conv upsampler
  (``arvae.PixelHead``) and keeps its init. The official loads ``ffn`` and ``pixel_decoder`` into its own
  copies and, for D=4, leaves its ``pixel_quantize_conv`` at init (titok_kl.py:62-72; the codebook goes
  into it only when the latent widens, vae_train_kl_disc.py:350-356).
- ``quantize.embedding`` (titok.py:105-109): the VQ codebook; our latent is continuous.

TiTok's MLP uses the exact GELU (blocks.py:41), ours the tanh approximation (``attention.Mlp``).

Measured with a stand-in file (the official TiTok-L-32 built from its source with random weights,
``torch.save``, 2.56 GB, page cache warm) into a paper-size ``ARVAE(ARVAEConfig())`` on 2 CPU cores
shared with other jobs (load average 7-8): 588 of 636 tensors, 606.0M of 632.3M parameters loaded; 104
TiTok tensors (35.3M parameters) skipped. Reading the file (memory-mapped) 0.1-0.2 s, the key map 0.01 s,
``load_state_dict`` 5.6-11.5 s (the copy of 606M parameters), peak RSS 4.8 GiB; building the model
itself takes 15-16 s, the preflight's check (meta model, mapped file) 6.5 s.
"""
from __future__ import annotations

import re
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .arvae import ARVAE

KEY = "vae.init_from_titok"
HEAD_DIM = 64   # every TiTok size (S/B/L: width 512/768/1024, heads 8/12/16; blocks.py:227-241)
REQUIRED = ("latent_tokens", "encoder.patch_embed.weight", "encoder.transformer.0.attn.in_proj_weight",
            "decoder.transformer.0.attn.in_proj_weight", "decoder.mask_token")

Transform = Callable[[torch.Tensor, torch.Size], torch.Tensor]
_same: Transform = lambda t, shape: t

BLOCK = {"ln_1": "norm1", "ln_2": "norm2", "attn.in_proj_weight": "attn.qkv.weight",
         "attn.in_proj_bias": "attn.qkv.bias", "attn.out_proj": "attn.proj", "mlp.c_fc": "mlp.0",
         "mlp.c_proj": "mlp.2"}
"""A TiTok block's names (blocks.py:46-57) → ours (``arvae.Block``); the rest of the key carries over."""

MAP: dict[str, tuple[str, Transform]] = {
    "latent_tokens": ("latent_queries", _same),
    "encoder.patch_embed.weight": ("patch_embed.weight", lambda t, shape: t.reshape(t.shape[0], -1)),
    "encoder.patch_embed.bias": ("patch_embed.bias", _same),
    "encoder.positional_embedding": ("patch_pos", lambda t, shape: t[1:]),
    "encoder.latent_token_positional_embedding": ("latent_pos", _same),
    "encoder.ln_post.weight": ("latent_norm.weight", _same),
    "encoder.ln_post.bias": ("latent_norm.bias", _same),
    "decoder.decoder_embed.weight": ("from_latent.weight", lambda t, shape: t[:, :shape[1]]),
    "decoder.decoder_embed.bias": ("from_latent.bias", _same),
    "decoder.mask_token": ("mask_tokens", lambda t, shape: t.reshape(1, -1).expand(shape[0], -1)),
    "decoder.ln_post.weight": ("out_norm.weight", _same),
    "decoder.ln_post.bias": ("out_norm.bias", _same),
}
"""TiTok keys outside the blocks → (our key, transform given our tensor's shape)."""

SKIP = {
    r"(en|de)coder\.class_embedding": "class token: our ViTs have none",
    r"(en|de)coder\.ln_pre\.(weight|bias)": "LayerNorm before the first block: ours has none",
    r"encoder\.conv_out\.(weight|bias)": "VQ head (12 channels, on TiTok's legacy reshaped tokens)",
    r"decoder\.(positional_embedding|latent_token_positional_embedding)":
        "decoder position table: ours shares the encoder's",
    r"decoder\.ffn\..*": "VQGAN-code logits head: ours is a pixel head",
    r"pixel_(quantize|decoder)\..*": "MaskGIT-VQGAN decoder: ours is a pixel head",
    r"quantize\.embedding\.weight": "VQ codebook: our latent is continuous",
}
"""TiTok key patterns that have no place in the AR-VAE → why (module docstring: what the official does)."""


@dataclass
class TitokReport:
    """What :func:`titok_to_arvae` did: ``loaded`` our key → its TiTok key, ``skipped`` TiTok key →
    reason, ``untouched`` our keys left at their init; element counts of the loaded, all our and the
    skipped tensors."""

    source: str
    loaded: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    untouched: list[str] = field(default_factory=list)
    loaded_params: int = 0
    total_params: int = 0
    skipped_params: int = 0

    def summary(self) -> str:
        """One log line: tensors and parameters loaded of ours, TiTok's skipped and why."""
        total = len(self.loaded) + len(self.untouched)
        why = "; ".join(f"{n} {r}" for r, n in Counter(self.skipped.values()).most_common())
        return (f"{KEY}={self.source}: loaded {len(self.loaded)} of {total} AR-VAE tensors "
                f"({self.loaded_params / 1e6:.1f}M of {self.total_params / 1e6:.1f}M parameters); skipped "
                f"{len(self.skipped)} TiTok tensors ({self.skipped_params / 1e6:.1f}M parameters): {why}")


def read_titok(path: str) -> dict[str, torch.Tensor]:
    """A TiTok state dict from ``path``, a ``torch.save`` file (``.bin``/``.pt``) read with
    ``weights_only=True`` and memory-mapped when it is a zip archive (no tensor is read until used).
    Tensors on the CPU in the file's dtype.

    Raises:
        FileNotFoundError: no such file (naming ``vae.init_from_titok``).
        ValueError: the file is no state dict of tensors (naming it).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{KEY}={path}: no such file; give the path of tokenizer_titok_l32.bin "
                                "(bytedance/1d-tokenizer's TiTok-L-32; nothing is downloaded)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    except Exception as e:   # pickle and zip errors come in many kinds
        raise ValueError(f"{KEY}={path}: not a torch.save weight file ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{KEY}={path}: not a state dict of tensors (got {type(state).__name__})")
    return state


def _target(key: str) -> tuple[str, Transform] | None:
    """Our key and transform for a TiTok key, or None when it has none."""
    if key in MAP:
        return MAP[key]
    m = re.fullmatch(r"(encoder|decoder)\.transformer\.(\d+)\.(.+)", key)
    for theirs, ours in BLOCK.items() if m else ():
        if m[3] == theirs or m[3].startswith(theirs + "."):
            return f"{m[1]}.{m[2]}.{ours}{m[3][len(theirs):]}", _same
    return None


def _check_model(state: dict, model: ARVAE, source: str) -> None:
    """What the weights' shapes cannot show: TiTok's 64-dim heads and its depth on each side.

    Raises:
        ValueError: not a TiTok state dict; ``vae.num_heads`` or ``vae.depth`` not the file's.
    """
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ValueError(f"{KEY}={source}: not a TiTok state dict (no {missing[0]}; its keys begin "
                         f"{list(state)[:4]})")
    c = model.config
    if c.hidden_size != c.num_heads * HEAD_DIM:
        raise ValueError(f"{KEY}={source}: TiTok's heads are {HEAD_DIM} wide, so vae.num_heads must be "
                         f"vae.hidden_size/{HEAD_DIM} = {c.hidden_size / HEAD_DIM:g}, not {c.num_heads}")
    for side in ("encoder", "decoder"):
        depth = len({k.split(".")[2] for k in state if k.startswith(f"{side}.transformer.")})
        if depth != c.depth:
            raise ValueError(f"{KEY}={source}: the file's {side} has {depth} blocks, vae.depth={c.depth}")


def titok_to_arvae(state: dict[str, torch.Tensor], model: ARVAE, source: str = ""
                   ) -> tuple[dict[str, torch.Tensor], TitokReport]:
    """TiTok's ``state`` as a subset of ``model``'s state dict (views of ``state``'s tensors, in their
    dtype; meta tensors work, no data is read) and the report. ``source`` names the file in messages.

    Raises:
        ValueError: not a TiTok state dict, a key neither mapped nor skipped, a mapped tensor whose
            shape is not ours (naming both keys and shapes), or the heads / depth (:func:`_check_model`).
    """
    _check_model(state, model, source)
    ours = model.state_dict()
    out, report = {}, TitokReport(source)
    for key, tensor in state.items():
        target = _target(key)
        if target is None:
            reason = next((r for p, r in SKIP.items() if re.fullmatch(p, key)), None)
            if reason is None:
                raise ValueError(f"{KEY}={source}: {key} {tuple(tensor.shape)} is not in TiTok-L-32's layout")
            report.skipped[key] = reason
            report.skipped_params += tensor.numel()
            continue
        name, transform = target
        out[name], report.loaded[name] = transform(tensor, ours[name].shape), key
        if out[name].shape != ours[name].shape:
            raise ValueError(f"{KEY}={source}: {key} {tuple(tensor.shape)} does not fit {name} "
                             f"{tuple(ours[name].shape)}: the vae.* sizes must be the file's (TiTok-L-32: "
                             "hidden_size 1024, depth 24, num_heads 16, tokens_per_frame 32, patch_size 16, "
                             "image_size 256, mlp_ratio 4; latent_dim at most its 12 channels)")
    report.untouched = [k for k in ours if k not in out]
    report.loaded_params = sum(ours[k].numel() for k in out)
    report.total_params = sum(v.numel() for v in ours.values())
    return out, report


def load_titok(model: ARVAE, path: str) -> TitokReport:
    """Load TiTok weights from ``path`` (:func:`read_titok`) into ``model`` in place (cast to its
    dtype); what is not loaded keeps its init. Returns the report. Time and memory: module docstring.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_titok` and :func:`titok_to_arvae`.
    """
    subset, report = titok_to_arvae(read_titok(path), model, path)
    model.load_state_dict(subset, strict=False)
    return report
