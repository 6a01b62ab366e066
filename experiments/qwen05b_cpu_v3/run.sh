#!/usr/bin/env bash
# The third edition's runs, in the issue's priority order; every stage resumes, so re-running this
# script after an interruption continues where it stopped (finished stages are reused).
#   bash experiments/qwen05b_cpu_v3/run.sh /work/qwen05b [FROM_STEP]
set -euo pipefail
MODEL=${1:?usage: run.sh MODEL_DIR [FROM_STEP]}
FROM=${2:-1}
X=(+exp=qwen05b_cpu_v3 "model.path=$MODEL")
L14=(run=l14 harvest.hook=blocks.14.hook_resid_pre harvest.reasoning_fraction=0)
OUT=outputs/qwen05b_cpu_v3
CONTROL="nulls.control_dataset=$OUT/data/control.jsonl"
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
  "intervene"                                       # 11 causal tests of the layer-10 latents; its budget
                                                    #    sweep holds base and tuned at n = 100, limits 128/256
  "analyze run=shared"                              # 12
  "harvest ${L14[*]}"                               # 13 run 1: layer 14, general text (v2's setting)
  "train ${L14[*]}"                                 # 14
  "analyze ${L14[*]}"                               # 15
  "control_data"                                    # 16 control rows from wiki documents no stage reads
  "finetune +null=control $CONTROL"                 # 17 the control fine-tune: same recipe, no reasoning
  "harvest +null=control $CONTROL"                  # 18 only the control model runs
  "train +null=control $CONTROL"                    # 19
  "train -m +null=control seed=1,2 $CONTROL"        # 20
  "analyze analyze.nulls=[base_vs_base,control] $CONTROL overwrite=true"   # 21 the calibrated table with
                                                    #    both nulls (a changed analyze.nulls re-runs analyze)
  "bench"                                           # 22 Table 1 at 512 tokens (gsm8k n = 100, limits 128/256/512)
)
for i in "${!steps[@]}"; do
  n=$((i + 1)); [ "$n" -lt "$FROM" ] && continue
  read -r stage args <<<"${steps[$i]}"
  echo "=== step $n: $stage $args  start $(date -u +%FT%TZ)"
  if [ "$stage" = control_data ]; then
    # 100 rows (as many as the reasoning fine-tune's dataset) from Wikipedia documents 100-218 of the
    # slice: harvest reads documents 0-68 and analyze's held-out general text the ones after, so no
    # stage's general text is text the control model trained on
    mkdir -p "$OUT/data"
    tail -n +101 "${REASONDIFF_DATA:-../shared/data}/wiki_text_sample.jsonl" > "$OUT/data/wiki_documents_100_on.jsonl"
    # --chars 500: 91 of the 100 rows fit finetune.max_length=512 (median 370 tokens; a control row has no
    # thinking for keep_answer to cut; the default 1500 characters makes ~760-token rows, none of which fit)
    python -m reasondiff.finetune.control_data "$OUT/data/wiki_documents_100_on.jsonl" "$OUT/data/control.jsonl" --rows 100 --chars 500
    continue
  fi
  multirun=()
  if [[ $args == "-m "* ]]; then multirun=(-m); args=${args#-m }; fi
  # shellcheck disable=SC2086
  python -m reasondiff.$stage "${multirun[@]}" "${X[@]}" $args
  echo "=== step $n: $stage $args  end   $(date -u +%FT%TZ)"
done
