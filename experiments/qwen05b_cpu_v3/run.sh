#!/usr/bin/env bash
# The third edition's runs, in the issue's priority order; every stage resumes, so re-running this
# script after an interruption continues where it stopped (finished stages are reused).
#   bash experiments/qwen05b_cpu_v3/run.sh /work/qwen05b [FROM_STEP]
set -euo pipefail
MODEL=${1:?usage: run.sh MODEL_DIR [FROM_STEP]}
FROM=${2:-1}
X=(+exp=qwen05b_cpu_v3 "model.path=$MODEL")
L14=(run=l14 harvest.hook=blocks.14.hook_resid_pre harvest.reasoning_fraction=0)
steps=(
  "finetune"                                        # 1  70 trained rows, 30 held out
  "scan"                                            # 2  run 1: where along the depth, on held-out rows
  "harvest"                                         # 3  layer 10, 15% reasoning contexts (trained rows)
  "train"                                           # 4  plain L1 crosscoder, seed 0
  "train run=shared train.shared_latents=0.05"      # 5  designated shared latents
  "harvest +null=base_vs_base"                      # 6  the exact null (no model runs)
  "train +null=base_vs_base"                        # 7
  "train -m seed=1,2"                               # 8  seed siblings of the reasoning pair
  "train -m +null=base_vs_base seed=1,2"            # 9  and of the null
  "analyze"                                         # 10 held-out text, calibrated table
  "bench"                                           # 11 gsm8k n = 100, limits 128/256/512
  "intervene"                                       # 12 causal tests of the layer-10 latents
  "analyze run=shared"                              # 13
  "harvest ${L14[*]}"                               # 14 run 1: layer 14, general text (v2's setting)
  "train ${L14[*]}"                                 # 15
  "analyze ${L14[*]}"                               # 16
)
for i in "${!steps[@]}"; do
  n=$((i + 1)); [ "$n" -lt "$FROM" ] && continue
  read -r stage args <<<"${steps[$i]}"
  echo "=== step $n: $stage $args  start $(date -u +%FT%TZ)"
  # shellcheck disable=SC2086
  python -m reasondiff.$stage "${X[@]}" $args
  echo "=== step $n: $stage $args  end   $(date -u +%FT%TZ)"
done
