#!/usr/bin/env bash
# The measurements behind docs/results/cpu_bench.md, on this machine's CPU:
#   1. every family and the baselines at 224, batch 1 and 32, deploy form, eager and ONNX Runtime;
#   2. the CIFAR forms at 32, same settings;
#   3. ParNet-S's training form against its deploy form (eager);
#   4. the equal-MAC operator study;
#   5. head-to-head ratios (benchmarks/head_to_head.py): training vs deploy form, SPGNet vs depthwise nets;
# then `lightnets report` over 1 and 2. Writes docs/results/cpu_bench/.
#
#   bash benchmarks/cpu_bench.sh                # everything (about 30 minutes on 2 cores)
#   THREADS=4 OUT=/tmp/bench bash benchmarks/cpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LIGHTNETS=${LIGHTNETS:-.venv/bin/lightnets}
OUT=${OUT:-docs/results/cpu_bench}
THREADS=${THREADS:-$(nproc)}
IMAGENET=spgnet_s2p6,spgnet_s2p9,shufflenet_v1_g3_x1_0,shufflenet_v1_g8_x1_0,parnet_s,asymmnet_large_x1_0,asymmnet_small_x1_0,tv:mobilenet_v2,tv:mobilenet_v3_large,timm:ghostnet_100,tv:shufflenet_v2_x1_0,tv:resnet18
CIFAR=spgnet_s2p6_cifar,shufflenet_v1_g3_x1_0_cifar,parnet_s_cifar,asymmnet_large_x1_0_cifar,asymmnet_small_x1_0_cifar
mkdir -p "$OUT"
common=(--threads "$THREADS" --batch-sizes 1,32 --min-run-time 1.0)

"$LIGHTNETS" bench --models "$IMAGENET" --input-size 224 --backends eager,onnxruntime "${common[@]}" --out "$OUT/imagenet224.json"
"$LIGHTNETS" bench --models "$CIFAR" --input-size 32 --backends eager,onnxruntime "${common[@]}" --out "$OUT/cifar32.json"
"$LIGHTNETS" bench --models parnet_s --input-size 224 --backends eager --no-deploy "${common[@]}" --out "$OUT/parnet_s_training_form.json"
"$LIGHTNETS" bench --ops --threads "$THREADS" --out "$OUT/ops.json"
"$LIGHTNETS" report "$OUT/imagenet224.json" "$OUT/cifar32.json" --out "$OUT"
# Head-to-head ratios, the contenders taking turns in one process (robust to a noisy machine).
.venv/bin/python benchmarks/head_to_head.py --study deploy --threads "$THREADS" --json "$OUT/deploy_vs_training.json"
.venv/bin/python benchmarks/head_to_head.py --study spgnet --threads "$THREADS" --json "$OUT/spgnet_vs_depthwise.json"
