"""The ``lightnets`` command line.

``models`` lists the zoo with its complexity; ``train`` trains a model on CIFAR or a class-folder dataset
and writes a run directory; ``eval`` and ``predict`` use a checkpoint and nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightnets.config import flag

__all__ = ["main"]


def cmd_models(args: argparse.Namespace) -> int:
    from lightnets.complexity import print_model_table
    from lightnets.models.registry import expand_model_names

    print_model_table(expand_model_names(args.pattern), args.input_size, args.num_classes, args.markdown)
    return 0


def _model_kwargs(items: list[str] | None) -> dict[str, Any]:
    import yaml

    kwargs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--model-arg expects KEY=VALUE, got {item!r}")
        kwargs[key] = yaml.safe_load(value)
    return kwargs


def _without_nproc(argv: Sequence[str]) -> list[str]:
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            kept.append(item)
    return kept


def _torchrun_rank() -> str | None:
    """This process's rank when torchrun started it as one of several, else None."""
    return os.environ.get("RANK", "?") if os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1") else None


def cmd_train(args: argparse.Namespace) -> int:
    from lightnets.config import TrainConfig, config_from_values, load_config_file, load_run_config
    from lightnets.training import train

    settings = {name: getattr(args, name) for name in TrainConfig.__dataclass_fields__ if name != "model_kwargs"}
    if args.nproc is not None:
        _require(args.nproc, "--nproc", 1)
        if _torchrun_rank() is not None:
            raise ValueError("--nproc starts torchrun itself; drop it when launching with torchrun")
        if args.nproc > 1:
            from lightnets.distributed import launch_torchrun

            launch_torchrun(args.nproc, _without_nproc(args.argv))
    if args.resume:
        # A resumed run must be the run that was started; a flag that changed it would break exact resume.
        given = [name for name, value in settings.items() if name != "quiet" and value is not None]
        given += ["model_arg"] * bool(args.model_arg) + ["config"] * bool(args.config)
        if given:
            raise ValueError(
                f"--resume takes every setting from {args.resume}/args.yaml; drop {', '.join(map(flag, given))}"
            )
        config = load_run_config(args.resume)
        config.quiet = bool(args.quiet) or config.quiet
        train(config, resume=args.resume)
        return 0
    base = load_config_file(args.config) if args.config else {}
    model_kwargs = {**base.get("model_kwargs", {}), **_model_kwargs(args.model_arg)}
    train(config_from_values({**settings, "model_kwargs": model_kwargs}, base))
    return 0


def _require(value: int, option: str, minimum: int) -> None:
    if value < minimum:
        raise ValueError(f"invalid {option} {value}: expected an integer >= {minimum}")


def cmd_eval(args: argparse.Namespace) -> int:
    from lightnets.evaluation import run_eval

    _require(args.batch_size, "--batch-size", 1)
    _require(args.workers, "--workers", 0)
    args.model_kwargs = _model_kwargs(args.model_arg)
    run_eval(args)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from lightnets.evaluation import run_predict

    _require(args.topk, "--topk", 1)
    args.model_kwargs = _model_kwargs(args.model_arg)
    run_predict(args)
    return 0


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from lightnets.config import add_config_arguments

    train = sub.add_parser(
        "train",
        help="train a model on CIFAR-10/100 or a class-folder dataset",
        description="Train with the recipe: SGD + Nesterov, lr 0.1 per 256 images, cosine after warmup, "
        "wd 5e-4 (not on BN/bias), label smoothing 0.1. Every setting can also come from --config FILE.yaml.",
    )
    add = train.add_argument
    add("--config", type=Path, help="YAML file of settings (keys as the flags, with underscores); flags override")
    add("--resume", metavar="RUN_DIR", help="continue a run from its last.pt; its args.yaml supplies every setting")
    add_config_arguments(train)
    add(
        "--nproc",
        type=int,
        metavar="N",
        help="train with N processes on this machine: runs `torchrun --standalone --nproc-per-node N` for you",
    )
    add("--model-arg", dest="model_arg", action="append", metavar="KEY=VALUE", help="builder kwarg, repeatable")
    train.set_defaults(func=cmd_train)


def _add_foreign_weights_flags(parser: argparse.ArgumentParser, model_help: str = "") -> None:
    """--model, --model-arg and --ema: for weights files that do not name their model (the authors' checkpoints)."""
    parser.add_argument(
        "--model",
        help=model_help
        or "registered name, for a checkpoint that does not name its model (the authors' files; README, "
        "'Using the authors' weights')",
    )
    parser.add_argument(
        "--model-arg", dest="model_arg", action="append", metavar="KEY=VALUE", help="builder kwarg, repeatable"
    )
    parser.add_argument("--ema", action="store_true", help="load the file's EMA weights (state_dict_ema)")


