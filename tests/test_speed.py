"""``--speed auto``: the probe keeps the faster candidate, its figures are cached by key and reused, explicit
settings are not probed, compile must repay itself within the run, and a resumed run reuses the recorded choice.

No test times anything against a threshold: one candidate is made slower on purpose (a sleep far longer than a
step of the tiny batch), or the figures come from a cache file written by the test.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import yaml

import lightnets.train.speed as speed
from lightnets.cli import main
from lightnets.models import create_model
from lightnets.models.checkpoint import load_checkpoint
from lightnets.train.config import TrainConfig, load_run_config
from lightnets.train.loop import train
from lightnets.train.speed import Candidate, choose_speed

from .conftest import Killed, kill_after_steps, subset_config

MODEL = "asymmnet_small_x0_35_cifar"
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def short_probe(monkeypatch):
    monkeypatch.setattr(speed, "MAX_TIMED_STEPS", 4)  # the slowed candidate's sleeps are most of a probe's time


def slowed(monkeypatch, is_slow, seconds: float = 0.15) -> list[Candidate]:
    """Make the candidates ``is_slow`` picks sleep in every step; returns the list of candidates built."""
    built: list[Candidate] = []
    original = speed.candidate_step

    def make(candidate, *args, **kwargs):
        built.append(candidate)
        step = original(candidate, *args, **kwargs)
        if not is_slow(candidate):
            return step

        def slow_step():
            time.sleep(seconds)
            step()

        return slow_step

    monkeypatch.setattr(speed, "candidate_step", make)
    return built


def choose(tmp_path: Path, mode: str = "auto", fixed=None, batch: int = 4, planned_steps: int = 100, **kwargs):
    return choose_speed(
        mode,
        fixed or {"channels_last": None, "compile": None, "amp": None},
        CPU,
        model=MODEL,
        model_kwargs={"num_classes": 10},
        model_factory=lambda: create_model(MODEL, num_classes=10),
        batch=batch,
        input_size=32,
        num_classes=10,
        planned_steps=planned_steps,
        cache_path=tmp_path / "speed.json",
        **kwargs,
    )


@pytest.mark.parametrize(
    "slow_layout",
    [True, pytest.param(False, marks=pytest.mark.slow)],  # the default suite keeps one direction
    ids=["channels-last-slowed", "contiguous-slowed"],
)
def test_the_probe_keeps_the_faster_of_two_candidates(tmp_path, monkeypatch, slow_layout) -> None:
    slowed(monkeypatch, lambda c: c.channels_last == slow_layout)
    choice = choose(tmp_path, mode="probe")
    assert choice.channels_last is (not slow_layout) and choice.compile is False and choice.amp is False
    assert choice.message.startswith(f"speed: {Candidate(not slow_layout, False, False).label()}")
    # a 100-step run of a tiny batch is far too short to repay a compile: not even tried
    assert "not tried" in choice.figures["not_used"]["compile"]


def test_the_figures_are_cached_by_key_and_reused(tmp_path, monkeypatch) -> None:
    built = slowed(monkeypatch, lambda c: c.channels_last)
    first = choose(tmp_path)
    assert len(built) == 2 and "cached in" in first.message
    again = choose(tmp_path)
    assert len(built) == 2, "the second run with the same key must not probe"
    assert "from the speed cache" in again.message and again.channels_last is False
    other_batch = choose(tmp_path, batch=6)
    assert len(built) == 4 and other_batch.channels_last is False
    keys = json.loads((tmp_path / "speed.json").read_text())
    assert len(keys) == 2 and all(MODEL in key and "| input 32 |" in key for key in keys)
    assert {"batch 4 x 1 process(es)", "batch 6 x 1 process(es)"} == {key.split(" | ")[1] for key in keys}
    choose(tmp_path, mode="probe")
    assert len(built) == 6, "--speed probe measures again"


def test_explicit_settings_are_not_probed(tmp_path, monkeypatch) -> None:
    built = slowed(monkeypatch, lambda c: not c.channels_last)  # channels-last would win the probe
    choice = choose(tmp_path, fixed={"channels_last": False, "compile": None, "amp": None})
    assert choice.channels_last is False and choice.message.startswith("speed: plain")
    assert all(not c.channels_last for c in built)
    everything = choose(tmp_path, fixed={"channels_last": True, "compile": False, "amp": False})
    assert (everything.channels_last, everything.message) == (True, None)


def test_off_and_short_runs_keep_the_plain_settings(tmp_path, monkeypatch) -> None:
    built = slowed(monkeypatch, lambda c: False)
    off = choose(tmp_path, mode="off")
    assert (off.channels_last, off.compile, off.amp, off.message) == (False, False, False, None)
    short = choose(tmp_path, planned_steps=speed.MIN_STEPS_FOR_PROBE - 1)
    assert (short.channels_last, short.compile) == (False, False) and "too short" in short.message
    assert built == []


def cache_with(tmp_path: Path, compile_seconds: float) -> None:
    """A cache entry for the key :func:`choose` uses: eager 1 s a step, compiled 0.5 s after ``compile_seconds``."""
    key = speed.cache_key(MODEL, {"num_classes": 10}, 4, 32, 1, CPU)
    rows = [
        {"channels_last": cl, "compile": compiled, "amp": False, "step_seconds": 0.5 if compiled else 1.0,
         "compile_seconds": compile_seconds if compiled else 0.0}
        for cl in (False, True) for compiled in (False, True)
    ]  # fmt: skip
    entry = {"measured": "2026-12-03T00:00:00", "probe_seconds": 1.0, "timings": rows, "failed": []}
    (tmp_path / "speed.json").write_text(json.dumps({key: entry}))


@pytest.mark.parametrize(("planned_steps", "compiles"), [(400, True), (1000, True), (150, False)])
def test_compile_is_chosen_only_when_the_run_repays_it(tmp_path, monkeypatch, planned_steps, compiles) -> None:
    # compile costs 100 s and saves 0.5 s a step: it pays from 200 steps on. At 150 planned steps the run's eager
    # time (150 s) is below the threshold at which compile is tried at all, and the cached eager figures serve.
    monkeypatch.setattr(speed, "COMPILE_WORTH_TRYING_S", {"cpu": 120.0})
    built = slowed(monkeypatch, lambda c: False)
    cache_with(tmp_path, compile_seconds=100.0)
    choice = choose(tmp_path, planned_steps=planned_steps)
    assert choice.compile is compiles and built == []
    monkeypatch.setattr(speed, "COMPILE_WORTH_TRYING_S", {"cpu": 100.0})
    cache_with(tmp_path, compile_seconds=100.0)
    assert choose(tmp_path, planned_steps=150).compile is False  # tried: 100 + 75 s against 150 s eager


def test_a_failing_compile_drops_the_candidate_and_is_remembered(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(speed, "COMPILE_WORTH_TRYING_S", {"cpu": 0.0})
    built = slowed(monkeypatch, lambda c: False)

    def no_compiler(model, *args, **kwargs):
        raise RuntimeError("InductorError: no working C++ compiler found\nlong traceback text")

    monkeypatch.setattr(torch, "compile", no_compiler)
    choice = choose(tmp_path)
    assert choice.compile is False
    assert choice.figures["not_used"]["compile"] == "InductorError: no working C++ compiler found"
    count = len(built)
    choose(tmp_path)
    assert len(built) == count, "a compile that failed here is not retried on every run"


def test_a_bad_speed_environment_value_is_refused(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LIGHTNETS_SPEED", "fast")
    assert main(["train", "--model", MODEL, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "invalid LIGHTNETS_SPEED='fast': expected auto, probe, off" in err and not (tmp_path / "run").exists()


def tiny(tmp_path: Path, **overrides) -> TrainConfig:
    settings = dict(epochs=2, batch_size=8, max_steps_per_epoch=4, deterministic=True, val_split=0.02)
    return subset_config(tmp_path / "run", MODEL, **{**settings, **overrides})


@pytest.mark.slow  # three short training runs
def test_the_choice_is_recorded_and_a_resumed_run_reuses_it_bitwise(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(speed, "MIN_STEPS_FOR_PROBE", 1)
    monkeypatch.setenv("LIGHTNETS_CACHE", str(tmp_path / "cache"))
    built = slowed(monkeypatch, lambda c: not c.channels_last)  # channels-last wins: not the plain default
    reference = train(tiny(tmp_path / "reference", speed="auto"))
    assert len(built) == 2
    recorded = yaml.safe_load((reference.run_dir / "args.yaml").read_text())
    assert (recorded["speed"], recorded["channels_last"], recorded["compile"]) == ("auto", True, False)
    assert recorded["speed_probe"]["chosen"] == "channels-last"

    config = tiny(tmp_path / "resumed", speed="probe")  # probes again, whatever the cache holds
    kill_after_steps(monkeypatch, 6)
    with pytest.raises(Killed):
        train(config)
    assert len(built) == 4
    kill_after_steps(monkeypatch, None)
    run_dir = Path(config.out)
    resumed = load_run_config(run_dir)
    assert (resumed.channels_last, resumed.compile, resumed.amp) == (True, False, False)
    train(resumed, resume=run_dir)
    assert len(built) == 4, "a resumed run reads its choice from args.yaml and does not probe"
    expected, actual = load_checkpoint(reference.run_dir / "last.pt"), load_checkpoint(run_dir / "last.pt")
    for name, tensor in expected["train_model"].items():
        assert torch.equal(tensor, actual["train_model"][name]), name
