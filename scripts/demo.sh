#!/usr/bin/env bash
# The main job end to end on real video, on this machine:
#   local Ray cluster (loopback) → shard videos → train the local feature net → train AR-VAE (frames,
#   + GAN, then clips) → encode latents → `ray job submit -- python -m ardscale.train configs/demo.yaml`
#   (causal DiT, fvd_local while it trains) → sample (and continue held-out clips past the training
#   length) → evaluate (fvd_local of samples and reconstructions) → stop Ray.
# Usage: bash scripts/demo.sh [VIDEO_FOLDER] [OUT_DIR]
#   VIDEO_FOLDER defaults to ../shared/data/ucf101-subset (UCF-101 layout with split lists; any
#   folder of videos works: class = sub-folder name, fixed 90/10 train/test split by file name).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(realpath -m "${1:-../shared/data/ucf101-subset}")
[ -d "$SRC" ] || { echo "[demo] FAILED: no video folder at $SRC (give one: bash scripts/demo.sh VIDEO_FOLDER)" >&2; exit 2; }
OUT=$(realpath -m "${2:-runs/demo}")
DASH=http://127.0.0.1:8265
T0=$(date +%s)
mkdir -p "$OUT"
rm -f "$OUT/skipped.txt"   # sections this run skips, listed by the summary
export RAY_ADDRESS=127.0.0.1:6379 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
# One node, loopback only. Without this Ray swaps --node-ip-address=127.0.0.1 for the machine's own
# address (ray/_private/services.py resolve_ip_for_localhost) and its GCS, raylet and workers bind
# every interface. It must reach every Ray process and driver (each resolves addresses itself);
# it also refuses `ray start --address` of a second node, which a one-node demo never does.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# Ray token authentication: every client of the cluster (ray job submit, drivers, workers) must
# present this token. It is made once per demo folder, readable by this user only, and never
# printed; runs/ is outside git, and no config or MLflow param carries it.
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$OUT/.ray_auth_token}"
[ -s "$RAY_AUTH_TOKEN_PATH" ] || (umask 077 && python -c 'import secrets; print(secrets.token_hex(32))' >"$RAY_AUTH_TOKEN_PATH")
STEP="setup" STARTED_RAY=""
log() { STEP="$*"; echo "[demo $(( $(date +%s) - T0 ))s] $*"; }
# Any failing command ends the demo (set -e) through this trap: it names the step that failed,
# stops the Ray cluster the demo started, and keeps the command's non-zero status. "done" and the
# summary are printed only after every step has succeeded.
finish() {
  local rc=$?
  [ -z "$STARTED_RAY" ] || { echo "[demo] stopping the Ray cluster it started"; ray stop --force >/dev/null 2>&1 || true; }
  if [ "$rc" -ne 0 ]; then
    echo "[demo] FAILED (exit $rc) in step: $STEP" >&2
    echo "[demo] outputs of the steps before it are in $OUT; logs: $OUT/*.log, ray job logs" >&2
  fi
  exit "$rc"
}
trap finish EXIT

if (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then   # a GCS already listens: reuse that cluster
  log "using the Ray cluster already running at $RAY_ADDRESS (left running; its token must be in $RAY_AUTH_TOKEN_PATH)"
else
  log "starting a local Ray cluster on loopback"
  STARTED_RAY=1
  ray start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --port=6379 \
    --num-cpus="$(nproc)" --disable-usage-stats >"$OUT/ray_start.log" 2>&1
fi

log "sharding $SRC (train and test splits) into $OUT/data"
python data_prep/shard_videos.py --src "$SRC" --out "$OUT/data" --split train --num-frames 8 --fps 8 --size 64
python data_prep/shard_videos.py --src "$SRC" --out "$OUT/data" --split test --num-frames 8 --fps 8 --size 64 \
  --allow-empty   # held out for evaluation; a small folder may have no test video
log "sharding 16-frame clips of both splits into $OUT/data16: the real sets of FVD16"
for split in train test; do
  python data_prep/shard_videos.py --src "$SRC" --out "$OUT/data16" --split $split --num-frames 16 --fps 8 \
    --size 64 --allow-empty >/dev/null
done

log "training the ucf101_local feature network (fvd_local / fid_local) on the real train clips"
python -m ardscale.metrics.local root="$OUT/data" out="$OUT/ucf101_local.pt" epochs=10 2>"$OUT/ucf101_local.log" | tail -n 1

COMMON=(data.root="$OUT/data" tracking.tracking_uri="sqlite:///$OUT/mlruns.db")
log "training the AR-VAE, stage 1: single frames, reconstruction loss (Ray job)"
ray job submit --address "$DASH" -- python -m ardscale.train "$PWD/configs/demo_vae_frames.yaml" \
  "${COMMON[@]}" train.run_dir="$OUT/vae_frames"
log "training the AR-VAE, stage 2: single frames + PatchGAN adversarial loss (Ray job)"
ray job submit --address "$DASH" -- python -m ardscale.train "$PWD/configs/demo_vae_gan.yaml" \
  "${COMMON[@]}" train.init_from="$OUT/vae_frames" train.run_dir="$OUT/vae_gan"
log "training the AR-VAE, stage 3: 8-frame clips, temporally causal decoder, GAN still on (Ray job)"
ray job submit --address "$DASH" -- python -m ardscale.train "$PWD/configs/demo_vae.yaml" \
  "${COMMON[@]}" train.init_from="$OUT/vae_gan" train.run_dir="$OUT/vae"

log "encoding train latents"
python tools/encode_latents.py --vae-run "$OUT/vae" --root "$OUT/data" --split train --num-actors 2 \
  --manifest-out "$OUT/latents_manifest.json" >/dev/null
VAE_ID=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["vae_id"])' "$OUT/latents_manifest.json")

