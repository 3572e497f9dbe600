"""Deployment paths without timing: static reshapes in the ONNX export, calibrated INT8 export of every family to
ONNX Runtime and OpenVINO, exported files through ``eval``/``predict``, and ``bench``'s precisions (what cannot
run is reported as skipped, what runs says the precision that ran)."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import lightnets
from lightnets.cli import main
from lightnets.evaluation import load_inference_model
from lightnets.measure.best import best_paths, int8_slower
from lightnets.measure.latency import BenchSettings, bench_models
from lightnets.prediction import predict_images
from lightnets.train.rundir import save_checkpoint
from tests.conftest import randomize_batchnorm

pytest.importorskip("openvino")
pytest.importorskip("nncf")
onnx = pytest.importorskip("onnx")

# The smallest CIFAR form of each family (ParNet at reduced widths); the export path is the same at any size.
FAMILIES = {
    "shufflenet_v1_g3_x0_25_cifar": {},
    "spgnet_s2p6_cifar": {},
    "parnet_s_cifar": {"widths": [16, 32, 64, 128]},
    "asymmnet_small_x0_35_cifar": {},
}
CLASSES = ["ant", "bee"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A class-folder dataset of random 40x40 images: 5 per class for training, 2 per class for val."""
    root = tmp_path_factory.mktemp("tiny")
    generator = np.random.default_rng(0)
    for split, count in (("train", 5), ("val", 2)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = generator.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def make_checkpoint(path, name, kwargs):
    """A lightnets checkpoint of ``name`` with non-trivial BN statistics, as ``train`` writes it for 2 classes."""
    model = lightnets.create_model(name, num_classes=len(CLASSES), **kwargs).eval()
    randomize_batchnorm(model)
    state = {
        "model_name": name,
        "model_kwargs": {"num_classes": len(CLASSES), **kwargs},
        "classes": CLASSES,
        "model": model.state_dict(),
        "input_size": 32,
        "eval_resize": 36,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
    }
    save_checkpoint(state, path)
    return path


def test_onnx_export_has_constant_reshape_targets_for_quantisation(tmp_path):
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from lightnets.deploy.onnx import export_onnx

    model = lightnets.reparameterize_model(lightnets.create_model("shufflenet_v1_g3_x0_25_cifar").eval())
    result = export_onnx(model, tmp_path / "m.onnx", 32)
    assert result["static_reshapes"] > 0 and result["max_rel_diff"][4] < 1e-4  # still checked at batch 1 and 4
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert "Shape" not in {node.op_type for node in graph.node}
    # The batch stays dynamic: a -1 in every folded target.
    targets = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    assert all(-1 in targets[n.input[1]] for n in graph.node if n.op_type == "Reshape")
    # What failed with `assert is_literal(shape_rank)` before the targets were constant.
    quant_pre_process(str(tmp_path / "m.onnx"), str(tmp_path / "pre.onnx"))


@pytest.mark.slow  # INT8 calibration of every family
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
@pytest.mark.parametrize("name", FAMILIES)
def test_int8_export_of_every_family_runs_through_eval(name, fmt, tiny_folder, tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "best.pt", name, FAMILIES[name])
    out = tmp_path / ("model.onnx" if fmt == "onnx" else "model.xml")
    data = f"folder:{tiny_folder}"
    args = ["export", "--checkpoint", str(checkpoint), "--format", fmt, "--precision", "int8"]
    assert main([*args, "--calibration-data", data, "--calibration-images", "6", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "6 calibration images" in printed
    if fmt == "onnx":
        graph = onnx.load(str(out)).graph
        weights = {init.name: init for init in graph.initializer}
        dequantize = {node.output[0]: node for node in graph.node if node.op_type == "DequantizeLinear"}
        conv_weights = [dequantize.get(node.input[1]) for node in graph.node if node.op_type == "Conv"]
        assert conv_weights and all(conv_weights)  # every convolution takes int8 weights
        # Per output channel: one scale per filter, not one per tensor.
        scales = [onnx.numpy_helper.to_array(weights[node.input[1]]) for node in conv_weights]
        assert all(scale.size > 1 for scale in scales)
        meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["lightnets"])
    else:
        assert out.with_suffix(".bin").is_file()
        meta = json.loads((tmp_path / "model.xml.json").read_text())
        assert "ran as int8" in printed
    assert meta["precision"] == "int8" and meta["classes"] == CLASSES and meta["input_size"] == 32
    assert meta["eval_resize"] == 36 and meta["calibration"]["images"] == 6

    assert main(["eval", "--checkpoint", str(out), "--data", data, "--workers", "0", "--out", str(tmp_path / "e")]) == 0
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert report["images"] == 4 and report["model"] == name
    # Next to the fp32 checkpoint it was exported from, on the same images.
    assert report["reference"]["checkpoint"] == str(checkpoint.resolve())
    assert report["reference"]["top1_change"] == pytest.approx(report["top1"] - report["reference"]["top1"])
    assert "pt" in capsys.readouterr().out


def test_exported_files_predict_with_their_stored_preprocessing(tiny_folder, tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "best.pt", "shufflenet_v1_g3_x0_25_cifar", {})
    image = next((tiny_folder / "val" / "bee").iterdir())
    expected = predict_images(load_inference_model(checkpoint), [image], topk=2)[0]["top"]
    for fmt, out in (("onnx", tmp_path / "m.onnx"), ("openvino", tmp_path / "m.xml")):
        assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]) == 0
        capsys.readouterr()
        assert main(["predict", "--checkpoint", str(out), str(image), "--topk", "2", "--json"]) == 0
        top = json.loads(capsys.readouterr().out)[0]["top"]
        # fp32 in another runtime: the same classes, probabilities to float rounding.
        assert [t["class"] for t in top] == [t["class"] for t in expected]
        assert [t["probability"] for t in top] == pytest.approx([t["probability"] for t in expected], abs=1e-4)


