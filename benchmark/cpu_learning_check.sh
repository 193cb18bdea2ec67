#!/usr/bin/env bash
# Short CPU learning checks: default hyperparameters, only the budget flags changed
# (total steps, learning starts, eval frequency). Logs land in benchmark/logs/, tensorboard
# events in runs/. Usage: bash benchmark/cpu_learning_check.sh [pendulum|inverted|inverted12k] [seeds...]
# Extra flags for the script go in FLAGS, e.g. FLAGS=--compile bash benchmark/cpu_learning_check.sh pendulum 1 2
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmark/logs
which=${1:-pendulum}; shift || true
seeds=${*:-1 2}
flags=${FLAGS:-}
tag=$(echo "$flags" | tr -d ' -')
case $which in
  pendulum) env=Pendulum-v1;         budget="--total-timesteps 5000 --learning-starts 1000 --eval-frequency 1000" ;;
  inverted) env=InvertedPendulum-v5; budget="--total-timesteps 6000 --learning-starts 1000 --eval-frequency 1000" ;;
  inverted12k) env=InvertedPendulum-v5; budget="--total-timesteps 12000 --learning-starts 1000 --eval-frequency 1000" ;;
  *) echo "usage: $0 [pendulum|inverted|inverted12k] [seeds...]" >&2; exit 2 ;;
esac
for seed in $seeds; do
  # one thread per run so that two runs share the 2-core machine evenly
  OMP_NUM_THREADS=1 python fmer_continuous.py --env-id $env --seed $seed $budget $flags \
    > benchmark/logs/${which}${tag:+_$tag}__seed${seed}.log 2>&1 &
done
wait
grep -H "eval return" benchmark/logs/${which}${tag:+_$tag}__seed*.log
