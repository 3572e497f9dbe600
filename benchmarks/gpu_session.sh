#!/usr/bin/env bash
# One lent GPU session (15 minutes of device time, start-up included), prepared here and run there as one command:
#   smoke: every CUDA path we ship runs at all (2 x 30 training steps per family, all at once, which also sizes the
#          epochs of the full run; bench eager/compile on one model), about a minute;
#   full:  the GPU bench (one model per family, 224, batch 1 and 256, eager bf16 channels_last, ~30 s), then every
#          family on full CIFAR-10 at once (benchmarks/convergence_gpu.py) until the deadline. Run it on the machine
#          the smoke call left warm: a fresh start costs about 5 of the 15 minutes (start-up and transfers).
# Data: the machine cannot download and takes at most 64 MiB along, so CIFAR-10 travels as JPEG mosaics made here:
#   python benchmarks/cifar_mosaic.py pack ../shared/data/cifar-10-jpeg-python.tar.gz .gpu/cifar10-mosaic.npz
# and the call names .gpu in carry. Results land in $OUT (at most 8 files come back): copy them to docs/results/.
#   usage: bash benchmarks/gpu_session.sh smoke|full [EPOCHS] [MINUTES]
set -u
mode=${1:?smoke or full}
epochs=${2:-}
minutes=${3:-6}
out=${OUT:-/tmp/gpu_out}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
started=$(date +%s)
stamp() { echo "[$(($(date +%s) - started)) s] $*"; }

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name())"
    python -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())" || true
    nproc
} >"$out/env.txt" 2>&1
stamp "env"; cat "$out/env.txt"

python benchmarks/cifar_mosaic.py unpack .gpu/cifar10-mosaic.npz /tmp/data || exit 1
stamp "data unpacked"

pack_runs() {  # logs, settings and per-step/epoch CSVs and plots of every run; checkpoints stay behind
    tar czf "$out/$1" -C "$2" --exclude='*.pt' . 2>/dev/null
    stamp "packed $1 ($(du -h "$out/$1" | cut -f1))"
}

if [ "$mode" = smoke ]; then
    timeout 240 python benchmarks/convergence_gpu.py --data /tmp/data --probe --minutes "$minutes" \
        --runs-dir /tmp/probe >"$out/probe.txt" 2>&1
    stamp "probe exit $?"; tail -3 "$out/probe.txt"
    pack_runs probe_runs.tgz /tmp/probe
    timeout 120 python -m lightnets bench --models shufflenet_v1_g3_x1_0 --batch-sizes 1,64 --device cuda \
        --backends eager,compile --dtype bfloat16 --channels-last --min-run-time 0.5 --out "$out/bench_smoke.json" \
        >"$out/bench_smoke.txt" 2>&1
    stamp "bench smoke exit $?"; cat "$out/bench_smoke.txt" | tail -20
    exit 0
fi

# The bench first, on a quiet GPU; then the training runs, all at once, until the deadline.
timeout 45 python -m lightnets bench --models spgnet_s2p6,shufflenet_v1_g3_x1_0,parnet_s,asymmnet_large_x1_0 \
    --batch-sizes 1,256 --device cuda --backends eager --dtype bfloat16 --channels-last --min-run-time 0.3 \
    --out "$out/bench_gpu_bf16.json" >"$out/bench_gpu.txt" 2>&1
stamp "bench exit $?"; tail -12 "$out/bench_gpu.txt"
python benchmarks/convergence_gpu.py --data /tmp/data --epochs "$epochs" --minutes "$minutes" \
    --runs-dir /tmp/runs --out "$out/convergence_gpu" >"$out/convergence.txt" 2>&1
stamp "convergence exit $?"; cat "$out/convergence_gpu.md" 2>/dev/null || tail -20 "$out/convergence.txt"
pack_runs runs.tgz /tmp/runs
