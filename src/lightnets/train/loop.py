"""Training: the practitioners' recipe as one loop over epochs and steps, read top to bottom.

:func:`train` checks everything it can without data, then sets up in order (the run directory and what it
resumes, the data, the model and its optimisation state) and runs the epochs: :func:`train_one_epoch` (a
:func:`train_step` per batch), :func:`lightnets.evaluation.evaluate`, then the epoch's row and checkpoints. What
the run shares is a few named things (:mod:`lightnets.train.run`): the :class:`Job` of processes, the
:class:`Schedule`, the :class:`StepRecipe`, the :class:`RunData` and the :class:`RunFiles`; each function takes
the ones it uses.

Recipe defaults: SGD with Nesterov momentum 0.9, lr 0.1 per 256 images scaled linearly with the batch, weight
decay 5e-4 on conv/linear weights only, label smoothing 0.1, a linear warmup then cosine decay assigned from the
global step, batch 256, crop and flip (``aug`` adds the authors' augmentations), bf16 autocast on CUDA and on CPUs
with native bf16. Under torchrun every process runs this code on its share of each global batch with
DistributedDataParallel; metrics are all-reduced and rank 0 alone writes (see :mod:`lightnets.distributed`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightnets.data import BadImageLog, TensorSplit, batch_augmentation, load_dataset, parse_data_spec
from lightnets.data.batches import Preprocess, steps_per_epoch
from lightnets.device import autocast_context, resolve_device
from lightnets.distributed import (
    ControlChannel,
    DistContext,
    all_reduce_sum,
    check_distributed,
    init_distributed,
    shutdown_distributed,
)
from lightnets.evaluation import EvalResult, evaluate
from lightnets.models import create_model
from lightnets.models.checkpoint import check_checkpoint
from lightnets.train import rundir
from lightnets.train.config import TrainConfig, augment_spec, resolved_settings, validate_config
from lightnets.train.finetune import starting_weights
from lightnets.train.lock import RunDirLock
from lightnets.train.metrics import EpochSums, begin_sums, epoch_row, running_sums, show_progress
from lightnets.train.optim import set_lr, warmup_cosine
from lightnets.train.run import (
    Job,
    RunData,
    RunFiles,
    Schedule,
    StepRecipe,
    check_batch_size,
    check_classes_read,
    describe_run,
    normalized_bundle,
    run_speed,
    skipped_image_paths,
)
from lightnets.train.rundir import save_checkpoint
from lightnets.train.signals import (
    Determinism,
    StopSignals,
    TrainingError,
    TrainingInterrupted,
    check_finite,
    interrupted,
    position,
    stop_if_signalled,
)
from lightnets.train.state import (
    TrainResult,
    TrainState,
    build_state,
    check_input_size,
    checkpoint_meta,
    meta_model,
    open_resume,
    restore_state,
    rng_state,
    training_checkpoint,
)

__all__ = ["TrainResult", "train", "train_one_epoch", "train_step"]


def train(config: TrainConfig, resume: str | Path | None = None) -> TrainResult:
    """Train ``config.model`` on ``config.data``; with ``resume``, continue that run from its last checkpoint.

    Every setting is checked, and the output directory probed, before any data is read. SIGINT and SIGTERM
    finish the step in flight, write last.pt and raise :class:`TrainingInterrupted`; a NaN or infinite loss
    raises :class:`NonFiniteLossError` (``nan_policy="stop"``) or skips that step's update (``"skip"``).
    """
    validate_config(config)
    device = resolve_device(config.device)
    context, device = init_distributed(device)
    try:
        result = _checked_run(config, resume, device, context)
    except TrainingInterrupted:
        shutdown_distributed(context)
        raise
    shutdown_distributed(context)  # other failures leave the group: a peer may be gone, torchrun ends the job
    return result


def _checked_run(config: TrainConfig, resume: Any, device: torch.device, context: DistContext) -> TrainResult:
    """Everything that can be checked without data first, then the run; a run that never started leaves no dir."""
    check_distributed(config.batch_size, config.sync_bn, device, context)
    run_dir = rundir.choose_run_dir(config.out, resume, config.model, config.data, context)
    lock = RunDirLock(run_dir)  # rank 0 holds it for the job
    if context.is_main and run_dir.is_dir():
        lock.acquire()  # before anything reads or cleans the directory: another process may be training there
    with lock:
        rundir.check_run_dir(run_dir, resume)
        checkpoint = open_resume(run_dir, config, clean=context.is_main) if resume else None
        shape_model = meta_model(config)
        # CIFAR keeps its native 32 px unless asked; folder images are cropped to the model's own size.
        input_size = config.input_size or (
            32
            if parse_data_spec(config.data).kind != "folder"
            else int(getattr(shape_model, "default_input_size", 224))
        )
        check_input_size(
            shape_model, config.model, input_size, lambda: create_model(config.model, **config.model_kwargs)
        )
        created = context.is_main and not run_dir.exists()
        try:
            if context.is_main:
                rundir.check_output_dir(run_dir, rundir.checkpoint_bytes(shape_model, config.ema))
                lock.acquire()
            with Determinism(config.deterministic, device):
                quiet = config.quiet or not context.is_main  # one rank reports for the job
                say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
                job = Job(device, context, ControlChannel(context), say)
                data, recipe, schedule, files, state = _set_up(config, job, run_dir, input_size, resume, checkpoint)
                # Only around the loop: during set-up there is nothing to save, and Ctrl-C should act at once.
                with StopSignals() as job.stop:
                    return _epochs(config, job, data, recipe, schedule, files, state)
        except BaseException:
            lock.release()  # removes the lock file, so a run that never started can leave no directory
            if created and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
            raise


def _set_up(
    config: TrainConfig, job: Job, run_dir: Path, input_size: int, resume: Any, checkpoint: dict[str, Any] | None
) -> tuple[RunData, StepRecipe, Schedule, RunFiles, TrainState]:
    """The data, the model and its optimisation state (restored when resuming), the schedule and the run files."""
    device, context = job.device, job.context
    torch.manual_seed(config.seed)  # the weights and the data order follow from the seed
    with job.control.main_first():  # one download of a missing CIFAR archive, not one per rank
        bundle = load_dataset(
            config.data,
            data_root=config.data_root,
            input_size=input_size,
            val_split=config.val_split,
            seed=config.seed,
            strict=config.strict,
            augment=augment_spec(config),
            allow_empty_classes=config.allow_empty_classes,
        )
    if checkpoint is not None:
        check_checkpoint(checkpoint, classes=list(bundle.classes), what=f"--data {config.data}")
    check_batch_size(config, len(bundle.train))
    model_kwargs = {**config.model_kwargs, "num_classes": len(bundle.classes)}
    start, weights_cfg = starting_weights(config.weights, config.model, model_kwargs, checkpoint, job.say)
    bundle = normalized_bundle(config, bundle, checkpoint, job.control, job.say, weights_cfg)  # --normalize's
    channel_order = weights_cfg.get("channel_order", "RGB")
    steps = steps_per_epoch(len(bundle.train), config.batch_size, config.max_steps_per_epoch)
    speed = run_speed(config, job, model_kwargs, input_size, steps * config.epochs)
    # From here on the config says what runs; args.yaml records it, so --resume reads it back as given.
    config = dataclasses.replace(config, channels_last=speed.channels_last, compile=speed.compile, amp=speed.amp)
    settings = resolved_settings(config, device, bundle, context.world_size)
    if speed.figures is not None:
        settings["speed_probe"] = speed.figures
    state = build_state(config, model_kwargs, settings["lr"], device, context, start)

    train_split, val_split = bundle.train, bundle.val
    if isinstance(train_split, TensorSplit):  # the in-memory path: the whole split lives on the device
        train_split = TensorSplit(train_split.images.to(device), train_split.labels.to(device))
        val_split = TensorSplit(val_split.images.to(device), val_split.labels.to(device))
    data = RunData(
        bundle,
        train_split,
        val_split,
        augment=batch_augmentation(augment_spec(config), bundle.mean, bundle.std) if bundle.kind != "folder" else None,
        bad_images=BadImageLog(config.strict),
        batch_size=config.batch_size,
        seed=config.seed,
        workers=config.workers,
        allow_empty_classes=config.allow_empty_classes,
        empty_classes_warned=set(bundle.empty_classes),  # warned about when the data was loaded
    )
    total_steps = steps * config.epochs
    lr_factor = warmup_cosine(
        total_steps, min(total_steps, round(config.warmup_epochs * steps)), config.min_lr / settings["lr"]
    )
    schedule = Schedule(
        config.epochs,
        steps,
        lambda global_step: settings["lr"] * lr_factor(global_step),
        config.log_every,
        config.checkpoint_every,
    )
    forward: nn.Module = state.model
    if context.enabled:  # averages gradients in backward, and starts every rank from rank 0's weights
        forward = nn.parallel.DistributedDataParallel(forward, device_ids=[device] if device.type == "cuda" else None)
    recipe = StepRecipe(
        forward=torch.compile(forward) if config.compile else forward,
        criterion=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
        preprocess=Preprocess(
            bundle.mean, bundle.std, bundle.input_size, config.channels_last, bgr=channel_order == "BGR"
        ).to(device),
        amp=config.amp,
        amp_dtype=getattr(torch, config.amp_dtype),
        nan_policy=config.nan_policy,
    )
    files = RunFiles(run_dir, checkpoint_meta(config, model_kwargs, bundle, channel_order))
    if checkpoint is not None:
        restore_state(state, checkpoint, config, device, context)
        data.bad_images.paths = dict(state.skipped_images)
        files.last_saved = position(state.epoch, state.step)
        threads = checkpoint.get("threads")
        if config.deterministic and threads and threads != torch.get_num_threads():
            # Reductions split their work by thread: the same count is part of bitwise reproducibility.
            job.say(f"using {threads} threads as this run did before (not {torch.get_num_threads()})")
            torch.set_num_threads(threads)
        job.say(f"resuming {run_dir} at epoch {state.epoch + 1}, step {state.step + 1} of {steps}")
    else:
        if resume:
            job.say(f"{run_dir} has no checkpoint yet: starting it from the beginning")
        if job.is_main:
            rundir.write_args(settings, run_dir)
    return data, recipe, schedule, files, state


def _epochs(
    config: TrainConfig,
    job: Job,
    data: RunData,
    recipe: StepRecipe,
    schedule: Schedule,
    files: RunFiles,
    state: TrainState,
) -> TrainResult:
    """Per epoch: train, evaluate, log, save; then the run's results."""
    bundle, run_dir = data.bundle, files.run_dir
    board = rundir.TensorBoard(run_dir) if job.is_main else None
    job.say(describe_run(config.model, config.data, bundle, job, schedule, run_dir))
    if bundle.ignored_files:
        job.say(f"ignored {len(bundle.ignored_files)} non-image file(s) in the class folders")
    stop_if_signalled(job.control, job.stop, run_dir, "before the first step")  # nothing new to save yet
    start_epoch = state.epoch
    for epoch in range(start_epoch, schedule.epochs):
        train_batches = data.batches(job, epoch, train=True, steps=schedule.steps, first_step=state.step)
        progress = rundir.progress_bar(
            schedule.steps, f"epoch {epoch + 1}/{schedule.epochs}", config.quiet or not job.is_main
        )
        sums = train_one_epoch(state, recipe, train_batches, epoch, schedule, job, data, files, progress)
        result = evaluate(
            state.eval_model,
            data.batches(job, epoch, train=False),
            recipe.preprocess,
            len(bundle.classes),
            amp=recipe.amp,
            amp_dtype=recipe.amp_dtype,
            label_smoothing=config.label_smoothing,
            context=job.context,
        )
        check_classes_read(data, job, epoch)  # every file of the epoch has now been met once
        state.history.append(epoch_row(job, schedule, data.bad_images, bundle.val_name, epoch, sums, result))
        improved = _save_epoch(state, job, data, files, schedule, epoch, result)
        if board is not None:
            board.log(state.history[-1])
            rundir.write_plots(run_dir, state.history, result if improved else None, bundle.classes, bundle.val_name)
        if epoch + 1 < schedule.epochs:  # every epoch, on every rank: it is a collective
            stop_if_signalled(job.control, job.stop, run_dir, f"at the end of epoch {epoch + 1}")
        else:
            job.control.settle(job.stop.signum)
    if board is not None:
        board.close()
        if start_epoch >= schedule.epochs:  # killed after the last checkpoint: finish what it did not get to
            rundir.write_summary(state.history, run_dir / "summary.csv")
            rundir.write_step_losses(state.step_losses, schedule.steps, schedule.lr_at, run_dir / "steps.csv")
    return _finish(config, state, job, data, files)


