"""Training throughput: lightnets' in-memory device data path against the tutorials' PIL + DataLoader path.

Same model, same data, same optimiser, same machine, same run. The tutorial pipeline is the one the
PyTorch CIFAR tutorials use: a Dataset that turns each uint8 image into a PIL image, then
RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize per image, batched by a DataLoader
with worker processes. The lightnets path keeps the whole split as one uint8 tensor on the device and
crops, flips and normalises whole batches there.

Prints images/s of each, their ratio, and the share of each step spent waiting for data. Not a test:

    python benchmarks/train_throughput.py --data cifar10:../shared/data/cifar-10-subset-python.tar.gz
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from lightnets.data import load_dataset
from lightnets.data.batches import Preprocess, tensor_batches
from lightnets.models import create_model
from lightnets.train.optim import parameter_groups


class PilCifar(torch.utils.data.Dataset):
    """The tutorials' dataset: per-image PIL conversion and torchvision transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()  # HWC uint8, as torchvision's CIFAR10 keeps it
        self.labels = labels.tolist()
        self.transform = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def timed_steps(batch_iter: Iterator, model: nn.Module, prepare, steps: int, warmup: int) -> tuple[float, float, float]:
    """Run warmup + steps training steps; return (images/s, mean data seconds, mean step seconds)."""
    optimizer = torch.optim.SGD(parameter_groups(model, 5e-4), lr=0.05, momentum=0.9, nesterov=True)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    data_seconds, step_seconds, images = [], [], 0
    for step in range(warmup + steps):
        start = time.perf_counter()
        inputs, labels = next(batch_iter)
        inputs = prepare(inputs)
        fetched = time.perf_counter()
        loss = criterion(model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # one sync per step so that the step time is the real one
        end = time.perf_counter()
        if step >= warmup:
            data_seconds.append(fetched - start)
            step_seconds.append(end - start)
            images += labels.numel()
    return images / sum(step_seconds), float(np.mean(data_seconds)), float(np.mean(step_seconds))


def device_batches(train, batch_size: int) -> Iterator:
    epoch = 0
    while True:
        yield from tensor_batches(train, batch_size, train=True, epoch=epoch)
        epoch += 1


def loader_batches(loader: torch.utils.data.DataLoader) -> Iterator:
    while True:
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="cifar10:../shared/data/cifar-10-subset-python.tar.gz")
    parser.add_argument("--models", default="asymmnet_small_x0_35_cifar,shufflenet_v1_g3_x0_5_cifar,spgnet_s2p6_cifar")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the tutorial pipeline")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile", action="store_true", help="also time the device path with torch.compile")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    bundle = load_dataset(args.data)
    train = bundle.train
    print(
        f"data {args.data}: {len(train)} images; batch {args.batch_size}; {args.threads} threads; "
        f"{args.steps} timed steps after {args.warmup} warm-up; tutorial workers {args.workers}"
    )
    loader = torch.utils.data.DataLoader(
        PilCifar(train.images, train.labels, bundle.mean, bundle.std),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    preprocess = Preprocess(bundle.mean, bundle.std, 32, channels_last=False)
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = create_model(name, num_classes=len(bundle.classes))
        initial = copy.deepcopy(model.state_dict())
        timings = {
            "pil_dataloader": timed_steps(loader_batches(loader), model, lambda x: x, args.steps, args.warmup),
        }
        model.load_state_dict(initial)
        timings["device_path"] = timed_steps(
            device_batches(train, args.batch_size), model, preprocess, args.steps, args.warmup
        )
        if args.compile:
            model.load_state_dict(initial)
            timings["device_path_compiled"] = timed_steps(
                device_batches(train, args.batch_size), torch.compile(model), preprocess, args.steps, args.warmup
            )
        baseline = timings["pil_dataloader"][0]
        row = {"model": name}
        parts = []
        for variant, (images_per_s, data_s, step_s) in timings.items():
            row[variant] = {
                "images_per_s": images_per_s,
                "data_share": data_s / step_s,
                "speedup_vs_pil_dataloader": images_per_s / baseline,
            }
            share, speedup = 100 * data_s / step_s, images_per_s / baseline
            parts.append(f"{variant} {images_per_s:7.1f} img/s (data {share:4.1f}%, x{speedup:.2f})")
        rows.append(row)
        print(f"{name:30s} " + " | ".join(parts), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
