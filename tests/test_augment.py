"""The augmentation presets: batched on-device versions for CIFAR, torchvision v2 policies for folders."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import lightnets.device as runtime
import lightnets.train.loop as training
from lightnets.cli import main
from lightnets.data import AugmentSpec, TensorSplit, batch_augmentation, load_dataset
from lightnets.data.augment import color_jitter, cutout, random_erasing
from lightnets.data.batches import tensor_batches
from lightnets.data.folder import SeededSamples, train_transform
from lightnets.device import default_amp
from lightnets.train.config import TrainConfig, validate_config

from .conftest import shared_file, subset_config

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def batch(seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (16, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_color_jitter_is_per_image_seeded_and_identity_at_strength_zero():
    images = batch()
    assert torch.equal(color_jitter(images, 0.0), images)
    first = color_jitter(images, 0.4, torch.Generator().manual_seed(1))
    again = color_jitter(images, 0.4, torch.Generator().manual_seed(1))
    assert first.dtype == torch.uint8 and first.shape == images.shape and torch.equal(first, again)
    changed = (first != images).flatten(1).float().mean(1)
    assert bool((changed > 0.5).all())  # every image gets its own factors, none is left as it was
    gray = torch.full((4, 3, 8, 8), 128, dtype=torch.uint8)  # no colour: saturation cannot change it
    shifted = color_jitter(gray, 0.4, torch.Generator().manual_seed(2))
    assert bool((shifted[:, 0] == shifted[:, 1]).all())


def test_random_erasing_fills_one_box_per_image_with_noise():
    images = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    assert torch.equal(random_erasing(images, 0.0, MEAN, STD, torch.Generator().manual_seed(0)), images)
    erased = random_erasing(images, 1.0, MEAN, STD, torch.Generator().manual_seed(0))
    again = random_erasing(images, 1.0, MEAN, STD, torch.Generator().manual_seed(0))
    assert torch.equal(erased, again)
    touched = (erased != 0).any(1)  # (B, H, W): where noise landed
    for mask in touched:
        rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert height * width <= 32 * 32 / 3 + 40  # at most a third of the image, up to rounding of the sides
        assert height * width >= 32 * 32 * 0.02 - 8
    # The noise is the normalised standard normal in pixel units: its mean is the dataset mean.
    values = erased[:, 0][touched].float()
    assert abs(values.mean().item() - MEAN[0] * 255) < 8
    half = random_erasing(images, 0.5, MEAN, STD, torch.Generator().manual_seed(3))
    assert 10 < int((half != 0).flatten(1).any(1).sum()) < 54


def test_cutout_sets_a_square_to_the_mean_and_may_hang_over_the_border():
    images = torch.full((200, 3, 32, 32), 7, dtype=torch.uint8)
    out = cutout(images, 16, MEAN, torch.Generator().manual_seed(0))
    filled = (out[:, 0] != 7).flatten(1).sum(1)
    assert int(filled.max()) == 256 and int(filled.min()) < 256  # whole squares inside, clipped ones at borders
    assert set(out[:, 0].unique().tolist()) == {7, round(MEAN[0] * 255)}


def test_batch_augmentation_is_none_by_default_and_refuses_per_image_policies():
    assert batch_augmentation(AugmentSpec(), MEAN, STD) is None
    augment = batch_augmentation(AugmentSpec("colorjitter", random_erasing=0.5, cutout=8), MEAN, STD)
    assert augment(batch(), torch.Generator().manual_seed(0)).shape == (16, 3, 32, 32)
    with pytest.raises(ValueError, match="--aug randaugment runs per image in a folder"):
        batch_augmentation(AugmentSpec("randaugment"), MEAN, STD)


def test_augmented_cifar_batches_resume_at_any_step():
    split = TensorSplit(batch(size=32).repeat(4, 1, 1, 1), torch.arange(64) % 10)
    augment = batch_augmentation(AugmentSpec("colorjitter", random_erasing=0.5, cutout=8), MEAN, STD)
    full = list(tensor_batches(split, 16, train=True, seed=5, epoch=2, augment=augment))
    later = list(tensor_batches(split, 16, train=True, seed=5, epoch=2, start_step=2, augment=augment))
    plain = list(tensor_batches(split, 16, train=True, seed=5, epoch=2))
    assert len(full) == 4 and all(torch.equal(a[0], b[0]) for a, b in zip(full[2:], later))
    assert not torch.equal(full[0][0], plain[0][0])  # the preset did something


@pytest.mark.parametrize("policy", ["none", "colorjitter", "randaugment", "trivialaugment", "autoaugment"])
def test_folder_policies_give_uint8_crops_that_depend_only_on_the_sample(policy):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    transform = train_transform(48, AugmentSpec(policy, random_erasing=0.5, cutout=8))

    class Split:
        def load(self, index):
            return transform(image), 0

        def __len__(self):
            return 4

    samples = SeededSamples(Split(), seed=1, epoch=0)
    first, again = samples[2][0], samples[2][0]
    assert first.dtype == torch.uint8 and first.shape == (3, 48, 48) and torch.equal(first, again)
    assert not torch.equal(first, samples[3][0])


def test_settings_are_checked_and_recorded(tmp_path, capsys):
    data = f"cifar10:{shared_file('cifar-10-subset-python.tar.gz')}"
    with pytest.raises(ValueError, match="--aug trivialaugment runs per image"):
        validate_config(TrainConfig(data=data, aug="trivialaugment"))
    for bad, match in [
        ({"aug": "mixup"}, "invalid --aug"),
        ({"random_erasing": 1.5}, "invalid --random-erasing 1.5: expected a probability"),
        ({"cutout": -1}, "invalid --cutout"),
        ({"aug_magnitude": 31}, "invalid --aug-magnitude"),
    ]:
        with pytest.raises(ValueError, match=match):
            validate_config(TrainConfig(data=data, **bad))
    run = tmp_path / "run"
    args = ["train", "--model", "asymmnet_small_x0_35_cifar", "--data", data, "--epochs", "1", "--batch-size", "16"]
    args += ["--max-steps-per-epoch", "2", "--workers", "0", "--aug", "colorjitter", "--random-erasing", "0.25"]
    assert main([*args, "--cutout", "8", "--out", str(run), "--quiet"]) == 0
    settings = yaml.safe_load((run / "args.yaml").read_text())
    assert (settings["aug"], settings["random_erasing"], settings["cutout"]) == ("colorjitter", 0.25, 8)
    header = (run / "steps.csv").read_text().splitlines()[0]
    assert header == "epoch,step,global_step,lr,loss,grad_norm"


def test_folder_dataset_takes_the_policy(tmp_path):
    bundle = load_dataset(f"folder:{shared_file('hymenoptera')}", input_size=64, augment=AugmentSpec("randaugment"))
    image, _ = bundle.train.load(0)
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8


@pytest.mark.slow  # a bf16 run: emulated, 9x slower, on CPUs without native bf16
def test_amp_default_follows_native_bf16(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert default_amp(torch.device("cpu")) is True
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert default_amp(torch.device("cpu")) is False
    assert default_amp(torch.device("cuda")) is True
    # bf16 autocast runs on any CPU (emulated where it is not native): a short run trains and evaluates.
    result = training.train(
        subset_config(
            tmp_path / "run", "shufflenet_v1_g3_x0_25_cifar", epochs=1, amp=True, batch_size=16, max_steps_per_epoch=2
        )
    )
    assert np.isfinite(result.history[0]["train_loss"])
