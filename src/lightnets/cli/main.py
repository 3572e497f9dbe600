"""The ``lightnets`` command line.

``models`` lists the zoo with its complexity and ``summary`` one model module by module; ``train`` trains a model on
CIFAR or a class-folder dataset and writes a run directory; ``eval`` and ``predict`` use a checkpoint and nothing
else; ``data stats`` inspects a dataset.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lightnets.cli.args import add_foreign_weights_flags, model_kwargs_from, require
from lightnets.cli.console import command_output, os_error_text
from lightnets.cli.measure import add_bench_parser, add_export_parser, add_report_parser, add_summary_parser
from lightnets.train.config import flag

__all__ = ["main"]


def cmd_models(args: argparse.Namespace) -> int:
    from lightnets.measure.counting import print_model_table
    from lightnets.models.registry import expand_model_names

    if args.pretrained:
        from lightnets.models.pretrained import list_pretrained, pretrained_cfg
        from lightnets.tables import format_table

        names = [name for pattern in args.pattern.split(",") for name in list_pretrained(pattern.strip())]
        if not names:
            print(f"no model matching {args.pattern!r} has weights in lightnets yet")
            return 0
        headers = ["model", "dataset", "top-1", "epochs", "recipe", "trained on", "file"]
        rows = []
        for name in names:
            cfg = pretrained_cfg(name)
            rows.append([name, cfg.get("dataset", "-"), f"{cfg['top1']:.2f}%" if "top1" in cfg else "-",
                         str(cfg.get("epochs", "-")), cfg.get("recipe", "-"), cfg.get("hardware", "-"),
                         cfg.get("file") or cfg.get("url", "-")])  # fmt: skip
        print(format_table(headers, rows, markdown=args.markdown))
        return 0
    print_model_table(expand_model_names(args.pattern), args.input_size, args.num_classes, args.markdown)
    return 0


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
    from lightnets.train.config import TrainConfig, config_from_values, load_config_file, load_run_config
    from lightnets.train.loop import train

    settings = {name: getattr(args, name) for name in TrainConfig.__dataclass_fields__ if name != "model_kwargs"}
    if args.nproc is not None:
        require(args.nproc, "--nproc", 1)
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
    model_kwargs = {**base.get("model_kwargs", {}), **model_kwargs_from(args.model_arg)}
    train(config_from_values({**settings, "model_kwargs": model_kwargs}, base))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from lightnets.evaluation import evaluate_checkpoint

    require(args.batch_size, "--batch-size", 1)
    require(args.workers, "--workers", 0)
    checkpoint = args.checkpoint
    if args.pretrained:
        from lightnets.models.pretrained import pretrained_path

        if checkpoint or not args.model:
            raise ValueError(
                "--pretrained evaluates the weights shipped for --model NAME: pass --model, not --checkpoint"
            )
        checkpoint = pretrained_path(args.model)
    elif not checkpoint:
        raise ValueError("pass --checkpoint PATH (or --model NAME --pretrained for the weights lightnets ships)")
    evaluate_checkpoint(
        checkpoint,
        args.data,
        split=args.split,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        amp=args.amp,
        data_root=args.data_root,
        model_name=args.model,
        model_kwargs=model_kwargs_from(args.model_arg),
        ema=args.ema,
        out=args.out,
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from lightnets.prediction import predict

    require(args.topk, "--topk", 1)
    predict(
        args.checkpoint,
        args.images,
        topk=args.topk,
        device=args.device,
        model_name=args.model,
        model_kwargs=model_kwargs_from(args.model_arg),
        ema=args.ema,
        as_json=args.json,
    )
    return 0


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from lightnets.train.config import add_config_arguments

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


def add_eval_parsers(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("eval", help="top-1/top-5, per-class accuracy and confusion of a checkpoint")
    evaluate.add_argument("--checkpoint", help="a .pt file (or a run directory: its best.pt)")
    evaluate.add_argument(
        "--pretrained", action="store_true", help="the weights lightnets ships for --model (`lightnets models "
        "--pretrained` lists them)",
    )  # fmt: skip
    add_foreign_weights_flags(evaluate)
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
    add_foreign_weights_flags(predict)
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--topk", type=int, default=5)
    predict.add_argument("--device", default="auto")
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")
    predict.set_defaults(func=cmd_predict)


def cmd_data_stats(args: argparse.Namespace) -> int:
    from lightnets.data.stats import print_dataset_stats

    require(args.workers, "--workers", 0)
    if args.input_size is not None:
        require(args.input_size, "--input-size", 1)
    if args.val_split is not None and not 0 < args.val_split < 1:
        raise ValueError(f"invalid --val-split {args.val_split}: expected a fraction strictly between 0 and 1")
    options = {"data_root": args.data_root, "input_size": args.input_size, "val_split": args.val_split}
    print_dataset_stats(args.spec, args.json, seed=args.seed, workers=args.workers, **options)
    return 0


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect a dataset: `lightnets data stats SPEC`")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    stats = commands.add_parser(
        "stats",
        help="images per class, image sizes, unreadable files, per-channel mean/std of the training images",
        description="Reads every image once. Mean/std are over the training split as `lightnets train` splits it (same "
        "--val-split and --seed), at its input scale: CIFAR as stored, folders resized and centre-cropped to "
        "--input-size; `lightnets train --normalize dataset` computes the same numbers.",
    )
    stats.add_argument("spec", metavar="SPEC", help="dataset spec, as train's --data (cifar10:PATH, folder:PATH, ...)")
    stats.add_argument("--data-root", dest="data_root", help="where CIFAR archives are looked for")
    stats.add_argument("--input-size", dest="input_size", type=int, help="default: 32 for CIFAR, 224 for folders")
    stats.add_argument("--val-split", dest="val_split", type=float, help="as for train (a plain folder: 0.2)")
    stats.add_argument("--seed", type=int, default=0, help="as for train: it draws the val split")
    stats.add_argument("--workers", type=int, default=0, help="processes decoding images")
    stats.add_argument("--json", action="store_true", help="print JSON instead of text")
    stats.set_defaults(func=cmd_data_stats, command="data stats")  # errors say `lightnets data stats: error: ...`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightnets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = sub.add_parser("models", help="list models with params and MACs (training and deploy form)")
    models.add_argument("pattern", nargs="?", default="*", help="shell pattern(s), comma-separated; tv:/timm: names")
    models.add_argument("--input-size", type=int, default=None, help="square input size (default: the model's)")
    models.add_argument("--num-classes", type=int, default=None, help="classifier width (default: the form's)")
    models.add_argument("--markdown", action="store_true", help="print a Markdown table")
    models.add_argument(
        "--pretrained", action="store_true", help="only the models with weights in lightnets, with their dataset, "
        "top-1 and recipe",
    )  # fmt: skip
    models.set_defaults(func=cmd_models)

    add_train_parser(sub)
    add_eval_parsers(sub)
    add_bench_parser(sub)
    add_report_parser(sub)
    add_export_parser(sub)
    add_summary_parser(sub)
    add_data_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    # Under torchrun every rank reports its own errors; say whose each one is.
    rank = _torchrun_rank()
    where = f" (rank {rank})" if rank is not None else ""
    try:
        with command_output(f"{args.command}{where}"):  # one line per warning; no CUDA notice on CPU machines
            return args.func(args)
    except (ValueError, OSError) as error:  # bad input or environment: the message names the file and the cause
        text = os_error_text(error) if isinstance(error, OSError) else str(error)
        print(f"lightnets {args.command}{where}: error: {text}", file=sys.stderr)
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