def add_eval_parsers(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("eval", help="top-1/top-5, per-class accuracy and confusion of a checkpoint")
    evaluate.add_argument("--checkpoint", required=True, help="a .pt file (or a run directory: its best.pt)")
    _add_foreign_weights_flags(evaluate)
    evaluate.add_argument("--data", required=True, help="dataset spec, as for train")
    evaluate.add_argument("--data-root", dest="data_root")
    evaluate.add_argument("--split", choices=["val", "train"], default="val", help="val: the held-out/test split")
    evaluate.add_argument("--batch-size", dest="batch_size", type=int, default=256)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--workers", type=int, default=4)
    evaluate.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    evaluate.add_argument("--out", help="directory for eval.json and confusion.png")
    evaluate.set_defaults(func=cmd_eval)

    predict = sub.add_parser("predict", help="top-k classes of image files with a checkpoint")
    predict.add_argument("--checkpoint", required=True, help="a .pt file (or a run directory: its best.pt)")
    _add_foreign_weights_flags(predict)
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--topk", type=int, default=5)
    predict.add_argument("--device", default="auto")
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")
    predict.set_defaults(func=cmd_predict)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    from lightnets.bench_summary import print_summary
    from lightnets.benchmarking import BenchSettings, bench_models, print_bench_rows, write_rows
    from lightnets.models.registry import expand_model_names

    args.models_given = args.models is not None
    args.models = args.models or "spgnet_s2p6"
    if args.ops:
        from lightnets.operator_study import operator_study
        from lightnets.report import plot_operator_study

        rows = operator_study(device=args.device, threads=args.threads, batch_size=args.batch_sizes[0])
        if args.out:
            json_path, csv_path = write_rows(rows, args.out)
            plot_operator_study(rows, Path(args.out).with_suffix(".png"))
            print(f"wrote {json_path}, {csv_path} and {Path(args.out).with_suffix('.png')}")
        return 0
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()] if args.precisions else None
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
    )
    skipped: list[dict[str, str]] = []
    rows = bench_models(settings, skipped=skipped)
    if not args.best:
        print_bench_rows(rows, markdown=args.markdown)
    print_summary(rows, skipped, markdown=args.markdown)
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
    bench.add_argument("--batch-sizes", dest="batch_sizes", type=_int_list, default=[1, 32], help="e.g. 1,32")
    bench.add_argument("--device", default="cpu", help="cpu or cuda")
    bench.add_argument("--threads", type=int, help="intra-op threads for PyTorch and ONNX Runtime")
    bench.add_argument("--backends", default="eager,onnxruntime", help="eager,compile,onnxruntime,openvino")
    bench.add_argument(
        "--precisions", help="fp32,bf16,fp16,int8 (default: --dtype's); what cannot run here is skipped with the reason"
    )
    bench.add_argument("--best", action="store_true", help="print only the fastest path per model and batch")
    bench.add_argument("--checkpoint", help="bench the model of this checkpoint (with --data: top-1 per precision)")
    bench.add_argument("--data", metavar="SPEC", help="INT8 calibration images; with --checkpoint, top-1 on its split")
    bench.add_argument("--data-root", dest="data_root")
    bench.add_argument("--calibration-images", dest="calibration_images", type=int, default=300, metavar="N")
    bench.add_argument("--deploy", action=argparse.BooleanOptionalAction, default=True, help="deploy form (default)")
    bench.add_argument("--channels-last", dest="channels_last", action="store_true")
    bench.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="one precision")
    bench.add_argument("--min-run-time", dest="min_run_time", type=float, default=1.0, help="seconds per timing")
    bench.add_argument("--ops", action="store_true", help="operator study: dense vs grouped vs depthwise at equal MACs")
    bench.add_argument("--markdown", action="store_true")
    bench.add_argument("--out", help="results.json (a CSV is written beside it)")
    bench.set_defaults(func=cmd_bench)


def cmd_report(args: argparse.Namespace) -> int:
    from lightnets.report import write_report

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
    from lightnets.export import export_model

    export_model(
        args.out,
        args.format,
        model_name=args.model,
        checkpoint=args.checkpoint,
        model_kwargs=_model_kwargs(args.model_arg),
        ema=args.ema,
        deploy=args.deploy,
        input_size=args.input_size,
        num_classes=args.num_classes,
        precision=args.precision,
        calibration_data=args.calibration_data,
        calibration_images=args.calibration_images,
        data_root=args.data_root,
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
    _add_foreign_weights_flags(export, "registered name (default: the checkpoint's; needed for the authors' files)")
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
        "--deploy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="export the deploy form (default: for openvino and int8)",
    )
    export.add_argument("--input-size", dest="input_size", type=int, help="ONNX input size (default: the model's)")
    export.add_argument("--num-classes", dest="num_classes", type=int, help="without a checkpoint")
    export.add_argument("--out", required=True, help="output file (.onnx, .xml or .safetensors)")
    export.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightnets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = sub.add_parser("models", help="list models with params and MACs (training and deploy form)")
    models.add_argument("pattern", nargs="?", default="*", help="shell pattern(s), comma-separated; tv:/timm: names")
    models.add_argument("--input-size", type=int, default=None, help="square input size (default: the model's)")
    models.add_argument("--num-classes", type=int, default=None, help="classifier width (default: the form's)")
    models.add_argument("--markdown", action="store_true", help="print a Markdown table")
    models.set_defaults(func=cmd_models)

    add_train_parser(sub)
    add_eval_parsers(sub)
    add_bench_parser(sub)
    add_report_parser(sub)
    add_export_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    # Under torchrun every rank reports its own errors; say whose each one is.
    rank = _torchrun_rank()
    where = f" (rank {rank})" if rank is not None else ""
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"lightnets {args.command}{where}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        exit_code = getattr(interrupt, "exit_code", None)
        if exit_code is not None:  # training already said where it saved and how to resume
            return exit_code
        print(f"lightnets {args.command}: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as error:
        exit_code = getattr(error, "exit_code", None)
        if exit_code is None:  # not a TrainingError: a bug, whose traceback is wanted
            raise
        print(f"lightnets {args.command}{where}: error: {error}", file=sys.stderr)
        return exit_code


if __name__ == "__main__":
    sys.exit(main())
