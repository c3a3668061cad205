#!/usr/bin/env bash
# The Table 2 question with more local work per client: 20 clients share
# 320 SST-2 train examples (16 each) and each runs 5 local epochs per round
# (5 steps), 16 rounds, rank 2 on query/value, head frozen; each method at
# the learning rate the grid of glue_head_to_head.py chose for it. One seed:
# a single 2-core machine's budget. Writes benchmarks/results/clients20_local5/.
#
#   bash benchmarks/clients20_local5.sh [GLUE_ROOT]
set -euo pipefail
cd "$(dirname "$0")/.."
glue=${1:-${GLUE_DATA_ROOT:-../shared/data/glue}}
out=benchmarks/results/clients20_local5
for spec in rolora:0.003 lora:0.003 ffa_lora:0.01; do
  method=${spec%%:*}; lr=${spec##*:}
  .venv/bin/python -m federatedscope_rolora run \
    --cfg yaml_configs/quickstart_sst2.yaml data.root "$glue" \
    outdir "$out/$method" federate.method "$method" \
    federate.client_num 20 federate.total_round_num 16 \
    rolora.train_samples 320 train.batch_or_epoch epoch \
    train.local_update_steps 5 train.optimizer.lr "$lr" eval.freq 4 \
    llm.adapter.args "[{r: 2, lora_alpha: 16, target_modules: [query, value]}]" \
    rolora.threads 1 2>&1 | tail -1
done
