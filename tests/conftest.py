import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file from ../shared/data; missing is a skip locally and a failure under CI=true."""
    path = SHARED_DATA / name
    if not path.exists():
        message = f"{path} is missing: tests need ../shared/data beside the repository"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


# One variant per family in each form runs in the default suite; the other registered variants of a test over every
# model carry the slow mark (make test-all, CI's slow step), so each test still covers them all.
REPRESENTATIVES = (
    "spgnet_s2p6", "shufflenet_v1_g3_x1_0", "parnet_s", "asymmnet_large_x1_0",
    "spgnet_s2p6_cifar", "shufflenet_v1_g3_x0_5_cifar", "parnet_s_cifar", "asymmnet_small_x0_35_cifar",
)  # fmt: skip


def every_model(items: list, fast: tuple[str, ...] = REPRESENTATIVES) -> list:
    """``items`` (model names, or tuples of arguments ending with the name) as pytest parameters, those whose model
    is outside ``fast`` marked slow."""
    params = []
    for item in items:
        values = item if isinstance(item, tuple) else (item,)
        params.append(pytest.param(*values, marks=() if values[-1] in fast else pytest.mark.slow))
    return params


def subset_config(run_dir: Path, model: str, **settings):
    """A TrainConfig on the CIFAR-10 subset writing ``run_dir``, quiet, without DataLoader workers; ``settings``
    give the rest and override any of these."""
    from lightnets.train.config import TrainConfig

    data = f"cifar10:{shared_file('cifar-10-subset-python.tar.gz')}"
    return TrainConfig(**{"model": model, "data": data, "quiet": True, "workers": 0, "out": str(run_dir), **settings})


class Killed(BaseException):
    """Stands in for SIGKILL inside the test process: nothing after it runs, no handler sees it."""


def kill_after_steps(monkeypatch: pytest.MonkeyPatch, count: int | None) -> None:
    """Make the next run die (as if SIGKILLed) right after its ``count``-th step in this process (None: live)."""
    import lightnets.train.loop as training

    original = getattr(training.train_step, "original", training.train_step)
    calls = {"n": 0}

    def step(*args, **kwargs):
        original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == count:
            raise Killed

    step.original = original
    monkeypatch.setattr(training, "train_step", step)


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial statistics so that fusion checks are not vacuous."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _pinned_speed(tmp_path_factory):
    """Training runs in tests use the plain settings: a speed probe would add seconds to every run, and could pick
    a different memory format for two runs that must match. The probe's own tests ask for it; the cache it writes
    stays in a temporary folder (child processes inherit both)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIGHTNETS_SPEED", "off")
        patch.setenv("LIGHTNETS_CACHE", str(tmp_path_factory.mktemp("lightnets-cache")))
        yield
