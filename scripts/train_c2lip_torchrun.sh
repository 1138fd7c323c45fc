#!/usr/bin/env bash
# C2LIP fine-tuning of ViT-B-16-SigLIP (webli) with the authors' recipe, single node, torchrun.
#
#   TRAIN_DATA='/data/cc3m_c2lip/{00000..00331}.tar' LOGS_DIR=/results/c2lip \
#       bash scripts/train_c2lip_torchrun.sh [extra open_clip_train flags, e.g. --resume latest --name run1]
#
# Shards must carry concepts (json field "concepts", see scripts/annotate_concepts.sh); missing ones are
# extracted on the fly with spaCy, which is slow.
#
# Environment (required): TRAIN_DATA (webdataset shard spec), LOGS_DIR (output root).
# Environment (optional, recipe defaults in brackets):
#   NPROC_PER_NODE [8]  BATCH_SIZE [96] (per process: 8 x 96 = 768 global)  WORKERS [4]
#   EPOCHS [5]  TRAIN_NUM_SAMPLES [2823019]  MODEL [ViT-B-16-SigLIP-C2]  PRETRAINED [webli]
#   PRECISION [amp_bf16]: amp_bf16 = fp32 master weights + bf16 autocast (improved default);
#       pure_bf16 = the authors' `--precision bf16` (model, grads and AdamW state all bf16: at lr 1e-5
#       most weight updates round away, see docs/method.md §9). Any other upstream value passes through.
#   TORCHRUN [torchrun]  TORCHRUN_ARGS [--standalone]
#   DRY_RUN=1: print the command instead of running it.
#
# Logit-scale clamp: open_clip_train clamps logit_scale to [0, ln 100] after every optimizer step.
# Pretrained SigLIP temperatures exceed 100 (SO400M: exp(4.72) ~ 112), so the first step silently
# lowers the temperature to 100. The authors trained with the same clamp, so this recipe keeps it.
#
# `-- --logs DIR`: torchrun's parser reads `--logs` as an ambiguous abbreviation of its own
# `--logs-specs` (pytorch#120601; `--logs=DIR` fails the same way). A `--` right after the module
# name ends torchrun's options and is not passed on.
set -euo pipefail

die() { echo "train_c2lip_torchrun.sh: $*" >&2; exit 2; }

: "${TRAIN_DATA:?set TRAIN_DATA to the webdataset shard spec, e.g. '/data/cc3m/{00000..00331}.tar'}"
: "${LOGS_DIR:?set LOGS_DIR to the directory for logs and checkpoints}"

NPROC_PER_NODE="${NPROC_PER_NODE:-8}"
BATCH_SIZE="${BATCH_SIZE:-96}"
WORKERS="${WORKERS:-4}"
EPOCHS="${EPOCHS:-5}"
TRAIN_NUM_SAMPLES="${TRAIN_NUM_SAMPLES:-2823019}"
MODEL="${MODEL:-ViT-B-16-SigLIP-C2}"
PRETRAINED="${PRETRAINED:-webli}"
PRECISION="${PRECISION:-amp_bf16}"
TORCHRUN="${TORCHRUN:-torchrun}"
TORCHRUN_ARGS="${TORCHRUN_ARGS:---standalone}"

case "$PRECISION" in
    pure_bf16) PRECISION_FLAG=bf16 ;;
    "") die "PRECISION is empty (use amp_bf16 or pure_bf16)" ;;
    *) PRECISION_FLAG="$PRECISION" ;;
esac

train_args=(
    --logs "$LOGS_DIR"
    --model "$MODEL" --pretrained "$PRETRAINED"
    --c2lip-loss --c2lip-npc-weight 1.0 --c2lip-xac-weight 0.01
    --train-data "$TRAIN_DATA" --dataset-type webdataset
    --train-num-samples "$TRAIN_NUM_SAMPLES" --dataset-resampled
    --batch-size "$BATCH_SIZE" --workers "$WORKERS" --epochs "$EPOCHS"
    --lr 1e-5 --wd 0.1 --beta1 0.9 --beta2 0.98 --eps 1e-6 --warmup 50
    --precision "$PRECISION_FLAG"
    --seed 42 --save-frequency 1 --report-to tensorboard
    "$@"
)

# shellcheck disable=SC2206  # TORCHRUN_ARGS is a user-supplied word list
cmd=("$TORCHRUN" $TORCHRUN_ARGS --nproc_per_node "$NPROC_PER_NODE" -m open_clip_c2lip.train -- "${train_args[@]}")

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p "$LOGS_DIR"
exec "${cmd[@]}"
