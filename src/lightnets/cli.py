"""The ``lightnets`` command line.

``models`` lists the zoo with its complexity; ``train`` trains a model on CIFAR or a class-folder dataset
and writes a run directory; ``eval`` and ``predict`` use a checkpoint and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _model_names(pattern: str) -> list[str]:
    """Registered names matching the comma-separated patterns; ``tv:``/``timm:`` entries pass through."""
    from lightnets.models import list_models
    from lightnets.models.registry import BASELINE_PREFIXES

    names: list[str] = []
    for part in (p.strip() for p in pattern.split(",")):
        if not part:
            continue
        if part.startswith(BASELINE_PREFIXES):
            names.append(part)
            continue
        matches = list_models(part)
        if not matches:
            from lightnets.models.registry import unknown_model_error

            raise unknown_model_error(part)
        names.extend(m for m in matches if m not in names)
    return names


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool = False) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |" if markdown else "  ".join(padded).rstrip()

    separator = (
        "|" + "|".join(("-" * (w + 1) + ":") if num else "-" * (w + 2) for w, num in zip(widths, numeric)) + "|"
        if markdown
        else "  ".join("-" * w for w in widths)
    )
    return "\n".join([line(headers), separator, *(line(r) for r in cells)])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def cmd_models(args: argparse.Namespace) -> int:
    from lightnets import complexity, create_model

    headers = ["model", "input", "params (M)", "deploy params (M)", "MACs (M)", "deploy MACs (M)"]
    names = _model_names(args.pattern)
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    # Plain tables stream a row per model (the big ParNets take seconds each on a small CPU), so the
    # widths are fixed up front: names are known, numbers fit under their headers.
    widths = [max(len(headers[0]), *map(len, names)), *map(len, headers[1:])]
    if not args.markdown:
        print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
        print("  ".join("-" * w for w in widths))
    rows = []
    for name in names:
        stats = complexity(create_model(name, **kwargs), args.input_size)
        row = [
            name,
            str(stats.input_size),
            f"{stats.params / 1e6:.3f}",
            f"{stats.deploy_params / 1e6:.3f}",
            f"{stats.macs / 1e6:.1f}",
            f"{stats.deploy_macs / 1e6:.1f}",
        ]
        rows.append(row)
        if not args.markdown:
            print(
                "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))), flush=True
            )
    if args.markdown:
        print(format_table(headers, rows, markdown=True))
    return 0


def _yaml_value(text: str):
    import yaml

    return yaml.safe_load(text)


def _model_kwargs(items: Sequence[str] | None, base: dict | None = None) -> dict:
    """``--model-arg KEY=VALUE`` items (values parsed as YAML) on top of ``base``."""
    model_kwargs = dict(base or {})
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--model-arg expects KEY=VALUE, got {item!r}")
        model_kwargs[key] = _yaml_value(value)
    return model_kwargs


def _train_config_from_args(args: argparse.Namespace):
    from lightnets.training import TrainConfig

    names = {f for f in TrainConfig.__dataclass_fields__ if f != "model_kwargs"}
    values = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    values["model_kwargs"] = _model_kwargs(args.model_arg, args.model_kwargs)
    return TrainConfig.from_dict(values)


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
    from lightnets.training import TrainConfig, load_run_config, train

    if args.nproc is not None:
        _require(args.nproc, "--nproc", 1)
        if _torchrun_rank() is not None:
            raise ValueError("--nproc starts torchrun itself; drop it when launching with torchrun")
        if args.nproc > 1:
            from lightnets.distributed import launch_torchrun

            launch_torchrun(args.nproc, _without_nproc(args.argv))
    if args.resume:
        # A resumed run must be the run that was started; a flag that changed it would break exact resume.
        given = [n for n in TrainConfig.__dataclass_fields__ if n != "quiet" and getattr(args, n, None) is not None]
        given += ["model_arg"] * bool(args.model_arg) + ["config"] * bool(args.config)
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"--resume takes every setting from {args.resume}/args.yaml; drop {flags}")
        config = load_run_config(args.resume)
        if args.quiet:
            config.quiet = True
        train(config, resume=args.resume)
    else:
        train(_train_config_from_args(args))
    return 0


def _require(value: int, flag: str, minimum: int) -> None:
    if value < minimum:
        raise ValueError(f"invalid {flag} {value}: expected an integer >= {minimum}")


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
    train = sub.add_parser(
        "train",
        help="train a model on CIFAR-10/100 or a class-folder dataset",
        description="Train with the recipe: SGD + Nesterov, lr 0.1 per 256 images, cosine after warmup, "
        "wd 5e-4 (not on BN/bias), label smoothing 0.1. Every flag can also come from --config FILE.yaml.",
    )
    add = train.add_argument
    add("--config", type=Path, help="YAML file of settings (keys as the flags, with underscores); flags override")
    add("--resume", metavar="RUN_DIR", help="continue a run from its last.pt; its args.yaml supplies every setting")
    add("--model", help="registered name, tv:NAME or timm:NAME (default spgnet_s2p6_cifar)")
    add("--data", help="cifar10, cifar100, cifar10:PATH (archive or folder), folder:PATH")
    add("--data-root", dest="data_root", help="where cifar archives are looked for (env LIGHTNETS_DATA, ./data)")
    add("--epochs", type=int)
    add("--batch-size", dest="batch_size", type=int, help="global batch (default 256)")
    add("--lr", type=float, help="learning rate (default: --lr-base x batch / 256)")
    add("--lr-base", dest="lr_base", type=float, help="learning rate per 256 images (default 0.1)")
    add("--min-lr", dest="min_lr", type=float, help="floor of the cosine schedule (default 0)")
    add("--momentum", type=float)
    add("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    add("--weight-decay", dest="weight_decay", type=float, help="on conv/linear weights only (default 5e-4)")
    add("--label-smoothing", dest="label_smoothing", type=float, help="default 0.1")
    add("--warmup-epochs", dest="warmup_epochs", type=float, help="linear warmup length (default 1)")
    add(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (default: on for CUDA and for CPUs with native bf16, AVX512-BF16 or AMX, where it is "
        "faster except for AsymmNet-Small)",
    )
    add("--amp-dtype", dest="amp_dtype", choices=["bfloat16", "float16"], help="float16 uses a GradScaler (CUDA)")
    add("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction, default=None)
    add("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
    add("--ema", action=argparse.BooleanOptionalAction, default=None, help="evaluate an EMA of the weights")
    add("--ema-decay", dest="ema_decay", type=float)
    add(
        "--aug",
        metavar="{none,colorjitter,randaugment,trivialaugment,autoaugment}",
        help="augmentation added to crop + flip (default none); the last three need a folder dataset",
    )
    add("--aug-ops", dest="aug_ops", type=int, help="RandAugment: operations per image (default 2)")
    add("--aug-magnitude", dest="aug_magnitude", type=int, help="RandAugment: magnitude 0-30 (default 9)")
    add("--random-erasing", dest="random_erasing", type=float, metavar="P", help="erase a random box per image with P")
    add("--cutout", type=int, metavar="N", help="set one NxN square per image to the mean (default 0: off)")
    add("--seed", type=int)
    add("--device", help="auto (cuda if present), cpu, cuda, cuda:N")
    add("--workers", type=int, help="DataLoader workers for folder datasets (default 4)")
    add("--input-size", dest="input_size", type=int, help="default: 32 for CIFAR, the model's size for folders")
    add("--val-split", dest="val_split", type=float, help="held-out fraction of train (folders default 0.2)")
    add("--out", help="run directory (default runs/MODEL-DATA-TIME)")
    add("--quiet", action="store_true", default=None, help="no progress bars or per-epoch lines")
    add("--log-every", dest="log_every", type=int, help="steps between progress-bar updates (host syncs)")
    add("--max-steps-per-epoch", dest="max_steps_per_epoch", type=int, help="cap steps per epoch (smoke tests)")
    add(
        "--checkpoint-every",
        dest="checkpoint_every",
        type=int,
        metavar="N",
        help="also write last.pt every N steps, so a kill costs at most N steps (default 0: at epoch ends only)",
    )
    add(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="deterministic kernels: on CPU, killed-and-resumed runs end bitwise equal to uninterrupted ones",
    )
    add(
        "--nan-policy",
        dest="nan_policy",
        metavar="{stop,skip}",
        help="on a NaN/inf loss: stop (default; last.pt and best.pt stay the last good ones) or skip the update",
    )
    add(
        "--strict",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="an unreadable or non-image file in a folder dataset is an error (default: skipped and counted)",
    )
    add(
        "--sync-bn",
        dest="sync_bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="under torchrun on CUDA: BN statistics over the global batch (SyncBatchNorm)",
    )
    add(
        "--nproc",
        type=int,
        metavar="N",
        help="train with N processes on this machine: runs `torchrun --standalone --nproc-per-node N` for you",
    )
    add("--model-arg", dest="model_arg", action="append", metavar="KEY=VALUE", help="builder kwarg, repeatable")
    train.set_defaults(func=cmd_train, model_kwargs=None)


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


def _apply_config_file(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse once to find ``--config``, take its YAML as defaults for the train parser, parse again."""
    args = parser.parse_args(argv)
    if getattr(args, "command", None) != "train" or not args.config:
        return args
    import yaml

    if not args.config.is_file():
        parser.error(f"--config {args.config} does not exist")
    values = yaml.safe_load(args.config.read_text()) or {}
    if not isinstance(values, dict):
        parser.error(f"--config {args.config} must hold a mapping of settings")
    from lightnets.training import TrainConfig

    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(k for k in (key.replace("-", "_") for key in values) if k not in known)
    if unknown:
        parser.error(f"--config {args.config}: unknown setting(s) {', '.join(unknown)}")
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    train_parser.set_defaults(**{key.replace("-", "_"): value for key, value in values.items()})
    return parser.parse_args(argv)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    from lightnets.benchmarking import BenchSettings, bench_models, operator_study, write_rows

    if args.ops:
        rows = operator_study(device=args.device, threads=args.threads, batch_size=args.batch_sizes[0])
        if args.out:
            json_path, csv_path = write_rows(rows, args.out)
            from lightnets.report import plot_operator_study

            plot_path = Path(args.out).with_suffix(".png")
            plot_operator_study(rows, plot_path)
            print(f"wrote {json_path}, {csv_path} and {plot_path}")
        return 0
    settings = BenchSettings(
        models=_model_names(args.models),
        input_size=args.input_size,
        batch_sizes=args.batch_sizes,
        device=args.device,
        threads=args.threads or BenchSettings().threads,
        backends=[b.strip() for b in args.backends.split(",") if b.strip()],
        deploy=args.deploy,
        channels_last=args.channels_last,
        dtype=args.dtype,
        min_run_time=args.min_run_time,
    )
    rows = bench_models(settings)
    headers = [
        "model",
        "backend",
        "batch",
        "input",
        "params (M)",
        "MACs (M)",
        "median ms",
        "IQR ms",
        "img/s",
        "GMAC/s",
        "peak MB",
        "compile s",
    ]
    table = [
        [
            r["model"],
            r["backend"],
            r["batch_size"],
            r["input_size"],
            f"{r['params'] / 1e6:.3f}",
            f"{r['macs'] / 1e6:.1f}",
            f"{r['latency_ms_median']:.2f}",
            f"{r['latency_ms_iqr']:.2f}",
            f"{r['images_per_s']:.1f}",
            f"{r['gmacs_per_s']:.2f}",
            f"{r['peak_memory_mb']:.1f}",
            "" if r["compile_s"] is None else f"{r['compile_s']:.1f}",
        ]
        for r in rows
    ]
    print(format_table(headers, table, markdown=args.markdown))
    if args.out:
        json_path, csv_path = write_rows(rows, args.out)
        print(f"wrote {json_path} and {csv_path}")
    return 0


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench",
        help="latency and throughput of models (eager, compile, onnxruntime) or the operator study (--ops)",
    )
    bench.add_argument("--models", default="spgnet_s2p6", help="patterns and tv:/timm: names, comma-separated")
    bench.add_argument("--input-size", dest="input_size", type=int, help="default: each model's own")
    bench.add_argument("--batch-sizes", dest="batch_sizes", type=_int_list, default=[1, 32], help="e.g. 1,32")
    bench.add_argument("--device", default="cpu", help="cpu or cuda")
    bench.add_argument("--threads", type=int, help="intra-op threads for PyTorch and ONNX Runtime")
    bench.add_argument("--backends", default="eager,onnxruntime", help="eager,compile,onnxruntime")
    bench.add_argument("--deploy", action=argparse.BooleanOptionalAction, default=True, help="deploy form (default)")
    bench.add_argument("--channels-last", dest="channels_last", action="store_true")
    bench.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
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
    from lightnets.export import export_onnx, export_safetensors
    from lightnets.models import create_model, reparameterize_model
    from lightnets.models._helpers import PRETRAINED_CFG_KEYS, load_weights, read_weights

    kwargs = _model_kwargs(args.model_arg)
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    classes, weights = None, None
    if args.checkpoint:
        weights = read_weights(args.checkpoint, ema=args.ema)
        if weights.model_name:
            if args.model and args.model != weights.model_name:
                raise ValueError(
                    f"checkpoint {args.checkpoint} holds {weights.model_name!r}, not {args.model!r}; drop --model"
                )
            args.model = weights.model_name
        elif not args.model:
            raise ValueError(f"{weights.path} ({weights.describe()}) does not name its model; give --model NAME")
        # The file's kwargs (e.g. num_classes) first: the export must rebuild the model it holds.
        kwargs = {**weights.model_kwargs, **kwargs}
        classes = weights.classes
    elif args.ema:
        raise ValueError("--ema selects the EMA weights of a --checkpoint; give one")
    if not args.model:
        raise ValueError("give --model NAME (or --checkpoint CKPT, which names its model)")
    model = create_model(args.model, **kwargs).eval()
    if weights is not None:
        model = load_weights(model, weights).eval()
        print(f"loaded {model.pretrained_cfg['loaded']} from {weights.path}")
    if args.deploy:
        model = reparameterize_model(model)
    # The inputs the weights expect (the authors' mean, std, channel order) travel with the exported file.
    cfg = getattr(model, "pretrained_cfg", {})
    preprocess = {key: cfg[key] for key in PRETRAINED_CFG_KEYS if key in cfg}
    out = Path(args.out)
    if args.format == "onnx":
        size = args.input_size or int(preprocess.get("input_size") or getattr(model, "default_input_size", 224))
        metadata = {key: json.dumps(value) for key, value in preprocess.items()}
        result = export_onnx(model, out, size, metadata=metadata)
        diffs = ", ".join(
            f"batch {b}: max abs {result['max_abs_diff'][b]:.2e} (rel {result['max_rel_diff'][b]:.2e})"
            for b in result["max_abs_diff"]
        )
        print(f"wrote {out} ({result['exporter']}, opset {result['opset']}, input {size}); onnxruntime check: {diffs}")
    else:
        path = export_safetensors(
            model,
            out,
            model_name=args.model,
            model_kwargs=kwargs,
            classes=classes,
            extra={"deploy": args.deploy, **preprocess},
        )
        print(
            f"wrote {path} and its sidecar; load with lightnets.create_model({args.model!r}, checkpoint={str(path)!r})"
        )
    if preprocess:
        print("inputs it expects: " + ", ".join(f"{key} {value}" for key, value in preprocess.items()))
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="ONNX (checked against ONNX Runtime) or safetensors + JSON sidecar")
    export.add_argument(
        "--checkpoint",
        help="a lightnets .pt checkpoint or run directory, a .safetensors file, "
        "or an authors' checkpoint (with --model)",
    )
    _add_foreign_weights_flags(export, "registered name (default: the checkpoint's; needed for the authors' files)")
    export.add_argument("--format", choices=["onnx", "safetensors"], required=True)
    export.add_argument("--deploy", action=argparse.BooleanOptionalAction, default=False, help="export the deploy form")
    export.add_argument("--input-size", dest="input_size", type=int, help="ONNX input size (default: the model's)")
    export.add_argument("--num-classes", dest="num_classes", type=int, help="without a checkpoint")
    export.add_argument("--out", required=True, help="output file (.onnx or .safetensors)")
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
    args = _apply_config_file(parser, argv)
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
