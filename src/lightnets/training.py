"""Training and evaluation: the practitioners' recipe, with the data path on the device.

Read top to bottom: the hyperparameters (:class:`TrainConfig`), how batches are produced, the optimizer
and schedule, then :func:`train` - one loop over epochs and steps - and :func:`evaluate`.

Recipe defaults: SGD with Nesterov momentum 0.9, lr 0.1 per 256 images scaled linearly with the batch,
weight decay 5e-4 on conv/linear weights only (not BN or biases), label smoothing 0.1, a linear warmup
then cosine decay stepped every iteration, batch 256. In-memory datasets (CIFAR) live as one uint8
tensor on the training device and are cropped and flipped there in whole batches; folder datasets come
through a DataLoader with workers. Normalisation happens on the device for both.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from lightnets.checkpoint import load_checkpoint, save_checkpoint
from lightnets.data import DataBundle, TensorSplit, collate_skip_bad, load_dataset, random_crop_flip
from lightnets.models import create_model

__all__ = ["TrainConfig", "evaluate", "train"]


@dataclass
class TrainConfig:
    """Every training setting; ``args.yaml`` in the run directory is this, resolved."""

    model: str = "spgnet_s2p6_cifar"
    data: str = "cifar10"
    epochs: int = 30
    batch_size: int = 256
    lr: float | None = None  # None: lr_base * batch_size / 256
    lr_base: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    min_lr: float = 0.0
    amp: bool | None = None  # None: on for CUDA, off for CPU (CPUs without native bf16 run it slower)
    amp_dtype: str = "bfloat16"  # or float16 (CUDA only, with a GradScaler)
    channels_last: bool = False
    compile: bool = False
    ema: bool = False
    ema_decay: float = 0.9998
    seed: int = 0
    device: str = "auto"
    workers: int = 4
    input_size: int | None = None
    val_split: float | None = None
    data_root: str | None = None
    out: str | None = None
    quiet: bool = False
    log_every: int = 20
    max_steps_per_epoch: int | None = None  # for smoke tests and benchmarks
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**values)


# --------------------------------------------------------------------------------------------- device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
    return device


def autocast_context(device: torch.device, enabled: bool, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype) if enabled else nullcontext()


def default_input_size(model_name: str) -> int:
    """The model's own input size, read from a parameter-free (meta-device) build."""
    with torch.device("meta"):
        model = create_model(model_name)
    return int(getattr(model, "default_input_size", 224))


# --------------------------------------------------------------------------------------------- batches


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    # Data order and augmentation depend only on (seed, epoch): resuming at an epoch boundary replays them.
    return torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)


def tensor_batches(
    split: TensorSplit,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of an in-memory split that already lives on the device; no per-image Python."""
    device = split.images.device
    count = len(split)
    if train:
        generator = epoch_generator(seed, epoch, device)
        order = torch.randperm(count, device=device, generator=generator)
        count -= count % batch_size  # drop the ragged last batch: BN wants full batches
    else:
        generator, order = None, torch.arange(count, device=device)
    for start in range(0, count, batch_size):
        index = order[start : start + batch_size]
        images = split.images[index]
        if train:
            images = random_crop_flip(images, padding=4, generator=generator)
        yield images, split.labels[index]


def loader_batches(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    *,
    train: bool,
    workers: int,
    device: torch.device,
    seed: int = 0,
    epoch: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > batch_size,
        num_workers=min(workers, os.cpu_count() or 1),  # more workers than cores only thrash
        collate_fn=collate_skip_bad,
        pin_memory=device.type == "cuda",
        generator=generator,
        persistent_workers=False,
    )
    for images, labels in loader:
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def batches(
    split: TensorSplit | torch.utils.data.Dataset,
    config: TrainConfig,
    device: torch.device,
    *,
    train: bool,
    epoch: int = 0,
    batch_size: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    batch_size = batch_size or config.batch_size
    if isinstance(split, TensorSplit):
        return tensor_batches(split, batch_size, train=train, seed=config.seed, epoch=epoch)
    return loader_batches(
        split, batch_size, train=train, workers=config.workers, device=device, seed=config.seed, epoch=epoch
    )


def steps_per_epoch(split: TensorSplit | torch.utils.data.Dataset, config: TrainConfig) -> int:
    steps = max(1, len(split) // config.batch_size)
    return min(steps, config.max_steps_per_epoch) if config.max_steps_per_epoch else steps


class Preprocess(nn.Module):
    """uint8 batch -> normalised float batch at the model's input size, on the device."""

    def __init__(self, mean, std, input_size: int, channels_last: bool) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).reshape(1, 3, 1, 1) * 255)
        self.input_size = input_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return x.contiguous(memory_format=self.memory_format)


