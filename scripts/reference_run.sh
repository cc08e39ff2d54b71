#!/usr/bin/env bash
# The reference run of RESULTS.md (issue 23, item 5), from raw clips to Table 3, in one command that
# resumes where it stopped: run it again after a crash, a kill or a new session on the same disk.
#   shard 8- and 16-frame clips → ucf101_local → AR-VAE stage 1 (12,000 steps) → stages 2, 3 →
#   16-frame train latents → Table 3: FoPP and naive DiTs (3,000 steps of 32 16-frame clips each) at
#   3 seeds, each evaluated (FVD16/FID, 48 videos). The trial fopp-s0 is the reference DiT of RESULTS.md.
# One process per training job (no Ray cluster, no MLflow server: tracking off); the Table 3 sweep
# starts its own local Ray. ~11 h of a 2-core CPU: stage 1 ~2 h, each of the 6 Table 3 trials ~85 min
# of training and 6 of evaluation.
# To leave a trial out (or pause it), touch OUT_DIR/t3/<variant>-s<seed>/STOP before it starts.
# Usage: bash scripts/reference_run.sh [OUT_DIR] [VIDEO_FOLDER]     (OUT_DIR defaults to runs/ref)
# A step that finished leaves OUT_DIR/<step>.done and is skipped on the next call.
# Budgets (environment; the defaults are the reference run's): VAE_STEPS=12000 (stage 1), STAGE2_STEPS=300,
# STAGE3_STEPS=200, DIT_STEPS=3000 (each Table 3 trial), SEEDS=3; stage 1's LR drop stays at step 10,500.
# A smoke run of the whole chain (~40 min on 2 cores):
#   VAE_STEPS=20 STAGE2_STEPS=10 STAGE3_STEPS=10 DIT_STEPS=10 SEEDS=1 bash scripts/reference_run.sh runs/ref_smoke
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-runs/ref}")
SRC=$(realpath -m "${2:-../shared/data/ucf101-subset}")
[ -d "$SRC" ] || { echo "[ref] no video folder at $SRC" >&2; exit 2; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
VAE_STEPS=${VAE_STEPS:-12000} STAGE2_STEPS=${STAGE2_STEPS:-300} STAGE3_STEPS=${STAGE3_STEPS:-200}
DIT_STEPS=${DIT_STEPS:-3000} SEEDS=${SEEDS:-3}
step() {   # step NAME CMD...: run CMD unless NAME finished before
  local name=$1; shift
  if [ -f "$OUT/$name.done" ]; then echo "[ref] $name: done before"; return; fi
  echo "[ref $(( $(date +%s) - T0 ))s] $name"
  "$@"
  touch "$OUT/$name.done"
}
shard() {
  for frames in 8 16; do
    local dir=$OUT/data; [ "$frames" = 8 ] || dir=$OUT/data$frames
    for split in train test; do
      python data_prep/shard_videos.py --src "$SRC" --out "$dir" --split $split --num-frames $frames \
        --fps 8 --size 64 --allow-empty >/dev/null
    done
  done
}
C=(data.root="$OUT/data" scale.num_workers=0 tracking.enabled=false optim.grad_accum=2)
step shard shard
step local python -m ardscale.metrics.local root="$OUT/data" out="$OUT/ucf101_local.pt" epochs=10
step vae_frames python -m ardscale.train configs/demo_vae_frames.yaml "${C[@]}" train.steps="$VAE_STEPS" \
  "optim.lr_steps=[10500]" "optim.lr_values=[1.0e-4]" train.run_dir="$OUT/vae_frames"
step vae_gan python -m ardscale.train configs/demo_vae_gan.yaml "${C[@]}" train.init_from="$OUT/vae_frames" \
  train.steps="$STAGE2_STEPS" train.run_dir="$OUT/vae_gan"
step vae python -m ardscale.train configs/demo_vae.yaml "${C[@]}" train.init_from="$OUT/vae_gan" \
  train.steps="$STAGE3_STEPS" train.run_dir="$OUT/vae"
step latents python tools/encode_latents.py --vae-run "$OUT/vae" --root "$OUT/data16" --split train \
  --num-actors 0 --manifest-out "$OUT/latents_manifest.json"
VAE_ID=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["vae_id"])' "$OUT/latents_manifest.json")
step table3 python tools/ablate.py table3 --root "$OUT/data16" --vae-id "$VAE_ID" --variants fopp naive \
  --seeds "$SEEDS" --steps "$DIT_STEPS" --set optim.grad_accum=2 train.ckpt_every=250 --real-root "$OUT/data16" \
  --local "$OUT/ucf101_local.pt" --s 10 --cpus-per-trial 2 --tracking-uri "sqlite:///$OUT/t3/mlruns.db" \
  --out "$OUT/t3"
echo "[ref $(( $(date +%s) - T0 ))s] done: Table 3 in $OUT/t3"
