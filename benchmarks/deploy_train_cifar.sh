#!/usr/bin/env bash
# The brief CIFAR-10 checkpoints behind the INT8 accuracy column of docs/results/deploy.md: one per family's
# CIFAR form, trained on the CIFAR-10 subset (5,085 exact-pixel training images) with the default recipe at
# batch 64. They only need to be trained far enough for quantisation error to show in top-1; the epochs are
# recorded in each run's args.yaml and stated on the page.
#
#   bash benchmarks/deploy_train_cifar.sh [OUT]      # default OUT: runs/deploy-cifar
#   DEVICE=cuda LIGHTNETS="python -m lightnets" bash benchmarks/deploy_train_cifar.sh OUT   # on a GPU
#
# ParNet-S runs at reduced widths, as benchmarks/cpu_cifar10.sh does: at its registered width it trains at
# about 12 images/s on this project's 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-cifar10:../shared/data/cifar-10-subset-python.tar.gz}
OUT=${1:-runs/deploy-cifar}
LIGHTNETS=${LIGHTNETS:-.venv/bin/lightnets}
EPOCHS=${EPOCHS:-5}
DEVICE=${DEVICE:-cpu}
RUNS=(
  # run name | model | extra arguments
  "shufflenet_v1_g3_x1_0_cifar|shufflenet_v1_g3_x1_0_cifar|"
  "asymmnet_large_x1_0_cifar|asymmnet_large_x1_0_cifar|"
  "spgnet_s2p6_cifar|spgnet_s2p6_cifar|"
  "parnet_s_w32_cifar|parnet_s_cifar|--model-arg widths=[32,64,128,512]"
)
mkdir -p "$OUT"
for entry in "${RUNS[@]}"; do
  IFS='|' read -r name model extra <<< "$entry"
  if [ -f "$OUT/$name/best.pt" ]; then echo "$OUT/$name exists; skipped"; continue; fi
  rm -rf "${OUT:?}/$name"
  # shellcheck disable=SC2086  # $LIGHTNETS may be a command with arguments, $extra a list of arguments
  $LIGHTNETS train --model "$model" --data "$DATA" --epochs "$EPOCHS" --batch-size 64 --out "$OUT/$name" \
    --quiet --device "$DEVICE" $extra
done