log "training the causal DiT on latents $VAE_ID (Ray job)"
ray job submit --address "$DASH" -- python -m ardscale.train "$PWD/configs/demo.yaml" \
  "${COMMON[@]}" data.vae_id="$VAE_ID" train.run_dir="$OUT/dit" train.eval_every=200 eval.local="$OUT/ucf101_local.pt"

log "sampling with the AD scheduler"
python -m ardscale.sample "$OUT/dit" num_samples=8 steps=50 s=2 cfg_scale=2.0 out="$OUT/samples" | tail -n 1

if [ -n "$(find "$OUT/data/videos/test" -name '*.tar' -print -quit 2>/dev/null)" ]; then
  log "encoding held-out latents"
  python tools/encode_latents.py --vae-run "$OUT/vae" --root "$OUT/data" --split test --num-actors 2 >/dev/null
  log "continuing 4 real held-out frames to 24 frames (AD s=10, KV cache, sliding window of 8 frames, the first 2 kept)"
  python -m ardscale.sample "$OUT/dit" num_samples=8 steps=50 s=10 cfg_scale=2.0 context=4 frames=24 sink=2 \
    out="$OUT/samples_long" | tail -n 1
else
  log "no held-out clips (empty test split): continuation skipped"
  echo "continuation: the test split of $SRC is empty" >>"$OUT/skipped.txt"
fi

# The standard metrics (Kinetics-400 I3D, Inception-v3; ardscale/metrics/fvd.py) on 128 real clips a
# side, spread over each split, and 64 generated videos: small samples make FVD large, so the DiT's
# report carries its floor (fvd16_floor_train: real train clips scored against the real test clips).
# 16 frames from the 8-frame DiT: the sliding window holds 8, so s = 10 of N = 50 (5 frames in flight);
# once it slides it keeps the video's first 2 frames (sample.sink=2: less drift, RESULTS.md).
STD=(local="$OUT/ucf101_local.pt" real_root="$OUT/data16" max_real=128 sample.s=10 sample.steps=50 sample.sink=2)
log "evaluating the DiT: FVD16/KVD16/FID of 64 16-frame videos (test-split class mix, s=10), its floor, fvd_local"
python -m ardscale.evaluate "$OUT/dit" "${STD[@]}" videos=64 out="$OUT/eval_dit" >/dev/null
log "evaluating the AR-VAE: rFVD16 of its reconstructions of the 16-frame test clips, PSNR/SSIM, rfvd_local"
python -m ardscale.evaluate "$OUT/vae" "${STD[@]}" references=test out="$OUT/eval_vae" >/dev/null

CAPTIONS="$SRC/captions.jsonl"   # a captioned folder of your own, or the project's UCF-101 captions
[ -f "$CAPTIONS" ] || { [ -n "$(find "$SRC" -name classInd.txt -print -quit)" ] && \
  CAPTIONS="$PWD/data_prep/captions/ucf101-subset.jsonl"; }
if [ -f "$CAPTIONS" ]; then
  log "text conditioning: the clips with captions ($CAPTIONS), MiniLM text embeddings, a text DiT (Ray job)"
  for split in train test; do
    python data_prep/shard_videos.py --src "$SRC" --source captions --captions "$CAPTIONS" --out "$OUT/text_data" \
      --split $split --num-frames 8 --fps 8 --size 64 --allow-empty >/dev/null
  done
  python tools/encode_latents.py --vae-run "$OUT/vae" --root "$OUT/text_data" --split train --num-actors 2 \
    --text-encoder minilm --manifest-out "$OUT/text_latents_manifest.json" >/dev/null
  TEXT_ID=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["vae_id"])' "$OUT/text_latents_manifest.json")
  ray job submit --address "$DASH" -- python -m ardscale.train "$PWD/configs/text_video.yaml" \
    data.root="$OUT/text_data" data.vae_id="$TEXT_ID" train.run_dir="$OUT/text_dit" \
    tracking.tracking_uri="sqlite:///$OUT/mlruns.db" train.eval_every=200 eval.local="$OUT/ucf101_local.pt"
  python -m ardscale.sample "$OUT/text_dit" steps=50 s=2 cfg_scale=2.0 out="$OUT/samples_text" \
    'prompts=["an archer draws a bow and shoots an arrow","a surfer rides a wave","a person playing the piano","horses racing on a track"]' \
    | tail -n 1
  log "evaluating the text DiT on 48 held-out captions: FVD16, fvd_local, class_accuracy (prompt-video agreement)"
  python -m ardscale.evaluate "$OUT/text_dit" "${STD[@]}" references=test prompts=48 out="$OUT/eval_text_dit" \
    >/dev/null
else
  log "no captions for $SRC (captions.jsonl): text conditioning skipped"
  echo "text conditioning: no captions.jsonl for $SRC" >>"$OUT/skipped.txt"
fi

log "done"
python scripts/summarize_demo.py "$OUT" "$(( $(date +%s) - T0 ))"