def train_one_epoch(
    state: TrainState,
    recipe: StepRecipe,
    batches: Any,
    epoch: int,
    schedule: Schedule,
    job: Job,
    data: RunData,
    files: RunFiles,
    progress: Any = None,
) -> EpochSums:
    """One pass over ``batches`` from where the run stands (``state.step``: mid-epoch after a resume), each step
    at the lr of its global step; mid-epoch checkpoints as the schedule says, and on a signal. The epoch's sums."""
    steps, nan_policy = schedule.steps, recipe.nan_policy
    state.model.train()
    first_step = state.step
    sums = begin_sums(job, steps, data.bad_images, state.running, first_step)
    if progress is not None and first_step:
        progress.update(first_step)
    try:
        for step, (images, labels) in enumerate(batches, start=first_step):
            set_lr(state.optimizer, schedule.lr_at(epoch * steps + step))
            train_step(state, recipe, job, images, labels, sums, step)
            done = step + 1
            log_point = done % schedule.log_every == 0 or done == steps
            # On CPU reading the flag costs nothing (nothing runs ahead of Python), so a NaN stops the run at
            # once; on CUDA it is read only where the loop syncs anyway, and always before a checkpoint.
            if job.device.type == "cpu" or log_point:
                check_finite(nan_policy, sums.nonfinite, done, epoch=epoch, steps=steps, last_saved=files.last_saved)
            if progress is not None and log_point:
                show_progress(progress, sums, done, job.context.world_size)
            # Every rank must stop after the same step: a signal is acted on once all ranks know of it.
            signum = job.control.poll(job.stop.signum)
            due = schedule.checkpoint_every and (epoch * steps + done) % schedule.checkpoint_every == 0
            if (due and done < steps) or signum is not None:  # the epoch's end writes last.pt anyway
                check_finite(
                    nan_policy, sums.nonfinite, done, epoch=epoch, steps=steps, last_saved=files.last_saved,
                    model=state.model,
                )  # fmt: skip
                state.step, state.running = done, running_sums(sums, data.bad_images, job.context, done)
                _save(job, files, _last_checkpoint(state, job, data, files), "last.pt")
                files.last_saved = position(epoch, done)
            if signum is not None:
                raise interrupted(files.run_dir, f"after epoch {epoch + 1} step {done} of {steps}", signum, job.context)
    finally:
        if progress is not None:
            progress.close()
    check_finite(
        nan_policy, sums.nonfinite, steps, epoch=epoch, steps=steps, last_saved=files.last_saved, model=state.model
    )
    if job.device.type == "cuda":
        torch.cuda.synchronize(job.device)
    sums.seconds = time.perf_counter() - sums.start
    state.step_losses[epoch + 1] = all_reduce_sum(sums.step_loss, job.context).cpu()
    return sums


