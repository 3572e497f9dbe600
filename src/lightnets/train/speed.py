"""The fastest way to train a model on this machine, found by trying it: ``lightnets train --speed auto``.

Before the first epoch, :func:`choose_speed` times a few optimisation steps of each candidate (channels-last memory
or not, ``torch.compile`` or not, bf16 autocast where the device computes bf16 natively) on a copy of the model and
keeps the fastest. The candidates take turns, step by step, so that a change in the machine's load falls on all of
them alike. A compiled candidate is judged by the whole run: its compile time plus its steps against the others'
steps, so compile is kept only when it pays for itself within the run's planned steps; on a short run it is not
even tried.

Why a probe rather than a rule: the best setting differs per model and machine. On a 2-core AVX2 EPYC,
channels-last with compile trained ``asymmnet_small_x0_35_cifar`` 1.7x faster than the defaults, while
``shufflenet_v1_g3_x0_5_cifar`` gained most from compile alone; on AVX512-BF16 CPUs bf16 helps every family but
AsymmNet-Small.

The figures are cached per model, batch, input size, process count and machine (CPU model and flags, or GPU name,
and the torch version and thread count) in :func:`speed_cache_path`, so the next run with the same key reuses them.
The choice itself goes into args.yaml as the plain settings (``channels_last``, ``compile``, ``amp``), so
``--resume`` reads it back as given and never probes: a resumed run stays exact. Settings given explicitly are not
probed; ``--speed off`` keeps the plain defaults.
"""

from __future__ import annotations

import datetime
import itertools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightnets.data.batches import Preprocess
from lightnets.device import autocast_context, cpu_features, default_amp, device_name
from lightnets.files import atomic_write
from lightnets.models.errors import first_line
from lightnets.models.pretrained import cache_root

__all__ = [
    "SPEED_MODES",
    "Candidate",
    "SpeedChoice",
    "Timing",
    "best_for_run",
    "candidate_step",
    "candidates_for",
    "choose_speed",
    "speed_cache_path",
]

SPEED_MODES = ("auto", "probe", "off")

# ---- the probe's limits, in seconds of timed steps (compiling is counted apart: it is paid back or not chosen)
PROBE_BUDGET_S = {"cpu": 30.0, "cuda": 10.0}
MIN_TIMED_STEPS = 3  # per candidate, even past the budget: a median needs a few
MAX_TIMED_STEPS = 12
# A probe costs about ten steps of the run (two warm-up and three timed steps per eager candidate); a run much
# shorter than this cannot win back what it costs, so it keeps the plain settings.
MIN_STEPS_FOR_PROBE = 50
# Compile is tried only on runs whose planned time (best eager step x planned steps) is at least this long: a CPU
# compile of these networks takes tens of seconds, which a 1.2-1.7x gain repays only over minutes of training.
COMPILE_WORTH_TRYING_S = {"cpu": 300.0, "cuda": 60.0}


@dataclass(frozen=True)
class Candidate:
    """One way to run the training step."""

    channels_last: bool
    compile: bool
    amp: bool

    def label(self) -> str:
        parts = [
            name
            for name, on in (("channels-last", self.channels_last), ("compile", self.compile), ("bf16", self.amp))
            if on
        ]
        return " + ".join(parts) or "plain (fp32, contiguous, eager)"


@dataclass
class Timing:
    """A candidate's measured step time and, for a compiled one, what compiling cost beyond its first steps."""

    candidate: Candidate
    step_seconds: float
    compile_seconds: float = 0.0

    def run_seconds(self, steps: int) -> float:
        return self.compile_seconds + self.step_seconds * steps


@dataclass
class SpeedChoice:
    """The settings a run uses, the line that says why, and the figures behind it (for args.yaml)."""

    channels_last: bool
    compile: bool
    amp: bool
    message: str | None = None
    figures: dict[str, Any] | None = None


def speed_cache_path() -> Path:
    """``speed.json`` in lightnets' cache folder (:func:`lightnets.models.pretrained.cache_root`)."""
    return cache_root() / "speed.json"


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return device_name(device)
    return f"{device_name('cpu')} [{' '.join(cpu_features())}]"