def int8_conv_weights(path):
    """The int8 values of every convolution's weights in a QDQ ONNX file."""
    graph = onnx.load(str(path)).graph
    weights = {init.name: init for init in graph.initializer}
    dequantize = {node.output[0]: node for node in graph.node if node.op_type == "DequantizeLinear"}
    nodes = [dequantize[node.input[1]] for node in graph.node if node.op_type == "Conv"]
    return [onnx.numpy_helper.to_array(weights[node.input[0]]) for node in nodes]


def test_int8_weights_use_7_bits_unless_8_are_asked_for(tiny_folder, tmp_path, capsys):
    # 8-bit weights times uint8 activations saturate the 16-bit pair sums of int8 kernels on CPUs without VNNI
    # (on AVX2 the shipped CIFAR-10 weights lost 8-10 points); 7-bit weights cannot: 255 * 64 * 2 < 2**15.
    checkpoint = make_checkpoint(tmp_path / "best.pt", "shufflenet_v1_g3_x0_25_cifar", {})
    base = ["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--precision", "int8"]
    base += ["--calibration-data", f"folder:{tiny_folder}", "--calibration-images", "4"]
    for bits in (None, 8):
        out = tmp_path / f"int8-{bits}.onnx"
        assert main([*base, "--out", str(out), *(["--int8-weight-bits", str(bits)] if bits else [])]) == 0
        assert f"({bits or 7}-bit)" in capsys.readouterr().out
        largest = max(int(np.abs(w.astype(np.int32)).max()) for w in int8_conv_weights(out))
        # Symmetric per-channel scales put each filter's largest weight at the end of the range.
        assert largest == (127 if bits == 8 else 64)
        meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["lightnets"])
        assert meta["int8_weight_bits"] == (bits or 7)


def test_int8_weight_bits_is_refused_without_int8(tmp_path, capsys):
    args = ["export", "--model", "shufflenet_v1_g3_x0_25_cifar", "--format", "onnx", "--out", str(tmp_path / "m.onnx")]
    assert main([*args, "--int8-weight-bits", "8"]) == 2
    err = capsys.readouterr().err
    assert "--int8-weight-bits are for --precision int8" in err and not (tmp_path / "m.onnx").exists()


