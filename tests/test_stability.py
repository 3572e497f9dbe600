"""Every family trains stably from the first step at the default recipe.

Each run is the default recipe (SGD + Nesterov, lr 0.1 x batch / 256, one warm-up epoch then cosine, wd 5e-4,
label smoothing 0.1) on the CIFAR-10 subset, with epochs cut to 10 steps so that the peak lr (0.05 at batch 128)
is reached at step 10 and held into the cosine part. A stable start never lets a step's loss climb far above
the loss of a uniform guess, ln(10) = 2.30; with every residual branch's last BN starting at 1, ShuffleNet v1's
loss climbs past 3 within the warm-up (to 23 over a full subset epoch).
"""

import csv
import math

import pytest

import lightnets.train.loop as training
from lightnets.train.loop import train

from .conftest import subset_config

# Two epochs of every family at the recipe's peak lr: minutes on 2 cores (make test-all, CI's slow step).
pytestmark = pytest.mark.slow

LIMIT = math.log(10) + 0.5


def step_losses(tmp_path, monkeypatch, model: str, **model_kwargs) -> list[float]:
    original = training.load_dataset

    def small_val(*args, **kwargs):  # the point is the training steps; evaluate on a slice of the test set
        bundle = original(*args, **kwargs)
        bundle.val = training.TensorSplit(bundle.val.images[:128], bundle.val.labels[:128])
        return bundle

    monkeypatch.setattr(training, "load_dataset", small_val)
    config = subset_config(
        tmp_path / "run", model, epochs=2, batch_size=128, max_steps_per_epoch=10, model_kwargs=model_kwargs
    )
    result = train(config)
    with open(result.run_dir / "steps.csv") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize(
    ("model", "model_kwargs"),
    [
        ("shufflenet_v1_g3_x0_5_cifar", {}),
        ("spgnet_s2p6_cifar", {}),
        ("asymmnet_small_x0_35_cifar", {}),
        ("parnet_s_cifar", {"widths": (16, 32, 64, 256)}),  # ParNet-S's structure at a width CI can afford
    ],
)
def test_every_family_trains_without_a_loss_spike(tmp_path, monkeypatch, model, model_kwargs):
    losses = step_losses(tmp_path, monkeypatch, model, **model_kwargs)
    assert len(losses) == 20 and all(math.isfinite(loss) for loss in losses)
    worst = max(range(len(losses)), key=losses.__getitem__)
    assert losses[worst] <= LIMIT, f"step {worst + 1} loss {losses[worst]:.2f} above ln(10) + 0.5 ({LIMIT:.2f})"


def test_shufflenet_v1_without_zero_init_last_spikes(tmp_path, monkeypatch):
    # The same run with every BN weight at 1: the test above would catch the regression.
    losses = step_losses(tmp_path, monkeypatch, "shufflenet_v1_g3_x0_5_cifar", zero_init_last=False)
    assert max(losses) > LIMIT, f"expected a spike above {LIMIT:.2f}, got a maximum of {max(losses):.2f}"