def cache_key(
    model: str, model_kwargs: dict[str, Any], batch: int, input_size: int, world_size: int, device: torch.device
) -> str:
    """What decides a step's speed: the network, the per-process batch, the input, the processes sharing the
    machine, the machine, torch and its threads."""
    kwargs = json.dumps(model_kwargs, sort_keys=True, default=str)
    return (
        f"{model} {kwargs} | batch {batch} x {world_size} process(es) | input {input_size} | {_machine(device)} | "
        f"torch {torch.__version__} | {torch.get_num_threads()} threads"
    )


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: probing again is the cure
    return data if isinstance(data, dict) else {}


def _worth_compiling(eager: list[Timing], planned_steps: int, device: torch.device) -> tuple[bool, float]:
    """Whether the run is long enough to try compiled candidates, and its planned time at the best eager step."""
    planned = min((t.step_seconds for t in eager), default=float("inf")) * planned_steps
    return planned >= COMPILE_WORTH_TRYING_S.get(device.type, COMPILE_WORTH_TRYING_S["cpu"]), planned


def _cached_timings(
    entry: Any, candidates: list[Candidate], planned_steps: int, device: torch.device
) -> dict[Candidate, Timing] | None:
    """The entry's figures for the candidates this run needs, or None when one is missing (then the probe runs).
    An entry from a short run lacks the compiled candidates; a run long enough to try them probes again."""
    try:
        known = {}
        for row in entry["timings"]:
            candidate = Candidate(bool(row["channels_last"]), bool(row["compile"]), bool(row["amp"]))
            known[candidate] = Timing(candidate, float(row["step_seconds"]), float(row["compile_seconds"]))
        for row in entry.get("failed", []):  # a compile that failed on this machine is not retried every run
            candidate = Candidate(bool(row["channels_last"]), bool(row["compile"]), bool(row["amp"]))
            known.setdefault(candidate, None)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    eager = [c for c in candidates if not c.compile]
    needed = list(eager)
    if not eager or (
        all(known.get(c) for c in eager) and _worth_compiling([known[c] for c in eager], planned_steps, device)[0]
    ):
        needed += [c for c in candidates if c.compile]
    if not all(candidate in known for candidate in needed):
        return None
    usable = {candidate: known[candidate] for candidate in needed if known[candidate] is not None}
    return usable or None  # nothing ran before: probe again, which says why