def test_export_refuses_int8_without_calibration_data(tmp_path, capsys):
    args = ["export", "--model", "shufflenet_v1_g3_x0_25_cifar", "--format", "onnx", "--precision", "int8"]
    assert main([*args, "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--calibration-data SPEC" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_bench_reports_what_cannot_run_as_skipped_and_what_ran(tiny_folder, tmp_path):
    skipped = []
    settings = BenchSettings(
        models=["shufflenet_v1_g3_x0_25_cifar"],
        batch_sizes=[2],
        backends=["eager", "onnxruntime", "openvino"],
        precisions=["fp32", "int8", "fp16"],
        min_run_time=0.01,
        warmup=1,
        threads=1,
    )
    rows = bench_models(settings, log=lambda _: None, skipped=skipped)
    reasons = {(s["backend"], s["precision"]): s["reason"] for s in skipped}
    assert "no INT8 inference path" in reasons[("eager", "int8")]
    assert "GPU precision" in reasons[("eager", "fp16")] and "fp16" in reasons[("onnxruntime", "fp16")]
    ran = {(r["backend"], r["precision"]): r["ran"] for r in rows}
    assert ran[("eager", "fp32")] == "fp32" and ran[("openvino", "fp32")] == "fp32"
    assert ran[("onnxruntime", "int8")].startswith("int8 (QDQ") and ran[("openvino", "int8")].startswith("int8")
    assert not ({(r["backend"], r["precision"]) for r in rows} & set(reasons))  # nothing both skipped and timed
    (best,) = best_paths(rows)
    eager_ms = next(r for r in rows if r["backend"] == "eager")["latency_ms_median"]
    assert best["speedup_vs_eager_fp32"] == pytest.approx(eager_ms / best["latency_ms_median"])


def test_bench_with_checkpoint_and_data_measures_the_top1_change(tiny_folder, tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "best.pt", "asymmnet_small_x0_35_cifar", {})
    args = ["bench", "--checkpoint", str(checkpoint), "--data", f"folder:{tiny_folder}", "--batch-sizes", "1"]
    args += ["--backends", "eager,onnxruntime", "--precisions", "fp32,int8", "--min-run-time", "0.01"]
    args += ["--calibration-images", "4", "--threads", "1", "--best", "--out", str(tmp_path / "b.json")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert (
        "fastest path per model and batch size" in printed
        and "skipped: asymmnet_small_x0_35_cifar eager int8" in printed
    )
    rows = {(r["backend"], r["precision"]): r for r in json.loads((tmp_path / "b.json").read_text())}
    reference, int8 = rows[("eager", "fp32")], rows[("onnxruntime", "int8")]
    assert reference["top1_change"] == 0 and int8["top1_change"] == pytest.approx(int8["top1"] - reference["top1"])


def test_int8_slower_than_fp32_is_named():
    def row(backend, precision, ms):
        return {
            "model": "m",
            "batch_size": 1,
            "input_size": 32,
            "backend": backend,
            "precision": precision,
            "latency_ms_median": ms,
        }

    rows = [row("eager", "fp32", 9.0), row("onnxruntime", "fp32", 2.0), row("onnxruntime", "int8", 2.5)]
    assert int8_slower(rows) == [
        {"model": "m", "backend": "onnxruntime", "batch_size": 1, "int8_ms": 2.5, "fp32_ms": 2.0}
    ]
    (best,) = best_paths(rows)
    assert (best["backend"], best["precision"]) == ("onnxruntime", "fp32")
    assert best["speedup_vs_eager_fp32"] == pytest.approx(4.5)


def test_bench_settings_reject_unknown_precisions():
    with pytest.raises(ValueError, match="unknown precision"):
        BenchSettings(precisions=["int4"])
    assert BenchSettings(dtype="bfloat16").precisions == ["bf16"]


def test_torch_stays_float32_after_a_bf16_row():
    # Module.to works in place: a bf16 row must not leave the model the next rows use in bf16.
    from lightnets.measure.backends import make_precision_runner

    model = lightnets.create_model("shufflenet_v1_g3_x0_25_cifar").eval()
    runner = make_precision_runner("eager", model, "bf16", 32, 1, torch.device("cpu"), exports=None)
    assert runner.input_dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32


def test_fp16_onnx_for_the_cuda_provider_keeps_float32_inputs_and_outputs():
    # What ONNX Runtime's CUDA provider runs for fp16 rows: made here, run only on a GPU with onnxruntime-gpu.
    from lightnets.deploy.quantize import random_calibration
    from lightnets.measure.backends import Exports

    model = lightnets.reparameterize_model(lightnets.create_model("shufflenet_v1_g3_x0_25_cifar").eval())
    exports = Exports(model, 32, lambda: random_calibration(2, 32))
    try:
        graph = onnx.load(str(exports.onnx("fp16"))).graph
    finally:
        exports.cleanup()
    float_type, half_type = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert graph.input[0].type.tensor_type.elem_type == float_type
    assert graph.output[0].type.tensor_type.elem_type == float_type
    conv_weights = {node.input[1] for node in graph.node if node.op_type == "Conv"}
    assert conv_weights and {i.data_type for i in graph.initializer if i.name in conv_weights} == {half_type}


@pytest.mark.slow  # loads OpenVINO's and NNCF's CPU plugins in a child (~13 s)
def test_openvino_leaves_the_signal_stack_so_a_child_exit_does_not_kill_the_process(tmp_path):
    # The crash of earlier test runs, in one fresh process: a Python SIGCHLD handler (a DataLoader with workers sets
    # one), OpenVINO's CPU plugin loaded and released by an INT8 benchmark, then a child process that exits. Before
    # lightnets kept the thread's alternate signal stack around OpenVINO, the plugin left it pointing at memory it had
    # freed, and the SIGCHLD killed the process with SIGSEGV.
    script = textwrap.dedent("""
        import faulthandler, gc, signal, subprocess
        import lightnets
        faulthandler.enable()  # what pytest does: an alternate signal stack for its handlers
        signal.signal(signal.SIGCHLD, lambda *args: None)
        settings = lightnets.BenchSettings(models=["shufflenet_v1_g3_x0_25_cifar"], batch_sizes=[1],
                                           backends=["openvino"], precisions=["fp32", "int8"], min_run_time=0.01,
                                           warmup=1, threads=1)
        lightnets.bench(settings, log=lambda line: None)  # int8: NNCF loads the CPU plugin in a Core of its own
        gc.collect()  # that Core is gone: the plugin's memory is freed
        subprocess.run(["true"], check=True)
        print("alive")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.splitlines()[-1] == "alive"