def train_step(
    state: TrainState,
    recipe: StepRecipe,
    job: Job,
    images: torch.Tensor,
    labels: torch.Tensor,
    sums: EpochSums,
    step: int,
) -> None:
    """One optimisation step at the lr already set; its loss and gradient norm go into ``sums``."""
    model, context = state.model, job.context
    update, weight = labels.numel() > 0, 1.0  # a batch is empty when all its images failed to decode
    if not update and context.enabled:
        # The other ranks are about to wait for this one's gradients. Two blank images at weight 0 take part in
        # the all-reduce without moving the weights (two: BN in training mode refuses one).
        size = recipe.preprocess.input_size
        images, labels, weight, update = images.new_zeros(2, 3, size, size), labels.new_zeros(2), 0.0, True
    if not update:
        sums.step_loss[step] = float("nan")
        return
    if recipe.nan_policy == "skip":
        buffers = [b.detach().clone() for b in model.buffers()]  # BN statistics a bad step would poison
    with autocast_context(job.device, recipe.amp, recipe.amp_dtype):
        logits = recipe.forward(recipe.preprocess(images))
        loss = recipe.criterion(logits.float(), labels) * weight
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    finite = torch.isfinite(loss.detach())
    if recipe.nan_policy == "skip":
        # Whether to update must be known before updating, so this policy reads the flag every step (GradScaler
        # makes the same host sync). Under torchrun a non-finite loss on any rank has already poisoned every rank's
        # averaged gradients, so all ranks skip together.
        if context.enabled:
            finite = all_reduce_sum((~finite).int(), context) == 0
        if not bool(finite):
            update = False
            state.skipped_steps += 1
            with torch.no_grad():
                for buffer, saved in zip(model.buffers(), buffers):
                    buffer.copy_(saved)
            job.say(f"skipped the update of step {step + 1}: non-finite loss")
    else:
        sums.nonfinite[step] = ~finite
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads) if grads else loss.new_zeros(())
    if state.scaler.is_enabled():  # float16: the norm of the true gradients (scaler.step syncs anyway)
        grad_norm = grad_norm / state.scaler.get_scale()
    # Each rank adds its share: the all-reduced sum is the global batch's loss, and the (averaged) norm.
    sums.step_loss[step] = torch.stack([loss.detach(), grad_norm.to(loss.dtype)]) / context.world_size
    if update:
        state.scaler.step(state.optimizer)
        state.scaler.update()
        if state.ema is not None:
            state.ema.update(model)
        if weight:
            sums.loss_sum += loss.detach() * labels.numel()
            sums.correct += (logits.detach().argmax(1) == labels).sum()
            sums.seen += labels.numel()


