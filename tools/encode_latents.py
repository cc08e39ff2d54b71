"""Ray batch job: video shards → AR-VAE latent shards.

Reads ``{root}/videos/{split}/shard-*.tar`` and writes ``{root}/latents/{vae_id}/{split}/`` with the
same shard names: ``KEY.npy`` (``(F, L, D)`` float16) + ``KEY.json`` (the video's metadata).

A Ray Data pipeline of two stages, one shard per row: CPU tasks read and decode shards
(``decode_shard``), and a pool of AR-VAE actors (one per GPU with ``--gpus-per-actor 1``, bf16;
else CPU) encodes and writes them. Ray Data streams between the stages, so decoding the next
shards overlaps with encoding this one and the encoder is not left waiting. An output shard
whose ``.stats.json`` sidecar exists is complete and skipped on a re-run. Undecodable samples are
counted and listed, never dropped silently. ``_manifest.json`` records the VAE run, checkpoint
tag and a hash of its weights (``vae_id``), and the counts and latent statistics summed over all
shards' sidecars: mean, std and the tokens' L2 norms (mean/min/max; the AR-VAE puts every token
at norm √D, see :mod:`ardscale.models.arvae`).

With ``--text-encoder`` (captioned videos), each sample also gets ``KEY.txt.npz``: its caption
encoded by :class:`~ardscale.models.text.TextEncoder` (``tokens (S, C)`` and ``pooled (C,)``
float16, ``mask (S,)`` bool), so DiT training does not run the text encoder; a sample without a
caption gets the empty caption's. ``_null_caption.npz`` (the encoding of ``""``, for CFG) sits
beside the manifest, which names the encoder. Shards encoded without text are encoded again.

    python tools/encode_latents.py --vae-run runs/demo/vae --root runs/demo/data --split train
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ardscale.data.folders import MANIFEST, NULL_CAPTION, latent_dir, video_dir
from ardscale.data.loader import decoded_samples
from ardscale.data.shards import (
    join,
    list_shards,
    npy_bytes,
    npz_bytes,
    read_json,
    sidecar_url,
    write_bytes,
    write_json,
    write_shard,
)
from ardscale.data.transforms import to_model_range
from ardscale.models.arvae import ARVAE
from ardscale.runs import load_trained


def load_vae(run_dir: str, which: str | None = None) -> tuple[ARVAE, str, str]:
    """AR-VAE of a training run in eval mode → (model, tag, weights sha256[:12]).

    Raises:
        ValueError: ``run_dir`` is not an AR-VAE run.
    """
    _, model, tag, digest = load_trained(run_dir, which, task="vae")
    return model, tag, digest


def decode_shard(row: dict) -> dict:
    """Ray Data ``map`` stage: one video shard → its decoded clips ``(N, F, H, W, 3)`` uint8, keys,
    metadata and the samples that failed to decode."""
    keys, clips, metas, failed = [], [], [], []
    for s, clip in decoded_samples(row["src"], failed):
        clips.append(clip)
        keys.append(s["__key__"])
        metas.append(s["json"].decode() if isinstance(s["json"], bytes) else json.dumps(s["json"]))
    return {"src": row["src"], "dst": row["dst"], "keys": json.dumps(keys), "metas": json.dumps(metas),
            "failed": json.dumps(failed), "clips": np.stack(clips) if clips else np.zeros((0,), np.uint8)}


class ShardEncoder:
    """Ray Data actor: encodes decoded shards (batch = 1 row of :func:`decode_shard`) and writes them."""

    def __init__(self, vae_run: str, tag: str, batch_size: int = 16, text: dict | None = None):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(1)   # one actor per core
        model, _, _ = load_vae(vae_run, tag)
        self.model = model.to(self.device)
        self.batch_size = batch_size
        self.text = text
        self.text_encoder = text_encoder(text, str(self.device)) if text else None

    @torch.no_grad()
    def _encode(self, clips: np.ndarray) -> np.ndarray:
        v = to_model_range(torch.from_numpy(clips)).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.model.encode(v).float().cpu().numpy()

    def __call__(self, batch: dict) -> dict:
        """Encode the shard into ``dst``, then write ``dst``'s stats sidecar (marks it complete)."""
        dst, clips = batch["dst"][0], batch["clips"][0]
        keys, metas = json.loads(batch["keys"][0]), json.loads(batch["metas"][0])
        rows, total, total_sq, count, norms = [], 0.0, 0.0, 0, []
        for i in range(0, len(keys), self.batch_size):
            z = self._encode(clips[i:i + self.batch_size]).astype(np.float16)
            z64 = z.astype(np.float64)
            total, total_sq = total + float(z64.sum()), total_sq + float((z64 ** 2).sum())
            count += z.size
            norms.append(np.linalg.norm(z64, axis=-1).ravel())
            rows += [{"__key__": k, "npy": npy_bytes(zi), "json": m.encode()}
                     for k, m, zi in zip(keys[i:], metas[i:], z)]
        if self.text_encoder is not None:
            for i in range(0, len(rows), self.batch_size):
                captions = [json.loads(m).get("caption", "") for m in metas[i:i + self.batch_size]]
                for row, blob in zip(rows[i:], text_blobs(self.text_encoder, captions)):
                    row["txt.npz"] = blob
        write_shard(dst, rows)
        write_json(sidecar_url(dst), {"src": batch["src"][0], "clips": len(rows), "text": self.text,
                                      "failed": json.loads(batch["failed"][0]),
                                     "sum": total, "sumsq": total_sq, "count": count, **_norm_stats(norms),
                                     "frames": int(clips.shape[1]) if keys else 0})
        return {"dst": [dst], "clips": [len(rows)]}


