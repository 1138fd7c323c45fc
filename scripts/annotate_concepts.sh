#!/usr/bin/env bash
# Step 1 of the C2LIP recipe: add spaCy noun-phrase concepts to webdataset shards (or CSV/TSV/parquet
# tables), so training does not extract them on the fly.
#
#   SHARDS='/data/cc3m/{00000..00331}.tar' OUTPUT_DIR=/data/cc3m_c2lip PROCESSES=8 \
#       bash scripts/annotate_concepts.sh [extra flags of python -m open_clip_c2lip.concepts]
#
# Each output keeps its input's file name under OUTPUT_DIR; each sample's json member gains a
# "concepts" list. Re-running skips finished outputs (resume). Then train on the annotated copy:
#
#   TRAIN_DATA='/data/cc3m_c2lip/{00000..00331}.tar' LOGS_DIR=/results/c2lip \
#       bash scripts/train_c2lip_torchrun.sh
#
# Environment (required): SHARDS (brace pattern or single file), OUTPUT_DIR.
# Environment (optional): PROCESSES [1]  SPACY_MODEL [en_core_web_sm]  PYTHON [python]
#   CLEAN [canonicalize]: the text cleaning of the tokenizer you train with (the recipe's SigLIP
#   models: canonicalize; CLIP BPE models: lower; other HF tokenizers: whitespace).
#   DRY_RUN=1: print the command instead of running it.
set -euo pipefail

: "${SHARDS:?set SHARDS to the input shards, e.g. '/data/cc3m/{00000..00331}.tar'}"
: "${OUTPUT_DIR:?set OUTPUT_DIR to the directory for the annotated copies}"

PROCESSES="${PROCESSES:-1}"
SPACY_MODEL="${SPACY_MODEL:-en_core_web_sm}"
CLEAN="${CLEAN:-canonicalize}"
PYTHON="${PYTHON:-python}"

cmd=("$PYTHON" -m open_clip_c2lip.concepts "$SHARDS" --output-dir "$OUTPUT_DIR"
     --processes "$PROCESSES" --spacy-model "$SPACY_MODEL" --clean "$CLEAN" "$@")

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi

"${cmd[@]}"