def _last_checkpoint(state: TrainState, job: Job, data: RunData, files: RunFiles) -> dict[str, Any]:
    """last.pt at the state's position (a collective under torchrun: it gathers every rank's stream and files)."""
    state.skipped_images = skipped_image_paths(job, data.bad_images)
    rng = rng_state(job.device)
    per_rank = job.control.gather(rng) if job.context.enabled else None
    return training_checkpoint(state, files.meta, rng, per_rank, torch.get_num_threads())


def _save_epoch(
    state: TrainState, job: Job, data: RunData, files: RunFiles, schedule: Schedule, epoch: int, result: EvalResult
) -> bool:
    """best.pt if the epoch improved, last.pt, summary.csv and steps.csv; whether it improved."""
    improved = result.top1 > state.best_top1
    if improved:
        state.best_top1, state.best_epoch = result.top1, epoch + 1
        # best.pt before last.pt: a kill between the two then redoes this epoch (rewriting best.pt) instead of
        # resuming past it with best.pt one improvement behind.
        best = {**files.meta, "model": state.eval_model.state_dict(), "epoch": epoch + 1, "val_top1": result.top1}
        _save(job, files, best, "best.pt")
    state.epoch, state.step, state.running = epoch + 1, 0, None
    _save(job, files, _last_checkpoint(state, job, data, files), "last.pt")
    files.last_saved = position(epoch + 1, 0)
    if job.is_main:
        try:
            rundir.write_summary(state.history, files.run_dir / "summary.csv")
            rundir.write_step_losses(state.step_losses, schedule.steps, schedule.lr_at, files.run_dir / "steps.csv")
        except OSError as error:
            raise TrainingError(
                f"could not write to {files.run_dir} ({error.strerror or error}); last.pt is complete: "
                f"free space, then run: lightnets train --resume {files.run_dir}"
            ) from None
    return improved


def _save(job: Job, files: RunFiles, checkpoint: dict[str, Any], name: str) -> None:
    if not job.is_main:
        return
    try:
        if name == "last.pt":
            rundir.keep_previous(files.run_dir / name)
        save_checkpoint(checkpoint, files.run_dir / name)
    except OSError as error:
        raise TrainingError(
            f"could not write {files.run_dir / name} ({error.strerror or error}); the {name} on disk is still the "
            f"previous complete one; free space or fix {files.run_dir}, then run: "
            f"lightnets train --resume {files.run_dir}"
        ) from None


def _finish(config: TrainConfig, state: TrainState, job: Job, data: RunData, files: RunFiles) -> TrainResult:
    skipped = skipped_image_paths(job, data.bad_images)  # on every rank: it gathers
    result = TrainResult(
        files.run_dir,
        state.history,
        state.best_top1,
        state.best_epoch,
        state.eval_model,
        skipped_images=len(skipped),
        skipped_steps=state.skipped_steps,
    )
    if job.is_main:
        message = rundir.write_results(
            files.run_dir, config, data.bundle, state.history, state.best_top1, state.best_epoch, skipped,
            state.skipped_steps, job.context.world_size,
        )  # fmt: skip
        job.say(message)
    return result
