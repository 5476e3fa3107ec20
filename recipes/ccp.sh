#!/usr/bin/env bash
# Clothing Co-Parsing (CCP) recipe, issue 8: the full recipe against the plain SegFormer ablation,
# from scratch on CPU, same model / crop / epochs / seed / data for both:
#   full:  segformer_mit_b0 with CE2P heads (edge + fusion), CE2P loss (Lovasz + CE, edge,
#          consistency), SCHP self-correction cycles; evaluates the last SCHP teacher;
#   plain: segformer_mit_b0 without edge/fusion heads (--heads plain), plain cross-entropy
#          (--loss ce), no SCHP (--no-schp); evaluates the final weights.
# Both use the coarse 11-class map (mappings/ccp_map.yaml) and are evaluated on CCP val (100
# photos); the script ends with a comparison table (mIoU, per-class IoU) from both results.json.
#
# Budget: on 2 CPU cores a 20-step timing at 256x192, batch 8, gave ~1.1 s/step for the full
# model+loss and ~0.4 s/step for the plain one, so 28 epochs x 100 steps take ~56 min (full, with
# the teacher's forward pass in the 10 cycle epochs and 3 BN re-estimations) and ~19 min (plain).
#
# Measured (2026-11-26, 2 shared cores): full 53.5 min of training, plain 17.5 min, 73 min in all
# with both evaluations. Same epochs means the plain model got a third of the full one's compute;
# PLAIN_EPOCHS=84 gives it about the same wall time instead (not run here).
#
#   bash recipes/ccp.sh                 # CCP_ROOT=../shared/data/ccp CCP_OUT=log/ccp
#   RECIPE_FAST=1 bash recipes/ccp.sh   # tiny settings (8 images, 64x48, 2 epochs): a smoke test
#   PLAIN_EPOCHS=84 bash recipes/ccp.sh # the ablation with the full recipe's wall time
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CCP_ROOT=${CCP_ROOT:-../shared/data/ccp}
OUT=${CCP_OUT:-log/ccp}
# OpenMP threads that busy-wait steal the cores from the DataLoader workers: let them sleep.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

if [[ "${RECIPE_FAST:-0}" == "1" ]]; then
  NUM_SAMPLES=8 CROP=64,48 BATCH=4 EPOCHS=2 WARMUP=0 SCHP_START=1 CYCLE=1 WORKERS=0
else
  NUM_SAMPLES=-1 CROP=256,192 BATCH=8 EPOCHS=28 WARMUP=2 SCHP_START=18 CYCLE=5 WORKERS=2
fi
# SCHP aggregations happen after epochs SCHP_START, SCHP_START+CYCLE, ..., EPOCHS.
CYCLES=$(((EPOCHS - SCHP_START) / CYCLE + 1))
LABELS=(--do_mapping --lip_map_cfg mappings/ccp_map.yaml)
PLAIN_EPOCHS=${PLAIN_EPOCHS:-$EPOCHS}
COMMON=(--arch segformer_mit_b0 --data-dir "$CCP_ROOT" "${LABELS[@]}" --input-size "$CROP"
  --batch-size "$BATCH" --num_samples "$NUM_SAMPLES" --warmup-epochs "$WARMUP"
  --optimizer adamw_custom --learning-rate 2e-3 --weight-decay 1e-2 --seed 0
  --workers "$WORKERS" --device cpu)

evaluate() {  # $1 checkpoint, $2 output folder
  "$PY" -m evaluate --model-restore "$1" --data-dir "$CCP_ROOT" "${LABELS[@]}" \
    --batch-size "$BATCH" --workers "$WORKERS" --device cpu --log-dir "$2"
}

echo "== 1/4 full recipe: CE2P heads + loss, SCHP from epoch $SCHP_START -> $OUT/full"
"$PY" train.py "${COMMON[@]}" --epochs "$EPOCHS" --schp-start "$SCHP_START" --cycle-epochs "$CYCLE" \
  --log-dir "$OUT/full/train"

echo "== 2/4 evaluate the full recipe's SCHP teacher (cycle $CYCLES) on CCP val"
evaluate "$OUT/full/train/schp_${CYCLES}_checkpoint.pth.tar" "$OUT/full/eval"

echo "== 3/4 plain SegFormer: no edge/fusion heads, CE loss, no SCHP, $PLAIN_EPOCHS epochs -> $OUT/plain"
"$PY" train.py "${COMMON[@]}" --epochs "$PLAIN_EPOCHS" --heads plain --loss ce --no-schp \
  --log-dir "$OUT/plain/train"

echo "== 4/4 evaluate the plain model on CCP val"
evaluate "$OUT/plain/train/checkpoint.pth.tar" "$OUT/plain/eval"

echo "== CCP val, coarse classes (IoU %): full recipe vs plain SegFormer"
"$PY" recipes/compare.py full="$OUT/full/eval/results.json" plain="$OUT/plain/eval/results.json" \
  --out "$OUT/comparison.md"
