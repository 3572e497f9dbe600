"""Data-parallel training under torchrun: process group, which rank does what, and metric reduction.

lightnets has no launcher of its own. ``torchrun --nproc-per-node N -m lightnets train ...`` starts N
copies of the same command; each reads its rank from the environment torchrun sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``), joins the process group (NCCL on CUDA, Gloo on CPU) and trains its shard
of every global batch. Without those variables (or with ``WORLD_SIZE=1``) everything here is a no-op, so
the single-process path is the same code.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "ControlChannel",
    "DistContext",
    "all_reduce_sum",
    "broadcast_object",
    "check_distributed",
    "init_distributed",
    "launch_torchrun",
    "shutdown_distributed",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module created the process group (not a caller's script), so it ends it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes the run directory, checkpoints, plots and progress."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def init_distributed(device: torch.device, timeout_minutes: float = 30.0) -> tuple[DistContext, torch.device]:
    """Join torchrun's process group if there is one; returns the context and this rank's device.

    On CUDA each process takes ``cuda:LOCAL_RANK``; the backend is NCCL there and Gloo on CPU.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistContext(), device
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                "use --nproc-per-node no larger than the GPU count"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, owns_group=owns_group), device


def check_distributed(batch_size: int, sync_bn: bool, device: torch.device, context: DistContext) -> None:
    """Refuse settings a job of ``context.world_size`` processes cannot run, before any data is read."""
    world = context.world_size
    if batch_size % world:
        multiple = max(world, round(batch_size / world) * world)
        raise ValueError(
            f"--batch-size {batch_size} is the global batch and must split evenly over {world} processes: "
            f"use a multiple of {world}, e.g. {multiple}"
        )
    if sync_bn and device.type != "cuda":
        raise ValueError(
            "--sync-bn needs CUDA: PyTorch's SyncBatchNorm has no CPU kernel; drop it on CPU, where each process "
            "normalises over its own share of the batch"
        )


def shutdown_distributed(context: DistContext) -> None:
    """End the process group, unless the caller's own script set it up (it may have more to do with it)."""
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place; returned for chaining. A no-op in a single process."""
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(value: object, context: DistContext) -> object:
    """Rank 0's ``value`` on every rank (e.g. an error found while preparing the run directory)."""
    if not context.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ControlChannel:
    """Small host-side agreements between ranks, on a Gloo side group so they never wait for the GPU.

    Signals reach the ranks of a job at different steps (torchrun forwards them one process at a time, a
    terminal's Ctrl-C reaches each at its own moment), yet every rank must stop after the same step or the
    others block in the next gradient all-reduce. :meth:`poll` runs once per step on every rank: it starts an
    all-reduce (MAX) of this rank's signal number and returns the result of the previous step's, so the agreed
    stop comes one step after the first signal and no rank ever waits for it. In a single process it returns
    the signal at once, as before.
    """

    def __init__(self, context: DistContext) -> None:
        self.context = context
        self.group = dist.new_group(backend="gloo") if context.enabled else None
        self.pending: tuple[dist.Work, torch.Tensor] | None = None

    def _collect(self) -> int:
        if self.pending is None:
            return 0
        work, flag = self.pending
        work.wait()
        self.pending = None
        return int(flag.item())

    def poll(self, signum: int | None) -> int | None:
        """The signal every rank agrees to stop for (None: carry on), lagging one poll behind."""
        if not self.context.enabled:
            return signum
        agreed = self._collect()
        flag = torch.tensor([signum or 0], dtype=torch.int64)
        self.pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True), flag)
        return agreed or None

    def settle(self, signum: int | None) -> int | None:
        """The agreed signal now, including any poll still in flight; a blocking call for epoch boundaries."""
        if not self.context.enabled:
            return signum
        earlier = self._collect()
        flag = torch.tensor([signum or 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return max(earlier, int(flag.item())) or None

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block before the others (a download or extraction they then find done)."""
        if self.context.enabled and not self.context.is_main:
            dist.barrier(group=self.group)
        yield
        if self.context.enabled and self.context.is_main:
            dist.barrier(group=self.group)

    def gather(self, value: object) -> list[object]:
        """Every rank's ``value``, in rank order (a small picklable object: file lists, counts)."""
        if not self.context.enabled:
            return [value]
        values: list[object] = [None] * self.context.world_size
        dist.all_gather_object(values, value, group=self.group)
        return values


def launch_torchrun(nproc: int, argv: list[str]) -> None:
    """Replace this process with ``torchrun --standalone --nproc-per-node NPROC -m lightnets ARGV``.

    A thin shortcut for one machine; for several, run torchrun directly (see the README).
    """
    if nproc < 1:
        raise ValueError(f"invalid --nproc {nproc}: expected an integer >= 1")
    # torch.distributed.run is torchrun, taken from this interpreter so the workers run the same environment.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command += ["-m", "lightnets", *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
