#!/usr/bin/env bash
# GPU check of open_clip_c2lip on one H100/H200 in <= 8 minutes (each part has a time limit).
#
#   bash scripts/gpu_check.sh [--tiny] [OUTPUT_DIR]      # default OUTPUT_DIR: benchmarks/gpu_check
#
# Writes OUTPUT_DIR/gpu_check.md: the machine, then two markdown tables made by the benchmark
# scripts themselves (raw outputs beside it):
#   1. scripts/bench_step.py: ViT-B-16-SigLIP-C2 (`--c2lip-loss`, concept modes `text` and `span`)
#      vs plain ViT-B-16-SigLIP + SigLipLoss, --precision amp_bf16, batch 96, synthetic token ids,
#      random init: step time (forward + loss + backward + AdamW), images/s, peak GPU memory;
#      variants in fresh processes, interleaved over rounds, ratios per round;
#   2. scripts/bench_loss.py --device cuda: the xac term, closed form vs per-concept loop vs
#      matmul bound (M=96 rows, T=196 tokens, D=768, N=288 and 2304 concepts).
# --tiny: the same two scripts on CPU at a toy size (C2LIP-Tiny, batch 4, a few steps): a smoke run
# of the whole check that the test suite runs; its numbers are not a benchmark.
# Exit status: non-zero if any part failed or ran out of time (the file then says which).
set -euo pipefail

TINY=0
if [[ "${1:-}" == "--tiny" ]]; then
    TINY=1
    shift
fi
OUTPUT_DIR=${1:-benchmarks/gpu_check}
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPORT="$OUTPUT_DIR/gpu_check.md"

if [[ $TINY == 1 ]]; then
    STEP_ARGS=(--model C2LIP-Tiny --device cpu --precision amp_bf16 --batch-size 4 --synthetic
               --warmup 1 --steps 2 --rounds 1 --threads 1)
    LOSS_ARGS=(--device cpu --rows 4 --tokens 16 --dim 32 --concepts 8 --rounds 1 --repeats 1
               --loop-concepts 8 --check 4 --threads 1)
    STEP_LIMIT=300
    LOSS_LIMIT=120
    MACHINE="CPU smoke run (--tiny), $(getconf _NPROCESSORS_ONLN) cores; not a benchmark"
else
    if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check.sh: no CUDA device visible to torch; run 'bash scripts/gpu_check.sh --tiny' for the CPU smoke mode" >&2
        exit 2
    fi
    STEP_ARGS=(--model ViT-B-16-SigLIP-C2 --base-model ViT-B-16-SigLIP --device cuda --precision amp_bf16
               --batch-size 96 --synthetic --warmup 5 --steps 20 --rounds 3)
    LOSS_ARGS=(--device cuda --rounds 2 --repeats 5)
    STEP_LIMIT=260   # 9 fresh processes (3 variants x 3 rounds); with LOSS_LIMIT <= 7.2 min in all
    LOSS_LIMIT=170
    MACHINE=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo "unknown GPU")
fi

mkdir -p "$OUTPUT_DIR"
FAILED=()
run_part() {  # name limit_s command...
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS status=0
    echo "== $name: $*" >&2
    timeout "$limit" "$@" > "$OUTPUT_DIR/$name.log" 2>&1 || status=$?
    echo "$name: exit $status after $((SECONDS - start)) s (limit $limit s)" >> "$OUTPUT_DIR/timing.txt"
    if [[ $status != 0 ]]; then
        FAILED+=("$name (exit $status$([[ $status == 124 ]] && echo ', time limit'))")
        tail -20 "$OUTPUT_DIR/$name.log" >&2
    fi
}

: > "$OUTPUT_DIR/timing.txt"
run_part step "$STEP_LIMIT" "$PYTHON" "$HERE/bench_step.py" "${STEP_ARGS[@]}" \
    --machine "$MACHINE" --output "$OUTPUT_DIR/step.md"
run_part loss "$LOSS_LIMIT" "$PYTHON" "$HERE/bench_loss.py" "${LOSS_ARGS[@]}" --output "$OUTPUT_DIR/loss.md"

{
    echo "# GPU check$([[ $TINY == 1 ]] && echo ' (--tiny CPU smoke run)')"
    echo
    echo "Machine: $MACHINE. $(date -u '+%Y-%m-%d %H:%M UTC'); torch $("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null)," \
         "open_clip $("$PYTHON" -c 'import open_clip; print(open_clip.__version__)' 2>/dev/null)," \
         "commit $(git -C "$HERE/.." rev-parse --short HEAD 2>/dev/null || echo unknown)."
    echo "Command: \`bash scripts/gpu_check.sh$([[ $TINY == 1 ]] && echo ' --tiny')\`; parts and seconds: $(paste -sd ';' "$OUTPUT_DIR/timing.txt")."
    echo
    echo "## Training step: C2LIP vs SigLIP"
    echo
    echo "\`python scripts/bench_step.py ${STEP_ARGS[*]}\`"
    echo
    if [[ -f "$OUTPUT_DIR/step.md" ]]; then cat "$OUTPUT_DIR/step.md"; else echo "**not measured** (see step.log)"; fi
    echo
    echo "## xac term"
    echo
    echo "\`python scripts/bench_loss.py ${LOSS_ARGS[*]}\`"
    echo
    if [[ -f "$OUTPUT_DIR/loss.md" ]]; then sed '1,2d' "$OUTPUT_DIR/loss.md"; else echo "**not measured** (see loss.log)"; fi
    if [[ ${#FAILED[@]} -gt 0 ]]; then
        echo
        echo "**Failed parts:** ${FAILED[*]}"
    fi
} > "$REPORT"
echo "wrote $REPORT" >&2
[[ ${#FAILED[@]} == 0 ]]