def _complete(dst: str, text: dict | None) -> bool:
    """The latent shard ``dst`` exists (its sidecar is written last), with the text asked for."""
    stats = read_json(sidecar_url(dst))
    return stats is not None and stats.get("text") == text


def text_encoder(text: dict, device: str = "cpu"):
    """The :class:`~ardscale.models.text.TextEncoder` of a manifest's ``text`` entry."""
    from ardscale.models.text import TextEncoder

    return TextEncoder(text["encoder"], text["path"], text["tokens"], device)


def text_blobs(encoder, captions: list[str]) -> list[bytes]:
    """Each caption encoded, as ``.npz`` bytes: tokens ``(S, C)`` / pooled ``(C,)`` float16, mask ``(S,)``."""
    c = encoder.encode(captions)
    return [npz_bytes(tokens=t.half().numpy(), mask=m.numpy(), pooled=p.half().numpy())
            for t, m, p in zip(c.tokens, c.mask, c.pooled)]


def _norm_stats(norms: list[np.ndarray]) -> dict:
    """Sum, min and max of the stored (float16) tokens' L2 norms, for the manifest."""
    n = np.concatenate(norms) if norms else np.zeros(0)
    return {"tokens": int(n.size), "norm_sum": float(n.sum()),
            "norm_min": float(n.min()) if n.size else None, "norm_max": float(n.max()) if n.size else None}


def _manifest_norms(stats: list[dict], latent_dim: int) -> dict:
    """Token norm statistics over all shards; the contract is √D for every token."""
    mins = [r["norm_min"] for r in stats if r.get("norm_min") is not None]
    maxs = [r["norm_max"] for r in stats if r.get("norm_max") is not None]
    tokens = sum(r.get("tokens", 0) for r in stats)
    return {"token_norm_expected": latent_dim ** 0.5,
            "token_norm_mean": sum(r.get("norm_sum", 0.0) for r in stats) / max(tokens, 1),
            "token_norm_min": min(mins, default=None), "token_norm_max": max(maxs, default=None)}


