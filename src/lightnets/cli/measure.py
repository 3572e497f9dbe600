"""The measuring and deploying commands: ``bench``, ``report``, ``export`` and ``summary`` (wiring only; the work is
in :mod:`lightnets.measure` and :func:`lightnets.deploy.export_model`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lightnets.cli.args import add_foreign_weights_flags, int_list, model_kwargs_from, require

INT8_BITS_HELP = (
    "int8: bits of the weights, 7 (default: no saturation on any CPU) or 8 (only for files that run on CPUs with "
    "VNNI or AMX: without VNNI, 8-bit weights saturate the int8 kernels and cost accuracy)"
)

__all__ = ["add_bench_parser", "add_export_parser", "add_report_parser", "add_summary_parser"]


def cmd_bench(args: argparse.Namespace) -> int:
    from lightnets.measure.best import print_best_paths
    from lightnets.measure.latency import BenchSettings, bench_models, print_bench_rows, write_rows
    from lightnets.models.registry import expand_model_names

    args.models_given = args.models is not None
    args.models = args.models or "spgnet_s2p6"
    args.backends_given = args.backends is not None
    args.backends = args.backends or "eager,onnxruntime"
    if args.ops:
        from lightnets.measure.operators import operator_study
        from lightnets.measure.report import plot_operator_study

        rows = operator_study(device=args.device, threads=args.threads, batch_size=args.batch_sizes[0])
        if args.out:
            json_path, csv_path = write_rows(rows, args.out)
            plot_operator_study(rows, Path(args.out).with_suffix(".png"))
            print(f"wrote {json_path}, {csv_path} and {Path(args.out).with_suffix('.png')}")
        return 0
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()] if args.precisions else None
    if args.pareto:
        from lightnets.measure.pareto import pareto, write_pareto

        backends = [b.strip() for b in args.backends.split(",") if b.strip()] if args.backends_given else None
        models = expand_model_names(args.models) if args.models_given else None
        result = pareto(models, backends, precisions, args.threads, args.min_run_time)
        print(result.format(markdown=args.markdown))
        if args.out:
            print(f"wrote {', '.join(str(path) for path in write_pareto(result, args.out))}")
        return 0
    if args.checkpoint and args.models_given:
        raise ValueError("--checkpoint benches the model it holds; drop --models")
    if args.data and not args.checkpoint and "int8" not in (precisions or []):
        raise ValueError("--data without --checkpoint only calibrates INT8; add int8 to --precisions")
    settings = BenchSettings(
        models=expand_model_names(args.models) if not args.checkpoint else [],
        input_size=args.input_size,
        batch_sizes=args.batch_sizes,
        device=args.device,
        threads=args.threads or BenchSettings().threads,
        backends=[b.strip() for b in args.backends.split(",") if b.strip()],
        deploy=args.deploy,
        channels_last=args.channels_last,
        dtype=args.dtype,
        min_run_time=args.min_run_time,
        precisions=precisions,
        checkpoint=args.checkpoint,
        data=args.data,
        data_root=args.data_root,
        calibration_images=args.calibration_images,
        int8_weight_bits=args.int8_weight_bits,
    )
    skipped: list[dict[str, str]] = []
    rows = bench_models(settings, skipped=skipped)
    if not args.best:
        print_bench_rows(rows, markdown=args.markdown)
    print_best_paths(rows, skipped, markdown=args.markdown)
    if args.out:
        json_path, csv_path = write_rows(rows, args.out)
        print(f"wrote {json_path} and {csv_path}")
    return 0


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench",
        help="latency and throughput of models (eager, compile, onnxruntime, openvino) per precision, the fastest "
        "path named; or the operator study (--ops)",
    )
    bench.add_argument("--models", default=None, help="patterns and tv:/timm: names, comma-separated (spgnet_s2p6)")
    bench.add_argument("--input-size", dest="input_size", type=int, help="default: each model's own")
    bench.add_argument("--batch-sizes", dest="batch_sizes", type=int_list, default=[1, 32], help="e.g. 1,32")
    bench.add_argument("--device", default="cpu", help="cpu or cuda")
    bench.add_argument("--threads", type=int, help="intra-op threads for PyTorch and ONNX Runtime")
    bench.add_argument(
        "--backends",
        default=None,
        help="eager,compile,onnxruntime,openvino (default eager,onnxruntime; with --pareto also openvino)",
    )
    bench.add_argument(
        "--precisions", help="fp32,bf16,fp16,int8 (default: --dtype's); what cannot run here is skipped with the reason"
    )
    bench.add_argument("--best", action="store_true", help="print only the fastest path per model and batch")
    bench.add_argument("--checkpoint", help="bench the model of this checkpoint (with --data: top-1 per precision)")
    bench.add_argument("--data", metavar="SPEC", help="INT8 calibration images; with --checkpoint, top-1 on its split")
    bench.add_argument("--data-root", dest="data_root")
    bench.add_argument("--calibration-images", dest="calibration_images", type=int, default=300, metavar="N")
    bench.add_argument(
        "--int8-weight-bits", dest="int8_weight_bits", type=int, choices=[7, 8], default=7, metavar="{7,8}",
        help=INT8_BITS_HELP,
    )  # fmt: skip
    bench.add_argument("--deploy", action=argparse.BooleanOptionalAction, default=True, help="deploy form (default)")
    bench.add_argument("--channels-last", dest="channels_last", action="store_true")
    bench.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="one precision")
    bench.add_argument("--min-run-time", dest="min_run_time", type=float, default=1.0, help="seconds per timing")
    bench.add_argument("--ops", action="store_true", help="operator study: dense vs grouped vs depthwise at equal MACs")
    bench.add_argument(
        "--pareto", action="store_true", help="every family's reference variants and the usual baselines at batch 1, "
        "each on its fastest runtime x precision, against the ImageNet top-1 their papers report; the Pareto front "
        "and a verdict per paper speed claim (--out PREFIX writes PREFIX.png, .md and .json)",
    )  # fmt: skip
    bench.add_argument("--markdown", action="store_true")
    bench.add_argument("--out", help="results.json (a CSV is written beside it)")
    bench.set_defaults(func=cmd_bench)


def cmd_report(args: argparse.Namespace) -> int:
    from lightnets.measure.report import write_report

    for path in args.bench:
        if not path.is_file():
            raise ValueError(f"bench file {path} does not exist; make one with `lightnets bench --out FILE`")
    report = write_report(args.bench, args.out, args.runs or [])
    print(report.read_text())
    print(f"wrote {report} and its plots")
    return 0


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="Markdown table and plots from bench JSON files (and run directories)")
    report.add_argument("bench", nargs="+", type=Path, help="files written by `lightnets bench --out`")
    report.add_argument("--runs", nargs="*", type=Path, help="run directories: adds accuracy vs latency")
    report.add_argument("--out", type=Path, default=Path("report"), help="output directory (default ./report)")
    report.set_defaults(func=cmd_report)


def cmd_export(args: argparse.Namespace) -> int:
    from lightnets.deploy.export import export_model

    export_model(
        args.out,
        args.format,
        model_name=args.model,
        checkpoint=args.checkpoint,
        model_kwargs=model_kwargs_from(args.model_arg),
        ema=args.ema,
        deploy=args.deploy,
        input_size=args.input_size,
        num_classes=args.num_classes,
        precision=args.precision,
        calibration_data=args.calibration_data,
        calibration_images=args.calibration_images,
        data_root=args.data_root,
        int8_weight_bits=args.int8_weight_bits,
    )
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export",
        help="ONNX (checked against ONNX Runtime), OpenVINO IR, fp32 or calibrated INT8; or safetensors + JSON sidecar",
    )
    export.add_argument(
        "--checkpoint",
        help="a lightnets .pt checkpoint or run directory, a .safetensors file, "
        "or an authors' checkpoint (with --model)",
    )
    add_foreign_weights_flags(export, "registered name (default: the checkpoint's; needed for the authors' files)")
    export.add_argument("--format", choices=["onnx", "openvino", "safetensors"], required=True)
    export.add_argument(
        "--precision", choices=["fp32", "int8"], default="fp32", help="int8: static quantisation (onnx, openvino)"
    )
    export.add_argument(
        "--calibration-data", dest="calibration_data", metavar="SPEC", help="int8: training images to calibrate on"
    )
    export.add_argument(
        "--calibration-images", dest="calibration_images", type=int, metavar="N", help="int8: how many (default 300)"
    )
    export.add_argument("--data-root", dest="data_root", help="where CIFAR is looked for (as for train)")
    export.add_argument(
        "--int8-weight-bits", dest="int8_weight_bits", type=int, choices=[7, 8], metavar="{7,8}", help=INT8_BITS_HELP
    )
    export.add_argument(
        "--deploy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="export the deploy form (default: for openvino and int8)",
    )
    export.add_argument("--input-size", dest="input_size", type=int, help="ONNX input size (default: the model's)")
    export.add_argument("--num-classes", dest="num_classes", type=int, help="without a checkpoint")
    export.add_argument("--out", required=True, help="output file (.onnx, .xml or .safetensors)")
    export.set_defaults(func=cmd_export)


def cmd_summary(args: argparse.Namespace) -> int:
    from lightnets.measure.per_layer import print_model_summary

    require(args.depth, "--depth", 1)
    if args.input_size is not None:
        require(args.input_size, "--input-size", 1)
    kwargs = model_kwargs_from(args.model_arg)
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.profile == "train":
        from lightnets.device import resolve_device
        from lightnets.measure.training_profile import print_training_profile

        require(args.batch_size, "--batch-size", 1)
        require(args.steps, "--steps", 1)
        device = resolve_device(args.device)
        print_training_profile(args.name, args.batch_size, args.input_size, args.steps, args.channels_last, args.amp,
                               device, kwargs, args.markdown)  # fmt: skip
        return 0
    print_model_summary(args.name, args.input_size, args.deploy, args.depth, None, kwargs, args.markdown)
    return 0


def add_summary_parser(sub: argparse._SubParsersAction) -> None:
    summary = sub.add_parser("summary", help="one row per module: output shape, params and MACs (totals as `models`)")
    summary.add_argument("name", help="registered name, tv:NAME or timm:NAME")
    summary.add_argument("--input-size", dest="input_size", type=int, help="square input size (default: the model's)")
    summary.add_argument("--deploy", action="store_true", help="the deploy form's modules (conv+BN fused, ...)")
    summary.add_argument("--depth", type=int, default=2, help="module depth of the rows (1: the model's children)")
    summary.add_argument("--num-classes", dest="num_classes", type=int, help="classifier width (default: the form's)")
    summary.add_argument("--model-arg", dest="model_arg", action="append", metavar="KEY=VALUE", help="builder kwarg")
    summary.add_argument("--markdown", action="store_true", help="print a Markdown table")
    profile = summary.add_argument_group("where training time goes (--profile train)")
    profile.add_argument(
        "--profile", choices=["train"], help="instead of the module table: forward, backward and update time of a "
        "training step per layer type, with GMAC/s against the CPU's peak (torch.profiler)",
    )  # fmt: skip
    profile.add_argument("--batch-size", dest="batch_size", type=int, default=64, help="(default 64)")
    profile.add_argument("--steps", type=int, default=5, help="profiled steps, after 2 warm-up steps (default 5)")
    profile.add_argument("--channels-last", dest="channels_last", action="store_true", help="channels-last memory")
    profile.add_argument("--amp", action="store_true", help="bf16 autocast")
    profile.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    summary.set_defaults(func=cmd_summary)