# --------------------------------------------------------------------------------------------- optimisation


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv and linear weights only; BN parameters and biases (1-D) are not decayed."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.0):
    """Per-step multiplier: linear from ~0 to 1 over the warmup, then cosine down to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class ModelEma:
    """Exponential moving average of the weights, with timm's warm-up of the decay for short runs."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.module.parameters()), list(model.parameters()), 1 - decay)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]


# --------------------------------------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    confusion: torch.Tensor  # (C, C) int64, rows = true class
    images_per_second: float
    sample_images: torch.Tensor  # uint8, the first images, for the prediction grid
    sample_labels: torch.Tensor
    sample_predictions: torch.Tensor
    sample_probabilities: torch.Tensor

    @property
    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(1).clamp(min=1)
        return (100.0 * self.confusion.diag() / totals).tolist()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batch_iter: Iterator[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Preprocess,
    num_classes: int,
    *,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.bfloat16,
    label_smoothing: float = 0.0,
    keep: int = 32,
) -> EvalResult:
    """Loss, top-1/top-5 and confusion over all batches; one host sync at the end."""
    model.eval()
    device = preprocess.mean.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct1 = torch.zeros((), device=device, dtype=torch.int64)
    correct5 = torch.zeros((), device=device, dtype=torch.int64)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
    count, samples = 0, []
    topk = min(5, num_classes)
    start = time.perf_counter()
    for images, labels in batch_iter:
        with autocast_context(device, amp, amp_dtype):
            logits = model(preprocess(images))
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="sum")
        top = logits.topk(topk, dim=1).indices
        predictions = top[:, 0]
        correct1 += (predictions == labels).sum()
        correct5 += (top == labels[:, None]).any(1).sum()
        confusion += torch.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
        count += labels.numel()
        if sum(len(s[0]) for s in samples) < keep:
            probabilities = logits.softmax(1).gather(1, predictions[:, None])[:, 0]
            samples.append(
                (images[:keep].cpu(), labels[:keep].cpu(), predictions[:keep].cpu(), probabilities[:keep].cpu())
            )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if count == 0:
        raise ValueError("evaluation saw no images: the evaluation split is empty")
    sample_images, sample_labels, sample_predictions, sample_probabilities = (
        torch.cat([s[i] for s in samples])[:keep] for i in range(4)
    )
    return EvalResult(
        loss=loss_sum.item() / count,
        top1=100.0 * correct1.item() / count,
        top5=100.0 * correct5.item() / count,
        confusion=confusion.reshape(num_classes, num_classes).cpu(),
        images_per_second=count / seconds,
        sample_images=sample_images,
        sample_labels=sample_labels,
        sample_predictions=sample_predictions,
        sample_probabilities=sample_probabilities,
    )


# --------------------------------------------------------------------------------------------- run directory

SUMMARY_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_top1",
    "val_top5",
    "epoch_seconds",
    "images_per_second",
]


