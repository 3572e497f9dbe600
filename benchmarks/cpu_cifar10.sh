#!/usr/bin/env bash
# One model per family on the full CIFAR-10 (the JPEG-decoded copy in ../shared/data), with the default
# recipe, on this machine's CPU. Writes runs/cpu-cifar10/<run> and then docs/results/cpu_cifar10.{md,json}.
#
#   bash benchmarks/cpu_cifar10.sh            # every run below, then the summary
#   bash benchmarks/cpu_cifar10.sh spgnet     # only the runs whose name contains "spgnet", then the summary
#
# Epochs are few because a 2-core CPU is slow at grouped and depthwise convolutions (about 150-300 training
# images/s for these models). ParNet's smallest registered model, ParNet-S (1.7 GMACs at 32x32), trains at
# about 12 images/s here, over an hour per epoch, so the ParNet run is ParNet-S at reduced width (the
# widths= model argument, recorded in the run's args.yaml and in the results table).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-cifar10:../shared/data/cifar-10-jpeg-python.tar.gz}
OUT=${OUT:-runs/cpu-cifar10}
LIGHTNETS=${LIGHTNETS:-.venv/bin/lightnets}
RUNS=(
  # name | epochs | model | extra arguments
  "asymmnet_small_x1_0_cifar|4|asymmnet_small_x1_0_cifar|"
  "shufflenet_v1_g3_x0_5_cifar|2|shufflenet_v1_g3_x0_5_cifar|"
  "spgnet_s2p6_cifar|3|spgnet_s2p6_cifar|"
  "parnet_s_w32_cifar|3|parnet_s_cifar|--model-arg widths=[32,64,128,512]"
)
mkdir -p "$OUT"
for entry in "${RUNS[@]}"; do
  IFS='|' read -r name epochs model extra <<< "$entry"
  if [ $# -gt 0 ] && [[ "$name" != *"$1"* ]]; then continue; fi
  rm -rf "${OUT:?}/$name"
  start=$(date +%s)
  # shellcheck disable=SC2086  # $extra is a list of arguments
  "$LIGHTNETS" train --model "$model" --data "$DATA" --epochs "$epochs" --out "$OUT/$name" --quiet $extra
  echo $(( $(date +%s) - start )) > "$OUT/$name/wall_seconds"
done
.venv/bin/python benchmarks/summarize_runs.py "$OUT"/* --title "CPU training on the full CIFAR-10" \
  --command "bash benchmarks/cpu_cifar10.sh" --out docs/results/cpu_cifar10
