"""What a user's notebook does, in one Python process: train on a class folder with DataLoader workers, export the
result in INT8 for OpenVINO and for ONNX Runtime and evaluate both, then launch a two-process torchrun job and
evaluate what it trained. Not a test; run it several times:

    for i in $(seq 10); do .venv/bin/python benchmarks/one_process.py || echo "run $i failed: $?"; done

It checks that the whole flow runs in one process; it is not a reproducer of issue 23's SIGSEGV: run once on the
code before that fix, it also finished. tests/test_deploy.py's signal-stack test is one (faulthandler on, a Python
SIGCHLD handler, an OpenVINO INT8 benchmark, then a child process that exits): it died with SIGSEGV on the code
before the fix and passes after it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightnets
from lightnets.train import TrainConfig, train

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODEL = "shufflenet_v1_g3_x0_25_cifar"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=SHARED / "hymenoptera", help="a class-folder dataset")
    parser.add_argument("--cifar", type=Path, default=SHARED / "cifar-10-subset-python.tar.gz")
    args = parser.parse_args()
    start = time.perf_counter()
    folder, cifar = f"folder:{args.folder}", f"cifar10:{args.cifar}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # 1. A class folder through DataLoader worker processes (which install a Python SIGCHLD handler).
        run = train(
            TrainConfig(
                model=MODEL, data=folder, input_size=32, epochs=1, batch_size=32, max_steps_per_epoch=3, workers=2,
                out=str(work / "folder"), quiet=True,
            )
        )  # fmt: skip
        # 2. INT8 for both runtimes (NNCF loads OpenVINO's CPU plugin in a Core of its own), each evaluated.
        for fmt, suffix in (("openvino", ".xml"), ("onnx", ".onnx")):
            exported = lightnets.export(
                work / f"int8{suffix}", fmt, checkpoint=run.run_dir / "best.pt", precision="int8",
                calibration_data=folder, calibration_images=32,
            )  # fmt: skip
            lightnets.evaluate(exported, folder, workers=2)
        # 3. A torchrun job as a child process; its exit is the SIGCHLD that used to kill this process.
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"]
        command += ["lightnets", "train", "--model", MODEL, "--data", cifar, "--epochs", "1", "--batch-size", "32"]
        command += ["--max-steps-per-epoch", "3", "--workers", "0", "--out", str(work / "ddp"), "--quiet"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        report = lightnets.evaluate(work / "ddp" / "last.pt", cifar, workers=0)
    print(f"one process did all three and lived: torchrun run's top-1 {report['top1']:.2f}% "
          f"({time.perf_counter() - start:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