def write_summary(history: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def write_json(data: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def default_run_dir(config: TrainConfig) -> Path:
    data_name = config.data.split(":", 1)[0]
    model_name = config.model.replace(":", "-")
    return Path("runs") / f"{model_name}-{data_name}-{time.strftime('%Y%m%d-%H%M%S')}"


class TensorBoard:
    """TensorBoard scalars when the ``tensorboard`` package is installed; nothing otherwise."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.writer = None
        else:
            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch":
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, Any]]
    best_top1: float
    best_epoch: int
    model: nn.Module


def resolve_config(config: TrainConfig, device: torch.device, bundle: DataBundle) -> dict[str, Any]:
    """Everything that was decided, for args.yaml."""
    resolved = asdict(config)
    resolved.update(
        device=str(device),
        lr=config.lr if config.lr is not None else config.lr_base * config.batch_size / 256,
        amp=bool(config.amp if config.amp is not None else device.type == "cuda"),
        input_size=bundle.input_size,
        global_batch_size=config.batch_size,
        world_size=1,
    )
    return resolved


def train(config: TrainConfig, resume: str | Path | None = None) -> TrainResult:
    """Train ``config.model`` on ``config.data``; with ``resume``, continue that run where it stopped."""
    # ---- set-up: device, data, model, optimiser, schedule
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # CIFAR keeps its native 32 px unless asked; folder images are cropped to the model's own size.
    input_size = config.input_size
    if input_size is None and not config.data.startswith("cifar"):
        input_size = default_input_size(config.model)
    bundle = load_dataset(
        config.data,
        data_root=config.data_root,
        input_size=input_size,
        val_split=config.val_split,
        seed=config.seed,
    )
    settings = resolve_config(config, device, bundle)
    run_dir = Path(resume) if resume else Path(config.out) if config.out else default_run_dir(config)
    if not resume and (run_dir / "last.pt").exists():
        raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another --out")
    run_dir.mkdir(parents=True, exist_ok=True)

    num_classes = len(bundle.classes)
    model_kwargs = {**config.model_kwargs, "num_classes": num_classes}
    model = create_model(config.model, **model_kwargs).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_split, val_split = bundle.train, bundle.val
    if isinstance(train_split, TensorSplit):
        train_split = TensorSplit(train_split.images.to(device), train_split.labels.to(device))
        val_split = TensorSplit(val_split.images.to(device), val_split.labels.to(device))
    preprocess = Preprocess(bundle.mean, bundle.std, bundle.input_size, config.channels_last).to(device)

    amp_dtype = getattr(torch, config.amp_dtype)
    use_amp = settings["amp"]
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16 and device.type == "cuda")
    optimizer = torch.optim.SGD(
        parameter_groups(model, config.weight_decay),
        lr=settings["lr"],
        momentum=config.momentum,
        nesterov=config.nesterov,
    )
    steps = steps_per_epoch(train_split, config)
    total_steps = steps * config.epochs
    warmup_steps = min(total_steps, round(config.warmup_epochs * steps))
    schedule = warmup_cosine(total_steps, warmup_steps, config.min_lr / settings["lr"] if settings["lr"] else 0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ema = ModelEma(model, config.ema_decay) if config.ema else None
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    step_fn = torch.compile(model) if config.compile else model

    history: list[dict[str, Any]] = []
    best_top1, best_epoch, start_epoch = -1.0, 0, 0
    if resume:
        state = load_checkpoint(run_dir / "last.pt", map_location=device)
        if state["model_name"] != config.model:
            raise ValueError(f"{run_dir}/last.pt holds {state['model_name']!r} but args.yaml says {config.model!r}")
        model.load_state_dict(state["train_model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"]["cpu"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        start_epoch, history = state["epoch"], state["history"]
        best_top1, best_epoch = state["best_top1"], state["best_epoch"]
    else:
        (run_dir / "args.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))

    checkpoint_meta = {
        "model_name": config.model,
        "model_kwargs": model_kwargs,
        "classes": list(bundle.classes),
        "input_size": bundle.input_size,
        "eval_resize": bundle.eval_resize,
        "mean": list(bundle.mean),
        "std": list(bundle.std),
        "data": config.data,
        "val_split": config.val_split,
        "seed": config.seed,
    }
    board = TensorBoard(run_dir)
    say = (lambda *a: None) if config.quiet else (lambda *a: print(*a, flush=True))
    say(
        f"training {config.model} on {config.data} ({len(bundle.train)} train / {len(bundle.val)} {bundle.val_name}, "
        f"{num_classes} classes) on {device}, {config.epochs} epochs x {steps} steps -> {run_dir}"
    )

    # ---- the loop
    for epoch in range(start_epoch, config.epochs):
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        progress = _progress(steps, f"epoch {epoch + 1}/{config.epochs}", config.quiet)
        epoch_start = time.perf_counter()
        for step, (images, labels) in enumerate(batches(train_split, config, device, train=True, epoch=epoch)):
            if step >= steps:
                break
            if labels.numel() == 0:  # every image of this batch failed to decode (and was warned about)
                continue
            with autocast_context(device, use_amp, amp_dtype):
                logits = step_fn(preprocess(images))
                loss = criterion(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            loss_sum += loss.detach() * labels.numel()
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += labels.numel()
            if progress is not None and ((step + 1) % config.log_every == 0 or step + 1 == steps):
                # The only host sync in the loop, once every log_every steps.
                elapsed = time.perf_counter() - epoch_start
                progress.set_postfix(
                    loss=f"{loss_sum.item() / seen:.3f}",
                    acc=f"{100 * correct.item() / seen:.1f}",
                    img_s=f"{seen / elapsed:.0f}",
                    refresh=False,  # the update below redraws once
                )
                progress.update(step + 1 - progress.n)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - epoch_start
        if progress is not None:
            progress.close()

        eval_model = ema.module if ema is not None else model
        result = evaluate(
            eval_model,
            batches(val_split, config, device, train=False, epoch=epoch),
            preprocess,
            num_classes,
            amp=use_amp,
            amp_dtype=amp_dtype,
            label_smoothing=config.label_smoothing,
        )
        row = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum.item() / max(seen, 1),
            "train_acc": 100.0 * correct.item() / max(seen, 1),
            "val_loss": result.loss,
            "val_top1": result.top1,
            "val_top5": result.top5,
            "epoch_seconds": time.perf_counter() - epoch_start,
            "images_per_second": seen / train_seconds,
        }
        history.append(row)
        say(
            f"epoch {epoch + 1}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.2f}% | "
            f"{bundle.val_name} loss {row['val_loss']:.3f} top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}% | "
            f"{row['images_per_second']:.0f} img/s, {row['epoch_seconds']:.1f} s"
        )
        write_summary(history, run_dir / "summary.csv")
        board.log(row)

        eval_weights = eval_model.state_dict()
        improved = result.top1 > best_top1
        if improved:
            best_top1, best_epoch = result.top1, epoch + 1
        rng = {"cpu": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        save_checkpoint(
            {
                **checkpoint_meta,
                "model": eval_weights,
                "train_model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "rng": rng,
                "epoch": epoch + 1,
                "history": history,
                "best_top1": best_top1,
                "best_epoch": best_epoch,
            },
            run_dir / "last.pt",
        )
        if improved:
            save_checkpoint(
                {**checkpoint_meta, "model": eval_weights, "epoch": epoch + 1, "val_top1": result.top1},
                run_dir / "best.pt",
            )
            write_plots(run_dir, history, result, bundle)
        else:
            _plots().plot_curves(history, run_dir / "curves.png", val_name=bundle.val_name)
    board.close()

    selected_on_test = bundle.val_name == "test"
    summary = {
        "model": config.model,
        "data": config.data,
        "epochs": config.epochs,
        "best_epoch": best_epoch,
        "best_top1": best_top1,
        "best_selected_on": bundle.val_name,
        "final": history[-1] if history else None,
    }
    if selected_on_test:
        summary["warning"] = (
            "best.pt was chosen on the test set, so its test accuracy is optimistically biased; "
            "use --val-split to select on a held-out part of the training set"
        )
    write_json(summary, run_dir / "results.json")
    say(
        f"best {bundle.val_name} top-1 {best_top1:.2f}% at epoch {best_epoch} (best.pt chosen on the "
        f"{bundle.val_name} split{'; flagged: model selection on the test set' if selected_on_test else ''})"
    )
    return TrainResult(run_dir, history, best_top1, best_epoch, ema.module if ema is not None else model)


def write_plots(run_dir: Path, history: list[dict[str, Any]], result: EvalResult, bundle: DataBundle) -> None:
    plots = _plots()
    plots.plot_curves(history, run_dir / "curves.png", val_name=bundle.val_name)
    plots.plot_predictions(
        result.sample_images,
        result.sample_labels,
        result.sample_predictions,
        bundle.classes,
        run_dir / "predictions.png",
        probabilities=result.sample_probabilities,
    )
    plots.plot_confusion(result.confusion, bundle.classes, run_dir / "confusion.png")


def _plots():
    from lightnets import plots

    return plots


def _progress(total: int, description: str, quiet: bool):
    if quiet:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="step", leave=False, dynamic_ncols=True, file=sys.stderr)


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig a run was started with, from its args.yaml (resolved extras are dropped)."""
    path = Path(run_dir) / "args.yaml"
    if not path.is_file():
        raise ValueError(f"cannot resume {run_dir}: {path} is missing (is it a lightnets run directory?)")
    values = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in fields(TrainConfig)}
    config = TrainConfig.from_dict({k: v for k, v in values.items() if k in known})
    config.out = str(run_dir)
    return config
