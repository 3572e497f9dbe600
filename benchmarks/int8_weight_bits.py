"""INT8 with 8-bit or 7-bit weights: the top-1 each costs on this CPU, for the weights lightnets ships.

On CPUs without VNNI the int8 kernels of ONNX Runtime and OpenVINO add pairs of uint8 x int8 products in 16 bits
(``vpmaddubsw``), which saturates with 8-bit weights; 7-bit weights cannot saturate (255 x 64 x 2 < 2**15). For each
shipped weight this exports the deploy-form ONNX, calibrates once (300 training images, as ``lightnets export``
does) and evaluates the fp32 file and both INT8 weight widths in both runtimes on the test split.

    python benchmarks/int8_weight_bits.py --data cifar10:../shared/data/cifar-10-jpeg-python.tar.gz

Accuracy only: no timing, so other work may run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from lightnets.data import load_dataset
from lightnets.data.batches import Preprocess, batches
from lightnets.deploy.export import export_model, preprocessing_of
from lightnets.deploy.quantize import calibration_arrays, quantize_onnx, quantize_openvino
from lightnets.deploy.sessions import onnxruntime_session, openvino_compile
from lightnets.device import describe_cpu_features, device_name
from lightnets.models import create_model
from lightnets.models.pretrained import list_pretrained, pretrained_path


def top1(run, test: list[tuple[np.ndarray, np.ndarray]]) -> float:
    hits = sum(int((run(images).argmax(1) == labels).sum()) for images, labels in test)
    return round(100.0 * hits / sum(len(labels) for _, labels in test), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the dataset the weights were trained on (its test split)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"{device_name('cpu')} ({describe_cpu_features()}), {args.threads} threads")
    results = {}
    for name in list_pretrained():
        preprocessing = preprocessing_of(create_model(name, pretrained=True))
        size = preprocessing["input_size"]
        preprocess = Preprocess(preprocessing["mean"], preprocessing["std"], size, channels_last=False,
                                bgr=preprocessing["channel_order"] == "BGR")  # fmt: skip
        split = load_dataset(args.data, input_size=size).val
        test = [(preprocess(x).numpy(), y.numpy()) for x, y in batches(split, 250, torch.device("cpu"), train=False)]
        calibration = calibration_arrays(args.data, preprocessing, 300)
        with tempfile.TemporaryDirectory() as workdir:
            fp32 = Path(workdir) / "fp32.onnx"
            export_model(fp32, "onnx", checkpoint=pretrained_path(name), deploy=True)
            session = onnxruntime_session(fp32, args.threads)
            row = {"fp32": top1(lambda x, s=session: s.run(None, {s.get_inputs()[0].name: x})[0], test)}
            for bits in (8, 7):
                path = Path(workdir) / f"int8-{bits}.onnx"
                quantize_onnx(fp32, path, calibration, weight_bits=bits)
                session = onnxruntime_session(path, args.threads)
                row[f"onnxruntime int8, {bits}-bit weights"] = top1(
                    lambda x, s=session: s.run(None, {s.get_inputs()[0].name: x})[0], test
                )
                request = openvino_compile(quantize_openvino(fp32, calibration, weight_bits=bits), args.threads,
                                           "fp32").create_infer_request()  # fmt: skip
                row[f"openvino int8, {bits}-bit weights"] = top1(
                    lambda x, r=request: np.array(r.infer({0: x})[0]), test
                )
        results[name] = row
        print(name, json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cpu": describe_cpu_features(), "data": args.data, "results": results},
                                        indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