def _write_cache(
    path: Path, key: str, timings: dict[Candidate, Timing], failed: dict[Candidate, str], probe_seconds: float
) -> str | None:
    """Add this key's figures to the cache; a cache that cannot be written only costs the next run a probe."""
    data = _read_cache(path)
    data[key] = {
        "measured": datetime.datetime.now().isoformat(timespec="seconds"),
        "probe_seconds": round(probe_seconds, 2),
        "timings": [
            {**asdict(t.candidate), "step_seconds": t.step_seconds, "compile_seconds": t.compile_seconds}
            for t in timings.values()
        ],
        "failed": [{**asdict(candidate), "reason": reason} for candidate, reason in failed.items()],
    }
    try:
        atomic_write(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError as error:
        return f"could not write the speed cache {path} ({error.strerror or error})"
    return None


def candidates_for(device: torch.device, fixed: dict[str, bool | None]) -> list[Candidate]:
    """Every combination the device can gain from, less those the explicit settings rule out. bf16 is a candidate
    only where the device computes it natively: a CPU without AVX512-BF16 or AMX emulates it, several times slower.
    """
    options = {
        "channels_last": [False, True],
        "compile": [False, True],
        "amp": [False, True] if default_amp(device) else [False],
    }
    for name, value in fixed.items():
        if value is not None:
            options[name] = [value]
    return [
        Candidate(*values) for values in itertools.product(options["channels_last"], options["compile"], options["amp"])
    ]


def candidate_step(
    candidate: Candidate,
    model_factory: Callable[[], nn.Module],
    device: torch.device,
    batch: int,
    input_size: int,
    num_classes: int,
) -> Callable[[], None]:
    """One optimisation step of a fresh copy of the model as the candidate runs it, on a random batch: uint8
    images through the preprocessing on the device, forward, loss, backward and an SGD update, as a run does."""
    model = model_factory().to(device)
    if candidate.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    forward = torch.compile(model) if candidate.compile else model
    preprocess = Preprocess((0.5,) * 3, (0.25,) * 3, input_size, candidate.channels_last).to(device)
    images = torch.randint(0, 256, (batch, 3, input_size, input_size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device)
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        with autocast_context(device, candidate.amp, torch.bfloat16):
            loss = criterion(forward(preprocess(images)).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


class _Probe:
    """Candidates warmed up once, then timed a step each in turn."""

    def __init__(self, make_step: Callable[[Candidate], Callable[[], None]]) -> None:
        self.make_step = make_step
        self.steps: dict[Candidate, Callable[[], None]] = {}
        self.first_calls: dict[Candidate, float] = {}
        self.times: dict[Candidate, list[float]] = {}
        self.failed: dict[Candidate, str] = {}
        self.started = time.perf_counter()

    def warm(self, candidates: list[Candidate]) -> None:
        """Build and run each candidate twice: the first call compiles (or fills caches), the second settles."""
        for candidate in candidates:
            begin = time.perf_counter()
            try:
                step = self.make_step(candidate)
                step()
                step()
            except Exception as error:  # a compile that fails here (no C compiler, an unsupported op) drops it
                self.failed[candidate] = first_line(error)
                continue
            self.steps[candidate] = step
            self.first_calls[candidate] = time.perf_counter() - begin
            self.times[candidate] = []

    def time_rounds(self, budget_s: float) -> None:
        """Rounds of one timed step per candidate until each has MIN_TIMED_STEPS and the budget is spent (or each
        has MAX_TIMED_STEPS)."""
        spent = 0.0
        while True:
            counts = [len(times) for times in self.times.values()]
            if not counts or min(counts) >= MAX_TIMED_STEPS or (min(counts) >= MIN_TIMED_STEPS and spent >= budget_s):
                return
            for candidate, step in self.steps.items():
                begin = time.perf_counter()
                step()
                elapsed = time.perf_counter() - begin
                self.times[candidate].append(elapsed)
                spent += elapsed

    def timings(self) -> dict[Candidate, Timing]:
        result = {}
        for candidate, times in self.times.items():
            median = statistics.median(times)
            # Compiling is what the two warm-up calls took beyond two ordinary steps.
            extra = max(0.0, self.first_calls[candidate] - 2 * median) if candidate.compile else 0.0
            result[candidate] = Timing(candidate, median, extra)
        return result


def _probe(
    candidates: list[Candidate],
    make_step: Callable[[Candidate], Callable[[], None]],
    device: torch.device,
    planned_steps: int,
) -> tuple[dict[Candidate, Timing], dict[Candidate, str], dict[Candidate, str], float]:
    """Time the eager candidates; then, when the run is long enough to repay a compile, the compiled ones with them.
    The RNG streams are left as they were: a probed run draws the same weights and batches as an unprobed one."""
    eager = [c for c in candidates if not c.compile]
    compiled = [c for c in candidates if c.compile]
    budget = PROBE_BUDGET_S.get(device.type, PROBE_BUDGET_S["cpu"])
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        probe = _Probe(make_step)
        probe.warm(eager)
        probe.time_rounds(budget / 2 if compiled else budget)
        worth, planned = _worth_compiling(list(probe.timings().values()), planned_steps, device)
        if compiled and worth:
            probe.warm(compiled)
            probe.time_rounds(budget)  # every candidate again, in turns, now with the compiled ones
    not_tried = (
        {}
        if worth or not eager
        else {
            c: f"not tried: the run's planned {planned:.0f} s at the best eager step is too short to repay a compile"
            for c in compiled
        }
    )
    seconds = time.perf_counter() - probe.started
    return probe.timings(), probe.failed, not_tried, seconds


def best_for_run(timings: dict[Candidate, Timing], planned_steps: int) -> Timing:
    """The candidate that finishes ``planned_steps`` steps first, its compile time included."""
    return min(timings.values(), key=lambda t: t.run_seconds(planned_steps))


def _choice_line(
    best: Timing,
    timings: dict[Candidate, Timing],
    baseline: Candidate,
    batch: int,
    world_size: int,
    source: str,
) -> str:
    per = " per process" if world_size > 1 else ""
    images_per_s = batch / best.step_seconds
    against = timings.get(baseline)
    if against is not None and against.candidate != best.candidate:
        ratio = (
            f", {against.step_seconds / best.step_seconds:.2f}x the plain settings "
            f"({images_per_s:.0f} vs {batch / against.step_seconds:.0f} img/s{per})"
        )
    else:
        ratio = f" ({images_per_s:.0f} img/s{per})"
    compiled = f", compile {best.compile_seconds:.0f} s" if best.candidate.compile else ""
    return f"speed: {best.candidate.label()}{ratio}{compiled}; {source}"


def choose_speed(
    mode: str,
    fixed: dict[str, bool | None],
    device: torch.device,
    *,
    model: str,
    model_kwargs: dict[str, Any],
    model_factory: Callable[[], nn.Module],
    batch: int,
    input_size: int,
    num_classes: int,
    planned_steps: int,
    world_size: int = 1,
    cache_path: Path | None = None,
    write_cache: bool = True,
) -> SpeedChoice:
    """The settings to train with. ``fixed`` holds the explicit ``channels_last``, ``compile`` and ``amp`` (None:
    not given). ``mode`` "off" fills the rest with the plain defaults; "auto" uses the cached figures for this key
    or probes; "probe" always probes. ``batch`` is the per-process batch; under torchrun only rank 0 writes the
    cache (``write_cache``)."""
    baseline = Candidate(False, False, default_amp(device))
    plain = {name: value if value is not None else getattr(baseline, name) for name, value in fixed.items()}
    if mode == "off":
        return SpeedChoice(**plain)
    candidates = candidates_for(device, fixed)
    if len(candidates) == 1:  # everything was given
        return SpeedChoice(**asdict(candidates[0]))
    if planned_steps < MIN_STEPS_FOR_PROBE:
        line = f"speed: plain settings; a run of {planned_steps} steps is too short to repay a speed probe"
        return SpeedChoice(**plain, message=line)
    cache_path = cache_path or speed_cache_path()
    key = cache_key(model, model_kwargs, batch, input_size, world_size, device)
    entry = _read_cache(cache_path).get(key) if mode == "auto" else None
    timings = _cached_timings(entry, candidates, planned_steps, device) if entry else None
    if timings is not None:
        source = f"from the speed cache ({cache_path}, measured {entry['measured']}); --speed probe measures again"
        unused: dict[Candidate, str] = {}
    else:

        def make_step(candidate: Candidate) -> Callable[[], None]:
            return candidate_step(candidate, model_factory, device, batch, input_size, num_classes)

        timings, failed, not_tried, seconds = _probe(candidates, make_step, device, planned_steps)
        unused = {**failed, **not_tried}
        if not timings:
            reasons = "; ".join(f"{c.label()}: {why}" for c, why in failed.items())
            raise RuntimeError(f"no training step ran in the speed probe ({reasons}); pass --speed off")
        compile_s = sum(t.compile_seconds for t in timings.values())
        source = f"probe {seconds - compile_s:.0f} s"
        source += f" + compiling {compile_s:.0f} s" if compile_s else ""
        source += f" over {len(timings)} candidates"
        warning = _write_cache(cache_path, key, timings, failed, seconds) if write_cache else None
        source += f"; {warning}" if warning else f", cached in {cache_path}"
    best = best_for_run(timings, planned_steps)
    figures = {
        "chosen": best.candidate.label(),
        "planned_steps": planned_steps,
        "candidates": {
            t.candidate.label(): {
                "img_per_s": round(batch / t.step_seconds, 1),
                "compile_s": round(t.compile_seconds, 1),
            }
            for t in timings.values()
        },
        "not_used": {c.label(): why for c, why in unused.items()},
    }
    line = _choice_line(best, timings, baseline, batch, world_size, source)
    return SpeedChoice(**asdict(best.candidate), message=line, figures=figures)