def run(vae_run: str, root: str, split: str, num_actors: int = 1, gpus_per_actor: float = 0,
        text_encoder_kind: str = "", text_path: str = "", text_tokens: int = 32) -> dict:
    """Encode one split; returns (and writes) the manifest. ``num_actors=0`` encodes in this
    process, shard by shard, without Ray (the same shards and manifest). ``text_encoder_kind``: also
    encode the captions (``minilm``, ``t5`` or ``clip``; ``text_path`` its folder, ``text_tokens`` S).

    Raises:
        FileNotFoundError: no video shards under ``{root}/videos/{split}``.
    """
    model, tag, vae_id = load_vae(vae_run)
    src_dir, dst_dir = video_dir(root, split), latent_dir(root, vae_id, split)
    srcs = list_shards(src_dir)
    if not srcs:
        raise FileNotFoundError(f"no video shards under {src_dir}: run data_prep/shard_videos.py first")
    dsts = [join(dst_dir, u.rsplit("/", 1)[-1]) for u in srcs]
    text = {"encoder": text_encoder_kind, "path": text_path, "tokens": text_tokens} if text_encoder_kind \
        else None
    todo = [{"src": s, "dst": d} for s, d in zip(srcs, dsts) if not _complete(d, text)]
    t0 = time.time()
    if todo and num_actors == 0:   # in this process, shard by shard: no Ray (a bare GPU box, a laptop)
        threads = torch.get_num_threads()
        encoder = ShardEncoder(vae_run, tag, text=text)
        torch.set_num_threads(threads)   # one thread is an actor's share of a pool; here it is alone
        for row in tqdm(todo, desc="encoding shards", file=sys.stderr):
            encoder({k: [v] for k, v in decode_shard(row).items()})
    elif todo:
        import ray

        from ardscale.engine.launch import init_ray

        init_ray()
        actors = min(num_actors, len(todo))
        # A fixed pool of ``actors`` encoders (ActorPoolStrategy(size=...); map_batches'
        # ``concurrency=`` is deprecated for this since Ray 2.51). Half a CPU per decoder and per CPU
        # encoder: N actors on N cores still leave room for the decoders, so decoding overlaps
        # encoding instead of waiting for an actor to finish.
        ray.data.from_items(todo).map(decode_shard, num_cpus=0.5).map_batches(
            ShardEncoder, fn_constructor_kwargs={"vae_run": vae_run, "tag": tag, "text": text}, batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus_per_actor,
            num_cpus=0 if gpus_per_actor else 0.5).materialize()
    # The manifest sums every shard's sidecar, so a resumed job reports the whole split.
    stats = [read_json(sidecar_url(d)) for d in dsts]
    count = sum(r["count"] for r in stats)
    mean = sum(r["sum"] for r in stats) / max(count, 1)
    std = (max(sum(r["sumsq"] for r in stats) / max(count, 1) - mean**2, 0.0)) ** 0.5
    manifest = {"vae_run": vae_run, "vae_tag": tag, "vae_id": vae_id, "split": split,
                "shards": len(srcs), "shards_encoded_now": len(todo), "clips": sum(r["clips"] for r in stats),
                "failed": [f for r in stats for f in r["failed"]],
                "num_frames": max([r["frames"] for r in stats], default=None),
                "tokens_per_frame": model.config.tokens_per_frame, "latent_dim": model.config.latent_dim,
                "latent_mean": mean, "latent_std": std, **_manifest_norms(stats, model.config.latent_dim),
                "seconds": round(time.time() - t0, 2)}
    if text:   # the null caption for CFG, and what made the text embeddings
        enc = text_encoder(text)
        manifest["text"] = {**text, "dim": enc.dim}
        write_bytes(join(dst_dir, NULL_CAPTION), text_blobs(enc, [""])[0])
    write_json(join(dst_dir, MANIFEST), manifest)
    return manifest


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae-run", required=True, help="run dir of an AR-VAE training run (task: vae)")
    p.add_argument("--root", required=True, help="dataset root holding videos/{split}")
    p.add_argument("--split", default="train")
    p.add_argument("--num-actors", type=int, default=1,
                   help="encoder actors (one per GPU / CPU worker); 0: no Ray, encode in this process")
    p.add_argument("--gpus-per-actor", type=float, default=0, help="1: one GPU per actor (bf16); 0: CPU")
    p.add_argument("--manifest-out", default=None, help="also write the manifest to this local file")
    p.add_argument("--text-encoder", default="", choices=["", "minilm", "t5", "clip"],
                   help="also encode each sample's caption (ardscale/models/text.py)")
    p.add_argument("--text-path", default="", help="local folder of the t5 / clip text encoder")
    p.add_argument("--text-tokens", type=int, default=32, help="S: captions padded/truncated to this")
    a = p.parse_args(argv)
    manifest = run(a.vae_run, a.root, a.split, a.num_actors, a.gpus_per_actor, a.text_encoder, a.text_path,
                   a.text_tokens)
    if a.manifest_out:
        Path(a.manifest_out).write_text(json.dumps(manifest, indent=2))
    print(json.dumps(manifest))


if __name__ == "__main__":
    main()
