#!/usr/bin/env bash
# Reproduces the embedded default model (assets/default) from scratch on CPU with the project's own
# train/ commands: VQGAN tokenizer -> token cache -> class-conditional MAGE -> gallery + metrics.
# Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package (MIT licence).
#
#   bash scripts/train_default.sh                 # the real run (~1.5 h on 2 CPU cores)
#   TOK_STEPS=3 MAGE_STEPS=3 LIMIT=256 OUT=/tmp/smoke bash scripts/train_default.sh   # CI smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/default}
TOK_STEPS=${TOK_STEPS:-900}
MAGE_STEPS=${MAGE_STEPS:-2600}
THREADS=${THREADS:-1}
LIMIT=${LIMIT:-}
LIM=(); [ -n "$LIMIT" ] && LIM=(--limit "$LIMIT")
TLIM=(); [ -n "$LIMIT" ] && TLIM=(--train-limit "$LIMIT")

# 1. tokenizer: 32x32 -> 8x8 tokens, 512 codes
$PY -m train.tokenizer --dataset fashion-mnist --img-size 32 --ch 32 --ch-mult 1,2,2 --num-res-blocks 1 \
  --z-channels 32 --n-embed 512 --batch-size 64 --steps "$TOK_STEPS" --warmup-steps 50 --eval-every 300 \
  --save-every 150 --threads "$THREADS" "${TLIM[@]}" --out "$OUT/tokenizer"
# 2. token cache: the plain image + one augmented view per training image
$PY -m train.cache --tokenizer "$OUT/tokenizer" --dataset fashion-mnist --views 2 "${LIM[@]}" \
  --threads "$THREADS" --out "$OUT/tokens.safetensors"
# 3. MAGE: 4+2 blocks x 128, class-conditional through the class slot (10% "no class" for guidance)
$PY -m train.pretrain --tokenizer "$OUT/tokenizer" --token-cache "$OUT/tokens.safetensors" --dataset fashion-mnist \
  --class-cond --num-class-slots 100 --embed-dim 128 --depth 4 --num-heads 4 --decoder-embed-dim 128 \
  --decoder-depth 2 --decoder-num-heads 4 --dropout 0.0 --batch-size 128 --steps "$MAGE_STEPS" --lr 1e-3 \
  --warmup-steps 100 --save-every 200 --threads "$THREADS" --out "$OUT/mage"
